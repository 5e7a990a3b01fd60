"""Full disks and read-only filesystems, for real: each case runs in a mount namespace of its own
(`unshare`) on a small tmpfs that fills up or is remounted read-only, and copies its results out."""
import re
import shutil
import subprocess
import sys

import pytest

from helpers import ROOT, child_env, metric_rows, run_main
from test_training import DEMO, TINY, _max_difference, _weights
from utils import checkpoint

EXIT_IO = 74


def _can_mount():
  if not shutil.which('unshare'):
    return False
  probe = subprocess.run(['unshare', '--mount', '--map-root-user', 'sh', '-c', 'mount -t tmpfs tmpfs /mnt'],
                         capture_output=True)
  return probe.returncode == 0


pytestmark = [pytest.mark.slow, pytest.mark.skipif(not _can_mount(), reason='cannot mount a tmpfs in a namespace of its own here')]


def in_small_filesystem(script, out, size='4m'):
  """Run the bash `script` with $FS a fresh tmpfs of `size` (its own mount namespace, gone afterwards),
  $OUT the folder `out` and $PYTHON this interpreter, from the project root. Returns the CompletedProcess."""
  wrapped = f'FS=$(mktemp -d) && mount -t tmpfs -o size={size} tmpfs "$FS" && cd "$ROOT" || exit 99\n{script}'
  return subprocess.run(['unshare', '--mount', '--map-root-user', 'bash', '-c', wrapped], capture_output=True,
                        text=True, timeout=300, env=child_env(ROOT=ROOT, OUT=str(out), PYTHON=sys.executable))


def _exit_codes(proc):
  return [int(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith('exit ')]


def test_a_full_disk_at_start_names_the_file_exits_74_and_leaves_nothing(tmp_path):
  proc = in_small_filesystem('''
    head -c 8M /dev/zero > "$FS/filler" 2> /dev/null
    "$PYTHON" main.py --config configs/digits_vit.py:smoke --workdir "$FS/run"; echo "exit $?"
    ls -A "$FS"
  ''', tmp_path, size='1m')
  assert _exit_codes(proc) == [EXIT_IO], proc.stderr
  assert 'No space left on device' in proc.stderr and '/run/lock' in proc.stderr, proc.stderr
  assert f'(exit {EXIT_IO}: No space left on device, which a later attempt may find mended' in proc.stderr
  assert proc.stdout.split('exit 74\n')[1].split() == ['filler']  # no run folder left behind


def test_a_disk_that_fills_during_training_exits_74_keeping_the_last_checkpoint_and_the_repeated_command_finishes(
    tmp_path):
  args = [*TINY, '--config.train.updates=60', '--config.train.checkpoint_every=4']
  run_main('--config', DEMO, '--workdir', tmp_path / 'reference', *args)
  command = f'"$PYTHON" main.py --config {DEMO} --workdir "$FS/run" {" ".join(args)} --autoresume'
  proc = in_small_filesystem(f'''
    {command} > /dev/null 2> "$OUT/first.err" &
    until [ -d "$FS/run/checkpoints/update_00000004" ]; do sleep 0.01; done
    head -c 64M /dev/zero > "$FS/filler" 2> /dev/null
    wait $!; echo "exit $?"
    cp -r "$FS/run" "$OUT/full"
    rm "$FS/filler"
    {command}; echo "exit $?"
    cp -r "$FS/run" "$OUT/freed"
  ''', tmp_path, size='16m')
  first = (tmp_path / 'first.err').read_text()
  assert _exit_codes(proc) == [EXIT_IO, 0], first + proc.stderr
  assert 'No space left on device' in first and f'(exit {EXIT_IO}: ' in first
  kept = checkpoint.latest_valid(str(tmp_path / 'full' / 'checkpoints'))
  assert kept and checkpoint.update_of(kept) < 60
  assert _max_difference(_weights(tmp_path / 'reference', 60), _weights(tmp_path / 'freed', 60)) == 0
  assert metric_rows(tmp_path / 'freed', 'train') == metric_rows(tmp_path / 'reference', 'train')


def test_on_a_read_only_filesystem_autoresume_has_nothing_to_do_for_a_finished_run_and_names_the_folder_otherwise(
    tmp_path):
  args = [*TINY, '--config.train.updates=4', '--config.train.checkpoint_every=2']
  proc = in_small_filesystem(f'''
    "$PYTHON" main.py --config {DEMO} --workdir "$FS/finished" {" ".join(args)} > /dev/null 2>&1
    cp -r "$FS/finished" "$FS/interrupted" && rm -r "$FS/interrupted/checkpoints/update_00000004"
    mount -o remount,ro "$FS"
    "$PYTHON" main.py --config {DEMO} --workdir "$FS/finished" {" ".join(args)} --autoresume; echo "exit $?"
    "$PYTHON" main.py --config {DEMO} --workdir "$FS/interrupted" {" ".join(args)} --autoresume; echo "exit $?"
    "$PYTHON" main.py --mode eval --workdir "$FS/finished" --output "$OUT/eval.json"; echo "exit $?"
    "$PYTHON" main.py --mode eval --workdir "$FS/finished"; echo "exit $?"
  ''', tmp_path, size='32m')
  assert _exit_codes(proc) == [0, 1, 0, 1], proc.stdout + proc.stderr
  # Into the read-only workdir (the default output): the numbers first, then the file that was not written.
  assert len(re.findall(r'^top1 \d', proc.stdout, re.M)) == 2 and 'error: metrics not written to ' in proc.stderr
  assert 'the results above are complete' in proc.stderr
  assert 'finished at update 4' in proc.stdout and 'nothing to do' in proc.stdout
  assert 'error: cannot write to the workdir ' in proc.stderr and 'is not a writable folder' in proc.stderr
  assert (tmp_path / 'eval.json').exists()
