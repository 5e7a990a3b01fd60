"""Stop cleanly when the machine is being taken away.

The first SIGTERM or SIGINT asks the training loop to finish the update it is in, write a checkpoint and
exit; a second one exits at once (the last complete checkpoint stays valid, see utils/checkpoint.py).
"""
import os
import signal
import sys


class StopRequest:

  def __init__(self):
    self.signum = 0
    self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}

  def _handle(self, signum, frame):
    if self.signum:
      print(f'\n{signal.Signals(signum).name} again: exiting now without a checkpoint', file=sys.stderr, flush=True)
      os._exit(128 + signum)
    self.signum = signum
    print(f'\n{signal.Signals(signum).name}: finishing this update, then saving a checkpoint '
          '(send it again to exit at once)', file=sys.stderr, flush=True)

  def __bool__(self):
    return self.signum != 0

  def restore(self):
    for s, handler in self._previous.items():
      signal.signal(s, handler)
