"""The test suite's wall time, as a newcomer runs it: the README's `python -m pytest -n 2` (SHOWN).

Runs the suite in a subprocess from the project root and reports its wall time, pytest's closing line
and the load average before and after (other jobs on the machine lengthen it).
"""
import os
import subprocess
import sys
import time

from bench import common

SHOWN = 'python -m pytest -n 2'  # options and markers: pyproject.toml
COMMAND = [sys.executable, *SHOWN.split()[1:]]


def main():
  load_before = os.getloadavg()[0]
  start = time.perf_counter()
  proc = subprocess.run(COMMAND, cwd=common.ROOT, capture_output=True, text=True)
  seconds = time.perf_counter() - start
  load_after = os.getloadavg()[0]
  lines = proc.stdout.strip().splitlines()
  summary = lines[-1].strip('= ') if lines else f'no output (exit code {proc.returncode})'
  print(f'### 8. Test suite wall time (`{SHOWN}`)\n')
  print(common.table(['wall time', 'pytest says', 'exit code', 'load average (1 min) before, after'],
                     [(f'{seconds / 60:.1f} min ({seconds:.0f} s)', summary, proc.returncode,
                       f'{load_before:.1f}, {load_after:.1f}')]))
  common.save_results({'seconds': seconds, 'summary': summary, 'returncode': proc.returncode,
                       'load': [load_before, load_after]})


if __name__ == '__main__':
  main()
