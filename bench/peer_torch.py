"""The PyTorch side of bench/peer.py: the same models and the same R-Drop update, in the peer's environment.

Runs under the peer's Python (`.venv-peer/bin/python`, bench/requirements-peer.txt: timm's
VisionTransformer, torchvision's ResNet) and never imports this project's code, which needs Paddle. It reads
one JSON request per line on stdin and answers one JSON line on stdout, so bench/peer.py can alternate
timed chunks between the two frameworks while both processes stay warm:

  {"setup": CASE}                    build the case (bench/peer.py's CASES describe it)  -> {"parameters": N}
  {"updates": K}                     run K updates                 -> {"seconds": wall, "cpu_seconds": cpu}
  {"kernel": I, "calls": K}          K calls of the case's census kernel I (forward, backward), the same
                                     kernels bench/peer.py times in Paddle -> {"seconds": wall, "cpu_seconds": cpu}
  {"matmul": N, "calls": K}          K products of two N x N fp32 matrices (the machine's peak rate)
                                     -> {"seconds": wall, "cpu_seconds": cpu}
"""
import json
import platform
import sys
import time

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from timm.models.vision_transformer import VisionTransformer


def vit(case):
  """timm's ViT with the dropout of the R-Drop authors' ViT (models/vit.py): after the position embedding,
  after GELU and after fc2; none after the attention's output projection (their attention_dropout_rate 0)."""
  m = case['model']
  model = VisionTransformer(img_size=case['image'][-1], patch_size=m['patch'], in_chans=case['image'][0],
                            embed_dim=m['width'], depth=m['depth'], num_heads=m['heads'],
                            mlp_ratio=m['mlp'] / m['width'], num_classes=case['classes'],
                            pos_drop_rate=m['dropout'], proj_drop_rate=m['dropout'], global_pool='token')
  for block in model.blocks:
    block.attn.proj_drop = nn.Identity()
  return model


def resnet(case):
  """torchvision's ResNet (the architecture paddle.vision's mirrors) with models/resnet.py's head."""
  m = case['model']
  backbone = getattr(torchvision.models, f'resnet{m["depth"]}')(num_classes=1000)
  return nn.Sequential(backbone, nn.Linear(1000, m['head_width']), nn.Sigmoid(), nn.Dropout(m['head_dropout']),
                       nn.Linear(m['head_width'], case['classes']), nn.Dropout(m['head_dropout']))


def kl(p, q, reduction):
  """rdrop.py's compute_kl_loss: KL(P||Q) + KL(Q||P) from logits, with its three reductions."""
  log_p, log_q = F.log_softmax(p, dim=-1), F.log_softmax(q, dim=-1)
  total = ((log_p.exp() - log_q.exp()) * (log_p - log_q)).sum()
  samples, classes = p.shape
  return total / {'sum': 1, 'batchmean': samples, 'mean': 2 * samples * classes}[reduction]


def update_fn(case):
  """(one R-Drop update on a fixed random batch, trainable parameter count) of the case, as bench/peer.py's."""
  model = {'vit': vit, 'resnet': resnet}[case['model']['name']](case)
  model.train()
  t = case['train']
  optimizer = torch.optim.SGD(model.parameters(), lr=t['lr'], momentum=t['momentum'], weight_decay=t['weight_decay'])
  generator = torch.Generator().manual_seed(0)
  images = torch.randn(case['batch'], *case['image'], generator=generator)
  labels = torch.randint(0, case['classes'], (case['batch'],), generator=generator)
  rdrop = case['rdrop']

  def update():
    if rdrop['form'] == 'twice':
      logits1, logits2 = model(images), model(images)
    else:
      logits1, logits2 = model(torch.cat([images, images])).chunk(2)
    ce = F.cross_entropy(logits1, labels) + F.cross_entropy(logits2, labels)
    ce = ce if rdrop['ce_of_passes'] == 'sum' else ce / 2
    loss = ce + rdrop['alpha'] * kl(logits1, logits2, rdrop['reduction'])
    loss.backward()
    if t['clip_grad_norm'] > 0:
      nn.utils.clip_grad_norm_(model.parameters(), t['clip_grad_norm'])
    optimizer.step()
    optimizer.zero_grad()
  return update, sum(p.numel() for p in model.parameters())


def kernel(kind, shape):
  """Forward and backward of one of bench/peer.py's census kernels, as timm's ViT runs it."""
  generator = torch.Generator().manual_seed(0)

  def leaf(*dims):
    return torch.randn(*dims, generator=generator).requires_grad_()

  if kind == 'linear':
    rows, fan_in, fan_out = shape
    layer, x = nn.Linear(fan_in, fan_out), leaf(rows, fan_in)
    op, inputs = lambda: layer(x), [x, layer.weight, layer.bias]
  elif kind == 'attention':
    batch, heads, tokens, head_dim = shape
    qkv = leaf(batch, tokens, 3 * heads * head_dim)  # the fused projection, split as timm's Attention does

    def op():
      q, k, v = qkv.reshape(batch, tokens, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
      return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, tokens, heads * head_dim)
    inputs = [qkv]
  elif kind == 'layer_norm':
    x, weight, bias = leaf(*shape), leaf(shape[-1]), leaf(shape[-1])
    op, inputs = lambda: F.layer_norm(x, (shape[-1],), weight, bias, 1e-6), [x, weight, bias]
  elif kind == 'gelu':
    x = leaf(*shape)
    op, inputs = lambda: F.gelu(x), [x]
  elif kind == 'dropout':
    x = leaf(*shape[:2])
    op, inputs = lambda: F.dropout(x, shape[2], training=True), [x]
  else:
    x, y = leaf(*shape), leaf(*shape)
    op, inputs = lambda: x + y, [x, y]
  grad = torch.randn(op().shape, generator=generator)

  def forward_backward():
    op().backward(grad)
    for tensor in inputs:
      tensor.grad = None
  return forward_backward


def timed(fn, calls):
  """Wall and CPU seconds (all threads of this process) of `calls` calls of `fn`."""
  wall, cpu = time.perf_counter(), time.process_time()
  for _ in range(calls):
    fn()
  return {'seconds': time.perf_counter() - wall, 'cpu_seconds': time.process_time() - cpu}


def main():
  torch.set_num_threads(int(sys.argv[1]))
  torch.manual_seed(0)
  update, ops, matrices = None, [], {}
  print(json.dumps({'torch': torch.__version__, 'torchvision': torchvision.__version__, 'timm': timm.__version__,
                    'python': platform.python_version(), 'threads': torch.get_num_threads()}), flush=True)
  for line in sys.stdin:
    request = json.loads(line)
    if 'setup' in request:
      update, parameters = update_fn(request['setup'])
      ops = [kernel(kind, shape) for kind, shape, _ in request['setup'].get('census', [])]
      answer = {'parameters': parameters}
    elif 'updates' in request:
      answer = timed(update, request['updates'])
    elif 'matmul' in request:
      size = request['matmul']
      if size not in matrices:
        generator = torch.Generator().manual_seed(0)
        matrices[size] = [torch.randn(size, size, generator=generator) for _ in range(2)]
      a, b = matrices[size]
      answer = timed(lambda: torch.mm(a, b), request['calls'])
    else:
      answer = timed(ops[request['kernel']], request['calls'])
    print(json.dumps(answer), flush=True)


if __name__ == '__main__':
  main()
