"""Evaluation: images/s of `evaluate.evaluate` over a bare eval-mode forward on the same batches.

evaluate() adds the DataLoader (and its worker start-up), normalisation on the device, top-k, loss and
sums; the bare side runs only `model(x)` under no_grad on the batches, made and normalised beforehand.
The two alternate in one process; medians of the repeats. Then to_model_input alone on a 224 px batch of
64, against the bare cast it cannot avoid (the broadcast subtract-and-divide it replaced took 232 ms here:
BENCHMARKS.md of commit b1ea3d2).
"""
from bench import common  # before Paddle: it sets the CPU threads as main.py does

import shutil

import numpy as np
import paddle

import data
import evaluate
import models
from configs import digits_vit_rdrop
from data import pipeline


def compare(config, repeats):
  """{'evaluate' | 'evaluate, 0 workers' | 'bare': images/s} on config's eval split."""
  dataset = data.build(config.data, config.eval.split)
  model = models.build(config.model, dataset.num_classes, config.seed)
  model.eval()
  batches = [pipeline.to_model_input(images, config.data)
             for images, _ in pipeline.loader(dataset, pipeline.EvalBatches(len(dataset), config.eval.batch_size),
                                              config.data.num_workers)]

  @paddle.no_grad()
  def bare():
    for images in batches:
      model(images).numpy()  # the same one host read per batch that evaluate's sums end with

  in_process = config.copy_and_resolve_references()
  in_process.data.num_workers = 0
  candidates = {'evaluate': lambda: evaluate.evaluate(model, dataset, config), 'bare': bare}
  if config.data.num_workers:  # worker start-up and workers sharing the cores with the forward pass
    candidates['evaluate, 0 workers'] = lambda: evaluate.evaluate(model, dataset, in_process)
  seconds = common.interleaved(candidates, repeats)
  return {name: len(dataset) / s for name, s in seconds.items()}


def normalisation(data_config, shape=(64, 3, 224, 224)):
  """(ms of to_model_input, ms of the bare uint8 -> float32 cast, largest difference from float64 maths).

  The cast is the floor any normalisation pays (one pass over the batch), so the ratio of the two is what
  the per-channel affine map adds; the difference checks the batch_norm form against (x/255 - mean)/std.
  """
  pixels = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
  images = paddle.to_tensor(pixels)
  channels = (slice(None), None, None)
  exact = (pixels / 255.0 - np.array(data_config.mean)[channels]) / np.array(data_config.std)[channels]
  difference = float(np.abs(pipeline.to_model_input(images, data_config).numpy() - exact).max())
  seconds = common.interleaved({'to_model_input': lambda: pipeline.to_model_input(images, data_config),
                                'cast': lambda: images.astype('float32')}, repeats=7)
  return 1000 * seconds['to_model_input'], 1000 * seconds['cast'], difference


def main():
  rows = []
  demo = digits_vit_rdrop.get_config()
  rows.append(('digits_vit_rdrop: ViT-Ti_2, 360 test images, batch 360, 0 workers', compare(demo, repeats=15)))
  directory = common.scratch_dir('eval')
  try:
    cifar = common.small_recipe_config(common.fake_cifar100(directory, train=64, test=128))
    rows.append((f'CIFAR-100 recipe, 4-block ViT-Ti/16 at 224, 128 test images, batch {cifar.eval.batch_size}, '
                 f'{cifar.data.num_workers} workers (Resize in the workers)', compare(cifar, repeats=2)))
  finally:
    shutil.rmtree(directory, ignore_errors=True)
  print('### 4. Evaluation (evaluate.evaluate vs a bare forward on the same batches)\n')
  table = []
  for name, rate in rows:
    no_workers = rate.get('evaluate, 0 workers')
    table.append((name, f'{rate["evaluate"]:.0f}', f'{rate["bare"]:.0f}', f'{rate["bare"] / rate["evaluate"]:.3f}',
                  f'{rate["bare"] / no_workers:.3f}' if no_workers else '(same)'))
  print(common.table(['case', 'evaluate images/s', 'bare forward images/s', 'evaluate / bare time',
                      'evaluate with 0 workers / bare time'], table))
  print('\nAlternating evaluate and bare in one process; median of the repeats.\n')
  normalise, cast, difference = normalisation(cifar.data)
  print(common.table(['on a uint8 64x3x224x224 batch (CIFAR-100 recipe mean/std)', 'ms'],
                     [('data/pipeline.py to_model_input (one batch_norm kernel, cached statistics)',
                       f'{normalise:.0f}'),
                      ('astype(float32) alone (the floor: one pass over the batch)', f'{cast:.0f}')]))
  print(f'\nto_model_input / cast = {normalise / cast:.2f}; largest difference from (x/255 - mean)/std in float64: '
        f'{difference:.1e}. Interleaved, median of 7.')
  common.save_results({'evaluate_over_bare': rows[-1][1]['bare'] / rows[-1][1]['evaluate'],
                       'demo_evaluate_over_bare': rows[0][1]['bare'] / rows[0][1]['evaluate']})


if __name__ == '__main__':
  main()
