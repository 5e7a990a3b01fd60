"""Kill it at any moment, run resume, and the result is the one you would have had.

Real processes are killed: from outside at seeded random points (mid-training, as a checkpoint folder
appears) and from inside at chosen points of a checkpoint write (half a file written; committed but not
yet pruned), then resumed until done; SIGTERM and a second signal; a NaN loss.
"""
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import paddle
import pytest

from conftest import ROOT, child_env, run_main
from test_training import DEMO, TINY, _max_difference, _train_rows, _weights
from utils import checkpoint

UPDATES = 16
# Checkpoints at 3, 5, 6, 9, 10, 12, 15, 16 (every 3rd and every evaluation); 2 kept plus the best.
RUN = [*TINY, f'--config.train.updates={UPDATES}', '--config.train.checkpoint_every=3',
       '--config.train.eval_every=5', '--config.train.keep_checkpoints=2']

# `python main.py ARGS` with a fault planted in this process: argv = [fault, n, ARGS...].
#   half_written_save n: on the n-th paddle.save, write half of the file, then SIGKILL (Paddle issue 26348)
#   before_pruning n:    SIGKILL after the n-th checkpoint is committed, before old ones are removed
#   slow_save n:         from the n-th paddle.save on, announce it on stderr and hang for a minute
FAULT_RUNNER = '''
import os, runpy, signal, sys, time
fault, n = sys.argv[1], int(sys.argv[2])
sys.argv = ['main.py', *sys.argv[3:]]
sys.path.insert(0, os.getcwd())
from utils import threads
threads.configure()
import paddle
from utils import checkpoint
calls = 0

def nth_call(original, act):
  def wrapped(*args, **kwargs):
    global calls
    calls += 1
    if calls < n:
      return original(*args, **kwargs)
    return act(original, *args, **kwargs)
  return wrapped

def half_written(save, obj, path, *args, **kwargs):
  save(obj, path, *args, **kwargs)
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)
  os.kill(os.getpid(), signal.SIGKILL)

def before_pruning(retain, *args, **kwargs):
  os.kill(os.getpid(), signal.SIGKILL)

def slow(save, obj, path, *args, **kwargs):
  print(f'FAULT: saving {path} slowly', file=sys.stderr, flush=True)
  time.sleep(60)
  return save(obj, path, *args, **kwargs)

if fault == 'half_written_save':
  paddle.save = nth_call(paddle.save, half_written)
elif fault == 'before_pruning':
  checkpoint._retain = nth_call(checkpoint._retain, before_pruning)
elif fault == 'slow_save':
  paddle.save = nth_call(paddle.save, slow)
else:
  raise SystemExit(f'unknown fault {fault}')
runpy.run_path('main.py', run_name='__main__')
'''


def _start(tmp_path, name, args, fault=None):
  """Popen of main.py (through FAULT_RUNNER when `fault` = (kind, n)); stdout and stderr go to files."""
  out, err = open(tmp_path / f'{name}.out', 'w'), open(tmp_path / f'{name}.err', 'w')
  command = [sys.executable, 'main.py', *map(str, args)]
  if fault:
    command = [sys.executable, '-c', FAULT_RUNNER, fault[0], str(fault[1]), *map(str, args)]
  # The threads of the reference run: another count sums in another order (differences of ~1e-4).
  return subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=err, env=child_env())


def _wait_for(condition, proc, timeout=120):
  """Poll `condition()` until true; False if `proc` ended first."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    if condition():
      return True
    if proc.poll() is not None:
      return bool(condition())
    time.sleep(0.002)
  raise AssertionError('timed out waiting for the training process')


def _logged_updates(workdir):
  try:
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      return [json.loads(line)['update'] for line in f if line.endswith('\n') and '"train"' in line]
  except FileNotFoundError:
    return []


def _started(tmp_path, name):
  """True once the process printed its 'train: ...' line, i.e. after it truncated metrics.jsonl."""
  return '\ntrain: ' in '\n' + (tmp_path / f'{name}.out').read_text()


def _optimizer_state(workdir, update):
  path = os.path.join(checkpoint.folder(os.path.join(workdir, 'checkpoints'), update), 'optimizer.pdopt')
  return {k: v.numpy() for k, v in paddle.load(path).items() if isinstance(v, paddle.Tensor)}


def _rows(workdir, group):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [r for r in map(json.loads, f) if r['group'] == group]


def _assert_same_run(workdir, reference):
  """Weights and optimizer state at the end to 1e-6, and the same logged curves with no gap or repeat."""
  assert _max_difference(_weights(reference, UPDATES), _weights(workdir, UPDATES)) < 1e-6
  assert _max_difference(_optimizer_state(reference, UPDATES), _optimizer_state(workdir, UPDATES)) < 1e-6
  resumed, straight = _train_rows(workdir), _train_rows(reference)
  assert [r['update'] for r in resumed] == list(range(1, UPDATES + 1))
  for key in ('objective', 'ce', 'kl', 'lr'):
    np.testing.assert_allclose([r[key] for r in resumed], [r[key] for r in straight], rtol=1e-6, err_msg=key)
  assert [(r['update'], r['top1']) for r in _rows(workdir, 'eval')] == \
         [(r['update'], r['top1']) for r in _rows(reference, 'eval')]
  # Retention converged: the same committed folders (2 newest plus the best), no leftover of a killed write.
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == \
         sorted(os.listdir(os.path.join(reference, 'checkpoints')))


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('reference') / 'run'
  run_main('--config', DEMO, '--workdir', workdir, *RUN)
  return workdir


def test_resume_after_kill_9_at_random_points_matches_the_uninterrupted_run(reference, tmp_path):
  rng = random.Random(2024)
  # Every fault fires within at most 5 updates of the process's start, so all four fire before the end.
  faults = [('outside, mid-training', rng.randint(1, 3)), ('outside, as a checkpoint folder appears', None),
            ('half_written_save', rng.randint(1, 6)), ('before_pruning', rng.randint(1, 2))]
  rng.shuffle(faults)
  workdir = tmp_path / 'run'
  ckpts = os.path.join(workdir, 'checkpoints')
  history = []
  for i, (kind, n) in enumerate(faults):
    name = f'attempt{i}'
    # As run.sh does: resume when the workdir holds checkpoints, else train (again).
    resumed_from = checkpoint.update_of(checkpoint.latest_valid(ckpts)) if checkpoint.committed(ckpts) else 0
    args = (['--mode', 'resume', '--workdir', workdir] if resumed_from
            else ['--config', DEMO, '--workdir', workdir, *RUN])
    inside = kind in ('half_written_save', 'before_pruning')
    proc = _start(tmp_path, name, args, fault=(kind, n) if inside else None)
    if kind == 'outside, mid-training':
      _wait_for(lambda: _started(tmp_path, name) and max(_logged_updates(workdir), default=0) >= resumed_from + n,
                proc)
      proc.send_signal(signal.SIGKILL)
    elif kind == 'outside, as a checkpoint folder appears':
      def writing():  # this process's temporary folder, or the folder it just committed
        names = os.listdir(ckpts) if os.path.isdir(ckpts) else []
        return any(name.endswith(f'-{proc.pid}') or (name.startswith('update_') and checkpoint.update_of(name) >
                                               resumed_from) for name in names)
      _wait_for(writing, proc)
      proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL, f'{kind}: the fault did not fire\n' + (tmp_path / f'{name}.err').read_text()
    leftovers = [name for name in os.listdir(ckpts) if name.startswith('.tmp-')] if os.path.isdir(ckpts) else []
    if kind == 'half_written_save':
      assert leftovers, 'the half-written checkpoint should be left as a temporary folder'
    history.append((kind, n, resumed_from, max(_logged_updates(workdir), default=0), leftovers))
  start = checkpoint.update_of(checkpoint.latest_valid(ckpts))
  proc = run_main('--mode', 'resume', '--workdir', workdir)
  last = checkpoint.update_of(checkpoint.latest_valid(ckpts))
  assert f'from update {start}' in proc.stdout, history
  assert not [name for name in os.listdir(ckpts) if name.startswith('.tmp-')]
  assert all(resumed < UPDATES for _, _, resumed, _, _ in history) and last == UPDATES
  _assert_same_run(workdir, reference)


def test_sigterm_saves_at_the_update_reached_says_how_to_resume_and_resume_matches(reference, tmp_path):
  workdir = tmp_path / 'run'
  proc = _start(tmp_path, 'first', ['--config', DEMO, '--workdir', workdir, *RUN])
  _wait_for(lambda: _started(tmp_path, 'first') and max(_logged_updates(workdir), default=0) >= 7, proc)
  proc.send_signal(signal.SIGTERM)
  signalled = time.time()
  proc.wait(timeout=60)
  assert time.time() - signalled < 10
  stderr = (tmp_path / 'first.err').read_text()
  assert proc.returncode == 128 + signal.SIGTERM, stderr
  assert 'SIGTERM: finishing this update, then saving a checkpoint' in stderr
  reached = max(_logged_updates(workdir))
  assert f'stopped by a signal after update {reached}, checkpoint saved' in stderr
  assert f'python main.py --mode resume --workdir {workdir}' in stderr
  newest = checkpoint.latest_valid(os.path.join(workdir, 'checkpoints'))
  assert reached < UPDATES and checkpoint.update_of(newest) == reached
  run_main('--mode', 'resume', '--workdir', workdir)
  _assert_same_run(workdir, reference)


def test_a_second_sigterm_during_the_checkpoint_write_exits_at_once_keeping_the_previous(tmp_path):
  workdir = tmp_path / 'run'
  # The 2nd checkpoint (update 5) hangs in its first file.
  proc = _start(tmp_path, 'run', ['--config', DEMO, '--workdir', workdir, *RUN], fault=('slow_save', 4))
  _wait_for(lambda: 'FAULT: saving' in (tmp_path / 'run.err').read_text(), proc)
  proc.send_signal(signal.SIGTERM)
  _wait_for(lambda: 'SIGTERM: finishing this update' in (tmp_path / 'run.err').read_text(), proc)
  proc.send_signal(signal.SIGTERM)
  signalled = time.time()
  proc.wait(timeout=30)
  assert time.time() - signalled < 5
  stderr = (tmp_path / 'run.err').read_text()
  assert proc.returncode == 128 + signal.SIGTERM and 'SIGTERM again: exiting now without a checkpoint' in stderr
  ckpts = os.path.join(workdir, 'checkpoints')
  assert checkpoint.latest_valid(ckpts) == checkpoint.folder(ckpts, 3)
  assert [name for name in os.listdir(ckpts) if name.startswith('.tmp-update_00000005')]


def test_a_nan_loss_in_fp32_stops_naming_the_update_and_keeps_the_last_good_checkpoint(tmp_path):
  """lr=1e30: update 1 (lr 2e28 in warm-up) leaves huge but finite weights, update 2's loss is NaN."""
  workdir = tmp_path / 'run'
  proc = run_main('--config', DEMO, '--workdir', workdir, *TINY, '--config.train.updates=6',
                  '--config.train.checkpoint_every=1', '--config.train.lr=1e30', check=False)
  ckpts = os.path.join(workdir, 'checkpoints')
  assert proc.returncode == 1
  assert (f'error: the training loss is not finite at update 2 (here: nan); nothing was saved after update 1. '
          f'Last good checkpoint: {checkpoint.folder(ckpts, 1)}') in proc.stderr
  assert checkpoint.committed(ckpts) == [checkpoint.folder(ckpts, 1)]
  assert all(np.isfinite(w).all() for w in _weights(workdir, 1).values())
  assert _logged_updates(workdir) == [1]


def test_weights_made_infinite_by_an_update_are_not_saved_as_a_good_checkpoint(tmp_path):
  """weight_decay=1e39 is infinite in float32: update 1's loss is finite, its weights are not."""
  workdir = tmp_path / 'run'
  proc = run_main('--config', DEMO, '--workdir', workdir, *TINY, '--config.train.updates=4',
                  '--config.train.checkpoint_every=1', '--config.train.warmup_updates=0',
                  '--config.train.weight_decay=1e39', check=False)
  assert proc.returncode == 1
  assert 'error: update 1 left NaN or Inf in' in proc.stderr and 'no earlier checkpoint exists' in proc.stderr
  assert checkpoint.committed(os.path.join(workdir, 'checkpoints')) == []
