"""Vision Transformer with the names of the official PyTorch port (jeonsworld/ViT-pytorch), loading
Google's `.npz` checkpoints (e.g. ImageNet-21k `ViT-B_16.npz`) through `load_from(np.load(path))`.

Differences from the port, all for speed with the same results (up to float rounding): query/key/value
are one fused projection, attention runs through `F.scaled_dot_product_attention` (flash attention on
GPUs), and in fp32 on a CPU the linear layers, layer norms, GELU, attention and dropout run
kernels/cpu_ops.py's faster stand-ins for Paddle's kernels (same parameters; the same values up to float
rounding, dropout masks drawn by another generator).
"""
import os
import warnings

import ml_collections
import numpy as np
import paddle
import paddle.nn as nn
from paddle.distributed.fleet.utils import recompute

from kernels.cpu_ops import Dropout, LayerNorm, Linear, attention, gelu
from utils.checkpoint import CheckpointError, load_state_strict
from utils.rules import POSITIVE, RATE


def _config(patch, hidden, mlp, heads, layers, dropout=0.1):
  c = ml_collections.ConfigDict()
  c.patches = ml_collections.ConfigDict({'size': (patch, patch)})
  c.hidden_size = hidden
  c.transformer = ml_collections.ConfigDict(dict(
      mlp_dim=mlp, num_heads=heads, num_layers=layers, attention_dropout_rate=0.0, dropout_rate=dropout))
  c.classifier = 'token'
  return c


FIELD_RULES = {'img_size': POSITIVE, 'in_channels': POSITIVE, 'dropout_rate': RATE, 'attention_dropout_rate': RATE}
VARIANTS = {
    'ViT-B_16': lambda: _config(16, 768, 3072, 12, 12),
    'ViT-B_32': lambda: _config(32, 768, 3072, 12, 12),
    'ViT-L_16': lambda: _config(16, 1024, 4096, 16, 24),
    'ViT-L_32': lambda: _config(32, 1024, 4096, 16, 24),
    'ViT-H_14': lambda: _config(14, 1280, 5120, 16, 32),
    # Small sizes for the offline demo, benchmarks (ViT-Ti's width and heads, 6 blocks, patch 4 for 32 px:
    # bench/peer.py's model) and tests.
    'ViT-Ti_2': lambda: _config(2, 64, 128, 4, 4),
    'ViT-Ti_4x6': lambda: _config(4, 192, 768, 3, 6),
    'testing': lambda: _config(4, 16, 32, 2, 2),
}


class Embeddings(nn.Layer):
  def __init__(self, config, img_size, in_channels):
    super().__init__()
    patch = config.patches.size[0]
    if img_size % patch:
      raise ValueError(f'image size {img_size} is not a multiple of the patch size {patch}')
    n_patches = (img_size // patch) ** 2
    self.patch_embeddings = nn.Conv2D(in_channels, config.hidden_size, patch, stride=patch)
    self.position_embeddings = self.create_parameter(
        [1, n_patches + 1, config.hidden_size], default_initializer=nn.initializer.TruncatedNormal(std=0.02))
    self.cls_token = self.create_parameter([1, 1, config.hidden_size], default_initializer=nn.initializer.Constant(0.0))
    self.dropout = Dropout(config.transformer.dropout_rate)

  def forward(self, x):
    x = self.patch_embeddings(x).flatten(2).transpose([0, 2, 1])
    cls = self.cls_token.expand([x.shape[0], -1, -1])
    return self.dropout(paddle.concat([cls, x], axis=1) + self.position_embeddings)


class Attention(nn.Layer):
  def __init__(self, config):
    super().__init__()
    self.num_heads = config.transformer.num_heads
    hidden = config.hidden_size
    self.qkv = Linear(hidden, 3 * hidden)
    self.out = Linear(hidden, hidden)
    self.attention_dropout_rate = config.transformer.attention_dropout_rate
    self.proj_dropout = Dropout(config.transformer.attention_dropout_rate)

  def forward(self, x):
    x = attention(self.qkv(x), self.num_heads, self.attention_dropout_rate, self.training)
    return self.proj_dropout(self.out(x))


class Mlp(nn.Layer):
  def __init__(self, config):
    super().__init__()
    self.fc1 = Linear(config.hidden_size, config.transformer.mlp_dim, bias_attr=nn.initializer.Normal(std=1e-6))
    self.fc2 = Linear(config.transformer.mlp_dim, config.hidden_size, bias_attr=nn.initializer.Normal(std=1e-6))
    self.dropout = Dropout(config.transformer.dropout_rate)

  def forward(self, x):
    return self.dropout(self.fc2(self.dropout(gelu(self.fc1(x)))))


class Block(nn.Layer):
  def __init__(self, config):
    super().__init__()
    self.attention_norm = LayerNorm(config.hidden_size, epsilon=1e-6)
    self.attn = Attention(config)
    self.ffn_norm = LayerNorm(config.hidden_size, epsilon=1e-6)
    self.ffn = Mlp(config)

  def forward(self, x):
    x = x + self.attn(self.attention_norm(x))
    return x + self.ffn(self.ffn_norm(x))


class Encoder(nn.Layer):
  def __init__(self, config):
    super().__init__()
    self.layer = nn.LayerList([Block(config) for _ in range(config.transformer.num_layers)])
    self.encoder_norm = LayerNorm(config.hidden_size, epsilon=1e-6)
    # Activation recompute: keep only each block's input and redo its forward pass during backward,
    # trading ~1/3 more compute for memory, so larger micro-batches (fewer accumulation steps) fit.
    self.recompute = config.get('recompute', False)

  def forward(self, x):
    for block in self.layer:
      x = recompute(block, x) if self.recompute and self.training else block(x)
    return self.encoder_norm(x)


class Transformer(nn.Layer):
  def __init__(self, config, img_size, in_channels):
    super().__init__()
    self.embeddings = Embeddings(config, img_size, in_channels)
    self.encoder = Encoder(config)

  def forward(self, x):
    return self.encoder(self.embeddings(x))


class VisionTransformer(nn.Layer):
  def __init__(self, config, img_size=224, num_classes=21843, zero_head=False, in_channels=3):
    super().__init__()
    self.config = config
    self.zero_head = zero_head
    self.classifier = config.classifier
    self.transformer = Transformer(config, img_size, in_channels)
    self.head = Linear(config.hidden_size, num_classes)
    if zero_head:
      self.head.weight.set_value(paddle.zeros_like(self.head.weight))
      self.head.bias.set_value(paddle.zeros_like(self.head.bias))

  def forward(self, x):
    x = self.transformer(x)
    return self.head(x[:, 0] if self.classifier == 'token' else x.mean(axis=1))

  def load_from(self, weights, source='ViT weights'):
    """Copy Google's checkpoint (a mapping of its key names to arrays, e.g. `np.load('ViT-B_16.npz')`).

    As in the port: the position-embedding grid is resized (order-1 zoom, class token kept) when the
    image size differs; `pre_logits` is not used; the head is zero with `zero_head`, else loaded when
    its shape matches. A head of another class count (e.g. the 21k head) keeps its fresh initialisation,
    with a warning. Anything else that does not fit raises, listing every mismatch.
    """
    converted, problems = convert_google_weights(weights, self.config.transformer.num_layers,
                                                 self.config.transformer.num_heads)
    if problems:
      raise CheckpointError(f'{source} does not fit the model ({len(problems)} problems):\n  '
                            + '\n  '.join(problems[:12]) + ('\n  ...' if len(problems) > 12 else ''))
    own = self.state_dict()
    head_keys = ('head.weight', 'head.bias')
    head_fits = all(k in converted and tuple(converted[k].shape) == tuple(own[k].shape) for k in head_keys)
    if not self.zero_head and not head_fits:
      found = list(converted['head.weight'].shape) if 'head.weight' in converted else 'none'
      warnings.warn(f'{source}: head {found} does not fit {list(own["head.weight"].shape)}; '
                    'the head keeps its random initialisation')
    for k in head_keys:
      if self.zero_head:
        converted[k] = np.zeros(own[k].shape, np.float32)
      elif not head_fits:
        converted[k] = own[k].numpy()
    pos_key = 'transformer.embeddings.position_embeddings'
    file_pos, own_shape = converted[pos_key], tuple(own[pos_key].shape)
    if file_pos.shape[2] == own_shape[2] and file_pos.shape[1] != own_shape[1]:
      converted[pos_key] = resize_position_embedding(file_pos, own_shape[1] - 1)
    load_state_strict(self, converted, source=source)


def resize_position_embedding(posemb, new_patches):
  """(1, 1 + g*g, D) -> (1, 1 + n*n, D): keep the class token, zoom the grid with order 1 (as the port)."""
  cls, grid = posemb[:, :1], posemb[0, 1:]
  old_side, new_side = int(round(np.sqrt(len(grid)))), int(round(np.sqrt(new_patches)))
  if old_side ** 2 != len(grid) or new_side ** 2 != new_patches:
    raise ValueError(f'position embeddings of {len(grid)} patches cannot be resized to {new_patches}: '
                     'both must be square grids')
  grid = grid.reshape(old_side, old_side, -1)
  from scipy import ndimage  # here: importing it costs every process 0.25 s, and only fine-tuning needs it
  grid = ndimage.zoom(grid, (new_side / old_side, new_side / old_side, 1), order=1)
  return np.concatenate([cls, grid.reshape(1, new_side * new_side, -1)], axis=1).astype(posemb.dtype)


def convert_google_weights(weights, num_layers, num_heads):
  """Google's key layout -> (this model's state dict as arrays, list of problems with the file).

  Kernels are input-major like Paddle's Linear: reshape, never transpose (except the HWIO patch kernel,
  which Paddle's Conv2D stores OIHW). Problems are keys the model needs but the file lacks, keys the
  model has no place for (e.g. blocks of a deeper model), and per-block head counts that differ.
  """
  used = set()
  missing, problems = [], []
  out = {}

  def get(key):
    if key not in weights:
      missing.append(key)
      return None
    used.add(key)
    return np.asarray(weights[key], dtype=np.float32)

  def put(name, key, reshape=lambda a: a):
    array = get(key)
    if array is not None:
      out[name] = reshape(array)

  put('transformer.embeddings.patch_embeddings.weight', 'embedding/kernel', lambda a: a.transpose(3, 2, 0, 1))
  put('transformer.embeddings.patch_embeddings.bias', 'embedding/bias')
  put('transformer.embeddings.cls_token', 'cls')
  put('transformer.embeddings.position_embeddings', 'Transformer/posembed_input/pos_embedding')
  put('transformer.encoder.encoder_norm.weight', 'Transformer/encoder_norm/scale')
  put('transformer.encoder.encoder_norm.bias', 'Transformer/encoder_norm/bias')
  if 'head/kernel' in weights or 'head/bias' in weights:
    put('head.weight', 'head/kernel')
    put('head.bias', 'head/bias')
  for i in range(num_layers):
    src, dst = f'Transformer/encoderblock_{i}/', f'transformer.encoder.layer.{i}.'
    att = src + 'MultiHeadDotProductAttention_1/'
    kernels = [get(att + f'{n}/kernel') for n in ('query', 'key', 'value')]
    biases = [get(att + f'{n}/bias') for n in ('query', 'key', 'value')]
    if all(k is not None for k in kernels + biases):
      if kernels[0].ndim == 3 and kernels[0].shape[1] != num_heads:
        problems.append(f'{att}query/kernel: {kernels[0].shape[1]} heads in the file, {num_heads} in the model')
      # The model splits the fused output as (q|k|v, head, head_dim): concatenate q, k, v in that order.
      out[dst + 'attn.qkv.weight'] = np.concatenate([k.reshape(k.shape[0], -1) for k in kernels], axis=1)
      out[dst + 'attn.qkv.bias'] = np.concatenate([b.reshape(-1) for b in biases])
    put(dst + 'attn.out.weight', att + 'out/kernel', lambda a: a.reshape(-1, a.shape[-1]))
    put(dst + 'attn.out.bias', att + 'out/bias')
    for j, name in ((0, 'fc1'), (1, 'fc2')):
      put(dst + f'ffn.{name}.weight', src + f'MlpBlock_3/Dense_{j}/kernel')
      put(dst + f'ffn.{name}.bias', src + f'MlpBlock_3/Dense_{j}/bias')
    for norm, name in (('LayerNorm_0', 'attention_norm'), ('LayerNorm_2', 'ffn_norm')):
      put(dst + f'{name}.weight', src + f'{norm}/scale')
      put(dst + f'{name}.bias', src + f'{norm}/bias')
  unused = sorted(k for k in weights if k not in used and not k.startswith('pre_logits/'))
  if missing:
    problems.insert(0, f'missing from the file ({len(missing)}): {", ".join(missing[:8])}'
                    + (' ...' if len(missing) > 8 else ''))
  if unused:
    problems.append(f'not in the model ({len(unused)}): {", ".join(unused[:8])}' + (' ...' if len(unused) > 8 else ''))
  return out, problems


def build(model_config, num_classes):
  if model_config.variant not in VARIANTS:
    raise ValueError(f'config.model.variant={model_config.variant!r} is not a ViT; choose one of {sorted(VARIANTS)}')
  config = VARIANTS[model_config.variant]()
  config.transformer.dropout_rate = model_config.dropout_rate
  config.transformer.attention_dropout_rate = model_config.attention_dropout_rate
  config.recompute = model_config.recompute
  return VisionTransformer(config, model_config.img_size, num_classes, model_config.zero_head,
                           in_channels=model_config.in_channels)


def pretrained_source(model_config):
  """Where Google publishes the ImageNet-21k checkpoint of this variant (no checksum is published)."""
  if model_config.variant.startswith(('ViT-B', 'ViT-L', 'ViT-H')):
    return (f'Google\'s ImageNet-21k {model_config.variant}.npz: '
            f'https://storage.googleapis.com/vit_models/imagenet21k/{model_config.variant}.npz')
  return ''


def load_pretrained(model, path):
  """Google's `.npz` (models.build calls this when config.model.pretrained names a file)."""
  try:
    weights = np.load(path)
  except (OSError, ValueError) as err:  # e.g. a .pdparams pickle, or a truncated download
    raise ValueError(f'config.model.pretrained={os.path.abspath(path)}: not a readable .npz of Google\'s ViT '
                     f'weights ({err})') from err
  with weights:
    model.load_from(weights, source=f'ViT weights {path}')
