"""Shared by the tests: run the real command line in a subprocess, as a user would, and read what it wrote."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Importing Paddle (as test modules do) sets OMP_NUM_THREADS=1 in this process's environment; children
# should choose their threads as a user's command would. (conftest.py imports this module first.)
_OMP_AT_START = os.environ.get('OMP_NUM_THREADS')
# Appended to the README's commands that train: the same runs, 20 updates long instead of hundreds.
SHORT_TRAINING = ('--config.train.updates=20', '--config.train.eval_every=10')


def child_env(**extra):
  env = {**os.environ, **extra}
  if _OMP_AT_START is None:
    env.pop('OMP_NUM_THREADS', None)
  return env


def main_command(*args, amp_standin=False):
  """`python main.py ARGS`, or through tests/amp_standin.py: Paddle's AMP acting as on a GPU (from ROOT)."""
  return [sys.executable, *(['-m', 'tests.amp_standin'] if amp_standin else ['main.py']), *map(str, args)]


def run_main(*args, check=True, timeout=300, env=None, amp_standin=False):
  """`python main.py ARGS` from the project root; returns the CompletedProcess (stdout+stderr text)."""
  proc = subprocess.run(main_command(*args, amp_standin=amp_standin), cwd=ROOT, capture_output=True,
                        text=True, timeout=timeout, env=child_env(**(env or {})))
  if check and proc.returncode != 0:
    raise AssertionError(f'main.py {" ".join(map(str, args))} exited {proc.returncode}:\n'
                         f'{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}')
  return proc


def metric_rows(workdir, group):
  """The `group` rows ('train', 'eval') of a run's metrics.jsonl, read as the report reads them (a line cut
  off by a kill is not a row)."""
  from utils.io import read_jsonl
  return [row for row in read_jsonl(os.path.join(workdir, 'metrics.jsonl'))[0] if row['group'] == group]


def cut_in_half(path):
  """Truncate a file to its first half, as a write interrupted by a kill or a full disk leaves it."""
  data = open(path, 'rb').read()
  with open(path, 'wb') as f:
    f.write(data[:len(data) // 2])
