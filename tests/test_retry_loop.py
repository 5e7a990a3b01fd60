"""The retry loop of docs/preemption.md, run as written there with a stand-in for the training command."""
import os
import re
import stat
import subprocess

import pytest

from helpers import ROOT


def _retry_script():
  """The `retry.sh` block of docs/preemption.md, verbatim."""
  text = open(os.path.join(ROOT, 'docs', 'preemption.md')).read()
  blocks = [block for block in re.findall(r'```bash\n(.*?)```', text, re.S) if '# retry.sh' in block]
  assert len(blocks) == 1, 'docs/preemption.md should hold one retry.sh block'
  return blocks[0]


def _executable(path, text):
  path.write_text(text)
  path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _run_loop(tmp_path, codes):
  """(the loop's exit code, how often the command ran, how often the loop slept) when the command exits
  with `codes` one after another."""
  (tmp_path / 'retry.sh').write_text(_retry_script())
  (tmp_path / 'codes').write_text('\n'.join(map(str, codes)) + '\n')
  # The command exits with the next code of the list (then 0); `sleep` only counts: the test takes no minutes.
  _executable(tmp_path / 'command', '#!/bin/bash\necho run >> calls\ncode=$(head -n 1 codes)\n'
                                    'sed -i 1d codes\nexit "${code:-0}"\n')
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  _executable(bin_dir / 'sleep', '#!/bin/bash\necho "$1" >> slept\n')
  env = {**os.environ, 'PATH': f'{bin_dir}{os.pathsep}{os.environ["PATH"]}'}
  proc = subprocess.run(['bash', 'retry.sh', './command'], cwd=tmp_path, env=env, capture_output=True,
                        text=True, timeout=60)
  lines = lambda name: (tmp_path / name).read_text().split() if (tmp_path / name).exists() else []
  return proc.returncode, len(lines('calls')), lines('slept')


@pytest.mark.parametrize('codes, code, runs', [
    ([143, 74, 75, 137, 0], 0, 5),  # preemption, full disk, busy workdir, kill -9: repeated until done
    ([75, 1], 1, 2),                # a mistake (e.g. a missing dataset): stop, and say so
    ([130, 2], 2, 2),               # python could not open main.py, or a Ctrl-C to the launcher
])
def test_retry_loop_repeats_only_what_repeating_can_mend_and_keeps_the_exit_code(tmp_path, codes, code, runs):
  assert _run_loop(tmp_path, codes) == (code, runs, ['60'] * (runs - 1))
