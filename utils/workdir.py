"""The run folder: its one owner (a lock), the resolved config as a loadable file, the run's provenance,
checkpoint lookup."""
import contextlib
import datetime
import errno
import fcntl
import json
import os
import platform
import pprint
import shlex
import socket
import subprocess
import sys
import time

from utils import checkpoint

CONFIG_FILE = 'config.py'
LOCK_FILE = 'lock'
# Config fields that name, locate, pace or watch a run without changing what it learns. `--autoresume`
# continues a run whose command differs from its saved config only in these and in the weights files'
# paths (e.g. data on another machine); the report and VisualDL do not tell runs apart by them.
NOT_LEARNING = frozenset({
    'reference.top1', 'reference.source', 'data.root', 'data.num_workers', 'eval.batch_size', 'train.log_every',
    'train.eval_every', 'train.checkpoint_every', 'train.checkpoint_every_minutes', 'train.keep_checkpoints',
    'train.max_skipped_updates', 'eval.collapse_majority', 'eval.collapse_information', 'eval.stop_after_collapses'})
_held_lock_fd = None  # the open lock file of this process, closed in forked children (see own)


class WorkdirBusy(RuntimeError):
  """Another process owns the workdir."""


def checkpoints_dir(workdir):
  return os.path.join(workdir, 'checkpoints')


def check_writable(folder, what='the workdir'):
  """Fail early and clearly when `folder` could not be created or written, creating nothing."""
  existing = os.path.abspath(folder)
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
    raise PermissionError(f'cannot write to {what} {os.path.abspath(folder)}: {existing} is not a '
                          f'writable folder')


def has_run(workdir):
  """True once a training started in `workdir` (it saved its config) or left checkpoints."""
  return os.path.exists(os.path.join(workdir, CONFIG_FILE)) or bool(checkpoint.committed(checkpoints_dir(workdir)))


@contextlib.contextmanager
def own(workdir):
  """Make this process the only trainer of `workdir` until the block ends (train and resume, rank 0).

  The lock is the operating system's: `fcntl.flock` on `<workdir>/lock`, which the kernel releases when
  the process ends in any way (kill -9 included), so there is never a stale lock to clean up. The file
  records its holder (pid, host, start, command) so that a refusal can name it; a record found under a
  free lock was left by a holder that died, and the take-over says so. A clean end removes the file.
  Creating the workdir for the lock is undone when the run never started (nothing else was written).
  """
  global _held_lock_fd
  created = not os.path.isdir(workdir)
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK_FILE)
  fd = _lock(path)
  try:
    if fd is not None:
      previous = _holder(fd)
      if previous:
        print(f'lock: {os.path.abspath(workdir)} was held by {_describe(previous)}, which ended without '
              f'releasing it (killed?); taking it over', flush=True)
      record = {'pid': os.getpid(), 'host': socket.gethostname(),
                'started': datetime.datetime.now().isoformat(timespec='seconds'),
                'command': shlex.join(['python', *sys.argv])}
      os.ftruncate(fd, 0)
      os.pwrite(fd, json.dumps(record).encode(), 0)
      os.fsync(fd)
      _held_lock_fd = fd
    yield
  finally:
    if fd is not None:
      with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # before unlocking: a process that opened the file meanwhile sees it gone (see _lock)
      os.close(fd)
      _held_lock_fd = None
    if created and os.path.isdir(workdir) and not os.listdir(workdir):
      os.rmdir(workdir)


def _lock(path):
  """The locked file descriptor of `path`; None (with a warning) on a filesystem without locks."""
  while True:
    os.makedirs(os.path.dirname(path), exist_ok=True)  # a holder whose start failed removes the folder it made
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _holder(fd, wait=2.0)
      os.close(fd)
      workdir = os.path.dirname(os.path.abspath(path))
      raise WorkdirBusy(f'{workdir} is in use by another training: '
                        f'{_describe(holder) if holder else "a process that has not recorded itself yet"}. '
                        f'One workdir has one training at a time: wait for it to end, stop it, or use another '
                        f'--workdir') from None
    except OSError as err:
      if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
        raise
      os.close(fd)
      os.unlink(path)
      print(f'WARNING: the filesystem of {path} does not support file locks ({err.strerror}): nothing keeps '
            f'a second training out of this workdir', file=sys.stderr)
      return None
    try:
      if os.stat(path).st_ino == os.fstat(fd).st_ino:
        return fd
    except FileNotFoundError:
      pass
    os.close(fd)  # its previous holder removed the file between our open and our lock: lock the new one


def _holder(fd, wait=0.0):
  """The record in the lock file, or None when it is empty (waiting up to `wait` s for one to appear)."""
  deadline = time.monotonic() + wait
  while True:
    text = os.pread(fd, 4096, 0).decode(errors='replace').strip()
    if text or time.monotonic() >= deadline:
      break
    time.sleep(0.1)
  try:
    return json.loads(text) if text else None
  except ValueError:
    return {'command': text}


def _describe(holder):
  return (f'pid {holder.get("pid", "?")} on {holder.get("host", "?")} since {holder.get("started", "?")} '
          f'({holder.get("command", "?")})')


def _close_lock_in_child():
  """A forked DataLoader worker must not keep the lock alive after its parent is killed."""
  global _held_lock_fd
  if _held_lock_fd is not None:
    os.close(_held_lock_fd)  # closing one copy does not unlock: the parent's descriptor still holds it
    _held_lock_fd = None


os.register_at_fork(after_in_child=_close_lock_in_child)


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


def write_atomic(path, text):
  """Write `text` to `path` through a temporary file, fsynced, and a rename: readers never see half a
  file, and a crash leaves the old or the new one."""
  tmp = f'{path}.tmp-{os.getpid()}'
  try:
    with open(tmp, 'w', newline='') as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


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
