"""Kill it at any moment, start it twice, repeat the command: the result is the one you would have had.

Real processes are killed: from outside at seeded random points (mid-training, as a checkpoint folder
appears) and from inside at chosen points of a checkpoint write (half a file written; committed but not
yet pruned), then the repeatable command (--autoresume) runs until done; a kill before the first
checkpoint; a second training into a running workdir; SIGTERM after an update, during an evaluation,
while the data stalls, and a second one; time-based checkpoints; a NaN loss.
"""
import json
import os
import random
import shlex
import signal
import subprocess
import sys
import time

import numpy as np
import paddle
import pytest

from helpers import ROOT, child_env, metric_rows, run_main
from tools.fakedata import make_cat12
from test_training import DEMO, TINY, _max_difference, _weights
from utils import checkpoint, preemption

pytestmark = pytest.mark.slow  # runs the command line in processes of its own

UPDATES = 16
# Checkpoints at 3, 5, 6, 9, 10, 12, 15, 16 (every 3rd and every evaluation); 2 kept plus the best.
RUN = [*TINY, f'--config.train.updates={UPDATES}', '--config.train.checkpoint_every=3',
       '--config.train.eval_every=5', '--config.train.keep_checkpoints=2']
EXIT_BUSY = 75

# `python main.py ARGS` with a fault planted in this process: argv = [fault, n, ARGS...].
#   half_written_save n: on the n-th file of a checkpoint, write half of it, then SIGKILL (Paddle issue 26348)
#   before_pruning n:    SIGKILL after the n-th checkpoint is committed, before old ones are removed
#   slow_save n:         the n-th file of a checkpoint announces itself on stderr and hangs for a minute
#                        (a checkpoint writes 6: the model's, optimizer's and trainer's .safetensors and .json)
#   sigterm_in_evaluation n: the n-th evaluation starts with a SIGTERM to this process
#   sigterm_in_update n: the n-th loss computation gets a SIGTERM
#   sigterm_to_all n, sigint_to_all n: the n-th loss computation: a SIGTERM (SIGINT) to this process and its
#                        DataLoader workers
#   sigterm_in_slow_compute n: the n-th loss computation gets a SIGTERM, then computes for 7 s (longer
#                        than the watcher's grace time, as one backward pass of a large model on a CPU)
#   stalled_sample n:    from the n-th image a process reads on, announce it and hang for an hour (a file
#                        system that stopped answering), in the main process or a DataLoader worker
#   stalled_decode n:    the same in Cat-12's start-up check, which decodes every image once in a thread pool
#   nan_loss n:          the n-th loss computation returns NaN (a numerical blow-up)
#   infinite_weights n:  the n-th optimizer step leaves an infinite weight behind
#   late_rank n:         under the launcher, every rank announces that it connects to the others, and rank n
#                        first sleeps for an hour: the others wait in Paddle's start-up (in C++)
#   lost_peer n:         rank 0 of a job of 2 whose other process never connects: Paddle's start-up ends
#                        (after its fixed 900 s) in the SystemError it raises then
FAULT_RUNNER = '''
import os, runpy, signal, subprocess, sys, time
fault, n = sys.argv[1], int(sys.argv[2])
sys.argv = ['main.py', *sys.argv[3:]]
from utils import threads
threads.configure()
import paddle
import evaluate
from data import digits, images
from utils import checkpoint
calls = 0

def nth_call(original, act, from_then_on=False):
  # Else the n-th call only: a signal sent again at each later micro-batch would be a second request.
  def wrapped(*args, **kwargs):
    global calls
    calls += 1
    if calls < n or calls > n and not from_then_on:
      return original(*args, **kwargs)
    return act(original, *args, **kwargs)
  return wrapped

def half_written(write, path, data):
  write(path, data[:len(data) // 2])
  os.kill(os.getpid(), signal.SIGKILL)

def before_pruning(retain, *args, **kwargs):
  os.kill(os.getpid(), signal.SIGKILL)

def slow(write, path, data):
  print(f'FAULT: saving {path} slowly', file=sys.stderr, flush=True)
  time.sleep(60)
  return write(path, data)

def signalled(original, *args, **kwargs):
  os.kill(os.getpid(), signal.SIGTERM)
  return original(*args, **kwargs)

def signalled_all(original, *args, **kwargs):
  pid = os.getpid()
  with open(f'/proc/{pid}/task/{pid}/children') as f:  # (multiprocessing.active_children() would reap them)
    workers = [int(child) for child in f.read().split()]
  # From another process, as a scheduler or a terminal sends it (Paddle's workers take no SIGTERM from
  # their parent).
  subprocess.run(['kill', '-s', SIGNAL_TO_ALL, str(pid), *map(str, workers)], check=True)
  return original(*args, **kwargs)

def slow_compute(original, *args, **kwargs):
  os.kill(os.getpid(), signal.SIGTERM)
  time.sleep(7)
  return original(*args, **kwargs)

def stalled(sample, *args, **kwargs):
  print(f'FAULT: reading an image stalls in process {os.getpid()}', file=sys.stderr, flush=True)
  time.sleep(3600)

def stalled_decode(decode_problem, *args, **kwargs):
  print('FAULT: decoding an image stalls', file=sys.stderr, flush=True)
  time.sleep(3600)

def nan_loss(original, *args, **kwargs):
  loss, ce, kl = original(*args, **kwargs)
  return loss * float('nan'), ce, kl

def infinite_weights(original, precision, optimizer):
  skipped = original(precision, optimizer)
  weight = optimizer._parameter_list[0]
  weight.set_value(paddle.full_like(weight, float('inf')))
  return skipped

if fault == 'half_written_save':
  checkpoint._write = nth_call(checkpoint._write, half_written)
elif fault == 'before_pruning':
  checkpoint._retain = nth_call(checkpoint._retain, before_pruning)
elif fault == 'slow_save':
  checkpoint._write = nth_call(checkpoint._write, slow)
elif fault == 'sigterm_in_evaluation':
  evaluate.evaluate = nth_call(evaluate.evaluate, signalled)
elif fault == 'sigterm_in_update':
  from training import step
  step.rdrop_loss = nth_call(step.rdrop_loss, signalled)
elif fault in ('sigterm_to_all', 'sigint_to_all'):
  from training import step
  SIGNAL_TO_ALL = {'sigterm_to_all': 'TERM', 'sigint_to_all': 'INT'}[fault]
  step.rdrop_loss = nth_call(step.rdrop_loss, signalled_all)
elif fault == 'sigterm_in_slow_compute':
  from training import step
  step.rdrop_loss = nth_call(step.rdrop_loss, slow_compute)
elif fault == 'stalled_sample':
  digits.Digits.sample = nth_call(digits.Digits.sample, stalled, from_then_on=True)
elif fault == 'stalled_decode':
  images.decode_problem = nth_call(images.decode_problem, stalled_decode, from_then_on=True)
elif fault == 'nan_loss':
  from training import step
  step.rdrop_loss = nth_call(step.rdrop_loss, nan_loss)
elif fault == 'infinite_weights':
  from training.precision import Precision
  Precision.step = nth_call(Precision.step, infinite_weights)
elif fault == 'late_rank':
  import paddle.distributed
  connect = paddle.distributed.init_parallel_env
  def late_rank():
    rank = int(os.environ['PADDLE_TRAINER_ID'])
    if rank == n:
      time.sleep(3600)
    print(f'FAULT: rank {rank} connects', file=sys.stderr, flush=True)
    connect()
  paddle.distributed.init_parallel_env = late_rank
elif fault == 'lost_peer':
  import paddle.distributed
  os.environ.update(PADDLE_TRAINER_ID='0', PADDLE_TRAINERS_NUM='2')
  def lost_peer():
    raise SystemError('(Fatal) _timeout:900 elapsed:901 (elapsed > _timeout)=1 (at /paddle/paddle/phi/core/'
                      'distributed/store/tcp_store.cc:433)')  # as Paddle 3.3 raises it
  paddle.distributed.init_parallel_env = lost_peer
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
  proc.kill()  # a stalled process would otherwise outlive the test by its hour of sleep
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


def _children(pid):
  """Process ids of the children of `pid` (Linux /proc)."""
  with open(f'/proc/{pid}/task/{pid}/children') as f:
    return [int(child) for child in f.read().split()]


def _running(pid):
  """True while process `pid` exists and is not a zombie waiting to be reaped."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
  except FileNotFoundError:
    return False


def _optimizer_state(workdir, update):
  path = checkpoint.folder(os.path.join(workdir, 'checkpoints'), update)
  return {k: v.numpy() for k, v in checkpoint.load(path, ('optimizer',))[1]['optimizer'].items()
          if isinstance(v, paddle.Tensor)}



def _assert_same_run(workdir, reference):
  """Weights and optimizer state at the end to 1e-6, and the same logged curves with no gap or repeat."""
  assert _max_difference(_weights(reference, UPDATES), _weights(workdir, UPDATES)) < 1e-6
  assert _max_difference(_optimizer_state(reference, UPDATES), _optimizer_state(workdir, UPDATES)) < 1e-6
  resumed, straight = metric_rows(workdir, 'train'), metric_rows(reference, 'train')
  assert [r['update'] for r in resumed] == list(range(1, UPDATES + 1))
  for key in ('objective', 'ce', 'kl', 'lr'):
    np.testing.assert_allclose([r[key] for r in resumed], [r[key] for r in straight], rtol=1e-6, err_msg=key)
  assert [(r['update'], r['top1']) for r in metric_rows(workdir, 'eval')] == \
         [(r['update'], r['top1']) for r in metric_rows(reference, 'eval')]
  # Retention converged: the same committed folders (2 newest plus the best), no leftover of a killed write.
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == \
         sorted(os.listdir(os.path.join(reference, 'checkpoints')))


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('reference') / 'run'
  run_main('--config', DEMO, '--workdir', workdir, *RUN)
  return workdir


def test_the_repeatable_command_killed_four_times_then_run_twice_ends_equal_to_the_uninterrupted_run(
    reference, tmp_path):
  """A job script's loop: the same command each time, killed before its first checkpoint, then at seeded
  random points outside and inside checkpoint writes; the fifth run finishes, the sixth does nothing."""
  rng = random.Random(2024)
  # Every fault fires within at most 5 updates of the process's start, so all of them fire before the end.
  faults = [('outside, mid-training', rng.randint(1, 3)), ('outside, as a checkpoint folder appears', None),
            ('before_pruning', rng.randint(1, 2))]
  rng.shuffle(faults)
  faults.insert(0, ('half_written_save', 1))  # killed while writing its first checkpoint
  workdir = tmp_path / 'run'
  ckpts = os.path.join(workdir, 'checkpoints')
  command = ['--config', DEMO, '--workdir', workdir, *RUN, '--autoresume']
  history = []
  for i, (kind, n) in enumerate(faults):
    name = f'attempt{i}'
    resumed_from = checkpoint.update_of(checkpoint.latest_valid(ckpts)) if checkpoint.committed(ckpts) else 0
    inside = kind in ('half_written_save', 'before_pruning')
    proc = _start(tmp_path, name, command, fault=(kind, n) if inside else None)
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
    if i:  # each restart takes over the lock of the killed process and says so
      assert 'which ended without releasing it (killed?); taking it over' in (tmp_path / f'{name}.out').read_text()
    leftovers = [name for name in os.listdir(ckpts) if name.startswith('.tmp-')] if os.path.isdir(ckpts) else []
    if kind == 'half_written_save':
      assert leftovers, 'the half-written checkpoint should be left as a temporary folder'
    history.append((kind, n, resumed_from, max(_logged_updates(workdir), default=0), leftovers))
  assert history[0][2:4] == (0, 3)  # the first kill came before any checkpoint, after 3 logged updates
  start = checkpoint.update_of(checkpoint.latest_valid(ckpts))
  proc = run_main(*command)
  last = checkpoint.update_of(checkpoint.latest_valid(ckpts))
  assert f'from update {start}' in proc.stdout, history
  assert not [name for name in os.listdir(ckpts) if name.startswith('.tmp-')]
  assert all(resumed < UPDATES for _, _, resumed, _, _ in history) and last == UPDATES
  _assert_same_run(workdir, reference)
  again = run_main(*command)
  assert f'finished at update {UPDATES}' in again.stdout and 'nothing to do' in again.stdout
  _assert_same_run(workdir, reference)


def test_resume_of_a_run_killed_before_its_first_checkpoint_trains_it_again_equal_to_the_uninterrupted_run(
    reference, tmp_path):
  workdir = tmp_path / 'run'
  proc = _start(tmp_path, 'first', ['--config', DEMO, '--workdir', workdir, *RUN], fault=('half_written_save', 1))
  proc.wait(timeout=120)
  assert proc.returncode == -signal.SIGKILL and not checkpoint.committed(os.path.join(workdir, 'checkpoints'))
  assert _logged_updates(workdir) == [1, 2, 3]
  resumed = run_main('--mode', 'resume', '--workdir', workdir)
  assert (f'resume: {workdir} has no checkpoint yet: training again from update 0 with the saved config and seed'
          in resumed.stdout) and 'from scratch' in resumed.stdout
  _assert_same_run(workdir, reference)


def test_a_second_training_into_a_running_workdir_is_refused_naming_the_first_which_resumes_exactly(
    reference, tmp_path):
  """The baseline started into the R-Drop run's workdir while it writes a checkpoint; then the R-Drop run
  is killed and resumed, taking its lock over."""
  workdir = tmp_path / 'run'
  first = _start(tmp_path, 'first', ['--config', DEMO, '--workdir', workdir, *RUN], fault=('slow_save', 7))
  _wait_for(lambda: 'FAULT: saving' in (tmp_path / 'first.err').read_text(), first)  # the checkpoint of update 5
  before = {name: (workdir / name).read_text() for name in ('config.json', 'config.py', 'metrics.jsonl', 'lock')}
  ckpts_before = sorted(os.listdir(workdir / 'checkpoints'))
  second = run_main('--config', 'configs/digits_vit.py', '--workdir', workdir, *RUN, check=False)
  assert second.returncode == EXIT_BUSY
  assert (f'error: {workdir} is in use by another training: pid {first.pid} on ' in second.stderr
          and f'--workdir {workdir}' in second.stderr and 'wait for it to end, stop it, or use another' in second.stderr)
  assert {name: (workdir / name).read_text() for name in before} == before
  assert sorted(os.listdir(workdir / 'checkpoints')) == ckpts_before
  first.send_signal(signal.SIGKILL)
  first.wait(timeout=60)
  resumed = run_main('--mode', 'resume', '--workdir', workdir)
  assert f'lock: {workdir} was held by pid {first.pid} on ' in resumed.stdout and 'taking it over' in resumed.stdout
  assert 'from update 3' in resumed.stdout and not (workdir / 'lock').exists()
  _assert_same_run(workdir, reference)
  assert json.loads((workdir / 'config.json').read_text())['experiment'] == 'digits_vit_rdrop'


def test_a_job_whose_processes_did_not_all_start_exits_75_naming_the_cause_and_leaves_no_trace(tmp_path):
  """docs/distributed.md: a node lost while the job starts; the retry loop repeats on 75."""
  workdir = tmp_path / 'run'
  proc = _start(tmp_path, 'job', ['--config', DEMO, '--workdir', workdir, *RUN], fault=('lost_peer', 1))
  assert proc.wait(timeout=120) == EXIT_BUSY
  err = (tmp_path / 'job.err').read_text()
  assert ('error: the 2 processes of this job did not all start: a node or process was lost or never came '
          '((Fatal) _timeout:900 elapsed:901' in err and 'Traceback' not in err), err
  assert not workdir.exists()


def test_sigterm_saves_at_the_update_reached_says_how_to_resume_and_resume_matches(reference, tmp_path):
  workdir = tmp_path / 'my run'  # printed commands are quoted for the shell
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
  assert f'python main.py --mode resume --workdir {shlex.quote(str(workdir))}\n' in stderr
  newest = checkpoint.latest_valid(os.path.join(workdir, 'checkpoints'))
  assert reached < UPDATES and checkpoint.update_of(newest) == reached
  run_main('--mode', 'resume', '--workdir', workdir)
  _assert_same_run(workdir, reference)


ACCUMULATED = [*TINY, '--config.train.updates=6', '--config.train.batch_size=256', '--config.train.accum_steps=4',
               '--config.data.num_workers=2']


@pytest.fixture(scope='module')
def accumulated(tmp_path_factory):
  """The uninterrupted run of ACCUMULATED."""
  workdir = tmp_path_factory.mktemp('accumulated') / 'run'
  run_main('--config', DEMO, '--workdir', workdir, *ACCUMULATED)
  return workdir


@pytest.mark.parametrize('fault,signum', [('sigterm_to_all', signal.SIGTERM), ('sigint_to_all', signal.SIGINT)])
def test_a_signal_to_every_process_of_the_run_mid_update_on_busy_cores_saves_that_update_and_resume_matches(
    accumulated, busy_cores, tmp_path, fault, signum):
  """Slurm (scancel, preemption, time limit) and systemd send SIGTERM to every process of a job, a terminal
  its Ctrl-C to the foreground process group, DataLoader workers included: one signal per process is one
  request, however long the update takes to finish (here: its first of four micro-batches, on a machine
  whose every core is busy), and no worker may die under it."""
  workdir = tmp_path / 'run'
  proc = _start(tmp_path, 'first', ['--config', DEMO, '--workdir', workdir, *ACCUMULATED], fault=(fault, 5))
  proc.wait(timeout=300)
  stderr = (tmp_path / 'first.err').read_text()
  assert proc.returncode == 128 + signum and 'stopped by a signal after update 2, checkpoint saved' in stderr, stderr
  assert 'Traceback' not in stderr and 'DataLoader process' not in stderr
  run_main('--config', DEMO, '--workdir', workdir, *ACCUMULATED, '--autoresume')
  assert _max_difference(_weights(accumulated, 6), _weights(workdir, 6)) == 0


def test_data_workers_end_with_a_trainer_killed_by_sigkill_and_their_shared_memory_goes_at_the_next_start(
    tmp_path):
  """The OOM killer's kill -9 reaches the main process only; workers that outlived it would hold their memory
  for ever (they ignore SIGTERM), and batches in flight stay in /dev/shm, which is RAM."""
  workdir = tmp_path / 'run'
  args = ['--config', DEMO, '--workdir', workdir, *RUN, '--config.data.num_workers=2']
  proc = _start(tmp_path, 'first', args)
  _wait_for(lambda: max(_logged_updates(workdir), default=0) >= 2, proc)
  workers = _children(proc.pid)
  assert len(workers) >= 2
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=60)
  deadline = time.time() + 30
  while [pid for pid in workers if _running(pid)] and time.time() < deadline:
    time.sleep(0.05)
  assert not [pid for pid in workers if _running(pid)], 'a DataLoader worker outlived its trainer'
  left = f'/dev/shm/paddle_{workers[0]}_0_0'  # one batch in flight, if the kill left none
  open(left, 'wb').close()
  run_main(*args, '--autoresume')
  assert not [name for name in os.listdir('/dev/shm') if any(name.startswith(f'paddle_{pid}_') for pid in workers)]


@pytest.mark.parametrize('evaluation,update', [(1, 5), (4, UPDATES)])  # the first and the last evaluation
def test_sigterm_during_an_evaluation_saves_the_update_and_resume_evaluates_it_first(reference, tmp_path,
                                                                                      evaluation, update):
  workdir = tmp_path / 'run'
  proc = _start(tmp_path, 'first', ['--config', DEMO, '--workdir', workdir, *RUN],
                fault=('sigterm_in_evaluation', evaluation))
  proc.wait(timeout=120)
  stderr = (tmp_path / 'first.err').read_text()
  assert proc.returncode == 128 + signal.SIGTERM, stderr
  assert (f'stopped by a signal after update {update} before its evaluation was complete (it runs first on '
          'resume), checkpoint saved') in stderr
  ckpts = os.path.join(workdir, 'checkpoints')
  assert checkpoint.read_manifest(checkpoint.latest_valid(ckpts), files=()).evaluation_due is True
  assert len(metric_rows(workdir, 'eval')) == evaluation - 1
  run_main('--config', DEMO, '--workdir', workdir, *RUN, '--autoresume')
  _assert_same_run(workdir, reference)


def test_sigterm_during_a_computation_longer_than_the_grace_time_still_saves(tmp_path):
  workdir = tmp_path / 'run'
  proc = _start(tmp_path, 'run', ['--config', DEMO, '--workdir', workdir, *RUN],
                fault=('sigterm_in_slow_compute', 3))
  proc.wait(timeout=120)
  stderr = (tmp_path / 'run.err').read_text()
  assert proc.returncode == 128 + signal.SIGTERM, stderr
  assert 'blocked for' not in stderr and 'stopped by a signal after update 3, checkpoint saved' in stderr
  assert checkpoint.update_of(checkpoint.latest_valid(os.path.join(workdir, 'checkpoints'))) == 3


@pytest.mark.parametrize('workers', [0, 2])
def test_sigterm_while_reading_an_image_stalls_ends_the_process_and_its_workers(tmp_path, workers):
  """Paddle's reader blocks the main thread in C++, where Python never runs a signal handler. (From the second
  image: the main process reads the first before starting workers, to size their shared memory.)"""
  workdir = tmp_path / 'run'
  proc = _start(tmp_path, 'run', ['--config', DEMO, '--workdir', workdir, *RUN,
                                  f'--config.data.num_workers={workers}'], fault=('stalled_sample', 2))
  _wait_for(lambda: _started(tmp_path, 'run') and 'FAULT: reading an image stalls' in (tmp_path / 'run.err').read_text(),
            proc)
  time.sleep(0.5)
  children = _children(proc.pid)
  assert len(children) >= workers
  proc.send_signal(signal.SIGTERM)
  signalled = time.time()
  proc.wait(timeout=60)
  assert time.time() - signalled < 15
  stderr = (tmp_path / 'run.err').read_text()
  assert proc.returncode == 128 + signal.SIGTERM, stderr
  assert 'SIGTERM: blocked for 5 s in ' in stderr and 'exiting now; the newest complete checkpoint is kept' in stderr
  assert not [pid for pid in children if _running(pid)], 'a DataLoader worker was left behind'


def test_sigterm_while_the_start_up_check_waits_for_an_image_ends_the_process(tmp_path):
  """Cat-12 decodes every image once before training, in a thread pool that a stalled read blocks."""
  make_cat12(tmp_path / 'cat12', n_plain=4, odd=False, broken=False)
  workdir = tmp_path / 'run'
  proc = _start(tmp_path, 'run', ['--config', 'configs/resnet50_cat12.py:smoke', '--workdir', workdir,
                                  f'--config.data.root={tmp_path / "cat12"}'], fault=('stalled_decode', 1))
  _wait_for(lambda: 'FAULT: decoding an image stalls' in (tmp_path / 'run.err').read_text(), proc)
  proc.send_signal(signal.SIGTERM)
  signalled = time.time()
  proc.wait(timeout=60)
  assert time.time() - signalled < 15
  assert proc.returncode == 128 + signal.SIGTERM, (tmp_path / 'run.err').read_text()
  assert not workdir.exists() or not (workdir / 'config.py').exists()


def test_a_time_based_checkpoint_appears_before_any_update_based_one(tmp_path):
  """No checkpoint cadence, one evaluation at the end of 10000 updates: only the clock can save one."""
  workdir = tmp_path / 'run'
  ckpts = os.path.join(workdir, 'checkpoints')
  proc = _start(tmp_path, 'run', ['--config', DEMO, '--workdir', workdir, *TINY, '--config.train.updates=10000',
                                  '--config.train.checkpoint_every=0', '--config.train.eval_every=10000',
                                  '--config.train.checkpoint_every_minutes=0.01'])
  _wait_for(lambda: bool(checkpoint.committed(ckpts)), proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=60)
  first = checkpoint.committed(ckpts)[0]
  manifest = checkpoint.read_manifest(first)
  assert 0 < manifest.update < 10000 and manifest.train_seconds >= 0.6


def test_a_second_sigterm_during_the_checkpoint_write_exits_at_once_keeping_the_previous(tmp_path):
  workdir = tmp_path / 'run'
  # The 2nd checkpoint (update 5) hangs in its first file.
  proc = _start(tmp_path, 'run', ['--config', DEMO, '--workdir', workdir, *RUN], fault=('slow_save', 7))
  _wait_for(lambda: 'FAULT: saving' in (tmp_path / 'run.err').read_text(), proc)
  proc.send_signal(signal.SIGTERM)
  _wait_for(lambda: 'SIGTERM: finishing this update' in (tmp_path / 'run.err').read_text(), proc)
  time.sleep(preemption.REPEAT_SECONDS + 0.2)  # sooner, it would count as a repeat of the first
  proc.send_signal(signal.SIGTERM)
  signalled = time.time()
  proc.wait(timeout=30)
  assert time.time() - signalled < 5
  stderr = (tmp_path / 'run.err').read_text()
  assert proc.returncode == 128 + signal.SIGTERM and 'SIGTERM again: exiting now without a checkpoint' in stderr
  ckpts = os.path.join(workdir, 'checkpoints')
  assert checkpoint.latest_valid(ckpts) == checkpoint.folder(ckpts, 3)
  assert [name for name in os.listdir(ckpts) if name.startswith('.tmp-update_00000005')]


def _run_with_fault(tmp_path, fault, *args):
  proc = _start(tmp_path, 'run', args, fault=fault)
  proc.wait(timeout=120)
  return proc.returncode, (tmp_path / 'run.err').read_text()


def test_a_nan_loss_in_fp32_stops_naming_the_update_and_keeps_the_last_good_checkpoint(tmp_path):
  workdir = tmp_path / 'run'
  returncode, stderr = _run_with_fault(tmp_path, ('nan_loss', 2), '--config', DEMO, '--workdir', workdir, *TINY,
                                       '--config.train.updates=6', '--config.train.checkpoint_every=1')
  ckpts = os.path.join(workdir, 'checkpoints')
  assert returncode == 1
  assert (f'error: the training loss is not finite at update 2 (here: nan); nothing was saved after update 1. '
          f'Last good checkpoint: {checkpoint.folder(ckpts, 1)}') in stderr
  assert checkpoint.committed(ckpts) == [checkpoint.folder(ckpts, 1)]
  assert all(np.isfinite(w).all() for w in _weights(workdir, 1).values())
  assert _logged_updates(workdir) == [1]


def test_weights_made_infinite_by_an_update_are_not_saved_as_a_good_checkpoint(tmp_path):
  """Update 1's loss is finite, the weights it leaves are not."""
  workdir = tmp_path / 'run'
  returncode, stderr = _run_with_fault(tmp_path, ('infinite_weights', 1), '--config', DEMO, '--workdir', workdir,
                                       *TINY, '--config.train.updates=4', '--config.train.checkpoint_every=1')
  assert returncode == 1
  assert 'error: update 1 left NaN or Inf in' in stderr and 'no earlier checkpoint exists' in stderr
  assert checkpoint.committed(os.path.join(workdir, 'checkpoints')) == []


@pytest.fixture(scope='module')
def logged_every_5(tmp_path_factory):
  """20 updates, a log row every 5, a checkpoint every 7: windows that checkpoints cut in the middle."""
  workdir = tmp_path_factory.mktemp('logged') / 'run'
  args = [*TINY, '--config.train.updates=20', '--config.train.log_every=5', '--config.train.checkpoint_every=7']
  run_main('--config', DEMO, '--workdir', workdir, *args)
  return workdir, args


def test_a_run_killed_mid_window_logs_after_its_resume_the_rows_of_the_uninterrupted_run(logged_every_5, tmp_path):
  """Killed after update 14, resumed from 14: row 15 averages updates 11-15, as in the uninterrupted run."""
  reference, args = logged_every_5
  workdir = tmp_path / 'run'
  proc = _start(tmp_path, 'first', ['--config', DEMO, '--workdir', workdir, *args])
  _wait_for(lambda: os.path.isdir(checkpoint.folder(os.path.join(workdir, 'checkpoints'), 14)), proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=60)
  run_main('--config', DEMO, '--workdir', workdir, *args, '--autoresume')
  assert metric_rows(workdir, 'train') == metric_rows(reference, 'train')  # bit for bit
  assert [r['update'] for r in metric_rows(workdir, 'train')] == [5, 10, 15, 20]


def test_a_run_stopped_by_sigterm_mid_window_logs_after_its_resume_the_rows_of_the_uninterrupted_run(
    logged_every_5, tmp_path):
  reference, args = logged_every_5
  workdir = tmp_path / 'run'
  proc = _start(tmp_path, 'first', ['--config', DEMO, '--workdir', workdir, *args], fault=('sigterm_in_update', 16))
  proc.wait(timeout=60)
  assert proc.returncode == 128 + signal.SIGTERM
  assert checkpoint.update_of(checkpoint.latest_valid(os.path.join(workdir, 'checkpoints'))) == 16
  run_main('--config', DEMO, '--workdir', workdir, *args, '--autoresume')
  assert metric_rows(workdir, 'train') == metric_rows(reference, 'train')
