"""The run folder: the resolved config as a loadable file, the run's provenance, checkpoint lookup."""
import datetime
import json
import os
import platform
import pprint
import subprocess

from utils import checkpoint

CONFIG_FILE = 'config.py'


def checkpoints_dir(workdir):
  return os.path.join(workdir, 'checkpoints')


def check_writable(workdir):
  """Fail early and clearly when the workdir could not be created or written, creating nothing."""
  existing = os.path.abspath(workdir)
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
    raise PermissionError(f'cannot write to the workdir {os.path.abspath(workdir)}: {existing} is not a '
                          f'writable folder')


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
  if resume_from and previous is not None:
    for change in config_changes(previous, config.to_dict()):
      print(f'resume: config differs from the saved run: {change}')
  save_config(workdir, config)
  record_run(workdir, 'resume' if resume_from else 'train', world_size)


def write_atomic(path, text):
  """Write `text` to `path` through a temporary file and a rename: readers never see half a file."""
  tmp = path + '.tmp'
  with open(tmp, 'w', newline='') as f:
    f.write(text)
  os.replace(tmp, path)


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
  with open(path) as f:
    return json.load(f)


def config_changes(old, new, prefix=''):
  """['key: old -> new', ...] between two config dicts."""
  changes = []
  for key in sorted(set(old) | set(new)):
    a, b = old.get(key), new.get(key)
    if isinstance(a, dict) and isinstance(b, dict):
      changes += config_changes(a, b, f'{prefix}{key}.')
    elif a != b and not (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and list(a) == list(b)):
      changes.append(f'{prefix}{key}: {a!r} -> {b!r}')
  return changes


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
  with open(os.path.join(workdir, 'run.jsonl'), 'a') as f:
    f.write(json.dumps(entry) + '\n')


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
  best_update = checkpoint.read_manifest(latest, files=())['best']['update']
  best = checkpoint.folder(directory, best_update)
  return best if best_update and os.path.isdir(best) else latest
