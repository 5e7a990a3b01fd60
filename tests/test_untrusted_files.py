"""Weights, checkpoints and datasets from strangers run no code: a pickle whose `__reduce__` calls
`os.system` is refused at every place such a file is read (the command would create a marker file), and
the error names the file; real `paddle.save` files and checkpoints of the older pickled format still load."""
import hashlib
import io
import json
import os
import pickle
import shlex
import shutil
import tarfile

import ml_collections
import numpy as np
import paddle
import pytest

import models
from helpers import run_main
from configs import lenet5_cifar10, resnet50_cat12_rdrop
from data import cifar
from tools.fakedata import make_cifar10
from test_cifar import data_config
from utils import checkpoint, safe_pickle

OLD_NAMES = {'model': 'model.pdparams', 'optimizer': 'optimizer.pdopt', 'trainer': 'trainer.pdstate'}


class RunsACommand:
  """Unpickling this runs `touch marker` (pickle stores only `os.system` and the command)."""

  def __init__(self, marker):
    self.command = f'touch {shlex.quote(str(marker))}'

  def __reduce__(self):
    return os.system, (self.command,)


def _evil_file(path, marker):
  with open(path, 'wb') as f:
    pickle.dump({'weight': RunsACommand(marker)}, f, protocol=4)
  return str(path)


def _refused(call, marker, *names):
  """`call()` raises NotPlainData naming each of `names`, and the command never ran."""
  with pytest.raises(safe_pickle.NotPlainData) as refused:
    call()
  message = str(refused.value)
  assert 'posix.system is not plain data: refusing to run code from it' in message and '\n' not in message
  assert all(name in message for name in names), message
  assert not marker.exists()


def test_the_payload_runs_under_plain_pickle(tmp_path):  # the payload of these tests is a live one
  marker = tmp_path / 'ran'
  with open(_evil_file(tmp_path / 'evil.pdparams', marker), 'rb') as f:
    pickle.load(f)
  assert marker.exists()


@pytest.mark.parametrize('module,name', [
    ('builtins', 'eval'), ('builtins', 'getattr'), ('subprocess', 'Popen'), ('numpy', 'load'),
    ('numpy.testing._private.utils', 'runstring'), ('paddle', 'load'), ('copyreg', '_reconstructor')])
def test_every_global_but_those_of_plain_data_is_refused(module, name):
  naming_it = b'\x80\x02c' + f'{module}\n{name}\n'.encode() + b'.'  # a pickle of just that global
  with pytest.raises(safe_pickle.NotPlainData, match=f'^weights.pdparams: {module}.{name} is not plain data'):
    safe_pickle.load(io.BytesIO(naming_it), 'weights.pdparams')


def test_pretrained_weights_that_call_code_are_refused(tmp_path):
  marker = tmp_path / 'ran'
  config = lenet5_cifar10.get_config('smoke').model
  config.pretrained = _evil_file(tmp_path / 'evil.pdparams', marker)
  _refused(lambda: models.build(config, 10), marker, config.pretrained)


def _resnet_config(backbone_weights):
  config = ml_collections.ConfigDict(resnet50_cat12_rdrop.get_config('smoke').model.to_dict())
  config.backbone_weights = str(backbone_weights)
  return config


def test_backbone_weights_that_call_code_are_refused(tmp_path):
  marker = tmp_path / 'ran'
  path = _evil_file(tmp_path / 'evil.pdparams', marker)
  _refused(lambda: models.build(_resnet_config(path), 12), marker, path)


@pytest.mark.parametrize('content,message', [
    (0, 'holds a Python int, not the dict of arrays paddle.save writes'),
    ({'conv1.weight': 0}, 'conv1.weight: int (not an array) in the file, [64, 3, 7, 7] in the model'),
    (b'not a pickle', 'is not a file paddle.save wrote, or it is damaged'),
])
def test_backbone_weights_without_arrays_are_an_error_naming_the_file_not_a_traceback(tmp_path, content, message):
  path = tmp_path / 'odd.pdparams'
  path.write_bytes(content if isinstance(content, bytes) else pickle.dumps(content))
  with pytest.raises((ValueError, checkpoint.CheckpointError)) as refused:  # what main.py reports in words
    models.build(_resnet_config(path), 12)
  assert message in str(refused.value) and str(path) in str(refused.value)


def test_a_cifar_tarball_whose_batch_calls_code_is_refused(tmp_path):
  marker = tmp_path / 'ran'
  tarball = make_cifar10(tmp_path / 'cifar-10-python.tar.gz')
  evil = tmp_path / 'cifar-10-python-evil.tar.gz'
  payload = pickle.dumps({b'data': RunsACommand(marker), b'labels': [0]}, protocol=2)
  with tarfile.open(tarball) as source, tarfile.open(evil, 'w:gz') as target:
    for member in source.getmembers():
      data = payload if member.name.endswith('test_batch') else source.extractfile(member).read()
      member.size = len(data)
      target.addfile(member, io.BytesIO(data))
  _refused(lambda: cifar.build(data_config(evil, classes=10), 'test'), marker, 'test_batch', str(evil))


def test_real_paddle_save_files_load_as_paddle_load_gives_them(tmp_path):
  """A Layer's and an optimizer's state dict (with its LR scheduler), and a nest holding tensors of every
  precision, NumPy values and plain ones, in each pickle protocol paddle.save writes."""
  layer = paddle.nn.Linear(3, 2)
  optimizer = paddle.optimizer.AdamW(paddle.optimizer.lr.CosineAnnealingDecay(0.1, 10), parameters=layer.parameters())
  layer(paddle.ones([1, 3])).sum().backward()
  optimizer.step()
  nest = {'half': paddle.ones([2], 'float16'), 'bf16': paddle.to_tensor([1.5, -2.25]).astype('bfloat16'),
          'ints': paddle.to_tensor([1, 2]), 'array': np.arange(3.0), 'scalar': np.float32(1.5),
          'plain': {'list': [1, 'two', None, True, float('inf')], 'pair': (paddle.zeros([1]), 2)}}
  for protocol in (2, 3, 4):
    for name, obj in (('layer.pdparams', layer.state_dict()), ('adamw.pdopt', optimizer.state_dict()),
                      ('nest.pdstate', nest)):
      path = str(tmp_path / f'{protocol}{name}')
      paddle.save(obj, path, protocol=protocol)
      _assert_same(safe_pickle.load_paddle(path), paddle.load(path))


def test_arrays_pickled_by_numpy_1_as_in_the_cifar_batches_load():
  array = np.arange(6, dtype=np.uint8).reshape(2, 3)
  written = pickle.dumps({b'data': array, b'labels': [1, 2]}, protocol=2)
  by_numpy_1 = written.replace(b'cnumpy._core.multiarray\n', b'cnumpy.core.multiarray\n')  # its module's name
  assert by_numpy_1 != written
  loaded = safe_pickle.load(io.BytesIO(by_numpy_1), 'data_batch_1', encoding='bytes')
  assert loaded[b'labels'] == [1, 2] and loaded[b'data'].dtype == np.uint8
  assert np.array_equal(loaded[b'data'], array)


def _assert_same(ours, theirs):
  """The same nest, types, dtypes and bytes."""
  assert type(ours) is type(theirs)
  if isinstance(ours, dict):
    assert list(ours) == list(theirs)
    for key in ours:
      _assert_same(ours[key], theirs[key])
  elif isinstance(ours, (list, tuple)):
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
      _assert_same(a, b)
  elif isinstance(ours, (paddle.Tensor, np.ndarray, np.generic)):
    assert ours.dtype == theirs.dtype and list(ours.shape) == list(theirs.shape)
    as_numpy = lambda x: x.numpy() if isinstance(x, paddle.Tensor) else np.asarray(x)
    assert as_numpy(ours).tobytes() == as_numpy(theirs).tobytes()
  else:
    assert ours == theirs or (ours != ours and theirs != theirs)  # (NaN)


def _state():
  """Pieces as train.py saves them: weights, an O2 optimizer's state, the trainer's state."""
  paddle.seed(0)
  weight = paddle.randn([4, 3])
  return {
      'model': {'fc.weight': weight, 'fc.bias': paddle.zeros([3]), 'bn._mean': paddle.randn([]),
                'empty': paddle.zeros([0, 3])},
      'optimizer': {'fc.w_0_moment1_0': paddle.randn([4, 3]).astype('bfloat16'),
                    'fc.w_0_beta1_pow_acc_0': paddle.to_tensor([0.9]).astype('float16'),
                    'step': paddle.to_tensor([7]),
                    'LR_Scheduler': {'last_epoch': 7, 'last_lr': 0.1 / 3},
                    'master_weights': {'fc.w_0': weight}},
      'trainer': {'precision': {'precision': 'fp16 O1', 'scaling': True,
                                'scaler': {'scale': np.array([2048.0], np.float32), 'incr_count': 2,
                                           'use_dynamic_loss_scaling': True}},
                  'loop': {'window': {'sums': [0.1 + 0.2, 1e-300, float('inf')], 'applied': 3},
                           'last_train_row': {'objective': 2.302585092994046}}},
  }


def test_a_checkpoint_holds_no_code_and_gives_back_every_value_bit_for_bit(tmp_path):
  path = checkpoint.save(str(tmp_path), _state(), checkpoint.Manifest(update=1), keep=1)
  assert sorted(os.listdir(path)) == ['manifest.json', *sorted(f'{piece}.{kind}' for piece in OLD_NAMES
                                                              for kind in ('json', 'safetensors'))]
  _assert_same(checkpoint.load(path)[1], _state())
  assert list(checkpoint.load(path, ('model',))[1]) == ['model']


def _with_files(folder, files, only=False):
  """Checkpoint `folder` with `files` ({name: bytes}) written into it, `only` those, and its manifest
  rewritten to match them, as anyone can."""
  manifest_path = os.path.join(folder, checkpoint.MANIFEST)
  with open(manifest_path) as f:
    manifest = json.load(f)
  for name in list(manifest['files']) if only else ():
    os.remove(os.path.join(folder, name))
    del manifest['files'][name]
  for name, data in files.items():
    with open(os.path.join(folder, name), 'wb') as f:
      f.write(data)
    manifest['files'][name] = hashlib.sha256(data).hexdigest()
  with open(manifest_path, 'w') as f:
    json.dump(manifest, f)
  return folder


def _in_old_format(folder, model_file=None):
  """Checkpoint `folder` as the code before safetensors wrote it, each piece pickled by paddle.save;
  `model_file` bytes replace model.pdparams."""
  files = {}
  for piece, obj in checkpoint.load(folder)[1].items():
    buffer = io.BytesIO()
    paddle.save(obj, buffer)
    files[OLD_NAMES[piece]] = buffer.getvalue()
  if model_file is not None:
    files['model.pdparams'] = model_file
  return _with_files(folder, files, only=True)


def test_a_checkpoint_of_the_older_pickled_format_loads_as_paddle_load_gave_it(tmp_path):
  path = _in_old_format(checkpoint.save(str(tmp_path), _state(), checkpoint.Manifest(update=1), keep=1))
  _, pieces = checkpoint.load(path)
  _assert_same(pieces, {piece: paddle.load(os.path.join(path, name)) for piece, name in OLD_NAMES.items()})


def test_a_checkpoint_whose_weights_call_code_is_refused_though_its_checksum_matches(tmp_path):
  marker = tmp_path / 'ran'
  path = _in_old_format(checkpoint.save(str(tmp_path / 'ckpts'), _state(), checkpoint.Manifest(update=1), keep=1),
                        model_file=pickle.dumps({'fc.weight': RunsACommand(marker)}))
  checkpoint.read_manifest(path)  # intact, as far as its manifest can tell
  _refused(lambda: checkpoint.load(path), marker, os.path.join(path, 'model.pdparams'))


@pytest.mark.slow
def test_the_command_line_refuses_pretrained_weights_that_call_code_in_one_line(tmp_path):
  marker = tmp_path / 'ran'
  evil = _evil_file(tmp_path / 'evil.pdparams', marker)
  tarball = make_cifar10(tmp_path / 'cifar-10-python.tar.gz')
  proc = run_main('--config', 'configs/lenet5_cifar10.py:smoke', '--workdir', tmp_path / 'run',
                  f'--config.data.root={tarball}', f'--config.model.pretrained={evil}', check=False)
  assert proc.returncode == 1 and not marker.exists()
  assert proc.stderr.strip().splitlines()[-1] == (f'error: {evil}: posix.system is not plain data: refusing to '
                                                   'run code from it')


@pytest.fixture(scope='module')
def digits_run(tmp_path_factory):
  """A finished 2-update digits ViT run (read-only: tests copy it)."""
  workdir = tmp_path_factory.mktemp('digits') / 'run'
  run_main('--config', 'configs/digits_vit.py:smoke', '--workdir', workdir)
  return workdir


def _copy(run, to):
  shutil.copytree(run, to)
  return to, checkpoint.latest_valid(os.path.join(to, 'checkpoints'))


@pytest.mark.slow
@pytest.mark.parametrize('mode', ['eval', 'resume'])
def test_the_command_line_refuses_a_checkpoint_whose_weights_call_code(digits_run, tmp_path, mode):
  marker = tmp_path / 'ran'
  workdir, path = _copy(digits_run, tmp_path / 'run')
  _in_old_format(path, model_file=pickle.dumps({'w': RunsACommand(marker)}))
  proc = run_main('--mode', mode, '--workdir', workdir, '--config.train.updates=3', check=False)
  assert proc.returncode == 1 and not marker.exists()
  assert (f'error: {path}/model.pdparams: posix.system is not plain data: refusing to run code from it'
          in proc.stderr), proc.stderr


@pytest.mark.slow
def test_a_checkpoint_of_the_older_format_resumes_exactly_as_the_same_in_the_new_one(digits_run, tmp_path):
  new, _ = _copy(digits_run, tmp_path / 'new')
  old, path = _copy(digits_run, tmp_path / 'old')
  _in_old_format(path)
  for workdir in (new, old):
    run_main('--mode', 'resume', '--workdir', workdir, '--config.train.updates=3')
  ends = [checkpoint.load(checkpoint.latest_valid(os.path.join(w, 'checkpoints')))[1] for w in (new, old)]
  assert checkpoint.update_of(checkpoint.latest_valid(os.path.join(old, 'checkpoints'))) == 3
  _assert_same(ends[1], ends[0])


@pytest.mark.parametrize('damage', ['a tensor it does not hold', 'not JSON', 'not safetensors'])
def test_a_checkpoint_whose_files_no_version_wrote_is_an_error_naming_it(tmp_path, damage):
  """(Its manifest rewritten to match: what a stranger's file may be.)"""
  path = checkpoint.save(str(tmp_path), _state(), checkpoint.Manifest(update=1), keep=1)
  name, data = {'a tensor it does not hold': ('model.json', b'{"w": {"__tensor__": "nowhere"}}'),
                'not JSON': ('model.json', b'{"w": '), 'not safetensors': ('model.safetensors', b'\xff' * 9)}[damage]
  _with_files(path, {name: data})
  with pytest.raises(checkpoint.CheckpointError, match=f'checkpoint {path}: its model is damaged'):
    checkpoint.load(path)
