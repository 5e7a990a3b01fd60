"""Vision Transformer with the names of the official PyTorch port (jeonsworld/ViT-pytorch), loading
Google's `.npz` checkpoints (e.g. ImageNet-21k `ViT-B_16.npz`) through `load_from(np.load(path))`.

Differences from the port, both for speed with identical results: query/key/value are one fused
projection, and attention runs through `F.scaled_dot_product_attention` (flash attention on GPUs).
"""
import ml_collections
import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F


def _config(patch, hidden, mlp, heads, layers, dropout=0.1):
  c = ml_collections.ConfigDict()
  c.patches = ml_collections.ConfigDict({'size': (patch, patch)})
  c.hidden_size = hidden
  c.transformer = ml_collections.ConfigDict(dict(
      mlp_dim=mlp, num_heads=heads, num_layers=layers, attention_dropout_rate=0.0, dropout_rate=dropout))
  c.classifier = 'token'
  return c


CONFIGS = {
    'ViT-B_16': lambda: _config(16, 768, 3072, 12, 12),
    'ViT-B_32': lambda: _config(32, 768, 3072, 12, 12),
    'ViT-L_16': lambda: _config(16, 1024, 4096, 16, 24),
    'ViT-L_32': lambda: _config(32, 1024, 4096, 16, 24),
    'ViT-H_14': lambda: _config(14, 1280, 5120, 16, 32),
    # Small sizes for the offline demo and tests.
    'ViT-Ti_2': lambda: _config(2, 64, 128, 4, 4),
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
    self.dropout = nn.Dropout(config.transformer.dropout_rate)

  def forward(self, x):
    x = self.patch_embeddings(x).flatten(2).transpose([0, 2, 1])
    cls = self.cls_token.expand([x.shape[0], -1, -1])
    return self.dropout(paddle.concat([cls, x], axis=1) + self.position_embeddings)


class Attention(nn.Layer):
  def __init__(self, config):
    super().__init__()
    self.num_heads = config.transformer.num_heads
    hidden = config.hidden_size
    self.qkv = nn.Linear(hidden, 3 * hidden)
    self.out = nn.Linear(hidden, hidden)
    self.attention_dropout_rate = config.transformer.attention_dropout_rate
    self.proj_dropout = nn.Dropout(config.transformer.attention_dropout_rate)

  def forward(self, x):
    batch, tokens, hidden = x.shape
    q, k, v = self.qkv(x).reshape([batch, tokens, 3, self.num_heads, hidden // self.num_heads]).unbind(axis=2)
    x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attention_dropout_rate, training=self.training)
    return self.proj_dropout(self.out(x.reshape([batch, tokens, hidden])))


class Mlp(nn.Layer):
  def __init__(self, config):
    super().__init__()
    self.fc1 = nn.Linear(config.hidden_size, config.transformer.mlp_dim,
                         bias_attr=nn.initializer.Normal(std=1e-6))
    self.fc2 = nn.Linear(config.transformer.mlp_dim, config.hidden_size,
                         bias_attr=nn.initializer.Normal(std=1e-6))
    self.dropout = nn.Dropout(config.transformer.dropout_rate)

  def forward(self, x):
    return self.dropout(self.fc2(self.dropout(F.gelu(self.fc1(x)))))


class Block(nn.Layer):
  def __init__(self, config):
    super().__init__()
    self.attention_norm = nn.LayerNorm(config.hidden_size, epsilon=1e-6)
    self.attn = Attention(config)
    self.ffn_norm = nn.LayerNorm(config.hidden_size, epsilon=1e-6)
    self.ffn = Mlp(config)

  def forward(self, x):
    x = x + self.attn(self.attention_norm(x))
    return x + self.ffn(self.ffn_norm(x))


class Encoder(nn.Layer):
  def __init__(self, config):
    super().__init__()
    self.layer = nn.LayerList([Block(config) for _ in range(config.transformer.num_layers)])
    self.encoder_norm = nn.LayerNorm(config.hidden_size, epsilon=1e-6)

  def forward(self, x):
    for block in self.layer:
      x = block(x)
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
    self.head = nn.Linear(config.hidden_size, num_classes)
    if zero_head:
      self.head.weight.set_value(paddle.zeros_like(self.head.weight))
      self.head.bias.set_value(paddle.zeros_like(self.head.bias))

  def forward(self, x):
    x = self.transformer(x)
    return self.head(x[:, 0] if self.classifier == 'token' else x.mean(axis=1))

  def load_from(self, weights):
    """Copy Google's checkpoint (a mapping of its key names to arrays, e.g. `np.load('ViT-B_16.npz')`).

    The position-embedding grid is resized (order-1 zoom) when the image size differs; the head is
    loaded only when its shape matches and `zero_head` is false; `pre_logits` is not used. Anything
    else that does not fit raises, listing every mismatch.
    """
    converted = convert_google_weights(weights, self.config.transformer.num_layers)
    own = self.state_dict()
    head_keys = ('head.weight', 'head.bias')
    head_fits = all(k in converted and tuple(converted[k].shape) == tuple(own[k].shape) for k in head_keys)
    if self.zero_head or not head_fits:
      for k in head_keys:
        converted.pop(k, None)
        converted[k] = own[k].numpy() if not self.zero_head else np.zeros(own[k].shape, np.float32)
    pos_key = 'transformer.embeddings.position_embeddings'
    if pos_key in converted and converted[pos_key].shape != tuple(own[pos_key].shape):
      converted[pos_key] = resize_position_embedding(converted[pos_key], own[pos_key].shape[1] - 1)
    from utils.checkpoint import load_state_strict
    load_state_strict(self, converted, source='ViT weights')


def resize_position_embedding(posemb, new_patches):
  """(1, 1 + g*g, D) -> (1, 1 + n*n, D): keep the class token, zoom the grid with order 1."""
  from scipy import ndimage
  cls, grid = posemb[:, :1], posemb[0, 1:]
  old_side, new_side = int(np.sqrt(len(grid))), int(np.sqrt(new_patches))
  grid = grid.reshape(old_side, old_side, -1)
  grid = ndimage.zoom(grid, (new_side / old_side, new_side / old_side, 1), order=1)
  return np.concatenate([cls, grid.reshape(1, new_side * new_side, -1)], axis=1).astype(posemb.dtype)


def convert_google_weights(weights, num_layers):
  """Google's key layout -> this model's state-dict names. Kernels are input-major like Paddle's Linear:
  reshape, never transpose (except the HWIO patch kernel, which Paddle stores OIHW)."""
  def get(key):
    if key not in weights:
      raise KeyError(key)
    return np.asarray(weights[key], dtype=np.float32)

  out = {}
  missing = []

  def put(name, key, fn=lambda a: a):
    try:
      out[name] = fn(get(key))
    except KeyError as err:
      missing.append(str(err.args[0]))

  put('transformer.embeddings.patch_embeddings.weight', 'embedding/kernel', lambda a: a.transpose(3, 2, 0, 1))
  put('transformer.embeddings.patch_embeddings.bias', 'embedding/bias')
  put('transformer.embeddings.cls_token', 'cls')
  put('transformer.embeddings.position_embeddings', 'Transformer/posembed_input/pos_embedding')
  put('transformer.encoder.encoder_norm.weight', 'Transformer/encoder_norm/scale')
  put('transformer.encoder.encoder_norm.bias', 'Transformer/encoder_norm/bias')
  if 'head/kernel' in weights:
    put('head.weight', 'head/kernel')
    put('head.bias', 'head/bias')
  for i in range(num_layers):
    src, dst = f'Transformer/encoderblock_{i}/', f'transformer.encoder.layer.{i}.'
    att = src + 'MultiHeadDotProductAttention_1/'
    try:
      kernels = [get(att + f'{n}/kernel') for n in ('query', 'key', 'value')]
      biases = [get(att + f'{n}/bias') for n in ('query', 'key', 'value')]
      hidden = kernels[0].shape[0]
      out[dst + 'attn.qkv.weight'] = np.concatenate([k.reshape(hidden, -1) for k in kernels], axis=1)
      out[dst + 'attn.qkv.bias'] = np.concatenate([b.reshape(-1) for b in biases])
    except KeyError as err:
      missing.append(str(err.args[0]))
    put(dst + 'attn.out.weight', att + 'out/kernel', lambda a: a.reshape(-1, a.shape[-1]))
    put(dst + 'attn.out.bias', att + 'out/bias')
    for j, name in ((0, 'fc1'), (1, 'fc2')):
      put(dst + f'ffn.{name}.weight', src + f'MlpBlock_3/Dense_{j}/kernel')
      put(dst + f'ffn.{name}.bias', src + f'MlpBlock_3/Dense_{j}/bias')
    for ln, name in (('LayerNorm_0', 'attention_norm'), ('LayerNorm_2', 'ffn_norm')):
      put(dst + f'{name}.weight', src + f'{ln}/scale')
      put(dst + f'{name}.bias', src + f'{ln}/bias')
  if missing:
    raise ValueError(f'the ViT weights file lacks {len(missing)} keys the model needs: {missing[:10]}'
                     + (' ...' if len(missing) > 10 else ''))
  return out


def build(model_config, num_classes):
  if model_config.variant not in CONFIGS:
    raise ValueError(f'config.model.variant={model_config.variant!r} is not a ViT; choose one of {sorted(CONFIGS)}')
  config = CONFIGS[model_config.variant]()
  config.transformer.dropout_rate = model_config.dropout_rate
  config.transformer.attention_dropout_rate = model_config.attention_dropout_rate
  return VisionTransformer(config, model_config.img_size, num_classes, model_config.zero_head,
                           in_channels=model_config.in_channels)


def load_pretrained(model, path):
  with np.load(path) as weights:
    model.load_from(weights)
