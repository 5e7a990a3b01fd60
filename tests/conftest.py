"""Shared helpers: run the real command line in a subprocess, as a user would."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)


def run_main(*args, check=True, timeout=300, env=None):
  """`python main.py ARGS` from the project root; returns the CompletedProcess (stdout+stderr text)."""
  proc = subprocess.run([sys.executable, 'main.py', *map(str, args)], cwd=ROOT, capture_output=True,
                        text=True, timeout=timeout, env={**os.environ, **(env or {})})
  if check and proc.returncode != 0:
    raise AssertionError(f'main.py {" ".join(map(str, args))} exited {proc.returncode}:\n'
                         f'{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}')
  return proc


@pytest.fixture
def main_cli():
  return run_main
