"""Peak host memory of one ViT-B/16 training micro-batch, with and without activation recompute.

Each measurement runs in a fresh subprocess (peak RSS only grows). The child builds the recipe's model
(configs/vit_b16_cifar100_rdrop.py: ViT-B/16 at 224, 100 classes, R-Drop 'twice' with alpha 0.3 and
KL summed, Momentum), runs one update to allocate gradients and optimizer state, then a
second update and reports the peak RSS (getrusage). The RSS before any update plus the gradient and momentum bytes (2 x parameters x 4 B)
is the static part; peak minus that is the activation peak. Recompute is prototyped by wrapping each transformer block's forward in
`paddle.distributed.fleet.utils.recompute`, which keeps only block inputs and reruns each block's
forward (with its dropout masks, preserve_rng_state) during backward.
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
  from paddle.distributed.fleet.utils import recompute

  from configs import vit_b16_cifar100_rdrop
  from models import vit
  from utils import optim
  from utils.rdrop import rdrop_loss

  config = vit_b16_cifar100_rdrop.get_config()
  config.model.pretrained = ''
  model = vit.build(config.model, 100)
  optimizer, _ = optim.build(config.train, model.parameters(), config.train.updates)
  static = psutil.Process().memory_info().rss + 2 * 4 * sum(p.size for p in model.parameters())
  blocks = list(model.transformer.encoder.layer)
  plain_forwards = [block.forward for block in blocks]

  def use_recompute(on):
    for block, forward in zip(blocks, plain_forwards):
      block.forward = (lambda x, f=forward: recompute(f, x)) if on else forward

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
      use_recompute(on)
      times[on].append(update())
    return {'plain_s': statistics.median(times[False]), 'recompute_s': statistics.median(times[True])}
  use_recompute(mode == 'recompute')
  update()
  update()
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  return {'static_mb': static / 2**20, 'peak_mb': peak / 2**20}


def run_child(mode):
  out = subprocess.run([sys.executable, os.path.abspath(__file__), '--child', mode], capture_output=True,
                       text=True, check=True, timeout=900, env=common.child_env())
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
