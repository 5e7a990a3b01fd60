"""What a run shows while it trains: progress in a terminal and in a log file, and the VisualDL record."""
import pytest
import fcntl
import glob
import os
import pty
import struct
import subprocess
import sys
import termios

from helpers import ROOT, child_env
from configs import digits_vit
from training.runlog import RunLog


def _scalars(workdir, tag):
  from visualdl import LogReader
  files = glob.glob(os.path.join(workdir, 'vdl', 'vdlrecords.*'))
  assert len(files) == 1, files  # VisualDL shows only the newest record file of a folder
  return [(record.id, record.value) for record in LogReader(file_path=files[0]).get_data('scalar', tag)]


@pytest.mark.slow
def test_piped_run_logs_plain_lines_without_bar_fragments(demo_project):
  _, demo = demo_project  # `bash run.sh demo` with its output to a pipe, as to a log file
  output = demo.stdout + demo.stderr
  assert '\r' not in output and '|' not in output and '\x1b' not in output, output
  progress = [line for line in demo.stderr.splitlines() if line.startswith('update ')]
  assert progress[0].startswith('update 1/20 (5%)  objective ') and progress[-1].startswith('update 20/20 (100%)  ')
  for line in progress:  # (two runs: the baseline and R-Drop) no speed or ETA from the first update alone
    first = line.startswith('update 1/')
    assert ' lr ' in line and ' elapsed ' in line and (' ETA ' in line and ' samples/s ' in line) != first, line
  assert 'update 10: test top1 ' in demo.stdout and 'update 20: test top1 ' in demo.stdout


def _progress_on_a_terminal(tmp_path, columns):
  """(stdout, what the terminal of `columns` columns received) of a 3-update RunLog with one log line."""
  script = ('import sys; from training.runlog import RunLog\n'
            f'log = RunLog({str(tmp_path)!r}, True, 0, 3)\n'
            'log.info("a log line")\n'
            'for update in (1, 2, 3): log.progress(update, objective=0.5, lr=1e-3)\n'
            'log.close()\n')
  controller, terminal = pty.openpty()
  fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack('HHHH', 24, columns, 0, 0))
  proc = subprocess.run([sys.executable, '-c', script], cwd=ROOT, stdout=subprocess.PIPE, stderr=terminal,
                        env=child_env(), timeout=120)
  os.close(terminal)
  received = b''
  while chunk := _read_or_nothing(controller):
    received += chunk
  os.close(controller)
  assert proc.returncode == 0
  return proc.stdout.decode(), received.decode()


def test_terminal_gets_a_bar_with_log_lines_above_it(tmp_path):
  stdout, bar = _progress_on_a_terminal(tmp_path, columns=100)
  assert stdout == 'a log line\n'
  assert '\r' in bar and '3/3 [' in bar and 'objective=0.5' in bar


def test_a_terminal_of_no_width_gets_plain_lines(tmp_path):
  """Some job runners give a pseudo-terminal of 0 columns, where a bar shows nothing at all."""
  _, lines = _progress_on_a_terminal(tmp_path, columns=0)
  assert '\r' not in lines.replace('\r\n', '\n')
  assert lines.startswith('update 1/3 (33%)  objective 0.5  lr 0.001  elapsed 0:00') and 'update 3/3 (100%)' in lines


def _read_or_nothing(fd):
  try:
    return os.read(fd, 65536)
  except OSError:  # Linux: the terminal's other end is closed and all was read
    return b''


def test_resume_replays_the_history_kept_into_one_visualdl_file(tmp_path):
  config = digits_vit.get_config()
  log = RunLog(str(tmp_path), True, 0, 6)
  log.open(config)
  for update in range(1, 7):
    log.scalars(update, 'train', {'objective': float(update), 'ce': 1.0})
  log.close()
  resumed = RunLog(str(tmp_path), True, 4, 6)  # a crash after the checkpoint of update 4
  resumed.open(config)
  resumed.scalars(5, 'train', {'objective': 50.0, 'ce': 1.0})
  resumed.close()
  assert _scalars(tmp_path, '1 train/objective') == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (5, 50.0)]


def test_visualdl_names_each_run_by_its_last_two_folders(tmp_path):
  from visualdl import LogReader
  log = RunLog(str(tmp_path / 'demo' / 'rdrop'), True, 0, 1)
  log.open(digits_vit.get_config())
  log.close()
  reader = LogReader(logdir=str(tmp_path))
  reader.load_new_data()
  assert list(reader.tags2name.values()) == ['demo/rdrop']
