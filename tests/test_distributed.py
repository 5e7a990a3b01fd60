"""Data-parallel training under Paddle's own launcher, on CPU processes (gloo): the same numbers as one process."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import ROOT, child_env, metric_rows
from test_preemption import FAULT_RUNNER
from test_training import DEMO, TINY, _max_difference, _weights
from utils import checkpoint

pytestmark = pytest.mark.slow  # runs the command line in processes of its own

NO_DROPOUT = ['--config.model.dropout_rate=0.0', '--config.train.optimizer=momentum', '--config.train.lr=0.05']


def _launch_cmd(nproc, log_dir, *args):
  return [sys.executable, '-m', 'paddle.distributed.launch', '--nproc_per_node', str(nproc), '--log_dir',
          str(log_dir), 'main.py', *map(str, args)]


def launch(nproc, log_dir, *args):
  proc = subprocess.run(_launch_cmd(nproc, log_dir, *args), cwd=ROOT, capture_output=True, text=True, timeout=300,
                        env=child_env())
  if proc.returncode != 0:
    logs = ''.join(open(os.path.join(log_dir, f)).read()[-3000:] for f in sorted(os.listdir(log_dir))
                   if f.startswith('workerlog'))
    raise AssertionError(f'launch exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}\n{logs}')
  return proc


def test_two_processes_equal_one_on_the_same_global_batch(tmp_path):
  """With R-Drop's two model calls per micro-batch (the ViT recipe's form) under DataParallel."""
  common = [*TINY, *NO_DROPOUT, '--config.train.updates=4', '--config.train.accum_steps=2', '--config.rdrop.alpha=0.5',
            '--config.rdrop.form=twice']
  subprocess.run([sys.executable, 'main.py', '--config', DEMO, '--workdir', tmp_path / 'one', *common],
                 cwd=ROOT, check=True, capture_output=True, env=child_env())
  proc = launch(2, tmp_path / 'logs', '--config', DEMO, '--workdir', tmp_path / 'two', *common)
  assert '2 x 4 per device on 2 device(s)' in proc.stdout + proc.stderr + open(tmp_path / 'logs/workerlog.0').read()
  assert _max_difference(_weights(tmp_path / 'one', 4), _weights(tmp_path / 'two', 4)) < 1e-5
  np.testing.assert_allclose([r['objective'] for r in metric_rows(tmp_path / 'two', 'train')],
                             [r['objective'] for r in metric_rows(tmp_path / 'one', 'train')], rtol=1e-5)


def test_evaluation_of_seven_samples_on_two_processes_is_exact(tmp_path):
  """Rank 0 gets 4 samples, rank 1 gets 3: no padding duplicates may enter the accuracy."""
  script = tmp_path / 'eval7.py'
  script.write_text(f'''
import json
import paddle
from configs import digits_vit
from data import digits
from evaluate import evaluate
import models
from training import distributed
rank, world = distributed.setup()
config = digits_vit.get_config()
config.eval.batch_size = 2
dataset = digits.Digits('test')
dataset.images, dataset.labels = dataset.images[:7], dataset.labels[:7]
assert len(set(dataset.labels.tolist())) > 1
model = models.build(config.model, 10, config.seed)
bias = [0.0] * 10
bias[int(dataset.labels[0])] = 3.0  # one confident class, not every sample's: accuracy neither 0 nor 100
with paddle.no_grad():
  model.head.bias.set_value(paddle.to_tensor(bias))
metrics = evaluate(model, dataset, config, rank, world)
if rank == 0:
  print('METRICS', json.dumps(metrics))
''')
  single = subprocess.run([sys.executable, script], capture_output=True, text=True, check=True,
                          env=child_env(PYTHONPATH=ROOT)).stdout
  proc = subprocess.run([sys.executable, '-m', 'paddle.distributed.launch', '--nproc_per_node', '2', '--log_dir',
                         str(tmp_path / 'logs2'), str(script)], capture_output=True, text=True, timeout=300,
                        env=child_env(PYTHONPATH=ROOT))
  assert proc.returncode == 0, proc.stderr[-2000:]
  two = open(tmp_path / 'logs2/workerlog.0').read()
  parse = lambda text: json.loads(text.split('METRICS ')[1].splitlines()[0])
  single, two = parse(single), parse(two)
  assert single['count'] == two['count'] == 7
  assert (two['top1'], two['top5']) == (single['top1'], single['top5'])  # exact, not approximately
  assert 0 < single['top1'] < 100
  assert two['loss'] == pytest.approx(single['loss'], rel=1e-6)  # float sums in another order


def test_kill_and_resume_under_the_launcher_matches_the_uninterrupted_run(tmp_path):
  common = [*TINY, '--config.train.updates=8', '--config.train.checkpoint_every=1', '--config.train.keep_checkpoints=3']
  launch(2, tmp_path / 'logs_a', '--config', DEMO, '--workdir', tmp_path / 'straight', *common)
  killed = tmp_path / 'killed'
  runner = subprocess.Popen(_launch_cmd(2, tmp_path / 'logs_b', '--config', DEMO, '--workdir', killed, *common),
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env=child_env())
  deadline = time.time() + 240
  while not os.path.isdir(killed / 'checkpoints' / 'update_00000003') and time.time() < deadline:
    time.sleep(0.05)
  os.killpg(runner.pid, signal.SIGKILL)  # the launcher and both workers, without warning
  runner.wait()
  launch(2, tmp_path / 'logs_c', '--mode', 'resume', '--workdir', killed)
  assert _max_difference(_weights(tmp_path / 'straight', 8), _weights(killed, 8)) < 1e-6
  resumed = metric_rows(killed, 'train')
  assert [r['update'] for r in resumed] == list(range(1, 9))
  np.testing.assert_allclose([r['objective'] for r in resumed], [r['objective'] for r in metric_rows(tmp_path / 'straight', 'train')],
                             rtol=1e-6)


def test_resume_on_another_number_of_processes_continues_the_same_data(tmp_path):
  """Written by 2 processes, resumed by 1: without dropout the result is the 2-process run's."""
  common = [*TINY, *NO_DROPOUT, '--config.train.updates=6', '--config.train.checkpoint_every=3']
  launch(2, tmp_path / 'logs_a', '--config', DEMO, '--workdir', tmp_path / 'straight', *common)
  launch(2, tmp_path / 'logs_b', '--config', DEMO, '--workdir', tmp_path / 'moved', *common, '--config.train.updates=3')
  resumed = subprocess.run([sys.executable, 'main.py', '--mode', 'resume', '--workdir', tmp_path / 'moved',
                            '--config.train.updates=6'], cwd=ROOT, check=True, capture_output=True, text=True,
                           env=child_env())
  assert 'resume: the run trained on 2 process(es) until now and continues on 1' in resumed.stdout
  assert _max_difference(_weights(tmp_path / 'straight', 6), _weights(tmp_path / 'moved', 6)) < 1e-5


# Long enough updates (8 micro-batches of 32 per process) that a signal lands inside one.
SLOW_UPDATES = [*TINY, '--config.train.batch_size=512', '--config.train.accum_steps=8', '--config.data.num_workers=1']


def _worker_logs(log_dir):
  return {name: open(os.path.join(log_dir, name)).read() for name in sorted(os.listdir(log_dir))
          if name.startswith('workerlog')}


def _descendants(pid):
  """Every process below `pid` (Linux /proc): a launcher's workers and their DataLoader workers."""
  found = []
  try:
    with open(f'/proc/{pid}/task/{pid}/children') as f:
      children = [int(child) for child in f.read().split()]
  except FileNotFoundError:
    return found
  for child in children:
    found += [child] + _descendants(child)
  return found


def _newest_checkpoint(workdir):
  return checkpoint.update_of(checkpoint.latest_valid(os.path.join(workdir, 'checkpoints')))


STOPPED = [*SLOW_UPDATES, '--config.train.updates=12', '--config.train.checkpoint_every=4']


@pytest.fixture(scope='module')
def straight_on_two(tmp_path_factory):
  """The uninterrupted run of STOPPED on 2 processes."""
  workdir = tmp_path_factory.mktemp('straight') / 'run'
  launch(2, workdir.parent / 'logs', '--config', DEMO, '--workdir', workdir, *STOPPED)
  return workdir


@pytest.mark.parametrize('signalled,signum', [('launcher', signal.SIGTERM), ('every process', signal.SIGTERM),
                                              ('every process', signal.SIGINT)])
def test_a_signal_to_the_launcher_or_every_process_of_the_job_saves_the_update_reached_and_autoresume_matches(
    straight_on_two, busy_cores, tmp_path, signalled, signum):
  """A scheduler preempting a multi-process job signals the launcher, which sends every worker's process
  group up to 3 SIGTERMs 0.2 s apart; Slurm signals every process of the job, DataLoader workers included,
  and a terminal's Ctrl-C its foreground group. On cores kept busy, the ranks finish the update, save once
  and exit, no DataLoader worker dies under them, and the repeated command continues to the uninterrupted
  run's weights."""
  stopped = tmp_path / 'stopped'
  launcher = subprocess.Popen(_launch_cmd(2, tmp_path / 'logs_b', '--config', DEMO, '--workdir', stopped, *STOPPED,
                                          '--autoresume'),
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=child_env())
  deadline = time.time() + 120
  while not os.path.isdir(stopped / 'checkpoints' / 'update_00000004') and time.time() < deadline:
    time.sleep(0.05)
  time.sleep(0.5)
  for pid in [launcher.pid, *(_descendants(launcher.pid) if signalled == 'every process' else [])]:
    os.kill(pid, signum)
  sent = time.time()
  assert launcher.wait(timeout=60) != 0
  assert time.time() - sent < 30  # within the launcher's grace, no SIGKILL needed
  reached = _newest_checkpoint(stopped)
  logs = _worker_logs(tmp_path / 'logs_b')
  assert 4 < reached < 12, logs
  for name, text in logs.items():
    assert (f'stopped by a signal after update {reached}, checkpoint saved. Continue with:\n  python -m '
            f'paddle.distributed.launch --nproc_per_node 2 main.py --mode resume --workdir {stopped}') in text, \
        (name, text[-3000:])
    assert 'exiting now' not in text and 'Traceback' not in text and 'SIGABRT' not in text, (name, text[-3000:])
  launch(2, tmp_path / 'logs_c', '--config', DEMO, '--workdir', stopped, *STOPPED, '--autoresume')
  assert _max_difference(_weights(straight_on_two, 12), _weights(stopped, 12)) == 0
  assert metric_rows(stopped, 'train') == metric_rows(straight_on_two, 'train')


def test_a_sigterm_while_a_rank_waits_at_start_up_for_a_late_peer_ends_the_job_within_seconds(tmp_path):
  """Paddle's start-up waits for every rank in C++ holding the interpreter, where Python runs no signal
  handler. With nothing to save yet, the signal ends the waiting rank at once: before, the launcher waited
  out its 30 s grace on it, then killed it."""
  runner = tmp_path / 'faulty_main.py'
  runner.write_text(FAULT_RUNNER)
  logs = tmp_path / 'logs'
  launcher = subprocess.Popen([sys.executable, '-m', 'paddle.distributed.launch', '--nproc_per_node', '2',
                               '--log_dir', str(logs), str(runner), 'late_rank', '0', '--config', DEMO,
                               '--workdir', str(tmp_path / 'run'), *TINY],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env=child_env(PYTHONPATH=ROOT))  # the runner is outside the project folder
  waiting = logs / 'workerlog.1'  # for rank 0's store, which rank 0 has not yet opened
  deadline = time.time() + 120
  while not (waiting.exists() and 'FAULT: rank 1 connects' in waiting.read_text()) and time.time() < deadline:
    time.sleep(0.05)
  time.sleep(1)  # into Paddle's wait
  launcher.send_signal(signal.SIGTERM)
  signalled = time.time()
  launcher.wait(timeout=60)
  assert time.time() - signalled < 10
  assert 'Traceback' not in waiting.read_text()
  assert not (tmp_path / 'run').exists()


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _start_nodes(log_dir, workdirs, *args):
  """Two launchers on this machine forming a job of 2 nodes x 1 process over loopback: [Popen of node 0, 1].

  `workdirs` gives each node's --workdir: the same folder, as on a shared filesystem, or two.
  """
  port = _free_port()
  return [subprocess.Popen([sys.executable, '-m', 'paddle.distributed.launch', '--master', f'127.0.0.1:{port}',
                            '--nnodes', '2', '--rank', str(rank), '--nproc_per_node', '1', '--log_dir',
                            str(log_dir / f'node{rank}'), 'main.py', '--workdir', str(workdir), *map(str, args)],
                           cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=child_env())
          for rank, workdir in enumerate(workdirs)]


def _wait_nodes(nodes, log_dir, timeout=300):
  codes = [node.wait(timeout=timeout) for node in nodes]
  logs = {f'node{rank}/{name}': text for rank in range(len(nodes))
          for name, text in _worker_logs(log_dir / f'node{rank}').items()}
  assert codes == [0] * len(nodes), '\n'.join(f'{name}:\n{text[-3000:]}' for name, text in logs.items())
  return logs


MULTI_NODE = [*TINY, '--config.train.batch_size=256', '--config.train.accum_steps=4', '--config.train.updates=12',
              '--config.train.checkpoint_every=3']


@pytest.fixture(scope='module')
def one_node_two_processes(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('one_node') / 'run'
  launch(2, workdir.parent / 'logs', '--config', DEMO, '--workdir', workdir, *MULTI_NODE)
  return workdir


def test_two_nodes_of_one_process_train_as_one_node_of_two_and_only_global_rank_0_writes(one_node_two_processes,
                                                                                         tmp_path):
  """Node 1 is given a workdir of its own that does not exist: whatever it wrote would appear there."""
  nodes = _start_nodes(tmp_path / 'logs', [tmp_path / 'shared', tmp_path / 'node1_view'], '--config', DEMO,
                       *MULTI_NODE)
  logs = _wait_nodes(nodes, tmp_path / 'logs')
  assert '(4 x 32 per device on 2 device(s))' in logs['node0/workerlog.0']
  assert not (tmp_path / 'node1_view').exists()
  assert _max_difference(_weights(one_node_two_processes, 12), _weights(tmp_path / 'shared', 12)) == 0
  assert metric_rows(tmp_path / 'shared', 'train') == metric_rows(one_node_two_processes, 'train')


def test_a_node_killed_stops_the_other_within_seconds_and_autoresume_on_both_nodes_is_exact(one_node_two_processes,
                                                                                            tmp_path):
  workdir = tmp_path / 'shared'
  command = ['--config', DEMO, *MULTI_NODE, '--autoresume']
  nodes = _start_nodes(tmp_path / 'logs_a', [workdir, workdir], *command)
  deadline = time.time() + 120
  while not os.path.isdir(workdir / 'checkpoints' / 'update_00000003') and time.time() < deadline:
    time.sleep(0.02)
  for pid in [nodes[1].pid] + _descendants(nodes[1].pid):  # the machine of node 1 goes away
    os.kill(pid, signal.SIGKILL)
  killed = time.time()
  assert nodes[0].wait(timeout=60) != 0
  assert time.time() - killed < 15, 'node 0 waited for its lost peer'
  assert _newest_checkpoint(workdir) < 12
  nodes[1].wait()
  _wait_nodes(_start_nodes(tmp_path / 'logs_b', [workdir, workdir], *command), tmp_path / 'logs_b')
  assert _max_difference(_weights(one_node_two_processes, 12), _weights(workdir, 12)) == 0
  assert metric_rows(workdir, 'train') == metric_rows(one_node_two_processes, 'train')
