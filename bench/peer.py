"""Against a PyTorch peer: one R-Drop update of ours over the same update in PyTorch, same model shape.

The peer is what a user would pick instead: timm's VisionTransformer and torchvision's ResNet (with our
head), with the same dropout placement, the same R-Drop objective (rdrop.py's KL, two passes), the
same optimizer and clipping, on CPU with the same number of kernel threads. It runs in its own virtual
environment (bench/requirements-peer.txt), in a subprocess (bench/peer_torch.py) that stays warm; chunks of
updates alternate between the two processes (ours, peer | peer, ours | ...) with a pause before each chunk
so that neither side's idle threads spin into the other's time; the ratio is taken per round, median kept.

How close each side comes to the machine's limit: an update's arithmetic (bench/flops.py, counted from the
model's shapes) over its time, as a fraction of the faster framework's rate on a large fp32 matrix product,
timed the same way in this run.

Then the tiny ViT's kernels (census(): every linear, attention, norm, GELU, dropout and residual add of an
update, at their shapes) are timed the same way in both frameworks, forward and backward, so the part of the
gap that lies in the frameworks' kernels can be told from ours.
"""
import argparse
import json
import os
import statistics
import subprocess
import time

from bench import common  # before Paddle: it sets the CPU threads as main.py does
from bench import flops

import numpy as np
import paddle

from configs import resnet50_cat12_rdrop, vit_b16_cifar100_rdrop
from kernels import cpu_ops
from models import vit

PEER_PYTHON = os.environ.get('PEER_PYTHON', os.path.join(common.ROOT, '.venv-peer', 'bin', 'python'))
SETUP = ('python -m venv .venv-peer && .venv-peer/bin/pip install -r bench/requirements-peer.txt '
         '(or PEER_PYTHON=/path/to/python with those packages)')
SETTLE_S = 0.5  # pause before each timed chunk: OpenMP threads of the other process may still spin


def recipes():
  """{name: (config, classes, title)}: the recipes compared, resized for a CPU, fp32 (the CPU's precision)."""
  vit_recipe = vit_b16_cifar100_rdrop.get_config()  # R-Drop twice, KL summed, alpha 0.3; momentum, clip 1.0
  vit_recipe.model.variant = 'ViT-Ti_4x6'
  vit_recipe.model.zero_head = False
  vit_recipe.data.img_size = 32
  vit_recipe.train.batch_size = 64
  resnet_recipe = resnet50_cat12_rdrop.get_config()  # R-Drop twice, alpha 5, KL 'mean'; momentum, wd 1e-2
  resnet_recipe.model.backbone_weights = ''
  resnet_recipe.train.batch_size = 8
  for config in (vit_recipe, resnet_recipe):
    config.train.accum_steps = 1
    config.train.precision = 'fp32'
  return {'vit': (vit_recipe, 100, 'tiny ViT (patch 4, width 192, 6 blocks, 3 heads, MLP 768), 32 px, '
                                   '100 classes, batch 64'),
          'resnet': (resnet_recipe, 12, 'ResNet50 + head (1000-128-12), 224 px, 12 classes, batch 8')}


def peer_case(config, classes, title):
  """What the peer needs to build the same model and update (JSON)."""
  m = config.model
  if m.name == 'vit':
    v = vit.VARIANTS[m.variant]()
    model = {'name': 'vit', 'patch': v.patches.size[0], 'width': v.hidden_size, 'depth': v.transformer.num_layers,
             'heads': v.transformer.num_heads, 'mlp': v.transformer.mlp_dim, 'dropout': m.dropout_rate,
             'tokens': (config.data.img_size // v.patches.size[0]) ** 2 + 1}
  else:
    model = {'name': 'resnet', 'depth': m.depth, 'head_width': m.head_width, 'head_dropout': m.head_dropout}
  r, t = config.rdrop, config.train
  return {'title': title, 'model': model, 'batch': t.batch_size, 'classes': classes,
          'image': [m.get('in_channels', 3), config.data.img_size, config.data.img_size],
          'rdrop': {'alpha': r.alpha, 'reduction': r.reduction, 'ce_of_passes': r.ce_of_passes, 'form': r.form},
          'train': {'lr': t.lr, 'momentum': t.momentum, 'weight_decay': t.weight_decay,
                    'clip_grad_norm': t.clip_grad_norm}}


def census(case):
  """The tiny ViT's kernels in one R-Drop update: [(kind, shape, calls per update)], built alike by both sides.

  Two model calls per update (form 'twice'), each running every block once; together they do nearly all of
  the update's arithmetic, so their summed times say how fast the update could be on each framework's
  kernels alone, without model code or autograd bookkeeping."""
  m = case['model']
  rows, width, mlp, p = case['batch'] * m['tokens'], m['width'], m['mlp'], m['dropout']
  blocks = 2 * m['depth']
  return [('linear', [rows, width, 3 * width], blocks),       # q/k/v
          ('linear', [rows, width, width], blocks),           # attention output
          ('linear', [rows, width, mlp], blocks),             # fc1
          ('linear', [rows, mlp, width], blocks),             # fc2
          ('attention', [case['batch'], m['heads'], m['tokens'], width // m['heads']], blocks),
          ('layer_norm', [rows, width], 2 * blocks + 2),      # two per block, one at the end
          ('gelu', [rows, mlp], blocks),
          ('dropout', [rows, mlp, p], blocks),                # after GELU
          ('dropout', [rows, width, p], blocks + 2),          # after fc2, after the position embedding
          ('add', [rows, width], 2 * blocks)]                 # residuals


def kernel_name(kind, shape):
  if kind == 'linear':
    return f'linear {shape[0]}x{shape[1]} -> {shape[2]}'
  if kind == 'attention':
    return (f'attention from the fused q/k/v projection: batch {shape[0]}, {shape[1]} heads, {shape[2]} tokens, '
            f'head {shape[3]}')
  if kind == 'dropout':
    return f'dropout p={shape[2]} {shape[0]}x{shape[1]}'
  return f'{kind.replace("_", " ")} {"x".join(map(str, shape))}' + (' (exact)' if kind == 'gelu' else '')


RECIPE_CONFIGS = recipes()
CASES = {name: peer_case(*recipe) for name, recipe in RECIPE_CONFIGS.items()}
CASES['vit']['census'] = census(CASES['vit'])
UPDATES = {'vit': 2, 'resnet': 1}  # per timed chunk
ROUNDS = 5
KERNEL_CALLS = 10
MATMUL_SIZE, MATMUL_CALLS = 2048, 5  # 17 GFLOP a chunk, large enough for either library's best blocking


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


def build_ours(name):
  """(update callable, trainable parameter count) of our side of case `name`: training's own update
  (bench/common.update_step), its uint8 batch normalised on the device as in training."""
  config, classes, _ = RECIPE_CONFIGS[name]
  update, model = common.update_step(config, classes)
  return update, sum(p.size for p in model.parameters() if not p.stop_gradient)  # not BatchNorm's statistics


def our_kernel(kind, shape):
  """Forward and backward of one of census()'s kernels in Paddle, as our model runs it."""
  rng = np.random.default_rng(0)

  def leaf(*dims):
    return paddle.to_tensor(rng.standard_normal(dims).astype('float32'), stop_gradient=False)

  if kind == 'linear':
    rows, fan_in, fan_out = shape
    layer, x = cpu_ops.Linear(fan_in, fan_out), leaf(rows, fan_in)
    op, inputs = lambda: layer(x), [x, layer.weight, layer.bias]
  elif kind == 'attention':
    batch, heads, tokens, head_dim = shape
    qkv = leaf(batch, tokens, 3 * heads * head_dim)  # the fused projection, as models/vit.py's Attention
    op, inputs = lambda: cpu_ops.attention(qkv, heads, 0.0, training=True), [qkv]
  elif kind == 'layer_norm':
    x, weight, bias = leaf(*shape), leaf(shape[-1]), leaf(shape[-1])
    op, inputs = lambda: cpu_ops.layer_norm(x, weight, bias, 1e-6), [x, weight, bias]
  elif kind == 'gelu':
    x = leaf(*shape)
    op, inputs = lambda: cpu_ops.gelu(x), [x]
  elif kind == 'dropout':
    x = leaf(*shape[:2])
    op, inputs = lambda: cpu_ops.dropout(x, shape[2], training=True), [x]
  else:
    x, y = leaf(*shape), leaf(*shape)
    op, inputs = lambda: x + y, [x, y]
  grad = paddle.to_tensor(rng.standard_normal(op().shape).astype('float32'))

  def forward_backward():
    op().backward(grad)
    for tensor in inputs:
      tensor.clear_gradient(False)
  return forward_backward


def timed(fn, calls):
  """Wall and CPU seconds (all threads of this process) of `calls` calls of `fn`."""
  wall, cpu = time.perf_counter(), time.process_time()
  for _ in range(calls):
    fn()
  return {'seconds': time.perf_counter() - wall, 'cpu_seconds': time.process_time() - cpu}


def alternate(ours, theirs, rounds):
  """Medians of the per-round ratios ours/theirs (wall and CPU time) and of each side's wall seconds.

  Rounds alternate which side goes first (ours, peer | peer, ours | ...), so a slow spell spread over a
  round falls on both. CPU time counts the work of a side's threads even while other jobs take turns on
  the cores, so on a shared machine it is the steadier of the two ratios."""
  sides = {'ours': [], 'peer': []}
  for round_ in range(rounds):
    order = (('ours', ours), ('peer', theirs))
    for name, fn in order if round_ % 2 == 0 else order[::-1]:
      time.sleep(SETTLE_S)
      sides[name].append(fn())

  def median_ratio(key):
    return statistics.median(a[key] / b[key] for a, b in zip(sides['ours'], sides['peer']))
  return {'ratio': median_ratio('seconds'), 'cpu_ratio': median_ratio('cpu_seconds'),
          'ours_s': statistics.median(t['seconds'] for t in sides['ours']),
          'peer_s': statistics.median(t['seconds'] for t in sides['peer'])}


def compare_updates(peer, name, rounds):
  """{'ratio', 'cpu_ratio', 'ours_s', 'peer_s' (per update), 'parameters', 'flops' (per update)} of case `name`."""
  update, parameters = build_ours(name)
  theirs = peer.ask(setup=CASES[name])['parameters']
  if theirs != parameters:
    raise RuntimeError(f'{name}: the peer\'s model has {theirs} parameters, ours {parameters}: not the same model')
  n = UPDATES[name]
  update()  # warm-up, both sides
  peer.ask(updates=1)
  result = alternate(lambda: timed(update, n), lambda: peer.ask(updates=n), rounds)
  config, classes, _ = RECIPE_CONFIGS[name]
  return {**result, 'ours_s': result['ours_s'] / n, 'peer_s': result['peer_s'] / n, 'parameters': parameters,
          'flops': flops.update_flops(config, classes)}


def compare_matmul(peer, rounds):
  """{'ours', 'peer'}: each framework's FLOP/s on a product of two MATMUL_SIZE-square fp32 matrices."""
  rng = np.random.default_rng(0)
  a, b = (paddle.to_tensor(rng.standard_normal((MATMUL_SIZE, MATMUL_SIZE)).astype('float32')) for _ in range(2))

  def ours(calls=MATMUL_CALLS):
    return timed(lambda: paddle.matmul(a, b), calls)
  ours(1)  # warm-up, both sides
  peer.ask(matmul=MATMUL_SIZE, calls=1)
  result = alternate(ours, lambda: peer.ask(matmul=MATMUL_SIZE, calls=MATMUL_CALLS), rounds)
  work = 2 * MATMUL_SIZE ** 3 * MATMUL_CALLS
  return {'ours': work / result['ours_s'], 'peer': work / result['peer_s']}


def compare_kernels(peer, rounds):
  """[(kernel name, calls per update, {'ratio', 'cpu_ratio', 'ours_s', 'peer_s'} per call)] of census()."""
  peer.ask(setup=CASES['vit'])
  rows = []
  for index, (kind, shape, calls) in enumerate(CASES['vit']['census']):
    fn = our_kernel(kind, shape)
    fn()
    peer.ask(kernel=index, calls=1)
    result = alternate(lambda: timed(fn, KERNEL_CALLS), lambda: peer.ask(kernel=index, calls=KERNEL_CALLS), rounds)
    rows.append((kernel_name(kind, shape), calls, {**result, 'ours_s': result['ours_s'] / KERNEL_CALLS,
                                                   'peer_s': result['peer_s'] / KERNEL_CALLS}))
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
  load_before = os.getloadavg()[0]
  try:
    peer = Peer(common.KERNEL_THREADS)
    try:
      updates = {name: compare_updates(peer, name, args.rounds) for name in args.cases}
      peak = compare_matmul(peer, args.rounds)
      kernels = compare_kernels(peer, args.rounds) if 'vit' in args.cases else []
    finally:
      peer.close()
  except (RuntimeError, OSError) as error:  # a broken peer environment must not cost the other benchmarks
    print(f'Not measured: {error}')
    common.save_results({})
    return
  load_after = os.getloadavg()[0]
  v = peer.versions
  print(common.table(
      ['model, batch (R-Drop: form, KL reduction, alpha)', 'parameters', 'ours s/update', 'peer s/update',
       'ours / peer', 'ours / peer, CPU time'],
      [(f'{c["title"]} ({c["rdrop"]["form"]}, {c["rdrop"]["reduction"]}, {c["rdrop"]["alpha"]:g})',
        f'{r["parameters"]:,}', f'{r["ours_s"]:.2f}', f'{r["peer_s"]:.2f}', f'**{r["ratio"]:.2f}**',
        f'{r["cpu_ratio"]:.2f}') for c, r in ((CASES[name], updates[name]) for name in args.cases)]))
  print(f'\nPeer: PyTorch {v["torch"]}, timm {v["timm"]} (VisionTransformer, dropout after the position embedding, '
        f'GELU and fc2 as ours), torchvision {v["torchvision"]} (resnet50 + our head), Python {v["python"]}, '
        f'{v["threads"]} kernel threads, as ours. Load average (1 min) {load_before:.1f} at the start of this '
        f'comparison, {load_after:.1f} at its end. Both: the same KL, momentum SGD, fp32. {args.rounds} rounds of '
        f'{UPDATES["vit"]} (ViT) or {UPDATES["resnet"]} (ResNet) updates a side after a warm-up update, sides '
        'alternating; medians of the per-round ratios (CPU time: all threads of the process). Target for both '
        'models: at most 1.0. When other jobs take turns on the cores, PyTorch\'s threads wait on each other in '
        'every operation, which flatters us: quote a quiet machine\'s run, or compare with OMP_NUM_THREADS=1.')
  machine_peak = max(peak.values())
  for r in updates.values():
    r['ours_of_peak'], r['peer_of_peak'] = (r['flops'] / r[side] / machine_peak for side in ('ours_s', 'peer_s'))
  print('\nThe distance to the limit: each update\'s arithmetic (bench/flops.py: convolutions, linear layers and '
        'attention\'s matrix products counted from the model\'s shapes, backward 2x forward, both R-Drop passes) '
        'over its time, as a share of this machine\'s peak: the faster of the two frameworks on a '
        f'{MATMUL_SIZE}x{MATMUL_SIZE} fp32 matrix product, {machine_peak / 1e9:.0f} GFLOP/s (Paddle '
        f'{peak["ours"] / 1e9:.0f}, PyTorch {peak["peer"] / 1e9:.0f}; timed alternately in this run).\n')
  print(common.table(
      ['model', 'GFLOP per update', 'ours GFLOP/s', 'peer GFLOP/s', 'ours, share of peak', 'peer, share of peak'],
      [(CASES[name]['title'].split(' (')[0], f'{r["flops"] / 1e9:.1f}', f'{r["flops"] / r["ours_s"] / 1e9:.1f}',
        f'{r["flops"] / r["peer_s"] / 1e9:.1f}', f'**{r["ours_of_peak"]:.0%}**', f'{r["peer_of_peak"]:.0%}')
       for name, r in updates.items()]))
  if kernels:
    ours_sum = sum(calls * r['ours_s'] for _, calls, r in kernels)
    peer_sum = sum(calls * r['peer_s'] for _, calls, r in kernels)
    vit_update = updates['vit']
    print('\nThe same kernels in both frameworks: the tiny ViT\'s operations at their shapes, each framework\'s '
          f'own kernel (ours as models/vit.py calls it), forward and backward, {args.rounds} alternating rounds of '
          f'{KERNEL_CALLS} calls:\n')
    print(common.table(
        ['operation (forward + backward)', 'calls per update', 'Paddle ms', 'PyTorch ms', 'Paddle / PyTorch',
         'CPU time ratio'],
        [(name, calls, f'{1000 * r["ours_s"]:.2f}', f'{1000 * r["peer_s"]:.2f}', f'{r["ratio"]:.2f}',
          f'{r["cpu_ratio"]:.2f}') for name, calls, r in kernels]
        + [('**all of them, calls x time**', '', f'{1000 * ours_sum:.0f}', f'{1000 * peer_sum:.0f}',
            f'**{ours_sum / peer_sum:.2f}**', '')]))
    print(f'\nThese kernels alone take {ours_sum / peer_sum:.2f} x PyTorch\'s time; they are '
          f'{ours_sum / vit_update["ours_s"]:.0%} of our update and {peer_sum / vit_update["peer_s"]:.0%} of the '
          'peer\'s (the rest: patch embedding, head, loss, optimizer, autograd and Python).')
  kernel_sums = {'ours_s': ours_sum, 'peer_s': peer_sum} if kernels else {}
  common.save_results({'versions': v, 'updates': updates, 'kernels': kernel_sums, 'matmul_flops_per_s': peak,
                       'load': [load_before, load_after]})


if __name__ == '__main__':
  main()
