"""Shared helpers: run the real command line in a subprocess, as a user would."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Importing Paddle (as test modules do) sets OMP_NUM_THREADS=1 in this process's environment; children
# should choose their threads as a user's command would.
_OMP_AT_START = os.environ.get('OMP_NUM_THREADS')


def pytest_configure(config):
  config.addinivalue_line('markers', 'slow: runs the command line or a training in processes of its own; '
                          '`-m "not slow"` keeps the unit tests of every module (about 2 minutes on 2 cores)')


def child_env(**extra):
  env = {**os.environ, **extra}
  if _OMP_AT_START is None:
    env.pop('OMP_NUM_THREADS', None)
  return env
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)


def main_command(*args, amp_standin=False):
  """`python main.py ARGS`, or through tests/amp_standin.py: Paddle's AMP acting as on a GPU."""
  return [sys.executable, 'tests/amp_standin.py' if amp_standin else 'main.py', *map(str, args)]


def run_main(*args, check=True, timeout=300, env=None, amp_standin=False):
  """`python main.py ARGS` from the project root; returns the CompletedProcess (stdout+stderr text)."""
  proc = subprocess.run(main_command(*args, amp_standin=amp_standin), cwd=ROOT, capture_output=True,
                        text=True, timeout=timeout, env=child_env(**(env or {})))
  if check and proc.returncode != 0:
    raise AssertionError(f'main.py {" ".join(map(str, args))} exited {proc.returncode}:\n'
                         f'{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}')
  return proc


@pytest.fixture
def busy_cores():
  """Every core kept busy by a loop for the test's duration, as on a shared machine: a test of signals
  passes here or it is flaky."""
  loops = [subprocess.Popen(['sh', '-c', 'while :; do :; done']) for _ in range(os.cpu_count() or 1)]
  yield
  for loop in loops:
    loop.kill()
    loop.wait()


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


@pytest.fixture
def main_cli():
  return run_main


@pytest.fixture
def amp_standin(monkeypatch):
  """Paddle's AMP in this process acts as on a GPU until the test ends (see tests/amp_standin.py)."""
  import amp_standin as standin
  from paddle.amp import grad_scaler
  standin.install(monkeypatch.setattr)
  # Every auto_cast sets this global, which a GradScaler reads (it disables itself outside fp16): restore it.
  amp_state = grad_scaler.amp_global_state()
  monkeypatch.setattr(amp_state, 'amp_dtype', amp_state.amp_dtype)


# Appended to the README's commands that train: the same runs, 20 updates long instead of hundreds.
SHORT_TRAINING = ('--config.train.updates=20', '--config.train.eval_every=10')


@pytest.fixture(scope='session')
def demo_project(tmp_path_factory):
  """(folder, output of `bash run.sh demo`): the project as a user has it after the demo, trained short.

  The folder links every file of the project, so commands run there as from a clone, and their outputs
  (runs/, reports/, ...) stay in the test's temporary folder. The demo's output is a pipe, as a log file is.
  """
  folder = tmp_path_factory.mktemp('project')
  for name in os.listdir(ROOT):
    if name not in ('.git', 'runs'):
      os.symlink(os.path.join(ROOT, name), folder / name)
  proc = subprocess.run(['bash', 'run.sh', 'demo', *SHORT_TRAINING], cwd=folder, capture_output=True, text=True,
                        timeout=600, env=child_env())
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return folder, proc
