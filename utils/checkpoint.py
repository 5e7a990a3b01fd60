"""Checkpoints that survive kill -9, full disks and bit rot.

A checkpoint is a folder `update_<N>` holding the pieces of state and `manifest.json` (a `Manifest`), which
lists every file with its SHA-256 and holds what the training loop records of the run. A piece (`model`, `optimizer`, `trainer`) is a nest of dicts and lists: its tensors
and arrays go into `<piece>.safetensors` (keyed by their path in the nest: `model.safetensors` is a plain
weights file), the rest into `<piece>.json` (a tensor's place holds `{"__tensor__": key}`). Neither format
can hold code, so loading a checkpoint from elsewhere runs none; older checkpoints, pickled by
`paddle.save` into `<piece>.pdparams/.pdopt/.pdstate`, are read through utils/safe_pickle.py.

A checkpoint is written as `.tmp-update_<N>-<pid>`, every file fsynced, the manifest written last, then
renamed into place: a folder without a manifest, or whose files do not match it, is not a checkpoint.
(Writing in place, as `paddle.save` does, lets an interrupted save destroy the only copy: Paddle issue
26348.)

Weights are stored in float32 whatever the precision of the run (the optimizer's master copies under AMP
O2) and cast to the model's dtype on loading, so any checkpoint serves any precision and device.
"""
import dataclasses
import hashlib
import json
import os
import shutil
import sys

import numpy as np
import paddle
import safetensors.paddle

from utils import safe_pickle

MANIFEST = 'manifest.json'
PREFIX = 'update_'
REPLACED = '.tmp-replaced-'  # a committed checkpoint set aside while the same update is saved again
WHAT_IS_A_CHECKPOINT = f"checkpoints are the {PREFIX}<N> folders in a run's checkpoints/ folder"


class CheckpointError(RuntimeError):
  pass


@dataclasses.dataclass
class Manifest:
  """What a checkpoint says of itself (`manifest.json`): its update, its files with their SHA-256, and what the
  training loop records beside the pieces. The one definition for train.py, which writes it, and every reader
  (resume, eval, export, the report). Fields a checkpoint of an older version lacks take their defaults."""
  update: int
  files: dict = dataclasses.field(default_factory=dict)  # {file name: SHA-256}, filled in by save()
  experiment: str = ''
  model: str = ''               # config.model.name
  num_classes: int = 0
  class_names: list | None = None
  best: dict = dataclasses.field(default_factory=lambda: {'top1': -1.0, 'update': 0})  # the best evaluation so far
  total_updates: int | None = None
  evaluation_due: bool = False  # stopped before the evaluation of `update` was complete
  world_size: int | None = None
  train_seconds: float | None = None  # the run's training time up to this checkpoint
  config: dict = dataclasses.field(default_factory=dict)

  @property
  def labels(self):
    return self.class_names or [str(label) for label in range(self.num_classes)]

  @property
  def finished(self):
    """Whether the run of this checkpoint has nothing left to do."""
    return self.total_updates is not None and self.update >= self.total_updates and not self.evaluation_due

  @classmethod
  def from_dict(cls, values):
    """The manifest of `values` (read from JSON); keys of a newer version are left out."""
    known = {field.name for field in dataclasses.fields(cls)}
    return cls(**{key: value for key, value in values.items() if key in known})


def _fsync_dir(path):
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def _sha256(path):
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 22), b''):
      digest.update(block)
  return digest.hexdigest()


def folder(directory, update):
  return os.path.join(directory, f'{PREFIX}{update:08d}')


def save(directory, pieces, manifest, keep, protect=()):
  """Write `pieces` ({piece name: nest of dicts and lists of tensors, arrays and JSON values}) as the
  checkpoint of `manifest.update`, atomically, with `manifest` (its files filled in).

  Afterwards only the newest `keep` checkpoints and those in
  `protect` (e.g. the best) remain. On failure the partial folder is removed, earlier checkpoints are
  untouched, and CheckpointError says so. Weights or optimizer state holding NaN or Inf are refused
  with FloatingPointError: a resume from them could only fail again, and the loss check of the
  training loop sees a step that blew up the weights only one update later.
  """
  update = manifest.update
  os.makedirs(directory, exist_ok=True)
  final = folder(directory, update)
  non_finite = [f'{name}:{key}' for name, obj in pieces.items() for key in _non_finite(obj)]
  if non_finite:
    raise FloatingPointError(
        f'update {update} left NaN or Inf in {len(non_finite)} tensor(s) ({", ".join(non_finite[:4])}'
        f'{" ..." if len(non_finite) > 4 else ""}): its checkpoint is not written; {_kept(directory, final)}')
  tmp = os.path.join(directory, f'.tmp-{PREFIX}{update:08d}-{os.getpid()}')
  try:
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    files = {}
    for piece, obj in pieces.items():
      for name, data in _encode(piece, obj).items():
        _write(os.path.join(tmp, name), data)
        files[name] = hashlib.sha256(data).hexdigest()
    with open(os.path.join(tmp, MANIFEST), 'w') as f:
      json.dump(dataclasses.asdict(dataclasses.replace(manifest, files=files)), f, indent=1)
      f.flush()
      os.fsync(f.fileno())
    _fsync_dir(tmp)
    replaced = None
    if os.path.exists(final):  # the same update saved again (e.g. a resumed run's last update)
      # Set aside, not deleted, until the new one is in place: a crash in between leaves it for
      # remove_partial to put back. (A reader in that instant finds neither and takes the previous one.)
      replaced = os.path.join(directory, f'{REPLACED}{PREFIX}{update:08d}-{os.getpid()}')
      os.rename(final, replaced)
    os.rename(tmp, final)
    _fsync_dir(directory)
    if replaced:
      shutil.rmtree(replaced)
  except OSError as err:
    shutil.rmtree(tmp, ignore_errors=True)
    raise CheckpointError(f'could not write the checkpoint of update {update} to {final}: {err}; '
                          f'{_kept(directory, final)}') from err
  _retain(directory, keep, set(protect) | {update})
  return final


def _write(path, data):
  with open(path, 'wb') as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())


TENSOR, ARRAY = '__tensor__', '__array__'  # a paddle.Tensor's or a NumPy array's place in `<piece>.json`


def _encode(piece, obj):
  """{file name: bytes} of `piece`: its tensors and arrays in safetensors, the rest in JSON."""
  tensors = {}

  def skeleton(value, path):
    if isinstance(value, (paddle.Tensor, np.ndarray)):
      key = '/'.join(path)
      if key in tensors:
        raise ValueError(f'checkpoint piece {piece}: two tensors at {key!r}')
      tensors[key] = value if isinstance(value, paddle.Tensor) else paddle.to_tensor(value)
      return {TENSOR if isinstance(value, paddle.Tensor) else ARRAY: key}
    if isinstance(value, dict):
      return {key: skeleton(item, [*path, key]) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
      return [skeleton(item, [*path, str(i)]) for i, item in enumerate(value)]
    return value

  text = json.dumps(skeleton(obj, []), indent=1)  # floats as repr: read back bit for bit
  return {f'{piece}.safetensors': safetensors.paddle.save({k: t.contiguous() for k, t in tensors.items()}),
          f'{piece}.json': text.encode()}


def _decode(path, piece, names):
  """The object of `piece` in checkpoint folder `path`, whose files of it are `names`."""
  if f'{piece}.json' not in names:  # written by paddle.save before checkpoints held no code
    return safe_pickle.load_paddle(os.path.join(path, names[0]))
  with open(os.path.join(path, f'{piece}.safetensors'), 'rb') as f, open(os.path.join(path, f'{piece}.json')) as g:
    try:
      tensors, skeleton = safetensors.paddle.load(f.read()), json.load(g)
      return _filled(skeleton, tensors)
    except (safetensors.SafetensorError, ValueError, KeyError, TypeError) as err:  # written by no version of ours
      raise CheckpointError(f'checkpoint {path}: its {piece} is damaged ({type(err).__name__}: {err})') from err


def _filled(skeleton, tensors):
  """`skeleton` (from `<piece>.json`) with each tensor's or array's place filled from `tensors`."""
  if isinstance(skeleton, dict):
    if len(skeleton) == 1 and TENSOR in skeleton:
      return tensors[skeleton[TENSOR]]
    if len(skeleton) == 1 and ARRAY in skeleton:
      return tensors[skeleton[ARRAY]].numpy()
    return {key: _filled(value, tensors) for key, value in skeleton.items()}
  if isinstance(skeleton, list):
    return [_filled(value, tensors) for value in skeleton]
  return skeleton


def _kept(directory, final):
  previous = [p for p in committed(directory) if p != final]
  return f'the previous checkpoint {previous[-1]} is intact' if previous else 'no earlier checkpoint exists'


def _non_finite(obj, prefix=''):
  """Keys of the floating-point tensors in `obj` (nested dicts) that hold NaN or Inf."""
  if isinstance(obj, dict):
    return [bad for key, value in obj.items() for bad in _non_finite(value, f'{prefix}{key}.')]
  if isinstance(obj, paddle.Tensor) and paddle.is_floating_point(obj) and not bool(paddle.isfinite(obj).all()):
    return [prefix[:-1]]
  return []


def _retain(directory, keep, protect):
  folders = committed(directory)
  for path in folders[:-keep] if keep > 0 else []:
    if update_of(path) not in protect:
      shutil.rmtree(path, ignore_errors=True)


def update_of(path):
  return int(os.path.basename(os.path.normpath(path))[len(PREFIX):])


def committed(directory):
  """Checkpoint folders that were renamed into place, oldest first (not yet verified)."""
  if not os.path.isdir(directory):
    return []
  names = sorted(n for n in os.listdir(directory) if n.startswith(PREFIX) and n[len(PREFIX):].isdigit())
  return [os.path.join(directory, n) for n in names]


def remove_partial(directory):
  """Delete leftovers of writes that were interrupted (they are never checkpoints); put back a complete
  checkpoint that was set aside to be replaced when its replacement never arrived."""
  if os.path.isdir(directory):
    for name in sorted(os.listdir(directory)):
      path = os.path.join(directory, name)
      if name.startswith(REPLACED):
        final = os.path.join(directory, name[len(REPLACED):].rsplit('-', 1)[0])
        if not os.path.exists(final):
          os.rename(path, final)
          continue
      if name.startswith('.tmp-'):
        shutil.rmtree(path, ignore_errors=True)


def read_manifest(path, files=None):
  """The manifest of a complete, intact checkpoint; CheckpointError naming what is wrong otherwise.

  `files` limits the checksum verification to those files (all when None; none with ()): a 1 GB
  checkpoint need not be hashed again for its metadata, nor its optimizer state for an evaluation.
  """
  manifest_path = os.path.join(path, MANIFEST)
  if os.path.isfile(path):
    folder_of_file = os.path.dirname(os.path.abspath(path))
    hint = (f': pass its folder {folder_of_file}' if os.path.exists(os.path.join(folder_of_file, MANIFEST))
            else f'; {WHAT_IS_A_CHECKPOINT}')
    raise CheckpointError(f'{path} is a file, not a checkpoint folder{hint}')
  if not os.path.isdir(path):
    raise CheckpointError(f'checkpoint {path} does not exist')
  if not os.path.exists(manifest_path) and not any(n.endswith(('.safetensors', '.pdparams', '.pdopt'))
                                                   for n in os.listdir(path)):
    hint = ' (it is a run folder: leave --checkpoint out)' if os.path.isdir(os.path.join(path, 'checkpoints')) else ''
    raise CheckpointError(f'{path} is not a checkpoint: it holds no {MANIFEST} and no weights{hint}; '
                          f'{WHAT_IS_A_CHECKPOINT}')
  try:
    with open(manifest_path) as f:
      values = json.load(f)
  except (OSError, ValueError) as err:
    raise CheckpointError(f'checkpoint {path} has no readable {MANIFEST} ({err}): it is incomplete') from err
  if not isinstance(values, dict) or not isinstance(values.get('files'), dict) or not isinstance(values.get('update'), int):
    raise CheckpointError(f'checkpoint {path}: {MANIFEST} lists no files or no update: it is damaged')
  manifest = Manifest.from_dict(values)
  _verify(path, manifest, manifest.files if files is None else files)
  return manifest


def _verify(path, manifest, files):
  """CheckpointError unless each of `files` of checkpoint `path` is there and matches its checksum."""
  for name in files:
    file_path = os.path.join(path, name)
    if not os.path.exists(file_path):
      raise CheckpointError(f'checkpoint {path} is missing {name}')
    if _sha256(file_path) != manifest.files[name]:
      raise CheckpointError(f'checkpoint {path}: {name} does not match its checksum (truncated or corrupt)')


def latest_valid(directory):
  """The newest intact checkpoint folder, or None; damaged newer ones are reported and skipped."""
  for path in reversed(committed(directory)):
    try:
      read_manifest(path)
      return path
    except CheckpointError as err:
      print(f'WARNING: {err}; skipping it', file=sys.stderr)
  return None


def load(path, pieces=None):
  """(manifest, {piece: object}) of a verified checkpoint folder: all its pieces, or those in `pieces`."""
  manifest, files = read_manifest(path, files=()), {}
  for name in manifest.files:
    files.setdefault(name.split('.')[0], []).append(name)
  wanted = {piece: names for piece, names in files.items() if pieces is None or piece in pieces}
  _verify(path, manifest, [name for names in wanted.values() for name in names])
  return manifest, {piece: _decode(path, piece, names) for piece, names in wanted.items()}


def float32_weights(state, master_weights=None):
  """A layer's `state` dict with its floating-point tensors in float32.

  Under AMP O2 that is the optimizer's float32 master copy of a weight (`master_weights`, by parameter
  name) when it rounds to the weight itself. A kernel that ignores master weights leaves a stale copy
  (Paddle's CPU SGD kernel updates bf16 weights directly), and then the weight is taken, cast.
  """
  master_weights = master_weights or {}

  def in_float32(value):
    weight, master = value.astype('float32'), master_weights.get(value.name)
    if master is not None and bool(paddle.equal_all(master.astype(value.dtype).astype('float32'), weight)):
      return master
    return weight

  return {key: in_float32(value) if isinstance(value, paddle.Tensor) and paddle.is_floating_point(value) else value
          for key, value in state.items()}


def _cast_like(value, reference):
  """`value` (a Tensor or NumPy array from a file) in the dtype of the layer's tensor `reference`."""
  if not paddle.is_floating_point(reference):
    return value
  value = value if isinstance(value, paddle.Tensor) else paddle.to_tensor(value)
  return value if value.dtype == reference.dtype else value.astype(reference.dtype)


def load_state_strict(layer, state, source):
  """`layer.set_state_dict(state)` with floating-point values cast to the layer's dtypes (a float32
  checkpoint into a half-precision O2 model, and the reverse), but every missing, unexpected or
  mis-shaped key is an error.

  Paddle itself refuses another dtype (an AssertionError) and only warns on the rest ("Skip loading for
  ...") and carries on with the layer's initial values.
  """
  own = layer.state_dict()
  missing = sorted(set(own) - set(state))
  unexpected = sorted(set(state) - set(own))
  shapes = {k: list(v.shape) if isinstance(v, (paddle.Tensor, np.ndarray)) else f'{type(v).__name__} (not an array)'
            for k, v in state.items()}
  mismatched = [f'{k}: {shapes[k]} in the file, {list(own[k].shape)} in the model'
                for k in own if k in state and shapes[k] != list(own[k].shape)]
  if missing or unexpected or mismatched:
    lines = ([f'missing from the file: {", ".join(missing[:8])}' + (' ...' if len(missing) > 8 else '')]
             if missing else [])
    lines += ([f'not in the model: {", ".join(unexpected[:8])}' + (' ...' if len(unexpected) > 8 else '')]
              if unexpected else [])
    lines += [f'shape mismatch {m}' for m in mismatched[:8]]
    raise CheckpointError(f'{source} does not fit the model ({len(missing)} missing, {len(unexpected)} '
                          f'unexpected, {len(mismatched)} mis-shaped keys):\n  ' + '\n  '.join(lines))
  layer.set_state_dict({key: _cast_like(value, own[key]) for key, value in state.items()})
