"""Demo time-to-accuracy: seconds until configs/digits_vit_rdrop.py first reaches 95% test top-1.

Runs the real command line (`python main.py --config configs/digits_vit_rdrop.py`) with evaluation every
25 updates, watches `metrics.jsonl`, notes when the first evaluation row at or above the target appears,
then stops the run with SIGTERM (it saves a checkpoint and exits). Times are from the launch of the
process (imports and start-up included) and from the modification time of `run.jsonl`, which main.py
writes just before training starts.
"""
import os
import shutil
import signal
import subprocess
import sys
import time

from bench import common
from utils.io import read_jsonl

TARGET = 95.0
EVAL_EVERY = 25


def read_evals(path):
  return [(row['update'], row['top1']) for row in read_jsonl(path)[0] if row['group'] == 'eval']


def main():
  workdir = common.scratch_dir('demo')
  metrics = os.path.join(workdir, 'metrics.jsonl')
  launched = time.time()
  process = subprocess.Popen([sys.executable, 'main.py', '--config', 'configs/digits_vit_rdrop.py',
                              '--workdir', workdir, f'--config.train.eval_every={EVAL_EVERY}'],
                             cwd=common.ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  reached = None
  try:
    while process.poll() is None and reached is None:
      time.sleep(0.05)
      reached = next(((update, top1) for update, top1 in read_evals(metrics) if top1 >= TARGET), None)
    seen = time.time()
    if process.poll() is None:
      process.send_signal(signal.SIGTERM)
    process.wait(timeout=120)
    evals = read_evals(metrics)
    started = os.path.getmtime(os.path.join(workdir, 'run.jsonl'))
  finally:
    if process.poll() is None:
      process.kill()
    shutil.rmtree(workdir, ignore_errors=True)
  print(f'### 6. Demo time to {TARGET:.0f}% test accuracy (configs/digits_vit_rdrop.py, eval every {EVAL_EVERY})\n')
  if reached is None:
    best = max(evals, key=lambda e: e[1]) if evals else (0, 0.0)
    print(f'Not reached: best {best[1]:.2f}% at update {best[0]} of the full run.')
    return
  common.save_results({'target': TARGET, 'update': reached[0], 'top1': reached[1], 'seconds_from_launch': seen - launched})
  print(common.table(['reached at update', 'top-1 there', 's from launch', 's from run start (run.jsonl)'],
                     [(reached[0], f'{reached[1]:.2f}%', f'{seen - launched:.1f}', f'{seen - started:.1f}')]))
  print('\nTest top-1 at each evaluation until then: '
        + ', '.join(f'{update}: {top1:.1f}%' for update, top1 in evals if update <= reached[0])
        + '. One run, seed 0; the time includes the evaluations.')


if __name__ == '__main__':
  main()
