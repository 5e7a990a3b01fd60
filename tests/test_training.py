"""The training loop through the real command line: accumulation, exact resume, learning, config errors."""
import glob
import json
import os

import numpy as np
import pytest

from helpers import ROOT, metric_rows, run_main
from tools.fakedata import make_cat12
from utils import checkpoint

pytestmark = pytest.mark.slow  # runs the command line in processes of its own

DEMO = 'configs/digits_vit_rdrop.py'
TINY = ['--config.train.batch_size=16', '--config.train.log_every=1', '--config.train.eval_every=100',
        '--config.eval.batch_size=360']


def _weights(workdir, update):
  path = checkpoint.folder(os.path.join(workdir, 'checkpoints'), update)
  return {k: v.numpy() for k, v in checkpoint.load(path, ('model',))[1]['model'].items()}



def _max_difference(a, b):
  assert a.keys() == b.keys()
  return max(float(np.abs(a[k] - b[k]).max()) for k in a)


def test_accumulated_micro_batches_give_the_update_of_one_large_batch(tmp_path):
  """4 micro-batches of 4 = one batch of 16, for a model without dropout or batch norm."""
  # Momentum SGD: Adam divides tiny gradients by their tiny RMS and so magnifies float rounding. No clipping: at
  # the demo's norm 1 it would hide gradients of the wrong scale.
  common = [*TINY, '--config.train.updates=3', '--config.model.dropout_rate=0.0', '--config.rdrop.alpha=0',
            '--config.train.optimizer=momentum', '--config.train.lr=0.05', '--config.train.clip_grad_norm=0']
  run_main('--config', DEMO, '--workdir', tmp_path / 'one', *common, '--config.train.accum_steps=1')
  run_main('--config', DEMO, '--workdir', tmp_path / 'four', *common, '--config.train.accum_steps=4')
  assert _max_difference(_weights(tmp_path / 'one', 3), _weights(tmp_path / 'four', 3)) < 1e-5
  losses = [[r['objective'] for r in metric_rows(tmp_path / run, 'train')] for run in ('one', 'four')]
  np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)


def test_resume_in_a_new_process_matches_the_uninterrupted_run(tmp_path):
  """With dropout and R-Drop on: 6 updates straight equal 3, a new process resuming, 3 more."""
  common = [*TINY, '--config.train.updates=6', '--config.train.checkpoint_every=3', '--config.train.accum_steps=2']
  run_main('--config', DEMO, '--workdir', tmp_path / 'straight', *common)
  interrupted = tmp_path / 'interrupted'
  run_main('--config', DEMO, '--workdir', interrupted, *common, '--config.train.updates=3')
  run_main('--mode', 'resume', '--workdir', interrupted, '--config.train.updates=6')
  assert _max_difference(_weights(tmp_path / 'straight', 6), _weights(interrupted, 6)) < 1e-6
  straight, resumed = metric_rows(tmp_path / 'straight', 'train'), metric_rows(interrupted, 'train')
  assert [r['update'] for r in resumed] == list(range(1, 7))
  np.testing.assert_allclose([r['objective'] for r in resumed], [r['objective'] for r in straight], rtol=1e-6)


def test_the_demo_really_learns(tmp_path):
  """The baseline demo, shortened to 200 of its 600 updates, reaches 75% test accuracy on real digits
  (chance: 10%; 80.2% measured)."""
  run_main('--config', 'configs/digits_vit.py', '--workdir', tmp_path, '--config.train.updates=200',
           '--config.train.eval_every=200')
  with open(tmp_path / 'metrics.jsonl') as f:
    final = [r for r in map(json.loads, f) if r['group'] == 'eval'][-1]
  assert final['update'] == 200 and final['top1'] >= 75.0


def test_train_refuses_to_overwrite_a_run_and_autoresume_leaves_a_finished_one_alone(tmp_path):
  run_main('--config', 'configs/digits_vit.py:smoke', '--workdir', tmp_path)
  files = {p: p.read_bytes() for p in tmp_path.rglob('*') if p.is_file()}
  proc = run_main('--config', 'configs/digits_vit.py:smoke', '--workdir', tmp_path, check=False)
  assert proc.returncode == 1 and f'{tmp_path} already holds a run' in proc.stderr and '--mode resume' in proc.stderr
  proc = run_main('--config', 'configs/digits_vit.py:smoke', '--workdir', tmp_path, '--autoresume')
  assert f'{tmp_path} finished at update 2' in proc.stdout and 'nothing to do' in proc.stdout
  assert {p: p.read_bytes() for p in tmp_path.rglob('*') if p.is_file()} == files


def test_autoresume_refuses_a_command_whose_config_differs_from_the_run_naming_each_field(tmp_path):
  run_main('--config', 'configs/digits_vit.py:smoke', '--workdir', tmp_path)
  proc = run_main('--config', 'configs/digits_vit_rdrop.py:smoke', '--workdir', tmp_path, '--autoresume',
                  '--config.data.num_workers=1', '--config.eval.stop_after_collapses=3',
                  check=False)  # where and how data loads, and how the run is watched, may differ
  assert proc.returncode == 1 and f'--autoresume: {tmp_path} holds a run of another config:' in proc.stderr
  assert "config.experiment: 'digits_vit' in the run, 'digits_vit_rdrop' in this command" in proc.stderr
  assert 'config.rdrop.alpha: 0.0 in the run, 1.0 in this command' in proc.stderr
  assert 'num_workers' not in proc.stderr and 'stop_after_collapses' not in proc.stderr


@pytest.mark.parametrize('args,message', [
    (['--config.train.lrr=0.1'], "--config.train.lrr: the config has no field 'lrr'; did you mean 'lr'?"),
    (['--config.train.lr=fast'], "--config.train.lr=fast: could not convert string to float: 'fast'"),
    (['--config.train.updates=2.5'], '--config.train.updates=2.5'),
    (['--config.train.batch_size=10', '--config.train.accum_steps=4'],
     'config.train.batch_size=10 cannot be split into 4 accumulation steps on 1 devices'),
])
def test_a_bad_override_fails_before_any_work_naming_the_key(tmp_path, args, message):
  proc = run_main('--config', 'configs/digits_vit.py', '--workdir', tmp_path / 'run', *args, check=False)
  assert proc.returncode != 0 and message in proc.stderr
  assert not (tmp_path / 'run').exists()


def test_a_missing_config_file_is_named_with_the_configs_that_exist(tmp_path):
  proc = run_main('--config', 'configs/digit_vit_rdrop.py', '--workdir', tmp_path, check=False)
  existing = sorted(os.path.relpath(path, ROOT) for path in glob.glob(os.path.join(ROOT, 'configs', '*.py'))
                    if not path.endswith(('__init__.py', 'base.py')))
  assert proc.returncode == 1 and proc.stderr == (
      f'error: config file {ROOT}/configs/digit_vit_rdrop.py does not exist; did you mean configs/digits_vit_rdrop.py? '
      f'the configs: {" ".join(existing)}\n')


def test_a_config_file_with_a_syntax_error_is_named(tmp_path):
  bad = tmp_path / 'broken.py'
  bad.write_text('def get_config(:\n')
  proc = run_main('--config', bad, '--workdir', tmp_path / 'run', check=False)
  assert proc.returncode != 0 and proc.stderr == f'error: --config {bad}: SyntaxError: invalid syntax\n  at {bad}, line 1\n'


@pytest.mark.parametrize('config,error', [
    ('configs/digits_vit.py:smok', "unknown argument 'smok': the only one is 'smoke' (a few tiny updates)\n"
                                   '  at configs/digits_vit.py, line '),
    ('configs/lenet5_cifar10.py:E', "argument 'E': give one network of"),
    ('{raising}', 'ZeroDivisionError: division by zero\n  at {raising}, line 4\n'),
])
def test_a_config_file_that_raises_is_named_with_the_line_in_two_lines(tmp_path, config, error):
  raising = tmp_path / 'raising.py'
  raising.write_text('from configs import base\ndef get_config():\n  c = base.get_base_config()\n  c.seed = 1 / 0\n')
  config, error = config.format(raising=raising), error.format(raising=raising)
  proc = run_main('--config', config, '--workdir', tmp_path / 'run', check=False)
  assert proc.returncode == 1 and proc.stderr.startswith(f'error: --config {config}: {error}')
  assert len(proc.stderr.splitlines()) == 2 and not (tmp_path / 'run').exists()


def test_eval_and_predict_write_their_outputs(tmp_path):
  run_main('--config', 'configs/digits_vit.py:smoke', '--workdir', tmp_path)
  proc = run_main('--mode', 'eval', '--workdir', tmp_path)
  metrics = json.loads((tmp_path / 'eval_test.json').read_text())
  assert metrics['count'] == 359 and 0 <= metrics['top1'] <= metrics['top5'] <= 100
  assert f'top1 {metrics["top1"]:.2f}%' in proc.stdout
  run_main('--mode', 'predict', '--workdir', tmp_path, '--output', tmp_path / 'pred.csv')
  lines = (tmp_path / 'pred.csv').read_text().splitlines()
  assert len(lines) == 359 and all(0 <= int(line.split(',')[1]) <= 9 for line in lines)


def test_worker_processes_do_not_change_the_result(tmp_path):
  """Augmentations are seeded per sample, so 0 and 2 DataLoader workers train the same weights."""
  make_cat12(tmp_path / 'cat12', n_plain=12, broken=False)
  for workers in (0, 2):
    run_main('--config', 'configs/resnet50_cat12_rdrop.py:smoke', '--workdir', tmp_path / f'w{workers}',
             f'--config.data.root={tmp_path / "cat12"}', f'--config.data.num_workers={workers}')
  assert _max_difference(_weights(tmp_path / 'w0', 2), _weights(tmp_path / 'w2', 2)) < 1e-6


@pytest.mark.parametrize('flag', ['--help', '-h'])
def test_help_exits_0_showing_the_modes_the_config_argument_and_an_example(flag):
  proc = run_main(flag)
  for mode in ('train', 'resume', 'eval', 'predict', 'export', 'report'):
    assert f'\n  {mode}  ' in proc.stdout
  assert '`configs/digits_vit.py:smoke`' in proc.stdout and '--config.FIELD=VALUE' in proc.stdout
  assert 'Example' in proc.stdout and 'python main.py --config configs/digits_vit_rdrop.py --workdir ' in proc.stdout
  assert '--workdir: Run folder' in proc.stdout and proc.stderr == ''
