"""Loop overhead: train.py's real loop per update over its update step alone, on the same model.

The loop is `train.train(config, workdir)` on the demo config (digits, in memory, no workers), with its
data, logging, metrics and checkpoint cadence; evaluation is left to the end of the run (and to
bench/evaluation.py). Each update is timed between two consecutive `RunLog.progress` calls (once per
update), so start-up and the final evaluation do not count. The step alone is training/step.py's
UpdateStep (bench/common.update_step) on one fixed uint8 device batch. Loop chunks and step chunks
alternate; the ratio is taken per round and the median kept.

Then each piece of per-update work the loop adds is timed alone, so the excess can be attributed.
"""
from bench import common  # before Paddle: it sets the CPU threads as main.py does

import contextlib
import io
import shutil
import statistics
import time

import numpy as np

import data
import train
from configs import digits_vit_rdrop
from data import pipeline
from training import runlog
from utils import checkpoint

UPDATES = 105       # past checkpoint_every=100, so one checkpoint falls inside the timed updates
SKIP = 5            # warm-up updates left out of both sides
ROUNDS = 2

stamps = []
_progress = runlog.RunLog.progress


def _timed_progress(self, update, **postfix):
  _progress(self, update, **postfix)
  stamps.append(time.perf_counter())


runlog.RunLog.progress = _timed_progress


def demo_config():
  c = digits_vit_rdrop.get_config()
  c.train.updates = UPDATES
  c.train.eval_every = UPDATES  # one evaluation, after the last timed update (0 would mean once per epoch)
  return c


def loop_chunk(config):
  """Seconds per update of train.train: (mean over the timed updates, median)."""
  workdir = common.scratch_dir('loop')
  stamps.clear()
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      train.train(config, workdir)
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  intervals = np.diff(stamps[SKIP:])
  return float(intervals.mean()), float(np.median(intervals))


def bare_chunk(update):
  for _ in range(SKIP):
    update()
  start = time.perf_counter()
  for _ in range(UPDATES - SKIP):
    update()
  return (time.perf_counter() - start) / (UPDATES - SKIP)


def pieces(config, model):
  """{name: (callable doing that piece once, calls per update)} of the work the loop adds to the update."""
  tc = config.train
  train_set = data.build(config.data, 'train')
  batches = iter(pipeline.loader(train_set, pipeline.TrainBatches(len(train_set), tc.batch_size, config.seed), 0))
  sampler = iter(pipeline.TrainBatches(len(train_set), tc.batch_size, config.seed))
  workdir = common.scratch_dir('pieces')
  log = runlog.RunLog(workdir, True, 0, 10**9)
  log.open(config)
  window = runlog.LogWindow()
  means = np.ones(3, dtype='float32')
  ckpt_dir = f'{workdir}/checkpoints'
  counter = iter(range(1, 10**9))
  state = {'model': model.state_dict(), 'trainer': {'loop': {'window': window.state_dict()}}}
  result = {
      'DataLoader next() (sampler + 64 x __getitem__ + collate)': (lambda: next(batches), tc.accum_steps),
      '  of which: sampler (one seed table per epoch)': (lambda: next(sampler), tc.accum_steps),
      'log window (LogWindow.add)': (lambda: window.add(means, False), 1),
      'progress line or bar (RunLog.progress)': (lambda: log.progress(next(counter), objective=0.5, lr=1e-3), 1),
      'log row (VisualDL + metrics.jsonl)': (
          lambda: log.scalars(7, 'train', {'objective': 1.0, 'ce': 1.0, 'kl': 0.0, 'lr': 1e-3}), 1 / tc.log_every),
      'checkpoint save (fsync, sha256)': (
          lambda: checkpoint.save(ckpt_dir, state, checkpoint.Manifest(update=next(counter)), tc.keep_checkpoints),
          1 / tc.checkpoint_every),
  }
  return result, lambda: (log.close(), shutil.rmtree(workdir, ignore_errors=True))


def main():
  config = demo_config()
  update, model = common.update_step(config, 10)
  ratios, medians, loop_means, bare_means = [], [], [], []
  for _ in range(ROUNDS):
    loop_mean, loop_median = loop_chunk(config)
    bare = bare_chunk(update)
    ratios.append(loop_mean / bare)
    medians.append(loop_median / bare)
    loop_means.append(loop_mean)
    bare_means.append(bare)
  bare = statistics.median(bare_means)
  print('### 2. Loop overhead (train.train per update / the update step alone on a fixed batch)\n')
  print(common.table(
      ['config', 'update step ms', 'loop ms/update', 'loop / step (mean, incl. log + checkpoint cadence)',
       'loop / step (median update)'],
      [('digits_vit_rdrop (ViT-Ti_2, batch 64, R-Drop concat)', f'{1000 * bare:.1f}',
        f'{1000 * statistics.median(loop_means):.1f}', f'{statistics.median(ratios):.3f}',
        f'{statistics.median(medians):.3f}')]))
  print(f'\n{ROUNDS} rounds of {UPDATES} updates each side (first {SKIP} left out), loop and bare alternating; '
        f'median over rounds. Target: at most 1.05.\n')

  work, cleanup = pieces(config, model)
  try:
    calls = {name: common.per_call(fn, 3 if per_update < 1 else 20) for name, (fn, per_update) in work.items()}
    seconds = common.interleaved(calls, repeats=5)
  finally:
    cleanup()
  rows = []
  for name, (fn, per_update) in work.items():
    once = seconds[name] / (3 if per_update < 1 else 20)
    rows.append((name, f'{1e6 * once:.0f}', f'{per_update:g}', f'{100 * once * per_update / bare:.2f}%'))
  common.save_results({'loop_over_bare': statistics.median(ratios)})
  print('Where the loop\'s extra time goes (each piece timed alone, interleaved, median of 5):\n')
  print(common.table(['piece', 'us per call', 'calls per update', 'share of an update step'], rows))


if __name__ == '__main__':
  main()
