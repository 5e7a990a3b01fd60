"""Every example command of README.md and docs/*.md runs as written on the demo's runs
(tests/conftest.py: demo_project)."""
import glob
import os
import re
import subprocess
import sys

import pytest

from helpers import ROOT, SHORT_TRAINING, child_env

pytestmark = pytest.mark.slow  # runs the command line in processes of its own


def _trains(command):
  return '--mode' not in command or '--mode train' in command


def readme_commands():
  """The one-line `python main.py` and `python -m paddle.distributed.launch` commands of the bash blocks of
  README.md and docs/*.md, but those with a `...` placeholder (paths to data or weights that only a user has),
  those cut over lines (loops over seeds), and the commands that read the runs of such a command before them in
  their block (a report of the runs a loop trained)."""
  commands = []
  for page in ['README.md', *sorted(glob.glob(os.path.join(ROOT, 'docs', '*.md')))]:
    with open(os.path.join(ROOT, page)) as f:
      blocks = re.findall(r'```bash\n(.*?)```', f.read(), re.S)
    for block in blocks:
      left_out = False
      for line in (line.strip() for line in block.splitlines()):
        if not line.startswith(('python main.py', 'python -m paddle.distributed.launch')):
          continue
        if '...' in line or line.endswith('\\') or (left_out and not _trains(line)):
          left_out = True
        else:
          commands.append(line)
  return commands


def test_the_readme_shows_every_mode():
  modes = {re.search(r'--mode (\w+)', c).group(1) if '--mode' in c else 'train' for c in readme_commands()}
  assert modes == {'train', 'resume', 'eval', 'predict', 'export', 'report'}


@pytest.mark.parametrize('command', readme_commands())
def test_readme_command_runs_as_written_on_the_demo(demo_project, command):
  folder, _ = demo_project
  full = command + (' ' + ' '.join(SHORT_TRAINING) if _trains(command) else '')
  proc = subprocess.run(full, shell=True, cwd=folder, capture_output=True, text=True, timeout=600, env=child_env())
  assert proc.returncode == 0, f'{full}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}'
  assert 'error' not in proc.stderr.lower() and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  output = re.search(r'--output (\S+)', command)
  if output:  # a relative --output is relative to the current folder, as the README says
    assert os.path.isfile(folder / output.group(1))


def test_the_inference_snippet_runs_as_written_on_the_demos_export(demo_project):
  folder, _ = demo_project
  subprocess.run([sys.executable, 'main.py', '--mode', 'export', '--workdir', 'runs/demo/rdrop'], cwd=folder,
                 check=True, capture_output=True, timeout=600, env=child_env())
  with open(os.path.join(ROOT, 'docs', 'inference.md')) as f:
    snippets = [block for block in re.findall(r'```python\n(.*?)```', f.read(), re.S)
                if 'from paddle import inference' in block]
  assert len(snippets) == 1
  proc = subprocess.run([sys.executable, '-c', snippets[0]], cwd=folder, capture_output=True, text=True, timeout=600,
                        env=child_env())
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert re.fullmatch(r'\d+\.\d% of the scans get their label\n', proc.stdout), proc.stdout
