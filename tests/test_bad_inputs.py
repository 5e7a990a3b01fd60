"""Bad inputs through the real command line: each is one clear error naming the file, key or value, and
leaves no output that looks complete. (Config typos, a missing config file and a config with a syntax
error are in test_training.py; list-file lines, undecodable images and archive contents in test_cat12.py
and test_cifar.py.)"""
import os
import shutil
import subprocess
import sys

import pytest

from helpers import ROOT, child_env, cut_in_half, metric_rows, run_main
from tools.fakedata import make_cat12
from utils import checkpoint

pytestmark = pytest.mark.slow  # runs the command line in processes of its own


@pytest.fixture(scope='module')
def digits_run(tmp_path_factory):
  """A finished 2-update digits ViT run (read-only: tests copy it)."""
  workdir = tmp_path_factory.mktemp('digits') / 'run'
  run_main('--config', 'configs/digits_vit.py:smoke', '--workdir', workdir)
  return workdir


@pytest.fixture(scope='module')
def cat12_run(tmp_path_factory):
  """A finished Cat-12 smoke run (ResNet18 on 32 px) and its data folder."""
  root = tmp_path_factory.mktemp('cat12')
  make_cat12(root / 'data', n_plain=12, odd=False, broken=False, n_test=2)
  (root / 'data' / 'empty').mkdir()
  run_main('--config', 'configs/resnet50_cat12.py:smoke', '--workdir', root / 'run',
           f'--config.data.root={root / "data"}')
  return root / 'run', root / 'data'


def _newest(workdir):
  return checkpoint.latest_valid(os.path.join(workdir, 'checkpoints'))



def test_eval_with_a_checkpoint_of_another_architecture_lists_the_mismatched_keys(digits_run):
  proc = run_main('--mode', 'eval', '--workdir', digits_run, '--config.model.variant=testing', check=False)
  assert proc.returncode == 1
  assert (f'error: checkpoint {_newest(digits_run)} does not fit the model (0 missing, 24 unexpected, '
          '31 mis-shaped keys)') in proc.stderr
  assert ('shape mismatch transformer.embeddings.position_embeddings: [1, 17, 64] in the file, [1, 5, 16] '
          'in the model') in proc.stderr
  assert not (digits_run / 'eval_test.json').exists()


def test_a_resume_that_fails_on_a_wrong_override_leaves_the_saved_config_as_it_was(digits_run, tmp_path):
  workdir = shutil.copytree(digits_run, tmp_path / 'run')
  saved = (workdir / 'config.py').read_text()
  proc = run_main('--mode', 'resume', '--workdir', workdir, '--config.train.updates=3',
                  '--config.model.variant=testing', check=False)
  assert proc.returncode == 1 and 'does not fit the model' in proc.stderr
  assert (workdir / 'config.py').read_text() == saved


def test_resume_with_every_checkpoint_damaged_is_an_error_never_a_restart(digits_run, tmp_path):
  workdir = shutil.copytree(digits_run, tmp_path / 'run')
  ckpts = os.path.join(workdir, 'checkpoints')
  damaged = checkpoint.committed(ckpts)
  for path in damaged:
    cut_in_half(os.path.join(path, 'model.safetensors'))
  metrics = (workdir / 'metrics.jsonl').read_text()
  proc = run_main('--mode', 'resume', '--workdir', workdir, '--config.train.updates=4', check=False)
  assert proc.returncode == 1
  assert f'error: no valid checkpoint in {os.path.abspath(ckpts)} to resume from' in proc.stderr
  assert all(f'WARNING: checkpoint {path}: model.safetensors does not match' in proc.stderr for path in damaged)
  assert (workdir / 'metrics.jsonl').read_text() == metrics and checkpoint.committed(ckpts) == damaged


@pytest.mark.parametrize('config,override,message', [
    ('configs/digits_vit.py:smoke', '--config.model.pretrained=/nope.npz',
     'error: config.model.pretrained: weights file /nope.npz does not exist'),
    ('configs/lenet5_cifar10.py:smoke', '--config.data.root=/nope/cifar-10-python.tar.gz',
     'error: CIFAR-10 archive not found: /nope/cifar-10-python.tar.gz. Download '
     'https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz'),
    ('configs/resnet50_cat12.py:smoke', '--config.data.root=/nope/cat12',
     'error: cat12: dataset root (config.data.root) /nope/cat12 does not exist'),
])
def test_a_missing_input_file_is_named_and_nothing_is_trained(tmp_path, config, override, message):
  proc = run_main('--config', config, '--workdir', tmp_path / 'run', override, check=False)
  assert proc.returncode == 1 and message in proc.stderr
  assert not (tmp_path / 'run' / 'checkpoints').exists() and not (tmp_path / 'run' / 'metrics.jsonl').exists()


def test_a_missing_input_file_creates_no_workdir(tmp_path):
  proc = run_main('--config', 'configs/digits_vit.py:smoke', '--workdir', tmp_path / 'run',
                  '--config.model.pretrained=/nope.npz', check=False)
  assert proc.returncode == 1 and not (tmp_path / 'run').exists()


@pytest.mark.parametrize('content', [b'not an archive at all\n', b''])
def test_a_file_that_is_not_a_cifar_archive_is_named(tmp_path, content):
  fake = tmp_path / 'cifar-10-python.tar.gz'
  fake.write_bytes(content)
  proc = run_main('--config', 'configs/lenet5_cifar10.py:smoke', '--workdir', tmp_path / 'run',
                  f'--config.data.root={fake}', check=False)
  assert proc.returncode == 1
  assert f'error: config.data.root: {fake} is not a readable CIFAR archive' in proc.stderr
  assert 'expected the official cifar-10-python.tar.gz' in proc.stderr
  assert not (tmp_path / 'run' / 'checkpoints').exists()


def test_a_workdir_that_cannot_be_written_is_named(tmp_path):
  (tmp_path / 'a_file').write_text('')
  proc = run_main('--config', 'configs/digits_vit.py:smoke', '--workdir', tmp_path / 'a_file' / 'run', check=False)
  assert proc.returncode == 1
  assert (f'error: cannot write to the workdir {tmp_path / "a_file" / "run"}: {tmp_path / "a_file"} is not a '
          'writable folder') in proc.stderr


def test_a_damaged_saved_config_is_named_on_resume(digits_run, tmp_path):
  workdir = shutil.copytree(digits_run, tmp_path / 'run')
  (workdir / 'config.py').write_text('def get_config(:\n')
  proc = run_main('--mode', 'resume', '--workdir', workdir, check=False)
  assert proc.returncode == 1
  assert proc.stderr == f'error: --config {workdir / "config.py"}: SyntaxError: invalid syntax\n  at {workdir / "config.py"}, line 1\n'


def test_a_damaged_saved_config_json_is_named_on_autoresume(digits_run, tmp_path):
  workdir = shutil.copytree(digits_run, tmp_path / 'run')
  (workdir / 'config.json').write_text('{bad')
  proc = run_main('--config', 'configs/digits_vit.py:smoke', '--workdir', workdir, '--autoresume', check=False)
  assert proc.returncode == 1 and proc.stderr.startswith(f'error: {workdir / "config.json"} is not valid JSON ('), \
      proc.stderr


@pytest.mark.parametrize('flags,message', [
    (['--checkpoint', 'x'], '--checkpoint belongs to --mode resume / eval / predict / export, not --mode train'),
    (['--split', 'test'], '--split belongs to --mode eval / predict, not --mode train'),
    (['--output', 'x.csv'], '--output belongs to --mode eval / predict / export, not --mode train'),
])
def test_a_flag_of_another_mode_is_refused_not_ignored(tmp_path, flags, message):
  proc = run_main('--config', 'configs/digits_vit.py:smoke', '--workdir', tmp_path / 'run', *flags, check=False)
  assert proc.returncode == 1 and f'error: {message}' in proc.stderr, proc.stderr
  assert not (tmp_path / 'run').exists()


def test_eval_without_a_workdir_asks_for_the_workdir():
  proc = run_main('--mode', 'eval', check=False)
  assert proc.returncode == 1 and 'error: --workdir is required' in proc.stderr, proc.stderr


def test_eval_refuses_an_output_that_is_a_folder_before_evaluating(digits_run, tmp_path):
  proc = run_main('--mode', 'eval', '--workdir', digits_run, '--output', tmp_path, check=False)
  assert proc.returncode == 1 and 'eval: checkpoint' not in proc.stdout
  assert f'error: --output {tmp_path} is a folder: name a file' in proc.stderr


def test_predict_on_an_empty_folder_is_an_error_and_writes_no_csv(cat12_run):
  workdir, _ = cat12_run
  proc = run_main('--mode', 'predict', '--workdir', workdir, '--config.data.test_dir=empty', check=False)
  assert proc.returncode == 1 and 'holds no images' in proc.stderr
  assert not (workdir / 'result.csv').exists()


def test_predict_on_an_empty_folder_names_the_folder(cat12_run):
  workdir, root = cat12_run
  proc = run_main('--mode', 'predict', '--workdir', workdir, '--config.data.test_dir=empty', check=False)
  assert proc.returncode == 1 and str(root / 'empty') in proc.stderr


def test_eval_of_the_unlabelled_test_split_names_that_split(cat12_run):
  workdir, _ = cat12_run
  proc = run_main('--mode', 'eval', '--workdir', workdir, '--split', 'test', check=False)
  assert proc.returncode == 1
  assert "error: the 'test' split of cat12 has no labels: use --mode predict" in proc.stderr


def test_resume_after_a_torn_last_metrics_line(digits_run, tmp_path):
  workdir = shutil.copytree(digits_run, tmp_path / 'run')
  with open(workdir / 'metrics.jsonl', 'a') as f:
    f.write('{"update": 3, "group": "tr')
  run_main('--mode', 'resume', '--workdir', workdir, '--config.train.updates=3')
  assert [r['update'] for r in metric_rows(workdir, 'train')] == [1, 2, 3]


def test_an_unlabelled_eval_split_stops_training_before_it_starts(tmp_path):
  make_cat12(tmp_path / 'cat12', n_plain=4, odd=False, broken=False)
  proc = run_main('--config', 'configs/resnet50_cat12_rdrop.py:smoke', '--workdir', tmp_path / 'run',
                  f'--config.data.root={tmp_path / "cat12"}', '--config.eval.split=test', check=False)
  assert proc.returncode == 1
  assert "config.eval.split='test': that split of cat12 is unlabelled" in proc.stderr
  assert not (tmp_path / 'run').exists()


def test_bad_values_are_refused_through_the_cli_at_once_before_any_work(tmp_path):
  """A negative batch size used to wait forever in Paddle's reader; -5 updates silently meant 'use epochs'."""
  proc = run_main('--config', 'configs/digits_vit.py', '--workdir', tmp_path / 'run', '--config.train.batch_size=-64',
                  '--config.train.updates=-5', '--config.train.lr=-1', '--config.model.dropout_rate=1.5',
                  check=False, timeout=60)
  assert proc.returncode == 1
  assert proc.stderr.splitlines() == [
      'error: 4 config values are not allowed:', '  config.model.dropout_rate=1.5: must be in [0, 1)',
      '  config.train.batch_size=-64: must be > 0',
      '  config.train.lr=-1.0: must be in [1.18e-38, 10] (Paddle computes in float32, where a smaller lr is 0)',
      '  config.train.updates=-5: must be >= 0']
  assert not (tmp_path / 'run').exists()


@pytest.mark.parametrize('target,message', [
    ('vdl', 'is not a checkpoint: it holds no manifest.json and no weights; checkpoints are the update_<N> folders'),
    ('empty', 'is not a checkpoint: it holds no manifest.json and no weights'),
    ('.', 'is not a checkpoint: it holds no manifest.json and no weights (it is a run folder: leave --checkpoint out)'),
    ('model.safetensors', 'is a file, not a checkpoint folder: pass its folder '),
])
def test_a_checkpoint_argument_that_is_not_a_checkpoint_says_what_it_is(digits_run, tmp_path, target, message):
  workdir = shutil.copytree(digits_run, tmp_path / 'run')
  (workdir / 'empty').mkdir()
  path = os.path.join(_newest(workdir), target) if target == 'model.safetensors' else str(workdir / target)
  with pytest.raises(checkpoint.CheckpointError) as refused:
    checkpoint.read_manifest(path)
  assert message in str(refused.value)
  if target == 'model.safetensors':  # and so it reaches the user
    proc = run_main('--mode', 'eval', '--workdir', workdir, '--checkpoint', path, check=False)
    assert proc.returncode == 1 and f'error: {path} is a file, not a checkpoint folder: pass its folder ' \
                                    f'{_newest(workdir)}' in proc.stderr


def test_eval_refuses_an_output_it_could_not_write_before_evaluating(digits_run, tmp_path):
  """(Into the workdir by default, the numbers are printed first: tests/test_filesystems.py, read-only.)"""
  (tmp_path / 'a_file').write_text('')
  proc = run_main('--mode', 'eval', '--workdir', digits_run, '--output', tmp_path / 'a_file' / 'eval.json',
                  check=False)
  assert proc.returncode == 1 and 'eval: checkpoint' not in proc.stdout
  assert (f'error: cannot write to the output folder {tmp_path / "a_file"}: {tmp_path / "a_file"} is not a '
          'writable folder') in proc.stderr


def test_predict_refuses_an_output_it_could_not_write_before_predicting(digits_run, tmp_path):
  (tmp_path / 'a_file').write_text('')
  proc = run_main('--mode', 'predict', '--workdir', digits_run, '--output', tmp_path / 'a_file' / 'p.csv',
                  check=False)
  assert proc.returncode == 1 and 'predict: checkpoint' not in proc.stdout
  assert (f'error: cannot write to the output folder {tmp_path / "a_file"}: {tmp_path / "a_file"} is not a '
          'writable folder') in proc.stderr


def test_a_workdir_that_is_a_file_is_named(tmp_path):
  (tmp_path / 'a_file').write_text('')
  for mode in ('train', 'eval'):
    proc = run_main('--mode', mode, '--config', 'configs/digits_vit.py:smoke', '--workdir', tmp_path / 'a_file',
                    check=False)
    assert proc.returncode == 1 and f'error: --workdir {tmp_path / "a_file"} is a file, not a run folder' in proc.stderr


def test_a_folder_of_runs_given_as_workdir_is_named_with_the_runs_inside(tmp_path):
  from configs import digits_vit
  from training import workdir
  for run in ('baseline', 'rdrop/seed_0'):
    os.makedirs(tmp_path / 'demo' / run)
    workdir.save_config(str(tmp_path / 'demo' / run), digits_vit.get_config('smoke'))
  for mode in ('eval', 'predict', 'export'):
    proc = run_main('--mode', mode, '--workdir', tmp_path / 'demo', check=False)
    assert proc.returncode == 1 and proc.stderr == (
        f'error: --workdir {tmp_path}/demo is not a training run but holds 2: {tmp_path}/demo/baseline '
        f'{tmp_path}/demo/rdrop/seed_0 (give one as --workdir)\n')


def _files(folder):
  return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob('*')) if p.is_file()}


@pytest.mark.parametrize('overrides,message', [
    (['--config.train.batch_size=100000000'], 'error: the training set has 1438 samples, fewer than one micro-batch'),
    (['--config.train.updates=99999999999999999999'], 'error: config.train.updates=99999999999999999999: must fit in'),
    (['--config.train.lr=inf'], "error: config.train.lr=inf: must be a finite number within float32's range"),
    (['--config.train.updates=0', '--config.train.epochs=inf'],
     "error: config.train.epochs=inf: must be a finite number within float32's range"),
])
def test_a_refused_start_leaves_no_trace_and_the_corrected_command_then_runs(tmp_path, overrides, message):
  workdir = tmp_path / 'runs' / 'new'
  command = ['--config', 'configs/digits_vit.py:smoke', '--workdir', workdir, '--autoresume']
  proc = run_main(*command, *overrides, check=False)
  assert proc.returncode == 1 and message in proc.stderr, proc.stderr
  assert not (tmp_path / 'runs').exists()  # not even the parent folder the lock needed
  run_main(*command)


def test_a_start_that_fails_in_its_first_update_leaves_no_trace(tmp_path):
  """A model too large for memory fails in its first forward pass: after the data loaded and the lock was
  taken, before anything was learned."""
  workdir = tmp_path / 'run'
  script = ('import runpy, sys\n'
            'from training import step\n'
            'def out_of_memory(*args, **kwargs):\n'
            '  raise MemoryError("(ResourceExhausted) Out of memory error on GPU 0")\n'
            'step.rdrop_loss = out_of_memory\n'
            f'sys.argv = ["main.py", "--config", "configs/digits_vit.py:smoke", "--workdir", {str(workdir)!r}]\n'
            'runpy.run_path("main.py", run_name="__main__")\n')
  proc = subprocess.run([sys.executable, '-c', script], cwd=ROOT, capture_output=True, text=True, env=child_env())
  assert 'Out of memory' in proc.stderr and proc.returncode != 0
  assert not workdir.exists()


def test_a_resume_that_fails_before_its_first_update_leaves_every_file_of_the_run_as_it_was(digits_run, tmp_path):
  workdir = shutil.copytree(digits_run, tmp_path / 'run')
  before = _files(workdir)
  proc = run_main('--mode', 'resume', '--workdir', workdir, '--config.train.updates=4',
                  '--config.train.batch_size=100000000', check=False)
  assert proc.returncode == 1 and 'fewer than one micro-batch' in proc.stderr
  assert _files(workdir) == before
