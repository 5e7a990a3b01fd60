"""Stop within seconds when the machine is being taken away (SIGTERM) or on Ctrl-C (SIGINT), at any stage.

Python runs signal handlers in the main thread only, between two bytecodes: a main thread blocked in C++
(waiting for a DataLoader batch that a stalled file system never delivers, joining a stuck worker) does not
even notice a signal; that is how a run waiting in Paddle's reader ignored two SIGTERMs. So the C-level
handler also writes each signal's number to a socket (`signal.set_wakeup_fd`) that a watcher thread reads at
once, and the kernel stamps each with the time it arrived. The rules:

- The first SIGTERM or SIGINT while `defer`ring (the training loop) only sets the flag: the loop saves a
  checkpoint at the end of its update and exits. Anywhere else (start-up, eval, predict) the handler raises
  `Interrupted`: there is nothing to save.
- Signals that arrive within REPEAT_SECONDS of the first are one request: a parent that stops its children
  may send several (Paddle's launcher sends up to 3 SIGTERMs 0.2 s apart, `Container.terminate` in
  paddle/distributed/launch/utils/process_context.py). A signal after that ends the process at once (a
  person's second Ctrl-C). So does a main thread that, after the first, stays at the same point for
  GRACE_SECONDS (blocked), except while `working()`: writing a checkpoint or computing (one backward pass
  of a large model on a CPU takes longer than that). DataLoader workers are killed first; the newest
  complete checkpoint stays valid (utils/checkpoint.py) and the next resume starts there.
- Under `paddle.distributed.launch` (`under_launcher`) nothing ends the process early: the launcher owns
  the deadline. After its SIGTERMs it waits 30 s before SIGKILL (`pod.stop(timeout=30)`; 10 s after a
  second signal to the launcher itself, which is how a person's second Ctrl-C arrives there), while the
  ranks finish the update, agree, save once and exit. A rank also waits in a collective for as long as
  rank 0 writes a checkpoint: ending it would make the launcher end rank 0 in the middle of the write.
- Except while a rank connects to its peers at start-up (`connecting`): Paddle waits for them in C++ holding
  the interpreter, where neither the handler nor the watcher runs, so there a signal takes its default
  action and ends the process at once; nothing is there to save. (A rank waiting for a peer that the signal
  had already ended held the launcher for all of its 30 s.)

DataLoader workers are forked from this process and ignore SIGINT and SIGTERM (`in_data_worker`): Ctrl-C
reaches the whole foreground process group, the launcher's SIGTERMs the process group it started each rank
in, and Slurm's and systemd's every process of the job, and a worker that died then would fail the update
the main process is finishing (Paddle raises in the main thread when a worker dies). The main process
decides, as in PyTorch's workers; they end with it: Paddle shuts them down when their loader is done, at
its exit, or in `_exit_now`, it kills any left (its exit would otherwise wait for them: multiprocessing
ends workers at exit with a SIGTERM), and the kernel kills them when it dies without that chance (kill -9,
the OOM killer). They are born with both signals blocked (`starting_data_workers`): none sent to a worker
reaches this process's socket or ends the worker before it ignores them.
"""
import atexit
import contextlib
import ctypes
import multiprocessing
import multiprocessing.util  # noqa: F401  (registers its exit function before ours, see the end)
import os
import select
import signal
import socket
import struct
import sys
import threading
import time

SIGNALS = (signal.SIGTERM, signal.SIGINT)
GRACE_SECONDS = 5.0
REPEAT_SECONDS = 1.0
SO_TIMESTAMP = getattr(socket, 'SO_TIMESTAMP', 29)  # Linux's value, which Python's socket module does not export
PR_SET_PDEATHSIG = 1  # prctl option of linux/prctl.h
_active = None  # the installed StopRequest, for the fork hook


class Interrupted(Exception):
  """A signal arrived where there is nothing to save: unwind and exit with 128 + signum."""

  def __init__(self, signum):
    super().__init__(signum)  # the argument pickles (distributed.on_rank0 passes it to every rank)
    self.signum = signum

  def __str__(self):
    return f'stopped by {signal.Signals(self.signum).name}'


class StopRequest:
  """Installed once per process, from the main thread. `bool(stop)` is True once a signal arrived.

  `under_launcher`: this process is a rank of `paddle.distributed.launch`, whose deadline rules (above).
  """

  def __init__(self, under_launcher=False):
    global _active
    self.signum = 0
    self._under_launcher = under_launcher
    self._deferring = False
    self._finished = False
    self._working = False
    # One message per signal, which the kernel stamps with its arrival: a watcher that gets to read late (the
    # main thread holding the interpreter, a busy machine) still tells a repeat from a later signal.
    self._reader, self._writer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    self._reader.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMP, 1)
    self._writer.setblocking(False)  # the C-level handler must never block
    self._previous_handlers = {s: signal.signal(s, self._handle) for s in SIGNALS}
    self._previous_wakeup_fd = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
    self._watcher = threading.Thread(target=self._watch, args=(threading.main_thread().ident,),
                                     name='stop-watcher', daemon=True)
    self._watcher.start()
    _active = self

  def __bool__(self):
    return self.signum != 0

  def defer(self, deferring):
    """While deferring, the first signal only sets the flag, for the caller to stop at a safe point."""
    self._deferring = deferring

  def finish(self):
    """The process's work is over: a signal from now on is noted, nothing more."""
    self._finished = True

  @contextlib.contextmanager
  def working(self):
    """A checkpoint write or a model's computation, however long, is not a blocked process (a later
    signal still ends it); only waiting for data or at start-up is."""
    self._working = True
    try:
      yield
    finally:
      self._working = False

  def _handle(self, signum, frame):  # main thread, between two bytecodes
    if self.signum or self._finished:
      return  # a later signal is the watcher's
    self.signum = signum
    if not self._deferring:
      raise Interrupted(signum)
    again = '' if self._under_launcher else f' (send it again after {REPEAT_SECONDS:g} s to exit at once)'
    print(f'\n{signal.Signals(signum).name}: finishing this update, then saving a checkpoint{again}',
          file=sys.stderr, flush=True)

  def _watch(self, main_thread):
    """Count the signals as they arrive, whatever the main thread does; end a process blocked after one."""
    first, place, unchanged_since = None, None, None  # first: (signum, when it arrived)
    while True:
      if select.select([self._reader], [], [], 0.2)[0]:
        data, stamp, _, _ = self._reader.recvmsg(1, socket.CMSG_SPACE(struct.calcsize('qq')))
        if not data:  # restore() closed the other end
          self._reader.close()
          return
        signum = data[0]
        if signum not in SIGNALS:  # other handled signals (Paddle's SIGCHLD) write too
          continue
        seconds, microseconds = struct.unpack('qq', stamp[0][2])
        arrived = seconds + microseconds / 1e6
        if first is None:
          first = (signum, arrived)
        elif not self._under_launcher and arrived - first[1] > REPEAT_SECONDS:
          _exit_now(signum, f'{signal.Signals(signum).name} again: exiting now without a checkpoint')
      if first is None or self._under_launcher:
        continue
      # Where the main thread is: the same frame at the same instruction for GRACE_SECONDS means a call
      # into C++ that has not returned (a running Python loop moves between samples).
      frame = sys._current_frames().get(main_thread)
      now_at = (id(frame), frame.f_lasti) if frame else None
      if now_at != place or self._working:
        place, unchanged_since = now_at, time.monotonic()
      elif time.monotonic() - unchanged_since > GRACE_SECONDS:
        where = f' in {frame.f_code.co_name} ({frame.f_code.co_filename}:{frame.f_lineno})' if frame else ''
        _exit_now(first[0], f'{signal.Signals(first[0]).name}: blocked for {GRACE_SECONDS:g} s{where}, '
                            f'e.g. waiting for data: exiting now; the newest complete checkpoint is kept')

  def restore(self):
    """Put the previous handlers back (in-process callers such as tests; main.py keeps its own)."""
    global _active
    signal.set_wakeup_fd(self._previous_wakeup_fd)
    for s, handler in self._previous_handlers.items():
      signal.signal(s, handler)
    self._writer.close()
    self._watcher.join()
    _active = None


def _exit_now(signum, message):
  print(f'\n{message}', file=sys.stderr, flush=True)
  _kill_data_workers()
  sys.stdout.flush()
  os._exit(128 + signum)


@contextlib.contextmanager
def connecting():
  """Around a wait in C++ that holds the interpreter and has nothing to save: a signal ends the process."""
  previous = {s: signal.signal(s, signal.SIG_DFL) for s in SIGNALS}
  try:
    yield
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)


@contextlib.contextmanager
def starting_data_workers():
  """Around the start of a DataLoader's workers: they are born with SIGTERM and SIGINT blocked, and unblock
  them in `in_data_worker`, once they ignore them. Until then a forked worker runs this process's C-level
  handler, which would write the signal into this process's wakeup socket (a second request from a single
  signal), and then Paddle's own, which would end the worker under the update being finished. Signals to
  this process meanwhile go to its other threads (the watcher), its handler running as always."""
  previous = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
  try:
    yield
  finally:
    signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def in_data_worker(worker_id):
  """DataLoader's `worker_init_fn`: the worker ignores SIGTERM and SIGINT (see above) and dies with its
  parent. It runs after Paddle's worker has installed a SIGTERM handler of its own
  (`core._set_process_signal_handler`), which would end it.

  A parent killed without a chance to end its workers (kill -9, the OOM killer) would leave them running
  for ever, parented to init: Paddle's worker notices only between batches, and its exit then waits for a
  queue that nobody reads. The kernel kills them instead (`PR_SET_PDEATHSIG`, Linux), when the thread that
  forked them ends: the main thread, which lives as long as the process."""
  signal.signal(signal.SIGTERM, signal.SIG_IGN)
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)  # a signal that came meanwhile is dropped: ignored
  if sys.platform.startswith('linux'):
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != multiprocessing.parent_process().pid:  # the parent died before the line above
      os._exit(1)


def _kill_data_workers():
  """DataLoader workers still running (possibly stuck in a read), killed and reaped. The process is ending:
  Paddle's SIGCHLD handler, which raises when a worker is killed, is put aside first (where Python allows
  it: the main thread; `_exit_now`, from the watcher thread, ends the process right after)."""
  if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
  children = multiprocessing.active_children()
  for child in children:
    child.kill()
  for child in children:
    child.join(timeout=2)


def _in_forked_child():
  global _active
  if _active is not None:
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _active._reader.close()
    _active._writer.close()  # a child holding it would keep restore() from ending the watcher
    _active = None


os.register_at_fork(after_in_child=_in_forked_child)
atexit.register(_kill_data_workers)  # after multiprocessing.util's exit function (imported above), so run before it
