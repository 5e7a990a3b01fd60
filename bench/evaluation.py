"""Evaluation: images/s of `evaluate.evaluate` over a bare eval-mode forward on the same batches.

evaluate() adds the DataLoader (and its worker start-up), normalisation on the device, top-k, loss and
sums; the bare side runs only `model(x)` under no_grad on the batches, made and normalised beforehand.
The two alternate in one process; medians of the repeats.
"""
import common  # noqa: F401  (threads before Paddle)

import shutil

import numpy as np
import paddle
import paddle.nn.functional as F

import data
import evaluate
import train
from configs import digits_vit_rdrop, vit_b16_cifar100_rdrop
from data import pipeline
from models import vit


def compare(config, repeats):
  """{'evaluate' | 'evaluate, 0 workers' | 'bare': images/s} on config's eval split."""
  dataset = data.build(config.data, config.eval.split)
  model = train.build_model(config, dataset.num_classes)
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


def to_model_input_batch_norm(data_config):
  """Prototype fix: the per-channel affine map as an inference-mode batch_norm, one optimised CPU kernel
  instead of broadcast subtract and divide; statistics made once."""
  mean = paddle.to_tensor([255.0 * m for m in data_config.mean], dtype='float32')
  variance = paddle.to_tensor([(255.0 * s) ** 2 for s in data_config.std], dtype='float32')
  return lambda images: F.batch_norm(images.astype('float32'), mean, variance, training=False, epsilon=0.0)


def normalisation(data_config, shape=(64, 3, 224, 224)):
  """(ms of to_model_input, ms of the batch_norm prototype, largest difference) on one uint8 batch."""
  images = paddle.to_tensor(np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8))
  prototype = to_model_input_batch_norm(data_config)
  difference = float((pipeline.to_model_input(images, data_config) - prototype(images)).abs().max())
  seconds = common.interleaved({'current': lambda: pipeline.to_model_input(images, data_config),
                                'prototype': lambda: prototype(images)}, repeats=7)
  return 1000 * seconds['current'], 1000 * seconds['prototype'], difference


def cifar_config(root):
  c = vit_b16_cifar100_rdrop.get_config()
  c.data.root = root
  c.model.pretrained = ''
  vit.CONFIGS['bench_ti16x4'] = common.small_vit_config
  c.model.variant = 'bench_ti16x4'
  return c


def main():
  rows = []
  demo = digits_vit_rdrop.get_config()
  rows.append(('digits_vit_rdrop: ViT-Ti_2, 360 test images, batch 360, 0 workers', compare(demo, repeats=15)))
  directory = common.scratch_dir('eval')
  try:
    cifar = cifar_config(common.fake_cifar100(directory, train=64, test=128))
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
  current, prototype, difference = normalisation(cifar.data)
  print(common.table(['to_model_input on a uint8 64x3x224x224 batch', 'ms'],
                     [('data/pipeline.py today (broadcast ops, tensors made per call)', f'{current:.0f}'),
                      ('F.batch_norm(training=False) prototype', f'{prototype:.0f}')]))
  print(f'\nLargest difference between the two: {difference:.1e}. Interleaved, median of 7.')
  common.save_results({'evaluate_over_bare': rows[-1][1]['bare'] / rows[-1][1]['evaluate']})


if __name__ == '__main__':
  main()
