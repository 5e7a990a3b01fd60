"""Stop within seconds when the machine is being taken away (SIGTERM) or on Ctrl-C (SIGINT), at any stage.

Python runs signal handlers in the main thread only, between two bytecodes: a main thread blocked in C++
(waiting for a DataLoader batch that a stalled file system never delivers, joining a stuck worker) does not
even notice a signal; that is how a run waiting in Paddle's reader ignored two SIGTERMs. So the C-level
handler also writes each signal's number to a pipe (`signal.set_wakeup_fd`) that a watcher thread reads at
once. The rules:

- The first SIGTERM or SIGINT while `defer`ring (the training loop) only sets the flag: the loop saves a
  checkpoint at the end of its update and exits. Anywhere else (start-up, eval, predict) the handler raises
  `Interrupted`: there is nothing to save.
- A second signal ends the process at once. So does a main thread that, after the first, stays at the same
  point for GRACE_SECONDS (blocked), except while `working()`: writing a checkpoint or computing (one
  backward pass of a large model on a CPU takes longer than that). DataLoader workers are killed
  first; the newest complete checkpoint stays valid (utils/checkpoint.py) and the next resume starts there.
  Under the launcher that last rule is off: a rank waits in a collective for as long as rank 0 writes a
  checkpoint, and ending it would make the launcher end rank 0 in the middle of the write.

DataLoader workers are forked from this process: they ignore SIGINT, which Ctrl-C sends to the whole process
group (the main process decides, as in PyTorch's workers), and die on SIGTERM; their signals never reach
the pipe.
"""
import contextlib
import multiprocessing
import os
import select
import signal
import sys
import threading
import time

SIGNALS = (signal.SIGTERM, signal.SIGINT)
GRACE_SECONDS = 5.0
_active = None  # the installed StopRequest, for the fork hook


class Interrupted(Exception):
  """A signal arrived where there is nothing to save: unwind and exit with 128 + signum."""

  def __init__(self, signum):
    super().__init__(f'stopped by {signal.Signals(signum).name}')
    self.signum = signum


class StopRequest:
  """Installed once per process, from the main thread. `bool(stop)` is True once a signal arrived."""

  def __init__(self, end_when_blocked=True):
    global _active
    self.signum = 0
    self._end_when_blocked = end_when_blocked
    self._deferring = False
    self._working = False
    self._read_fd, self._write_fd = os.pipe()
    os.set_blocking(self._write_fd, False)  # the C-level handler must never block
    self._previous_handlers = {s: signal.signal(s, self._handle) for s in SIGNALS}
    self._previous_wakeup_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
    self._watcher = threading.Thread(target=self._watch, args=(threading.main_thread().ident,),
                                     name='stop-watcher', daemon=True)
    self._watcher.start()
    _active = self

  def __bool__(self):
    return self.signum != 0

  def defer(self, deferring):
    """While deferring, the first signal only sets the flag, for the caller to stop at a safe point."""
    self._deferring = deferring

  @contextlib.contextmanager
  def working(self):
    """A checkpoint write or a model's computation, however long, is not a blocked process (a second
    signal still ends it); only waiting for data or at start-up is."""
    self._working = True
    try:
      yield
    finally:
      self._working = False

  def _handle(self, signum, frame):  # main thread, between two bytecodes
    if self.signum:
      return  # a second signal is the watcher's
    self.signum = signum
    if not self._deferring:
      raise Interrupted(signum)
    print(f'\n{signal.Signals(signum).name}: finishing this update, then saving a checkpoint '
          '(send it again to exit at once)', file=sys.stderr, flush=True)

  def _watch(self, main_thread):
    """Count the signals as they arrive, whatever the main thread does; end a process blocked after one."""
    received, place, unchanged_since = [], None, None
    while True:
      if select.select([self._read_fd], [], [], 0.2)[0]:
        data = os.read(self._read_fd, 64)
        if not data:  # restore() closed the pipe
          os.close(self._read_fd)
          return
        received += [s for s in data if s in SIGNALS]  # other handled signals (Paddle's SIGCHLD) write too
        if len(received) >= 2:
          _exit_now(received[-1], f'{signal.Signals(received[-1]).name} again: exiting now without a checkpoint')
      if not received or not self._end_when_blocked:
        continue
      # Where the main thread is: the same frame at the same instruction for GRACE_SECONDS means a call
      # into C++ that has not returned (a running Python loop moves between samples).
      frame = sys._current_frames().get(main_thread)
      now_at = (id(frame), frame.f_lasti) if frame else None
      if now_at != place or self._working:
        place, unchanged_since = now_at, time.monotonic()
      elif time.monotonic() - unchanged_since > GRACE_SECONDS:
        where = f' in {frame.f_code.co_name} ({frame.f_code.co_filename}:{frame.f_lineno})' if frame else ''
        _exit_now(received[0], f'{signal.Signals(received[0]).name}: blocked for {GRACE_SECONDS:g} s{where}, '
                               f'e.g. waiting for data: exiting now; the newest complete checkpoint is kept')

  def restore(self):
    """Put the previous handlers back (in-process callers such as tests; main.py keeps its own)."""
    global _active
    signal.set_wakeup_fd(self._previous_wakeup_fd)
    for s, handler in self._previous_handlers.items():
      signal.signal(s, handler)
    os.close(self._write_fd)
    self._watcher.join()
    _active = None


def _exit_now(signum, message):
  print(f'\n{message}', file=sys.stderr, flush=True)
  children = multiprocessing.active_children()  # DataLoader workers, possibly stuck in a read
  for child in children:
    child.kill()
  for child in children:
    child.join(timeout=2)
  sys.stdout.flush()
  os._exit(128 + signum)


def _in_forked_child():
  global _active
  if _active is not None:
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.close(_active._read_fd)  # a child holding the write end would keep restore() from ending the watcher
    os.close(_active._write_fd)
    _active = None


os.register_at_fork(after_in_child=_in_forked_child)
