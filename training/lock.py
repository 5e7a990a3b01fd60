"""One trainer per workdir: a lock that the kernel releases however its holder ends, kill -9 included."""
import contextlib
import datetime
import errno
import fcntl
import json
import os
import shlex
import socket
import sys
import time

from utils.io import naming

LOCK_FILE = 'lock'
_held_lock_fd = None  # the open lock file of this process, closed in forked children (see own)


class WorkdirBusy(RuntimeError):
  """Another process owns the workdir."""


@contextlib.contextmanager
def own(workdir):
  """Make this process the only trainer of `workdir` until the block ends (train and resume, rank 0).

  The lock is the operating system's: `fcntl.flock` on `<workdir>/lock`, which the kernel releases when
  the process ends in any way (kill -9 included), so there is never a stale lock to clean up. The file
  records its holder (pid, host, start, command) so that a refusal can name it; a record found under a
  free lock was left by a holder that died, and the take-over says so. A clean end removes the file.
  The folders created for the lock (the workdir, and any missing parent) are removed again when the run
  never started (nothing else was written in them).
  """
  global _held_lock_fd
  created = []  # innermost first
  folder = os.path.abspath(workdir)
  while not os.path.isdir(folder):
    created.append(folder)
    folder = os.path.dirname(folder)
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
      with naming(path):
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
    for folder in created:
      if not os.path.isdir(folder) or os.listdir(folder):
        break
      os.rmdir(folder)


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
