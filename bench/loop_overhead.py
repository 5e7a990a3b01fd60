"""Loop overhead: train.py's real loop per update over a bare forward/backward/step of the same model.

The loop is `train.train(config, workdir)` on the demo config (digits, in memory, no workers), with its
data, R-Drop loss, logging, metrics and checkpoint cadence; evaluation is left to the end of the run
(and to bench/evaluation.py). Each update is timed between two consecutive `RunLog.progress` calls
(once per update), so start-up and the final evaluation do not count. The bare step runs rdrop_loss,
backward, step and clear_grad on one fixed, already normalised device batch. Loop chunks and bare chunks
alternate; the ratio is taken per round and the median kept.

Then each piece of per-update work the loop adds is timed alone, so the excess can be attributed.
"""
import common  # before Paddle: it sets the CPU threads as main.py does

import contextlib
import io
import shutil
import statistics
import time

import numpy as np
import paddle

import data
import train
from configs import digits_vit_rdrop
from data import pipeline
from utils import checkpoint
from training import optim, runlog
from rdrop import rdrop_loss

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


def bare_setup(config):
  train_set = data.build(config.data, 'train')
  model = train.build_model(config, train_set.num_classes)
  optimizer, scheduler = optim.build(config.train, model.parameters(), config.train.updates)
  batch = next(iter(pipeline.loader(train_set, pipeline.TrainBatches(len(train_set), config.train.batch_size,
                                                                       config.seed), 0)))
  images, labels = pipeline.to_model_input(batch[0], config.data), batch[1]
  model.train()

  def step():
    loss, _, _ = rdrop_loss(model, images, labels, config.rdrop)
    loss.backward()
    optimizer.step()
    optimizer.clear_grad()
  return step, model, optimizer, scheduler, train_set


def bare_chunk(step):
  for _ in range(SKIP):
    step()
  start = time.perf_counter()
  for _ in range(UPDATES - SKIP):
    step()
  return (time.perf_counter() - start) / (UPDATES - SKIP)


def pieces(config, model, optimizer, scheduler, train_set):
  """{name: (callable doing that piece once, calls per update)} of the work the loop adds to a bare step."""
  tc = config.train
  batches = iter(pipeline.loader(train_set, pipeline.TrainBatches(len(train_set), tc.batch_size, config.seed), 0))
  sampler = iter(pipeline.TrainBatches(len(train_set), tc.batch_size, config.seed))
  images = next(batches)[0]
  loss = paddle.to_tensor(1.0)
  sums = paddle.zeros([3])
  update_sums = paddle.zeros([3])
  workdir = common.scratch_dir('pieces')
  log = runlog.RunLog(workdir, True, 0, 10**9)
  ckpt_dir = f'{workdir}/checkpoints'
  counter = iter(range(1, 10**9))
  state = {'model.pdparams': model.state_dict(), 'optimizer.pdopt': optimizer.state_dict(), 'trainer.pdstate': {}}

  def bookkeeping():
    """train.py's per-update loss sums: a fresh update_sums, one stack per micro-batch, added to sums."""
    nonlocal update_sums, sums
    update_sums = paddle.zeros([3], dtype='float32')
    for _ in range(tc.accum_steps):
      update_sums += paddle.stack([loss.detach(), loss.detach(), loss.detach()]) / tc.accum_steps
    sums += update_sums

  result = {
      'DataLoader next() (sampler + 64 x __getitem__ + collate)': (lambda: next(batches), tc.accum_steps),
      '  of which: sampler (one seed table per epoch)': (lambda: next(sampler), tc.accum_steps),
      'to_model_input (batch_norm, cached statistics)': (
          lambda: pipeline.to_model_input(images, config.data), tc.accum_steps),
      'paddle.seed per update (_seed_update)': (lambda: train._seed_update(config, 0, 7), 1),
      'loss bookkeeping (zeros, stack, +=)': (bookkeeping, 1),
      'float(update_sums[0]) host sync': (lambda: float(update_sums[0]), 1),
      'scheduler.step + get_lr': (lambda: (scheduler.step(), optimizer.get_lr()), 1),
      'tqdm progress': (lambda: log.progress(next(counter), loss=0.5, lr=1e-3), 1),
      'log.scalars (VisualDL + metrics.jsonl)': (
          lambda: log.scalars(7, 'train', {'loss': 1.0, 'ce': 1.0, 'kl': 0.0, 'lr': 1e-3}), 1 / tc.log_every),
      'checkpoint save (fsync, sha256)': (
          lambda: checkpoint.save(ckpt_dir, next(counter), state, {}, tc.keep_checkpoints),
          1 / tc.checkpoint_every),
  }
  return result, lambda: (log.close(), shutil.rmtree(workdir, ignore_errors=True))


def main():
  config = demo_config()
  step, model, optimizer, scheduler, train_set = bare_setup(config)
  ratios, medians, loop_means, bare_means = [], [], [], []
  for _ in range(ROUNDS):
    loop_mean, loop_median = loop_chunk(config)
    bare = bare_chunk(step)
    ratios.append(loop_mean / bare)
    medians.append(loop_median / bare)
    loop_means.append(loop_mean)
    bare_means.append(bare)
  bare = statistics.median(bare_means)
  print('### 2. Loop overhead (train.train per update / bare forward+backward+step)\n')
  print(common.table(
      ['config', 'bare ms/update', 'loop ms/update', 'loop / bare (mean, incl. log + checkpoint cadence)',
       'loop / bare (median update)'],
      [('digits_vit_rdrop (ViT-Ti_2, batch 64, R-Drop concat)', f'{1000 * bare:.1f}',
        f'{1000 * statistics.median(loop_means):.1f}', f'{statistics.median(ratios):.3f}',
        f'{statistics.median(medians):.3f}')]))
  print(f'\n{ROUNDS} rounds of {UPDATES} updates each side (first {SKIP} left out), loop and bare alternating; '
        f'median over rounds. Target: at most 1.05.\n')

  work, cleanup = pieces(config, model, optimizer, scheduler, train_set)
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
  print(common.table(['piece', 'us per call', 'calls per update', 'share of a bare update'], rows))


if __name__ == '__main__':
  main()
