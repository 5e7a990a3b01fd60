"""DataLoader workers and signals: what a worker inherits at its fork, how it ends, what it leaves behind.

Real workers of `data.pipeline.loader` are started; the signal rules themselves are in training/preemption.py.
"""
import ctypes
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np

from conftest import ROOT, child_env
from data import pipeline
from training import preemption

PR_GET_PDEATHSIG = 2


def _signals_in(mask_line):
  """Signal numbers of a SigBlk/SigIgn line of /proc/<pid>/status."""
  bits = int(mask_line.split()[1], 16)
  return {n for n in range(1, 65) if bits >> (n - 1) & 1}


def _status():
  with open('/proc/self/status') as f:
    return {line.split(':')[0]: line for line in f}


class _WorkerState(pipeline.SeededDataset):
  """One sample per worker: the worker's signal dispositions and parent-death signal as its 'image'."""
  num_classes = 1

  def __len__(self):
    return 1

  def sample(self, index):
    death_signal = ctypes.c_int()
    ctypes.CDLL(None).prctl(PR_GET_PDEATHSIG, ctypes.byref(death_signal))
    ignored = _signals_in(_status()['SigIgn'])
    blocked = _signals_in(_status()['SigBlk'])
    state = [signal.SIGTERM in ignored, signal.SIGINT in ignored, signal.SIGTERM in blocked,
             signal.SIGINT in blocked, death_signal.value, BORN_BLOCKED.get(os.getpid(), -1)]
    return np.array(state, dtype=np.int64), 0


BORN_BLOCKED = {}  # filled in each worker by _init_after_a_sigterm


def _init_after_a_sigterm(worker_id):
  """A SIGTERM that reaches a worker before its init ran (a scheduler signals every process as it starts)."""
  BORN_BLOCKED[os.getpid()] = int({signal.SIGTERM, signal.SIGINT} <= _signals_in(_status()['SigBlk']))
  os.kill(os.getpid(), signal.SIGTERM)
  preemption.in_data_worker(worker_id)


def test_a_worker_is_born_with_sigterm_and_sigint_blocked_survives_one_sent_early_then_ignores_both_and_dies_with_its_parent():
  loader = pipeline.loader(_WorkerState(), pipeline.EvalBatches(1, 1), num_workers=1)
  loader.worker_init_fn = _init_after_a_sigterm
  (state, _), = list(loader)
  ignores_term, ignores_int, blocks_term, blocks_int, death_signal, born_blocked = state.numpy()[0].tolist()
  assert born_blocked == 1, 'forked with SIGTERM and SIGINT deliverable: the parent\'s handler could see them'
  assert (ignores_term, ignores_int) == (1, 1) and (blocks_term, blocks_int) == (0, 0)
  assert death_signal == signal.SIGKILL
  assert not (set(preemption.SIGNALS) & _signals_in(_status()['SigBlk'])), 'the main thread keeps them blocked'


def test_shared_memory_of_dead_processes_is_removed_and_of_live_ones_kept(tmp_path):
  ended = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True)
  dead = int(ended.stdout)
  names = [f'paddle_{dead}_0_12345', f'paddle_{dead}_1_-678', f'paddle_{os.getpid()}_0_12345', 'other_1_2',
           f'paddle_{os.getppid()}_3_4']
  for name in names:
    (tmp_path / name).write_bytes(b'batch')
  pipeline.remove_stale_shared_memory(tmp_path)
  assert sorted(os.listdir(tmp_path)) == sorted(names[2:])


# In a process of its own: the watcher ends it (os._exit) when it decides that a signal is a second request.
REPEATS_WHILE_THE_WATCHER_WAITS = textwrap.dedent('''
  import os, signal, sys, time
  sys.path.insert(0, os.getcwd())
  from training import preemption
  stop = preemption.StopRequest()
  stop.defer(True)
  os.kill(os.getpid(), signal.SIGTERM)
  time.sleep(0.3)  # the watcher reads the first at once
  sys.setswitchinterval(100)  # from here this thread keeps the interpreter: the watcher cannot read
  start = time.monotonic()
  for repeat_at in {repeats}:
    while time.monotonic() - start < repeat_at:
      pass
    os.kill(os.getpid(), signal.SIGTERM)
  while time.monotonic() - start < 1.5:
    pass
  sys.setswitchinterval(0.005)
  time.sleep(0.5)  # the watcher reads the repeats now, 1.5 s after the first
  print('still running')
''')


def _repeats(*seconds_after_the_first):
  return subprocess.run([sys.executable, '-c', REPEATS_WHILE_THE_WATCHER_WAITS.format(repeats=seconds_after_the_first)],
                        cwd=ROOT, capture_output=True, text=True, env=child_env(), timeout=60)


def test_repeats_within_the_window_are_one_request_however_late_the_watcher_reads_them():
  """As Paddle's launcher repeats its SIGTERM (0.2 s apart) while the main thread holds the interpreter."""
  proc = _repeats(0.2, 0.4)
  assert proc.returncode == 0 and 'still running' in proc.stdout, proc.stderr


def test_a_signal_after_the_window_exits_at_once_without_a_checkpoint():
  proc = _repeats(1.2)
  assert proc.returncode == 128 + signal.SIGTERM and proc.stdout == ''
  assert 'SIGTERM again: exiting now without a checkpoint' in proc.stderr
