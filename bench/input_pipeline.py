"""Input pipeline of the CIFAR-100 recipe: train transform throughput per core, and time spent waiting.

Data: a generated `cifar-100-python.tar.gz` in the official pickle layout (random pixels; the transform's
cost does not depend on content), read by data/cifar.py with the recipe's config
(configs/vit_b16_cifar100_rdrop.py: RandomResizedCrop(224, scale 0.05..1), uint8 CHW out).

1. images/s of one process (one core): the PIL transform alone, and a whole `dataset[(index, seed)]`
   (seeding, crop, resize, HWC->CHW copy).
2. reader cost, as PaddleClas logs it: the share of each update spent in `next(batches)` of train.py's
   loader, with the configured workers and with none. The model is cut to 4 ViT-Ti/16 blocks so an
   update takes about a second here (ViT-B/16 would take minutes); the batch is 8 images per update.
"""
from bench import common  # before Paddle: it sets the CPU threads as main.py does

import contextlib
import io
import random
import shutil
import statistics
import time

import numpy as np
from PIL import Image

import data
import train
from data import pipeline

UPDATES = 8
SKIP = 2


def recipe_config(root):
  c = common.small_recipe_config(root)
  c.train.batch_size = 8
  c.train.accum_steps = 1
  c.train.updates = UPDATES
  c.train.eval_every = 0
  c.train.log_every = 1
  return c


def transform_rates(config, samples=256):
  """(images/s of the transform alone, images/s of dataset[(index, seed)]) in this one process."""
  dataset = data.build(config.data, 'train')
  pil = [Image.fromarray(dataset.images[i].transpose(1, 2, 0)) for i in range(samples)]
  transform = dataset.transform

  def transform_only():
    random.seed(0)
    for image in pil:
      np.asarray(transform(image))

  def dataset_items():
    for i in range(samples):
      dataset[(i, i)]
  seconds = common.interleaved({'transform': transform_only, 'dataset': dataset_items}, repeats=3)
  return samples / seconds['transform'], samples / seconds['dataset']


class _TimedLoader:
  """Wraps train.py's training loader; adds the time each `next()` blocks to `waits`."""

  def __init__(self, loader, waits):
    self.loader, self.waits = loader, waits

  def __iter__(self):
    inner = iter(self.loader)
    while True:
      start = time.perf_counter()
      batch = next(inner)
      self.waits.append(time.perf_counter() - start)
      yield batch


def reader_share(config, workers):
  """(share of update time waiting for data, seconds per update) of train.train with `workers`."""
  config.data.num_workers = workers
  waits, stamps = [], []
  original_loader, original_progress, original_evaluate = pipeline.loader, train.RunLog.progress, train.evaluate

  def loader(dataset, batch_sampler, num_workers):
    made = original_loader(dataset, batch_sampler, num_workers)
    return _TimedLoader(made, waits) if isinstance(batch_sampler, pipeline.TrainBatches) else made

  def progress(self, update, **postfix):
    original_progress(self, update, **postfix)
    stamps.append(time.perf_counter())

  pipeline.loader, train.RunLog.progress = loader, progress
  # Timed in evaluation.py; here a healthy-looking result, so that the collapse guard stays quiet.
  train.evaluate = lambda *args, **kwargs: {'top1': 0.0, 'top5': 0.0, 'loss': 0.0, 'count': 1, 'majority_class': 0,
                                            'majority_fraction': 0.0, 'prediction_information': 1.0}
  workdir = common.scratch_dir('reader')
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      train.train(config, workdir)
  finally:
    pipeline.loader, train.RunLog.progress, train.evaluate = original_loader, original_progress, original_evaluate
    shutil.rmtree(workdir, ignore_errors=True)
  # waits[k] is the batch of update k + 1; stamps[k] ends update k + 1.
  update_seconds = np.diff(stamps[SKIP - 1:])
  return float(sum(waits[SKIP:]) / update_seconds.sum()), float(np.median(update_seconds))


def main():
  directory = common.scratch_dir('cifar')
  try:
    config = recipe_config(common.fake_cifar100(directory))
    transform_rate, item_rate = transform_rates(config)
    configured = config.data.num_workers
    shares = {configured: [], 0: []}
    seconds = {configured: [], 0: []}
    for _ in range(2):
      for workers in (configured, 0):
        share, per_update = reader_share(config, workers)
        shares[workers].append(share)
        seconds[workers].append(per_update)
  finally:
    shutil.rmtree(directory, ignore_errors=True)
  print('### 3. Input pipeline (CIFAR-100 train transform: RandomResizedCrop to 224, uint8 out)\n')
  print(common.table(['work, one process (one core)', 'images/s'],
                     [('PIL RandomResizedCrop(224) alone', f'{transform_rate:.0f}'),
                      ('dataset[(index, seed)] (seed + crop + CHW copy)', f'{item_rate:.0f}')]))
  print('\nReader cost (share of update time blocked in next(batches)), train.train with a 4-block ViT-Ti/16, '
        f'batch 8, R-Drop {config.rdrop.form}, {UPDATES} updates ({SKIP} warm-up left out), 2 alternating rounds:\n')
  rows = [(f'{w} ({"configured" if w == configured else "in the main process"})',
           f'{100 * statistics.median(shares[w]):.2f}%', f'{statistics.median(seconds[w]):.2f}')
          for w in (configured, 0)]
  print(common.table(['num_workers', 'reader cost share', 's/update'], rows))
  common.save_results({'images_per_core_s': item_rate, 'reader_share': statistics.median(shares[configured])})
  print(f'\nOne core feeds {item_rate:.0f} images/s; an R-Drop update on a GPU consumes each image once for two '
        'passes, so the cores needed per GPU are (GPU passes/s) / 2 / this rate (see the estimate below).')


if __name__ == '__main__':
  main()
