"""`bash run.sh` started from another folder than the project's: where its paths lead and what it says
(a stand-in `python` on PATH records the command lines instead of training), and a signal to it alone."""
import os
import signal
import subprocess
import time

import pytest

from helpers import ROOT, child_env


def _run_sh_elsewhere(folder, *args, **env):
  """(CompletedProcess, the `python` command lines recorded) of `bash <project>/run.sh ARGS` run in `folder`."""
  bin_dir, calls = folder / 'bin', folder / 'calls'
  bin_dir.mkdir()
  (bin_dir / 'python').write_text('#!/bin/sh\necho "$@" >> "$CALLS"\n')
  (bin_dir / 'python').chmod(0o755)
  full_env = {key: value for key, value in child_env().items() if key not in ('SEEDS', 'GPUS', 'RUNS_DIR')}
  full_env.update(PATH=f'{bin_dir}:{full_env["PATH"]}', CALLS=str(calls), **env)
  proc = subprocess.run(['bash', os.path.join(ROOT, 'run.sh'), *args], cwd=folder, env=full_env,
                        capture_output=True, text=True, timeout=60)
  return proc, [line.split() for line in calls.read_text().splitlines()] if calls.exists() else []


def test_relative_runs_dir_is_taken_from_the_users_folder_and_printed_absolute(tmp_path):
  proc, calls = _run_sh_elsewhere(tmp_path, 'demo', RUNS_DIR='my_runs')
  demo = tmp_path / 'my_runs' / 'demo'
  assert proc.returncode == 0, proc.stderr
  assert [call[call.index('--workdir') + 1] for call in calls] == [f'{demo}/baseline', f'{demo}/rdrop', str(demo)]
  assert f'are in {demo}/baseline and {demo}/rdrop' in proc.stdout and f'visualdl --logdir {demo}' in proc.stdout


def test_every_missing_file_is_named_at_once_under_the_users_folder(tmp_path):
  proc, calls = _run_sh_elsewhere(tmp_path, 'vit_cifar100', WEIGHTS_DIR='w')
  assert proc.returncode == 1 and calls == []
  assert [line.split(' does not exist: set ')[0] for line in proc.stderr.splitlines()] == [
      f'run.sh: {tmp_path}/datasets/cifar-100-python.tar.gz', f'run.sh: {tmp_path}/w/ViT-B_16.npz']


def test_a_sweeps_config_is_the_projects_or_else_one_in_the_users_folder(tmp_path):
  mine, theirs = tmp_path / 'mine', tmp_path / 'theirs'
  mine.mkdir()
  (mine / 'mine.py').write_text('')
  _, calls = _run_sh_elsewhere(mine, 'sweep', 'mine.py:smoke', 'rdrop.alpha=0,1')
  assert calls[0][-2:] == [f'{mine}/mine.py:smoke', 'rdrop.alpha=0,1']
  (theirs / 'configs').mkdir(parents=True)
  (theirs / 'configs' / 'digits_vit.py').write_text('')  # the project's config of that name wins
  _, calls = _run_sh_elsewhere(theirs, 'sweep', 'configs/digits_vit.py', 'rdrop.alpha=0,1')
  assert calls[0][-2:] == ['configs/digits_vit.py', 'rdrop.alpha=0,1']
  # the command the report quotes, as typed: a comma needs no backslash
  assert 'rdrop.alpha=0,1' in calls[0][calls[0].index('--command') + 1:-2]


def test_the_ready_ablations_stop_before_any_run_naming_their_missing_files(tmp_path):
  for ablation, missing in (('ablation_rdrop_alpha', 'cifar-100-python.tar.gz'),
                            ('ablation_dropblock', 'cifar-10-python.tar.gz')):
    folder = tmp_path / ablation
    folder.mkdir()
    proc, calls = _run_sh_elsewhere(folder, ablation, PLAN='1')
    assert proc.returncode == 1 and calls == [], proc.stderr
    assert proc.stderr.startswith(f'run.sh: {folder}/datasets/{missing} does not exist: set ')


def _as_from_a_terminal():
  # A shell started with SIGINT ignored (under nohup, or `cmd &` in a script, as a CI runner may start the
  # tests) can never trap it, as POSIX has it; a terminal starts one with SIGINT at its default.
  signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_run_sh_alone_stops_its_run_with_a_checkpoint_and_starts_no_other(tmp_path, signum):
  """`timeout`, `docker stop` and a scheduler's SIGTERM reach the script, not the python it waits for."""
  env = {key: value for key, value in child_env().items() if key not in ('SEEDS', 'GPUS')}
  log = open(tmp_path / 'log', 'w')
  proc = subprocess.Popen(['bash', os.path.join(ROOT, 'run.sh'), 'demo', '--config.train.updates=100000'],
                          cwd=tmp_path, env={**env, 'RUNS_DIR': 'runs'}, stdout=log, stderr=subprocess.STDOUT,
                          start_new_session=True, preexec_fn=_as_from_a_terminal)
  baseline = tmp_path / 'runs' / 'demo' / 'baseline'
  try:
    deadline = time.time() + 300
    while not (baseline / 'config.py').exists():  # written once the first update has succeeded
      assert proc.poll() is None and time.time() < deadline, (tmp_path / 'log').read_text()
      time.sleep(0.05)
    os.kill(proc.pid, signum)
    assert proc.wait(timeout=120) == 128 + signum, (tmp_path / 'log').read_text()
    with pytest.raises(ProcessLookupError):  # no python left running in the script's session
      os.killpg(proc.pid, 0)
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
  output = (tmp_path / 'log').read_text()
  assert 'checkpoint saved' in output and list((baseline / 'checkpoints').glob('update_*'))
  assert not (tmp_path / 'runs' / 'demo' / 'rdrop').exists()
