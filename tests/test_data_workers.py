"""DataLoader workers and signals: what a worker inherits at its fork, how it ends, what it leaves behind.

Real workers of `data.pipeline.loader` are started; the signal rules themselves are in utils/preemption.py.
"""
import ctypes
import os
import signal
import subprocess
import sys

import numpy as np

from helpers import ROOT, child_env
from data import pipeline
from utils import preemption

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


def test_shared_memory_of_a_zombie_is_removed(tmp_path):
  """A worker killed with its trainer stays a zombie until someone reaps it: it will never delete its files."""
  zombie = subprocess.Popen([sys.executable, '-c', 'pass'])
  while open(f'/proc/{zombie.pid}/stat').read().rpartition(')')[2].split()[0] != 'Z':
    pass  # not reaped: Popen waits only when asked
  (tmp_path / f'paddle_{zombie.pid}_0_1').write_bytes(b'batch')
  pipeline.remove_stale_shared_memory(tmp_path)
  assert os.listdir(tmp_path) == []
  zombie.wait()
