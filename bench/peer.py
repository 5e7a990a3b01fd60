"""Against a PyTorch peer: one R-Drop update of ours over the same update in PyTorch, same model shape.

The peer is what a user would pick instead: timm's VisionTransformer and torchvision's ResNet (with our
head), with the same dropout placement, the same R-Drop objective (utils/rdrop.py's KL, two passes), the
same optimizer and clipping, on CPU with the same number of kernel threads. It runs in its own virtual
environment (bench/requirements-peer.txt), in a subprocess (bench/peer_torch.py) that stays warm; chunks of
updates alternate between the two processes (ours, peer, peer, ours, ...) with a pause between chunks so
that neither side's idle threads spin into the other's time, and the ratio is taken per round, median kept.

Then single operations at the tiny ViT's shapes are timed the same way in both frameworks (forward and
backward), so the part of the gap that lies in the frameworks' kernels can be told from ours.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import common

import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import paddle  # noqa: E402
import paddle.nn.functional as F  # noqa: E402

from configs import resnet50_cat12_rdrop, vit_b16_cifar100_rdrop  # noqa: E402
from models import resnet, vit  # noqa: E402
from utils import optim  # noqa: E402
from utils.rdrop import rdrop_loss  # noqa: E402

PEER_PYTHON = os.environ.get('PEER_PYTHON', os.path.join(common.ROOT, '.venv-peer', 'bin', 'python'))
SETUP = ('python -m venv .venv-peer && .venv-peer/bin/pip install -r bench/requirements-peer.txt '
         '(or PEER_PYTHON=/path/to/python with those packages)')
SETTLE_S = 0.5  # pause before each timed chunk: OpenMP threads of the other process may still spin


def case(recipe, model, batch, image, classes, title):
  """A JSON-able description both processes build from; R-Drop and optimizer settings from a recipe."""
  r, t = recipe.rdrop, recipe.train
  return {'title': title, 'model': model, 'batch': batch, 'image': image, 'classes': classes,
          'rdrop': {'alpha': r.alpha, 'reduction': r.reduction, 'form': r.form},
          'train': {'lr': t.lr, 'momentum': t.momentum, 'weight_decay': t.weight_decay,
                    'clip_grad_norm': t.clip_grad_norm}}


CASES = {
    # The tiny ViT with the ViT-B/16 recipe's R-Drop (alpha 0.3, KL summed, two model calls),
    # momentum and clipping at 1.0.
    'vit': case(vit_b16_cifar100_rdrop.get_config(),
                {'name': 'vit', 'patch': 4, 'width': 192, 'depth': 6, 'heads': 3, 'mlp': 768, 'dropout': 0.1,
                 'tokens': (32 // 4) ** 2 + 1},
                64, [3, 32, 32], 100,
                'tiny ViT (patch 4, width 192, 6 blocks, 3 heads, MLP 768), 32 px, 100 classes, batch 64'),
    # The Cat-12 recipe (R-Drop alpha 5 batchmean on [x; x], momentum, weight decay 1e-2) at a CPU-sized batch.
    'resnet': case(resnet50_cat12_rdrop.get_config(),
                   {'name': 'resnet', 'depth': 50, 'head_width': 128, 'head_dropout': 0.3},
                   8, [3, 224, 224], 12, 'ResNet50 + head (1000-128-12), 224 px, 12 classes, batch 8'),
}
UPDATES = {'vit': 2, 'resnet': 1}  # per timed chunk
ROUNDS = 5
KERNEL_CALLS = 10


class Peer:
  """The PyTorch process: one JSON request per line in, one answer per line out."""

  def __init__(self, threads):
    self.process = subprocess.Popen([PEER_PYTHON, os.path.join(os.path.dirname(__file__), 'peer_torch.py'),
                                     str(threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    self.versions = self._read()

  def _read(self):
    line = self.process.stdout.readline()
    if not line:
      raise RuntimeError(f'the PyTorch peer ({PEER_PYTHON} bench/peer_torch.py) exited with code '
                         f'{self.process.wait()}; see its error above')
    return json.loads(line)

  def ask(self, **request):
    self.process.stdin.write(json.dumps(request) + '\n')
    self.process.stdin.flush()
    return self._read()

  def close(self):
    self.process.stdin.close()
    self.process.wait()


def build_ours(c):
  """(update callable, parameter count) of our side of case `c`."""
  m = c['model']
  if m['name'] == 'vit':
    config = vit._config(m['patch'], m['width'], m['mlp'], m['heads'], m['depth'], dropout=m['dropout'])
    model = vit.VisionTransformer(config, c['image'][-1], c['classes'], in_channels=c['image'][0])
  else:
    model = resnet.ResNetClassifier(m['depth'], c['classes'], m['head_width'], m['head_dropout'])
  train_config = vit_b16_cifar100_rdrop.get_config().train
  train_config.update(c['train'])
  train_config.update({'schedule': 'constant', 'warmup_updates': 0, 'precision': 'fp32', 'optimizer': 'momentum'})
  optimizer, _ = optim.build(train_config, model.parameters(), 10**6)
  rng = np.random.default_rng(0)
  images = paddle.to_tensor(rng.standard_normal((c['batch'], *c['image'])).astype('float32'))
  labels = paddle.to_tensor(rng.integers(0, c['classes'], c['batch']))
  rdrop = ml_collections.ConfigDict(c['rdrop'])
  model.train()

  def update():
    loss, _, _ = rdrop_loss(model, images, labels, rdrop)
    loss.backward()
    optimizer.step()
    optimizer.clear_grad()
  return update, sum(p.size for p in model.parameters() if not p.stop_gradient)  # not BatchNorm's statistics


def our_kernels(c):
  """The operations of peer_torch.kernels in Paddle, at the same shapes (Paddle's layouts)."""
  m = c['model']
  rows, width, heads, tokens = c['batch'] * m['tokens'], m['width'], m['heads'], m['tokens']
  rng = np.random.default_rng(0)

  def leaf(*shape):
    return paddle.to_tensor(rng.standard_normal(shape).astype('float32'), stop_gradient=False)

  x, hidden = leaf(rows, width), leaf(rows, m['mlp'])
  weight, bias = leaf(width, m['mlp']), leaf(m['mlp'])
  norm_w, norm_b = leaf(width), leaf(width)
  q, k, v = (leaf(c['batch'], tokens, heads, width // heads) for _ in range(3))
  scores = leaf(c['batch'], heads, tokens, tokens)
  ops = {
      'matmul': (lambda: paddle.matmul(x, weight), f'{rows}x{width} @ {width}x{m["mlp"]}'),
      'linear': (lambda: F.linear(x, weight, bias), f'the same + bias {m["mlp"]}'),
      'gelu': (lambda: F.gelu(hidden), f'exact, {rows}x{m["mlp"]}'),
      'dropout': (lambda: F.dropout(hidden, m['dropout'], training=True), f'p {m["dropout"]}, {rows}x{m["mlp"]}'),
      'layer_norm': (lambda: F.layer_norm(x, width, norm_w, norm_b, 1e-6), f'{rows}x{width}'),
      'softmax': (lambda: F.softmax(scores, axis=-1), f'{c["batch"]}x{heads}x{tokens}x{tokens}'),
      'attention': (lambda: F.scaled_dot_product_attention(q, k, v), f'{c["batch"]} x {heads} heads x {tokens} tokens, '
                                                                     f'head {width // heads}'),
  }

  def forward_backward(op):
    def run():
      op().sum().backward()
    return run
  return {name: (forward_backward(op), shape) for name, (op, shape) in ops.items()}


def timed(fn, calls):
  start = time.perf_counter()
  for _ in range(calls):
    fn()
  return time.perf_counter() - start


def alternate(ours, theirs, rounds):
  """Median of per-round ratios ours/theirs and the medians of each side, in seconds per chunk.

  Rounds alternate which side goes first (ours, peer | peer, ours | ...), so a slow spell spread over a
  round falls on both."""
  sides = {'ours': [], 'peer': []}
  for round_ in range(rounds):
    order = (('ours', ours), ('peer', theirs))
    for name, fn in order if round_ % 2 == 0 else order[::-1]:
      time.sleep(SETTLE_S)
      sides[name].append(fn())
  ratios = [a / b for a, b in zip(sides['ours'], sides['peer'])]
  return statistics.median(ratios), statistics.median(sides['ours']), statistics.median(sides['peer'])


def compare_updates(peer, name, rounds):
  c = CASES[name]
  update, parameters = build_ours(c)
  theirs = peer.ask(setup=c)['parameters']
  if theirs != parameters:
    raise RuntimeError(f'{name}: the peer\'s model has {theirs} parameters, ours {parameters}: not the same model')
  n = UPDATES[name]
  update()  # warm-up, both sides
  peer.ask(updates=1)
  ratio, ours, peers = alternate(lambda: timed(update, n), lambda: peer.ask(updates=n)['seconds'], rounds)
  return {'ratio': ratio, 'ours_s': ours / n, 'peer_s': peers / n, 'parameters': parameters}


def compare_kernels(peer, rounds):
  """{kernel: (shape, ours ms, peer ms, ratio)} at the tiny ViT's shapes."""
  peer.ask(setup=CASES['vit'])
  rows = {}
  for name, (fn, shape) in our_kernels(CASES['vit']).items():
    fn()
    peer.ask(kernel=name, calls=1)
    ratio, ours, peers = alternate(lambda: timed(fn, KERNEL_CALLS),
                                   lambda: peer.ask(kernel=name, calls=KERNEL_CALLS)['seconds'], rounds)
    rows[name] = (shape, 1000 * ours / KERNEL_CALLS, 1000 * peers / KERNEL_CALLS, ratio)
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--cases', nargs='*', choices=CASES, default=list(CASES), help='models to compare')
  parser.add_argument('--rounds', type=int, default=ROUNDS, help='alternating rounds per comparison')
  parser.add_argument('--results', help='also write the figures as JSON here (run_all.py)')
  args = parser.parse_args()
  print('### 7. Against a PyTorch peer (one R-Drop update of ours / the same update in PyTorch)\n')
  if not os.path.exists(PEER_PYTHON):
    print(f'Not measured: the peer\'s environment {PEER_PYTHON} does not exist. Create it with `{SETUP}`, '
          'then run `bash run.sh bench` again.')
    common.save_results({})
    return
  peer = Peer(common.KERNEL_THREADS)
  try:
    updates = {name: compare_updates(peer, name, args.rounds) for name in args.cases}
    kernels = compare_kernels(peer, args.rounds) if 'vit' in args.cases else {}
  finally:
    peer.close()
  v = peer.versions
  print(common.table(
      ['model, batch (R-Drop: form, KL reduction, alpha)', 'parameters', 'ours s/update', 'peer s/update',
       'ours / peer'],
      [(f'{c["title"]} ({c["rdrop"]["form"]}, {c["rdrop"]["reduction"]}, {c["rdrop"]["alpha"]:g})',
        f'{r["parameters"]:,}', f'{r["ours_s"]:.2f}', f'{r["peer_s"]:.2f}', f'**{r["ratio"]:.2f}**')
       for c, r in ((CASES[name], updates[name]) for name in args.cases)]))
  print(f'\nPeer: PyTorch {v["torch"]}, timm {v["timm"]} (VisionTransformer, dropout after the position embedding, '
        f'GELU and fc2 as ours), torchvision {v["torchvision"]} (resnet50 + our head), Python {v["python"]}, '
        f'{v["threads"]} threads; ours {common.KERNEL_THREADS}. Both: momentum SGD, the same KL, fp32 on the CPU. '
        f'{args.rounds} rounds of {UPDATES["vit"]} (ViT) or {UPDATES["resnet"]} (ResNet) updates a side after one '
        'warm-up update, sides alternating, median of the per-round ratios. Target for the tiny ViT: at most 2.0.\n')
  print('Single operations at the tiny ViT\'s shapes, forward and backward (of `op(x).sum()`), each '
        f'framework\'s own kernel, {args.rounds} alternating rounds of {KERNEL_CALLS} calls:\n')
  print(common.table(['operation', 'shape', 'Paddle ms', 'PyTorch ms', 'Paddle / PyTorch'],
                     [(name, shape, f'{ours:.2f}', f'{peers:.2f}', f'{ratio:.2f}')
                      for name, (shape, ours, peers, ratio) in kernels.items()]))
  common.save_results({'versions': v, **{name: r for name, r in updates.items()},
                       'kernels': {name: row[3] for name, row in kernels.items()}})


if __name__ == '__main__':
  main()
