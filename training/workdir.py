"""The run folder: the resolved config as a loadable file, the run's provenance, checkpoint lookup.
(Its one owner: training/lock.py.)"""
import datetime
import json
import os
import platform
import pprint
import subprocess

from configs.base import NOT_LEARNING
from utils import checkpoint
from utils.io import append_line, read_json, write_atomic

CONFIG_FILE = 'config.py'


def checkpoints_dir(workdir):
  return os.path.join(workdir, 'checkpoints')


def check_writable(folder, what='the workdir'):
  """Fail early and clearly when `folder` could not be created or written, creating nothing."""
  if not writable(folder):
    raise PermissionError(f'cannot write to {what} {os.path.abspath(folder)}: {_nearest_existing(folder)} is '
                          f'not a writable folder')


def writable(folder):
  """Whether `folder` could be created or written (a read-only filesystem, or no permission: False)."""
  existing = _nearest_existing(folder)
  return os.path.isdir(existing) and os.access(existing, os.W_OK | os.X_OK)


def _nearest_existing(folder):
  existing = os.path.abspath(folder)
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  return existing


def has_run(workdir):
  """True once a training started in `workdir` (it saved its config) or left checkpoints."""
  return os.path.exists(os.path.join(workdir, CONFIG_FILE)) or bool(checkpoint.committed(checkpoints_dir(workdir)))


def runs_inside(folder):
  """The training runs in `folder` and below (folders that saved a config): [folder] when it is one, else
  those inside it, sorted; a run's own subfolders are not searched."""
  runs = []
  for root, subfolders, files in os.walk(folder):
    if 'config.json' in files:
      runs.append(root)
      subfolders.clear()
  return sorted(runs)


def start_run(workdir, config, world_size, resume_from=''):
  """Create the workdir, clean interrupted checkpoint writes, save the config and record this run.

  Resuming from an older checkpoint than the newest sets the newer ones aside (renamed, not deleted):
  they belong to the abandoned continuation, and the next automatic resume must not pick them.
  """
  os.makedirs(workdir, exist_ok=True)
  directory = checkpoints_dir(workdir)
  checkpoint.remove_partial(directory)
  if resume_from:
    stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
    for path in checkpoint.committed(directory):
      if checkpoint.update_of(path) > checkpoint.update_of(resume_from):
        aside = os.path.join(directory, f'abandoned-{stamp}-{os.path.basename(path)}')
        os.rename(path, aside)
        print(f'resume: {path} is newer than the checkpoint resumed from; kept as {aside}')
  previous = saved_config(workdir)
  if previous is not None:
    for key, old, new in config_changes(previous, config.to_dict()):
      print(f'resume: config differs from the saved run: {key}: {old!r} -> {new!r}')
  save_config(workdir, config)
  record_run(workdir, 'resume' if previous is not None else 'train', world_size)


def save_config(workdir, config):
  """`config.py` (loadable with --config, so `--mode resume` can reapply overrides) and `config.json`."""
  body = pprint.pformat(config.to_dict(), indent=1, width=100, sort_dicts=False)
  text = ('"""Resolved config of the run in this folder, overrides included (written by main.py)."""\n'
          'from math import inf, nan  # how pformat writes non-finite floats\n\n'
          'import ml_collections\n\n\ndef get_config():\n'
          f'  return ml_collections.ConfigDict({body})\n')
  write_atomic(os.path.join(workdir, CONFIG_FILE), text)
  write_atomic(os.path.join(workdir, 'config.json'), config.to_json_best_effort(indent=1))


def saved_config(workdir):
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    return None
  return read_json(path)


def config_changes(old, new, prefix=''):
  """[(dotted key, old value, new value)] between two config dicts."""
  changes = []
  for key in sorted(set(old) | set(new)):
    a, b = old.get(key), new.get(key)
    if isinstance(a, dict) and isinstance(b, dict):
      changes += config_changes(a, b, f'{prefix}{key}.')
    elif a != b and not (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and list(a) == list(b)):
      changes.append((f'{prefix}{key}', a, b))
  return changes


def learning_changes(saved, config):
  """The changes from the saved config dict to `config` that change what is learned: not in NOT_LEARNING,
  not a weights file's path (`model.pretrained`, `model.*_weights`)."""
  weights_file = lambda key: key == 'model.pretrained' or (key.startswith('model.') and key.endswith('_weights'))
  return [(key, old, new) for key, old, new in config_changes(saved, config.to_dict())
          if key not in NOT_LEARNING and not weights_file(key)]


def record_run(workdir, mode, world_size):
  """Append this invocation's provenance (time, git revision, command, devices) to run.jsonl."""
  try:
    revision = subprocess.run(['git', 'rev-parse', 'HEAD'], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.abspath(__file__)), timeout=10).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    revision = ''
  import paddle
  entry = {'time': datetime.datetime.now().isoformat(timespec='seconds'), 'mode': mode,
           'git_revision': revision, 'world_size': world_size, 'device': paddle.device.get_device(),
           'paddle': paddle.__version__, 'machine': machine()}
  append_line(os.path.join(workdir, 'run.jsonl'), json.dumps(entry))


def machine():
  """'AMD EPYC 7B13, 2 cores' (and the GPU's name on a GPU): what a run's wall times were measured on."""
  import paddle
  name = platform.processor() or 'unknown CPU'
  try:
    with open('/proc/cpuinfo') as f:
      name = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
  except (OSError, StopIteration):
    pass
  description = f'{name}, {len(os.sched_getaffinity(0))} cores'
  if paddle.device.get_device().startswith('gpu'):
    description += f', {paddle.device.cuda.get_device_name()}'
  return description


def best_checkpoint(workdir):
  """The checkpoint with the best evaluation (falling back to the newest valid one), or None."""
  directory = checkpoints_dir(workdir)
  latest = checkpoint.latest_valid(directory)
  if latest is None:
    return None
  best_update = checkpoint.read_manifest(latest, files=()).best['update']
  best = checkpoint.folder(directory, best_update)
  return best if best_update and os.path.isdir(best) else latest


def starting_point(config, workdir, mode, autoresume=False, explicit_checkpoint=''):
  """(where training starts, what to say): '' (update 0), a checkpoint folder, or None when the run has
  finished and there is nothing to do.

  `mode` 'train' starts a run, and with `autoresume` is the command to repeat in job scripts: it starts
  the run, continues it after an interruption, or does nothing once it finished; `mode` 'resume`
  continues one. A run interrupted before its first checkpoint starts again from update 0: its seed and
  saved config make that the same run. Checkpoints that exist but are all damaged are an error, never a
  restart. The caller holds the workdir's lock (training/lock.py), so no other start can interleave.
  """
  where, directory = os.path.abspath(workdir), checkpoints_dir(workdir)
  if mode == 'train' and not has_run(workdir):
    return '', ''
  if mode == 'train' and not autoresume:
    raise ValueError(f'{where} already holds a run: continue it with --mode resume (or this command with '
                     f'--autoresume), or train into a new --workdir')
  if mode == 'resume' and not has_run(workdir):
    raise ValueError(f'{where} holds no run to resume (no {CONFIG_FILE}, no checkpoint): start one with '
                     f'--mode train')
  saved = saved_config(workdir)
  if autoresume and saved is not None:
    changes = learning_changes(saved, config)
    if changes:
      listed = '\n  '.join(f'config.{key}: {old!r} in the run, {new!r} in this command' for key, old, new in changes)
      raise ValueError(f'--autoresume: {where} holds a run of another config:\n  {listed}\nRepeat the command '
                       f'that started it, change the run on purpose with --mode resume and overrides, or train '
                       f'into a new --workdir')
  if explicit_checkpoint:
    return explicit_checkpoint, ''
  latest = checkpoint.latest_valid(directory)
  if latest is None and checkpoint.committed(directory):
    raise ValueError(f'no valid checkpoint in {os.path.abspath(directory)} to resume from')
  if latest is None:
    return '', f'resume: {where} has no checkpoint yet: training again from update 0 with the saved config and seed'
  manifest = checkpoint.read_manifest(latest, files=())
  saved_length = {k: manifest.config.get('train', {}).get(k) for k in ('updates', 'epochs')}
  same_length = saved_length == {'updates': config.train.updates, 'epochs': config.train.epochs}
  if same_length and manifest.finished:
    best = manifest.best
    return None, (f'{workdir} finished at update {manifest.update} (best {config.eval.split} top1 '
                  f'{best["top1"]:.2f}% at update {best["update"]}): nothing to do')
  return latest, f'resume: from {latest}'


def checkpoint_to_read(workdir, explicit=''):
  """The checkpoint that eval, predict and export read: `explicit`, else the best of the run."""
  path = explicit or best_checkpoint(workdir)
  if not path:
    raise ValueError(f'no valid checkpoint in {os.path.abspath(checkpoints_dir(workdir))}; pass --checkpoint')
  return path
