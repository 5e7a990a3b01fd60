"""Data-parallel training under Paddle's own launcher, on CPU processes (gloo): the same numbers as one process."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, child_env, metric_rows
from test_training import DEMO, TINY, _max_difference, _weights

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
import json, sys
sys.path.insert(0, {ROOT!r})
import paddle
from configs import digits_vit
from data import digits
from evaluate import evaluate
from train import build_model
from utils import distributed
rank, world = distributed.setup()
config = digits_vit.get_config()
config.eval.batch_size = 2
dataset = digits.Digits('test')
dataset.images, dataset.labels = dataset.images[:7], dataset.labels[:7]
assert len(set(dataset.labels.tolist())) > 1
model = build_model(config, 10)
bias = [0.0] * 10
bias[int(dataset.labels[0])] = 3.0  # one confident class, not every sample's: accuracy neither 0 nor 100
with paddle.no_grad():
  model.head.bias.set_value(paddle.to_tensor(bias))
metrics = evaluate(model, dataset, config, rank, world)
if rank == 0:
  print('METRICS', json.dumps(metrics))
''')
  single = subprocess.run([sys.executable, script], capture_output=True, text=True, check=True,
                          env=child_env()).stdout
  proc = subprocess.run([sys.executable, '-m', 'paddle.distributed.launch', '--nproc_per_node', '2', '--log_dir',
                         str(tmp_path / 'logs2'), str(script)], capture_output=True, text=True, timeout=300,
                        env=child_env())
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
  subprocess.run([sys.executable, 'main.py', '--mode', 'resume', '--workdir', tmp_path / 'moved',
                  '--config.train.updates=6'], cwd=ROOT, check=True, capture_output=True, env=child_env())
  assert _max_difference(_weights(tmp_path / 'straight', 6), _weights(tmp_path / 'moved', 6)) < 1e-5
