"""Checkpoints: atomic writes, a full disk, damaged and leftover folders, retention, strict loading across
precisions. The folder-level promises are tested in-process on tiny states, the resume paths through the CLI."""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys

import ml_collections
import numpy as np
import paddle
import pytest

from helpers import ROOT, cut_in_half, metric_rows, run_main
from test_training import DEMO, TINY
from utils import checkpoint
from training import workdir as workdir_lib
from training.precision import Precision

RUN = [*TINY, '--config.train.updates=6', '--config.train.checkpoint_every=2', '--config.train.keep_checkpoints=3']


def _pieces(value):
  return {'model': {'w': paddle.full([4, 3], value)}, 'optimizer': {'m': paddle.full([4], value)}}


def _save(directory, update, keep=10, protect=(), value=None):
  return checkpoint.save(str(directory), _pieces(float(update) if value is None else value),
                         checkpoint.Manifest(update=update, best={'top1': 0.0, 'update': 0}), keep, protect)


def _updates(directory):
  return [checkpoint.update_of(p) for p in checkpoint.committed(str(directory))]



@pytest.mark.parametrize('failing_call', [1, 2])
def test_a_full_disk_during_a_save_keeps_the_previous_checkpoint_and_says_so(tmp_path, monkeypatch, failing_call):
  _save(tmp_path, 1)
  real_write, calls = checkpoint._write, []

  def write_on_a_full_disk(path, data):
    calls.append(path)
    if len(calls) == failing_call:
      real_write(path, data[:10])  # the device filled up part way through the file
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
    return real_write(path, data)

  monkeypatch.setattr(checkpoint, '_write', write_on_a_full_disk)
  with pytest.raises(checkpoint.CheckpointError) as failure:
    _save(tmp_path, 2)
  message = str(failure.value)
  assert 'could not write the checkpoint of update 2' in message and 'No space left on device' in message
  assert f'the previous checkpoint {checkpoint.folder(str(tmp_path), 1)} is intact' in message
  assert _updates(tmp_path) == [1] and sorted(os.listdir(tmp_path)) == ['update_00000001']  # no partial folder
  _, state = checkpoint.load(checkpoint.folder(str(tmp_path), 1))
  assert float(state['model']['w'].sum()) == 12.0


def test_retention_keeps_exactly_the_newest_n_plus_the_best(tmp_path):
  for update in range(1, 7):
    _save(tmp_path, update, keep=2, protect={2})
  assert _updates(tmp_path) == [2, 5, 6]
  _save(tmp_path, 7, keep=2, protect={6})  # a newer best: the old best is no longer protected
  assert _updates(tmp_path) == [6, 7]
  _save(tmp_path, 8, keep=1, protect={6})
  assert _updates(tmp_path) == [6, 8]


def test_a_truncated_newest_checkpoint_is_skipped_with_a_warning_naming_it(tmp_path, capsys):
  for update in (1, 2):
    _save(tmp_path, update)
  newest = checkpoint.folder(str(tmp_path), 2)
  cut_in_half(os.path.join(newest, 'model.safetensors'))
  assert checkpoint.latest_valid(str(tmp_path)) == checkpoint.folder(str(tmp_path), 1)
  assert (f'WARNING: checkpoint {newest}: model.safetensors does not match its checksum'
          in capsys.readouterr().err)
  with pytest.raises(checkpoint.CheckpointError, match='model.safetensors does not match its checksum'):
    checkpoint.load(newest)  # named explicitly: an error, never a fallback


@pytest.mark.parametrize('manifest', [None, '{"update": 3, "fil', '[]', '{"update": 3}'])
def test_a_folder_without_an_intact_manifest_is_not_a_checkpoint(tmp_path, capsys, manifest):
  _save(tmp_path, 1)
  _save(tmp_path, 3)
  manifest_path = os.path.join(checkpoint.folder(str(tmp_path), 3), checkpoint.MANIFEST)
  os.remove(manifest_path)
  if manifest is not None:
    open(manifest_path, 'w').write(manifest)
  assert checkpoint.latest_valid(str(tmp_path)) == checkpoint.folder(str(tmp_path), 1)
  assert f'WARNING: checkpoint {checkpoint.folder(str(tmp_path), 3)}' in capsys.readouterr().err


def test_a_manifest_of_an_older_version_reads_with_defaults_and_a_newer_ones_extra_keys_are_left_out(tmp_path):
  folder = _save(tmp_path, 2)
  manifest_path = os.path.join(folder, checkpoint.MANIFEST)
  with open(manifest_path) as f:
    written = json.load(f)
  assert written['update'] == 2 and set(written['files']) == {'model.json', 'model.safetensors', 'optimizer.json',
                                                              'optimizer.safetensors'}
  older = {key: written[key] for key in ('update', 'files', 'best')}  # before class names, world size, time
  with open(manifest_path, 'w') as f:
    json.dump({**older, 'written_by_a_newer_version': True}, f)
  manifest = checkpoint.read_manifest(folder)
  assert manifest == checkpoint.Manifest(update=2, files=written['files'], best={'top1': 0.0, 'update': 0})
  assert (manifest.class_names, manifest.world_size, manifest.train_seconds, manifest.finished) == (None, None, None,
                                                                                                     False)


def test_class_labels_and_whether_a_run_finished_come_from_the_manifest():
  assert checkpoint.Manifest(update=3, num_classes=3).labels == ['0', '1', '2']
  assert checkpoint.Manifest(update=3, num_classes=2, class_names=['cat', 'dog']).labels == ['cat', 'dog']
  assert checkpoint.Manifest(update=3, total_updates=3).finished
  assert not checkpoint.Manifest(update=3, total_updates=3, evaluation_due=True).finished
  assert not checkpoint.Manifest(update=2, total_updates=3).finished


def test_a_leftover_temporary_folder_is_not_a_checkpoint_and_is_removed_at_start(tmp_path):
  directory = workdir_lib.checkpoints_dir(str(tmp_path))
  _save(directory, 1)
  # A complete-looking write of update 5 whose rename never happened (killed just before it).
  _save(directory, 5)
  os.rename(checkpoint.folder(directory, 5), os.path.join(directory, '.tmp-update_00000005-4242'))
  assert checkpoint.latest_valid(directory) == checkpoint.folder(directory, 1)
  workdir_lib.start_run(str(tmp_path), ml_collections.ConfigDict({'seed': 0}), world_size=1)
  assert os.listdir(directory) == ['update_00000001']


def test_a_checkpoint_set_aside_for_a_replacement_that_never_arrived_is_put_back_at_start(tmp_path):
  directory = workdir_lib.checkpoints_dir(str(tmp_path))
  _save(directory, 1)
  _save(directory, 5)
  # Killed while saving update 5 again (a resumed run's evaluation): the old folder set aside, the new
  # one still a temporary folder.
  os.rename(checkpoint.folder(directory, 5), os.path.join(directory, f'{checkpoint.REPLACED}update_00000005-4242'))
  _save(directory, 6)
  os.rename(checkpoint.folder(directory, 6), os.path.join(directory, '.tmp-update_00000005-4242'))
  workdir_lib.start_run(str(tmp_path), ml_collections.ConfigDict({'seed': 0}), world_size=1)
  assert sorted(os.listdir(directory)) == ['update_00000001', 'update_00000005']
  assert checkpoint.latest_valid(directory) == checkpoint.folder(directory, 5)


class _Killed(BaseException):
  """kill -9 at a chosen call: no handler runs, nothing is cleaned up."""


def _killed_at_rename_of(prefix, monkeypatch):
  """From now on, renaming a file or folder whose name starts with `prefix` kills the process."""
  real_rename = os.rename

  def rename(source, target, *args, **kwargs):
    if os.path.basename(source).startswith(prefix):
      raise _Killed(source)
    return real_rename(source, target, *args, **kwargs)
  monkeypatch.setattr(os, 'rename', rename)


def test_a_kill_while_an_update_is_saved_again_leaves_its_old_checkpoint_to_resume_from(tmp_path, monkeypatch):
  """Killed as the new folder of update 3 is about to be renamed into place: the next start finds the old one."""
  directory = workdir_lib.checkpoints_dir(str(tmp_path))
  _save(directory, 3, value=1.0)
  _killed_at_rename_of('.tmp-update_', monkeypatch)
  with pytest.raises(_Killed):
    _save(directory, 3, value=2.0)
  monkeypatch.undo()
  workdir_lib.start_run(str(tmp_path), ml_collections.ConfigDict({'seed': 0}), world_size=1)
  assert os.listdir(directory) == ['update_00000003']
  _, state = checkpoint.load(checkpoint.latest_valid(directory))
  assert float(state['model']['w'].sum()) == 12.0


def test_every_file_is_on_the_disk_before_its_checkpoint_is_renamed_into_place(tmp_path, monkeypatch):
  """Data still in the page cache after a rename is lost only at a power cut, which no test can stage: a spy
  on os.fsync and os.rename pins the order. Files are known by their inode, which a rename keeps."""
  events, real_fsync, real_rename = [], os.fsync, os.rename

  def fsync(fd):
    events.append(('fsync', os.fstat(fd).st_ino))
    return real_fsync(fd)

  def rename(source, target, *args, **kwargs):
    events.append(('rename', target))
    return real_rename(source, target, *args, **kwargs)
  monkeypatch.setattr(os, 'fsync', fsync)
  monkeypatch.setattr(os, 'rename', rename)
  final = _save(tmp_path, 1)
  in_place = events.index(('rename', final))
  synced_before = {inode for kind, inode in events[:in_place] if kind == 'fsync'}
  files = [os.path.join(final, name) for name in os.listdir(final)]
  assert {'manifest.json', 'model.safetensors', 'optimizer.json'} <= set(map(os.path.basename, files))
  assert all(os.stat(path).st_ino in synced_before for path in [*files, final])
  assert ('fsync', os.stat(tmp_path).st_ino) in events[in_place:]  # the rename itself


def test_weights_holding_nan_or_inf_are_never_saved(tmp_path):
  _save(tmp_path, 1)
  with pytest.raises(FloatingPointError) as failure:
    _save(tmp_path, 2, value=float('inf'))
  assert ('update 2 left NaN or Inf in 2 tensor(s) (model:w, optimizer:m)' in str(failure.value)
          and f'the previous checkpoint {checkpoint.folder(str(tmp_path), 1)} is intact' in str(failure.value))
  assert _updates(tmp_path) == [1]


def test_a_state_that_does_not_fit_the_layer_is_an_error_listing_the_keys():
  layer = paddle.nn.Linear(3, 2)
  state = {'weight': paddle.zeros([3, 5]), 'extra': paddle.zeros([1])}
  with pytest.raises(checkpoint.CheckpointError) as failure:
    checkpoint.load_state_strict(layer, state, source='weights file x.pdparams')
  message = str(failure.value)
  assert 'weights file x.pdparams does not fit the model (1 missing, 1 unexpected, 1 mis-shaped keys)' in message
  assert 'missing from the file: bias' in message and 'not in the model: extra' in message
  assert 'shape mismatch weight: [3, 5] in the file, [3, 2] in the model' in message


def _precision(name, init_loss_scale=1024.0):
  """The Precision of `name` (fp32 or fp16 O1); under the amp_standin fixture fp16 really scales, as on a GPU."""
  from configs import digits_vit_rdrop
  config = digits_vit_rdrop.get_config().train
  config.update(precision=name, amp_level='O1', init_loss_scale=init_loss_scale)
  return Precision(config, log=pytest.fail)


def _step(precision, layer, optimizer, factor):
  """One update of `layer` whose loss is multiplied by `factor` (inf: an fp16 overflow); True if skipped."""
  precision.backward(layer(paddle.ones([2, 2])).sum() * factor)
  skipped = precision.step(optimizer)
  optimizer.clear_grad()
  return skipped


def test_an_fp16_overflow_skips_the_update_and_halves_the_scale(amp_standin):
  precision = _precision('fp16')
  layer = paddle.nn.Linear(2, 1)
  optimizer = paddle.optimizer.AdamW(learning_rate=0.1, parameters=layer.parameters())
  assert _step(precision, layer, optimizer, 1.0) is False and precision.loss_scale() == 1024.0
  before = layer.weight.numpy().copy()
  assert _step(precision, layer, optimizer, float('inf')) is True
  assert np.array_equal(layer.weight.numpy(), before) and precision.loss_scale() == 512.0
  assert _step(precision, layer, optimizer, 1.0) is False and not np.array_equal(layer.weight.numpy(), before)


def test_paddles_own_scaler_crashes_on_an_overflow_under_numpy_2_4(amp_standin):
  """Why training.precision.GradScaler exists; when this fails, Paddle has fixed its print and the subclass can go."""
  if tuple(int(v) for v in np.__version__.split('.')[:2]) < (2, 4):
    pytest.skip('NumPy < 2.4 still converts a 1-element array to float')
  precision = _precision('fp16')
  precision.scaler = paddle.amp.GradScaler(enable=True, init_loss_scaling=1024.0, decr_every_n_nan_or_inf=1)
  layer = paddle.nn.Linear(2, 1)
  optimizer = paddle.optimizer.SGD(learning_rate=0.1, parameters=layer.parameters())
  with pytest.raises(TypeError, match='only 0-dimensional arrays can be converted'):
    _step(precision, layer, optimizer, float('inf'))


@pytest.mark.parametrize('saved_with,resumed_with,message', [
    ('fp16', 'fp32', 'the checkpoint was written in fp16 O1, this run is fp32: its fp16 loss scale is not needed'),
    ('fp32', 'fp16', 'the checkpoint was written in fp32, this run is fp16 O1: the loss scale starts at 4096 from '
                     'the config'),
    ('fp16', 'fp16', None),
    ('fp32', 'fp32', None),
])
def test_a_checkpoint_resumes_with_or_without_a_loss_scaler(amp_standin, tmp_path, saved_with, resumed_with, message):
  saving = _precision(saved_with, 4096.0)
  if saved_with == 'fp16':  # one overflow, so the saved scale (2048) differs from a fresh scaler's
    layer = paddle.nn.Linear(2, 1)
    _step(saving, layer, paddle.optimizer.SGD(learning_rate=0.1, parameters=layer.parameters()), float('inf'))
  path = checkpoint.save(str(tmp_path), {'trainer': {'precision': saving.state_dict()}}, checkpoint.Manifest(update=1),
                         keep=1)
  state = checkpoint.load(path)[1]['trainer']['precision']
  assert state['scaling'] is (saved_with == 'fp16')
  resuming, logged = _precision(resumed_with, 4096.0), []
  resuming.load_state_dict(state, log=logged.append)
  assert logged == ([f'precision: {message}'] if message else [])
  assert resuming.loss_scale() == {'fp16fp16': 2048.0, 'fp32fp16': 4096.0}.get(saved_with + resumed_with, 1.0)


def _signals_script(under_launcher, *steps):
  """A process with a deferring StopRequest that sends itself `steps`: a signal name or seconds to wait.

  Between 'hold' and 'release' the main thread waits in a busy loop that keeps the interpreter from every
  other thread, as a long call into C++ may: the watcher cannot read a signal until the release.
  """
  lines = ['import os, signal, sys, time', 'from utils.preemption import StopRequest',
           f'stop = StopRequest(under_launcher={under_launcher})', 'stop.defer(True)',
           'def spin(seconds):',
           '  start = time.monotonic()',
           '  while time.monotonic() - start < seconds:',
           '    pass']
  holding = False
  for step in steps:
    if step in ('hold', 'release'):
      holding = step == 'hold'
      lines.append(f'sys.setswitchinterval({100 if holding else 0.005})')
    elif isinstance(step, float):
      lines.append(f'spin({step})' if holding else f'time.sleep({step})')
    else:
      lines.append(f'os.kill(os.getpid(), signal.{step})')
  lines.append('print("still running, asked to stop:", bool(stop), stop.signum, flush=True)')
  return subprocess.run([sys.executable, '-c', '\n'.join(lines)], cwd=ROOT, capture_output=True, text=True, timeout=20)


@pytest.mark.slow
def test_signals_repeated_within_a_second_are_one_request_and_a_later_one_exits_at_once():
  """Paddle's launcher sends 3 SIGTERMs 0.2 s apart: one request. A person's Ctrl-C after that: now."""
  proc = _signals_script(False, 'SIGTERM', 0.2, 'SIGTERM', 0.2, 'SIGTERM', 0.5)
  assert proc.returncode == 0 and proc.stdout == 'still running, asked to stop: True 15\n', proc.stderr
  assert proc.stderr.count('SIGTERM: finishing this update, then saving a checkpoint') == 1
  proc = _signals_script(False, 'SIGTERM', 1.2, 'SIGINT', 5.0)
  assert proc.returncode == 128 + signal.SIGINT and proc.stdout == ''
  assert 'SIGINT again: exiting now without a checkpoint' in proc.stderr


@pytest.mark.slow
def test_a_repeat_is_timed_by_its_arrival_not_by_when_the_watcher_gets_to_read_it():
  """The repeat arrives 0.4 s after the first, and is read 1.5 s later (a busy machine, a long C++ call)."""
  proc = _signals_script(False, 'SIGTERM', 0.2, 'hold', 0.2, 'SIGTERM', 1.5, 'release', 0.5)
  assert proc.returncode == 0 and proc.stdout == 'still running, asked to stop: True 15\n', proc.stderr


@pytest.mark.slow
def test_under_the_launcher_no_repeated_signal_ends_the_process():
  """The launcher owns the deadline: it kills its workers 30 s after its first SIGTERM."""
  proc = _signals_script(True, 'SIGTERM', 0.2, 'SIGTERM', 0.2, 'SIGTERM', 1.5, 'SIGTERM', 'SIGINT', 0.5)
  assert proc.returncode == 0 and proc.stdout == 'still running, asked to stop: True 15\n', proc.stderr
  assert 'exiting now' not in proc.stderr and 'send it again' not in proc.stderr


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """6 updates with checkpoints at 2, 4 and 6 (read-only: tests copy it)."""
  workdir = tmp_path_factory.mktemp('trained') / 'run'
  run_main('--config', DEMO, '--workdir', workdir, *RUN)
  return workdir


def _copy(trained, tmp_path):
  return shutil.copytree(trained, tmp_path / 'run')


@pytest.mark.slow
def test_resume_skips_a_truncated_newest_checkpoint_and_continues_from_the_previous(trained, tmp_path):
  workdir = _copy(trained, tmp_path)
  ckpts = workdir_lib.checkpoints_dir(str(workdir))
  cut_in_half(os.path.join(checkpoint.folder(ckpts, 6), 'model.safetensors'))
  proc = run_main('--mode', 'resume', '--workdir', workdir, '--config.train.updates=8')
  assert f'WARNING: checkpoint {checkpoint.folder(ckpts, 6)}: model.safetensors does not match' in proc.stderr
  assert f'resume: from {checkpoint.folder(ckpts, 4)}' in proc.stdout and 'from update 4' in proc.stdout
  assert [r['update'] for r in metric_rows(workdir, 'train')] == list(range(1, 9))
  for path in checkpoint.committed(ckpts):  # update 6 was written again, whole
    checkpoint.read_manifest(path)
  assert _updates(ckpts) == [4, 6, 8]  # keep_checkpoints=3; the best is update 8, the only evaluation


@pytest.mark.slow
@pytest.mark.parametrize('damage', ['truncated', 'absent'])
def test_an_explicitly_named_bad_checkpoint_is_an_error_never_a_restart(trained, tmp_path, damage):
  workdir = _copy(trained, tmp_path)
  named = checkpoint.folder(workdir_lib.checkpoints_dir(str(workdir)), 4)
  if damage == 'truncated':
    cut_in_half(os.path.join(named, 'optimizer.safetensors'))
    expected = f'error: checkpoint {named}: optimizer.safetensors does not match its checksum'
  else:
    shutil.rmtree(named)
    expected = f'error: checkpoint {named} does not exist'
  metrics_before = (workdir / 'metrics.jsonl').read_text()
  proc = run_main('--mode', 'resume', '--workdir', workdir, '--checkpoint', named, check=False)
  assert proc.returncode == 1 and expected in proc.stderr
  assert (workdir / 'metrics.jsonl').read_text() == metrics_before
  assert _updates(workdir_lib.checkpoints_dir(str(workdir))) == ([2, 4, 6] if damage == 'truncated' else [2, 6])


@pytest.mark.slow
def test_a_run_without_a_loss_scaler_resumes_with_fp16_and_an_fp16_checkpoint_resumes_without(trained, tmp_path):
  """fp16 through the stand-in of tests/amp_standin.py (a GPU's AMP on this CPU), fp32 in a plain process."""
  workdir = _copy(trained, tmp_path)
  proc = run_main('--mode', 'resume', '--workdir', workdir, '--config.train.updates=7',
                  '--config.train.precision=fp16', amp_standin=True)
  assert "resume: config differs from the saved run: train.precision: 'fp32' -> 'fp16'" in proc.stdout
  assert ('precision: the checkpoint was written in fp32, this run is fp16 O1: the loss scale starts at 32768 '
          'from the config') in proc.stdout
  assert 'from update 6' in proc.stdout and metric_rows(workdir, 'train')[-1]['update'] == 7
  assert checkpoint.load(checkpoint.folder(workdir_lib.checkpoints_dir(str(workdir)), 7))[1][
      'trainer']['precision']['scaling'] is True

  proc = run_main('--mode', 'resume', '--workdir', workdir, '--config.train.updates=8',
                  '--config.train.precision=fp32')
  assert 'precision: the checkpoint was written in fp16 O1, this run is fp32: its fp16 loss scale is not needed' \
      in proc.stdout
  assert 'from update 7' in proc.stdout and metric_rows(workdir, 'train')[-1]['update'] == 8


def test_resuming_an_older_checkpoint_sets_the_newer_ones_aside(tmp_path):
  """Their continuation is abandoned: the next automatic resume must not pick them, and nothing is deleted."""
  directory = workdir_lib.checkpoints_dir(str(tmp_path))
  for update in (2, 4, 6):
    _save(directory, update)
  workdir_lib.start_run(str(tmp_path), ml_collections.ConfigDict({'seed': 0}), world_size=1,
                        resume_from=checkpoint.folder(directory, 2))
  assert checkpoint.latest_valid(directory) == checkpoint.folder(directory, 2)
  aside = sorted(n for n in os.listdir(directory) if n.startswith('abandoned-'))
  assert [n.split('-')[-1] for n in aside] == ['update_00000004', 'update_00000006']
