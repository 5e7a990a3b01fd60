"""Fixtures (the helpers they share with the tests are in helpers.py)."""
import os
import subprocess

import pytest

from helpers import ROOT, SHORT_TRAINING, child_env, run_main


@pytest.fixture
def busy_cores():
  """Every core kept busy by a loop for the test's duration, as on a shared machine: a test of signals
  passes here or it is flaky."""
  loops = [subprocess.Popen(['sh', '-c', 'while :; do :; done']) for _ in range(os.cpu_count() or 1)]
  yield
  for loop in loops:
    loop.kill()
    loop.wait()


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
