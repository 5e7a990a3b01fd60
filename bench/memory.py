"""Peak host memory of one ViT-B/16 training micro-batch, with and without activation recompute.

Each measurement runs in a fresh subprocess (peak RSS only grows). The child builds the recipe's model
through models.build (configs/vit_b16_cifar100_rdrop.py: ViT-B/16 at 224, 100 classes, R-Drop 'twice' with
alpha 0.3 and KL summed, Momentum), runs one update to allocate gradients and optimizer state, then a second
update and reports the peak RSS (getrusage). The RSS before any update plus the gradient and momentum bytes
(2 x parameters x 4 B) is the static part; peak minus that is the activation peak.

Recompute is the model's own switch, `config.model.recompute`: models/vit.py then wraps each encoder block
in `paddle.distributed.fleet.utils.recompute` while training, keeping only block inputs and rerunning each
block's forward (with its dropout masks) during backward. The timing child builds one model and flips
`model.transformer.encoder.recompute` between updates, so both variants share weights, optimizer state and
the machine's load.
"""
import json
import os
import statistics
import subprocess
import sys

import common  # (threads before Paddle)

MICRO_BATCH = 2


def child(mode):
  import resource
  import time

  import numpy as np
  import paddle
  import psutil

  import models
  from configs import vit_b16_cifar100_rdrop
  from utils import optim
  from utils.rdrop import rdrop_loss

  config = vit_b16_cifar100_rdrop.get_config()
  config.model.pretrained = ''
  config.model.recompute = mode == 'recompute'
  model = models.build(config.model, 100)
  optimizer, _ = optim.build(config.train, model.parameters(), config.train.updates)
  static = psutil.Process().memory_info().rss + 2 * 4 * sum(p.size for p in model.parameters())
  rng = np.random.default_rng(0)
  images = paddle.to_tensor(rng.standard_normal((MICRO_BATCH, 3, 224, 224)).astype('float32'))
  labels = paddle.to_tensor(rng.integers(0, 100, MICRO_BATCH))
  model.train()

  def update():
    start = time.perf_counter()
    loss, _, _ = rdrop_loss(model, images, labels, config.rdrop)
    loss.backward()
    optimizer.step()
    optimizer.clear_grad()
    return time.perf_counter() - start

  if mode == 'time':  # both variants alternating in this one process
    times = {False: [], True: []}
    update()
    for on in (False, True) * 2:
      model.transformer.encoder.recompute = on
      times[on].append(update())
    return {'plain_s': statistics.median(times[False]), 'recompute_s': statistics.median(times[True])}
  update()
  update()
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  return {'static_mb': static / 2**20, 'peak_mb': peak / 2**20}


def run_child(mode):
  out = subprocess.run([sys.executable, os.path.abspath(__file__), '--child', mode], capture_output=True,
                       text=True, check=True, timeout=900)
  return json.loads(out.stdout.strip().splitlines()[-1])


def main():
  plain, recomputed, timing = run_child('plain'), run_child('recompute'), run_child('time')
  rows = []
  for name, r in (('no recompute', plain), ('recompute each block', recomputed)):
    rows.append((name, f'{r["static_mb"]:.0f}', f'{r["peak_mb"]:.0f}', f'{r["peak_mb"] - r["static_mb"]:.0f}'))
  activations = {name: r['peak_mb'] - r['static_mb'] for name, r in (('plain', plain), ('recompute', recomputed))}
  saved = 1 - activations['recompute'] / activations['plain']
  print(f'### 5. Memory: ViT-B/16 training micro-batch of {MICRO_BATCH} at 224 px, R-Drop twice (fp32, CPU)\n')
  print(common.table(['variant', 'static: model + grads + momentum (MB)', 'peak RSS (MB)',
                      'activation peak (MB)'], rows))
  print(f'\nRecompute cuts the activation peak by {saved:.0%} ({plain["peak_mb"] - recomputed["peak_mb"]:.0f} MB '
        f'less peak RSS at micro-batch {MICRO_BATCH}; activations scale with the micro-batch); time per update '
        f'recompute / plain = {timing["recompute_s"] / timing["plain_s"]:.2f} (after a warm-up update, alternating '
        f'in one process, 2 each, median; plain {timing["plain_s"]:.1f} s per update).')


if __name__ == '__main__':
  if len(sys.argv) == 3 and sys.argv[1] == '--child':
    print(json.dumps(child(sys.argv[2])))
  else:
    main()
