"""ViT against the official port's semantics and Google's `.npz` layout, on a tiny Google-layout file:
exact conversion, the port's forward pass, position-embedding resize, head rules, strict mismatches."""
import warnings

import ml_collections
import numpy as np
import paddle
import pytest
from scipy import ndimage, special

from models import vit
from utils.checkpoint import CheckpointError

HIDDEN, HEADS, MLP, LAYERS, PATCH = 16, 2, 32, 2, 4  # the 'testing' variant


def google_weights(img_size=16, num_classes=10, hidden=HIDDEN, layers=LAYERS, seed=0):
  """A checkpoint with the key names and shapes of Google's ViT `.npz` files (HWIO patch kernel,
  (D, heads, head_dim) attention kernels), including the 21k files' `pre_logits`."""
  rng = np.random.default_rng(seed)
  r = lambda *shape: rng.normal(size=shape).astype(np.float32)
  head_dim, tokens = hidden // HEADS, (img_size // PATCH) ** 2 + 1
  w = {'embedding/kernel': r(PATCH, PATCH, 3, hidden), 'embedding/bias': r(hidden), 'cls': r(1, 1, hidden),
       'Transformer/posembed_input/pos_embedding': r(1, tokens, hidden),
       'Transformer/encoder_norm/scale': r(hidden), 'Transformer/encoder_norm/bias': r(hidden),
       'head/kernel': r(hidden, num_classes), 'head/bias': r(num_classes),
       'pre_logits/kernel': r(hidden, hidden), 'pre_logits/bias': r(hidden)}
  for i in range(layers):
    b = f'Transformer/encoderblock_{i}/'
    att = b + 'MultiHeadDotProductAttention_1/'
    for n in ('query', 'key', 'value'):
      w[att + f'{n}/kernel'], w[att + f'{n}/bias'] = r(hidden, HEADS, head_dim), r(HEADS, head_dim)
    w[att + 'out/kernel'], w[att + 'out/bias'] = r(HEADS, head_dim, hidden), r(hidden)
    w[b + 'MlpBlock_3/Dense_0/kernel'], w[b + 'MlpBlock_3/Dense_0/bias'] = r(hidden, MLP), r(MLP)
    w[b + 'MlpBlock_3/Dense_1/kernel'], w[b + 'MlpBlock_3/Dense_1/bias'] = r(MLP, hidden), r(hidden)
    for norm in ('LayerNorm_0', 'LayerNorm_2'):
      w[b + f'{norm}/scale'], w[b + f'{norm}/bias'] = 1 + 0.1 * r(hidden), r(hidden)
  return w


def build(img_size=16, num_classes=10, zero_head=False, dropout=0.0):
  config = ml_collections.ConfigDict(dict(variant='testing', img_size=img_size, in_channels=3, dropout_rate=dropout,
                                          attention_dropout_rate=0.0, zero_head=zero_head, recompute=False))
  return vit.build(config, num_classes)


def state(model):
  return {k: v.numpy() for k, v in model.state_dict().items()}


def port_forward(w, images):
  """The official port's forward in NumPy, straight from Google's arrays: pre-norm blocks, exact GELU,
  LayerNorm eps 1e-6, the class token's output into the head."""
  def norm(x, prefix):
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-6) * w[prefix + 'scale'] + w[prefix + 'bias']
  n, _, size, _ = images.shape
  grid = size // PATCH
  patches = images.reshape(n, 3, grid, PATCH, grid, PATCH).transpose(0, 2, 4, 3, 5, 1).reshape(n, grid * grid, -1)
  x = patches @ w['embedding/kernel'].reshape(-1, HIDDEN) + w['embedding/bias']
  x = np.concatenate([np.broadcast_to(w['cls'], (n, 1, HIDDEN)), x], 1) + w['Transformer/posembed_input/pos_embedding']
  for i in range(LAYERS):
    b = f'Transformer/encoderblock_{i}/'
    att = b + 'MultiHeadDotProductAttention_1/'
    h = norm(x, b + 'LayerNorm_0/')
    q, k, v = (np.einsum('ntd,dhe->nhte', h, w[att + f'{m}/kernel']) + w[att + f'{m}/bias'][None, :, None]
               for m in ('query', 'key', 'value'))
    probs = special.softmax(q @ k.transpose(0, 1, 3, 2) / np.sqrt(HIDDEN // HEADS), axis=-1)
    x = x + np.einsum('nhte,hed->ntd', probs @ v, w[att + 'out/kernel']) + w[att + 'out/bias']
    h = norm(x, b + 'LayerNorm_2/') @ w[b + 'MlpBlock_3/Dense_0/kernel'] + w[b + 'MlpBlock_3/Dense_0/bias']
    h = 0.5 * h * (1 + special.erf(h / np.sqrt(2)))
    x = x + h @ w[b + 'MlpBlock_3/Dense_1/kernel'] + w[b + 'MlpBlock_3/Dense_1/bias']
  return norm(x, 'Transformer/encoder_norm/')[:, 0] @ w['head/kernel'] + w['head/bias']


def test_every_tensor_is_converted_exactly():
  w = google_weights()
  model = build()
  model.load_from(w)
  got = state(model)
  np.testing.assert_array_equal(got['transformer.embeddings.patch_embeddings.weight'],
                                w['embedding/kernel'].transpose(3, 2, 0, 1))  # HWIO -> OIHW
  expected = {'transformer.embeddings.patch_embeddings.bias': w['embedding/bias'],
              'transformer.embeddings.cls_token': w['cls'],
              'transformer.embeddings.position_embeddings': w['Transformer/posembed_input/pos_embedding'],
              'transformer.encoder.encoder_norm.weight': w['Transformer/encoder_norm/scale'],
              'transformer.encoder.encoder_norm.bias': w['Transformer/encoder_norm/bias'],
              'head.weight': w['head/kernel'], 'head.bias': w['head/bias']}
  for i in range(LAYERS):
    b, m = f'Transformer/encoderblock_{i}/', f'transformer.encoder.layer.{i}.'
    att = b + 'MultiHeadDotProductAttention_1/'
    # Input-major kernels: reshaped, never transposed; q, k, v side by side in the fused projection.
    expected[m + 'attn.qkv.weight'] = np.concatenate(
        [w[att + f'{n}/kernel'].reshape(HIDDEN, HIDDEN) for n in ('query', 'key', 'value')], axis=1)
    expected[m + 'attn.qkv.bias'] = np.concatenate([w[att + f'{n}/bias'].ravel() for n in ('query', 'key', 'value')])
    expected[m + 'attn.out.weight'] = w[att + 'out/kernel'].reshape(HIDDEN, HIDDEN)
    expected[m + 'attn.out.bias'] = w[att + 'out/bias']
    for j, fc in ((0, 'fc1'), (1, 'fc2')):
      expected[m + f'ffn.{fc}.weight'] = w[b + f'MlpBlock_3/Dense_{j}/kernel']
      expected[m + f'ffn.{fc}.bias'] = w[b + f'MlpBlock_3/Dense_{j}/bias']
    for norm, name in (('LayerNorm_0', 'attention_norm'), ('LayerNorm_2', 'ffn_norm')):
      expected[m + f'{name}.weight'] = w[b + f'{norm}/scale']
      expected[m + f'{name}.bias'] = w[b + f'{norm}/bias']
  assert set(got) == set(expected) | {'transformer.embeddings.patch_embeddings.weight'}
  for name, array in expected.items():
    np.testing.assert_array_equal(got[name], array, err_msg=name)


def test_forward_equals_the_official_ports_semantics():
  w = google_weights()
  model = build(dropout=0.1)
  model.load_from(w)
  model.eval()
  images = np.random.default_rng(1).normal(size=(3, 3, 16, 16)).astype(np.float32)
  logits = model(paddle.to_tensor(images)).numpy()
  np.testing.assert_allclose(logits, port_forward(w, images), rtol=1e-4, atol=1e-4)
  model.train()
  assert not np.allclose(model(paddle.to_tensor(images)).numpy(), logits, atol=1e-3)  # dropout is live


def test_position_embedding_is_zoomed_with_order_1_keeping_the_class_token():
  w = google_weights(img_size=16)  # 4x4 grid
  model = build(img_size=32)       # 8x8 grid
  model.load_from(w)
  posemb = w['Transformer/posembed_input/pos_embedding']
  grid = ndimage.zoom(posemb[0, 1:].reshape(4, 4, HIDDEN), (2, 2, 1), order=1).reshape(1, 64, HIDDEN)
  got = state(model)['transformer.embeddings.position_embeddings']
  assert got.shape == (1, 65, HIDDEN)
  np.testing.assert_array_equal(got[:, :1], posemb[:, :1])
  np.testing.assert_allclose(got[:, 1:], grid, rtol=0, atol=1e-6)


def test_zero_head_gives_a_zero_head_and_loads_the_rest():
  w = google_weights()
  model = build(zero_head=True)
  assert not np.any(state(model)['head.weight'])  # zero before any loading, too
  model.load_from(w)
  got = state(model)
  assert not np.any(got['head.weight']) and not np.any(got['head.bias'])
  np.testing.assert_array_equal(got['transformer.embeddings.cls_token'], w['cls'])


def test_a_head_of_another_class_count_keeps_its_initialisation_with_a_warning():
  w = google_weights(num_classes=10)
  model = build(num_classes=7)
  before = state(model)['head.weight']
  with pytest.warns(UserWarning, match=r'head \[16, 10\] does not fit \[16, 7\]'):
    model.load_from(w)
  np.testing.assert_array_equal(state(model)['head.weight'], before)
  assert np.any(before)


def test_load_pretrained_reads_the_npz_file_and_ignores_pre_logits(tmp_path):
  w = google_weights()
  path = tmp_path / 'ViT-testing.npz'
  np.savez(path, **w)
  model = build()
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    vit.load_pretrained(model, str(path))
  np.testing.assert_array_equal(state(model)['head.bias'], w['head/bias'])


def test_wrong_hidden_size_lists_every_mismatched_shape():
  model = build()
  with pytest.raises(CheckpointError) as err:
    model.load_from(google_weights(hidden=24), source='ViT weights wide.npz')
  message = str(err.value)
  assert 'ViT weights wide.npz does not fit the model' in message
  assert 'shape mismatch transformer.embeddings.cls_token: [1, 1, 24] in the file, [1, 1, 16] in the model' in message
  assert 'transformer.encoder.layer.0.attn.qkv.weight: [24, 72]' in message


def test_missing_and_surplus_keys_are_listed_by_their_names_in_the_file():
  w = google_weights(layers=3)
  del w['Transformer/encoderblock_1/MlpBlock_3/Dense_0/bias']
  del w['cls']
  with pytest.raises(CheckpointError) as err:
    build().load_from(w, source='ViT weights odd.npz')
  message = str(err.value)
  assert 'missing from the file (2): cls, Transformer/encoderblock_1/MlpBlock_3/Dense_0/bias' in message
  assert 'not in the model (16): Transformer/encoderblock_2/' in message
  assert 'pre_logits' not in message


def test_a_file_with_another_head_count_is_refused():
  w = google_weights()
  for n in ('query', 'key', 'value'):
    key = f'Transformer/encoderblock_0/MultiHeadDotProductAttention_1/{n}'
    w[key + '/kernel'], w[key + '/bias'] = w[key + '/kernel'].reshape(HIDDEN, 4, 4), w[key + '/bias'].reshape(4, 4)
  with pytest.raises(CheckpointError, match='query/kernel: 4 heads in the file, 2 in the model'):
    build().load_from(w)


def test_unknown_variant_names_the_choices():
  config = ml_collections.ConfigDict(dict(variant='ViT-X', img_size=16, in_channels=3, dropout_rate=0.0,
                                          attention_dropout_rate=0.0, zero_head=False))
  with pytest.raises(ValueError, match=r"config.model.variant='ViT-X' is not a ViT; choose one of \["):
    vit.build(config, 10)


def test_activation_recompute_gives_the_same_gradients_with_dropout_on():
  """Recompute replays each block's forward in backward with the same dropout masks."""
  grads = []
  for recompute in (False, True):
    paddle.seed(0)
    model = build(dropout=0.3)
    model.transformer.encoder.recompute = recompute
    model.train()
    paddle.seed(1)
    images = paddle.randn([4, 3, 16, 16])
    model(images).square().mean().backward()
    grads.append({name: p.grad.numpy() for name, p in model.named_parameters()})
  assert max(float(np.abs(grads[0][k] - grads[1][k]).max()) for k in grads[0]) < 1e-6
  assert any(np.abs(g).max() > 0 for g in grads[0].values())


def test_cpu_linear_gives_paddles_linear_outputs_and_gradients():
  """vit.Linear runs addmm and a hand-written backward on the CPU: the values of Paddle's linear up to float
  rounding, also for an input that needs no gradient (the first layer of a frozen stem)."""
  paddle.seed(0)
  layer = vit.Linear(16, 24)
  grad = paddle.randn([3, 5, 24])
  for input_needs_grad in (True, False):
    x = paddle.randn([3, 5, 16])
    x.stop_gradient = not input_needs_grad
    results = []
    for forward in (layer, lambda t: paddle.nn.functional.linear(t, layer.weight, layer.bias)):
      out = forward(x)
      out.backward(grad)
      results.append([out.numpy(), layer.weight.grad.numpy(), layer.bias.grad.numpy()]
                     + ([x.grad.numpy()] if input_needs_grad else []))
      for tensor in (x, layer.weight, layer.bias):
        tensor.clear_gradient()
    ours, paddles = results
    for name, a, b in zip(('output', 'weight', 'bias', 'x'), ours, paddles):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=name)


def test_training_updates_are_bit_identical_without_stride_kernels():
  """utils/threads turns Paddle's strided views off on the CPU for speed; the weights must not change."""
  weights = []
  flag = paddle.get_flags(['FLAGS_use_stride_kernel'])
  try:
    for strided in (True, False):
      paddle.set_flags({'FLAGS_use_stride_kernel': strided})
      paddle.seed(0)
      model = build(dropout=0.2)
      model.train()
      optimizer = paddle.optimizer.Momentum(0.1, 0.9, model.parameters(), grad_clip=paddle.nn.ClipGradByGlobalNorm(1.0))
      images = paddle.randn([4, 3, 16, 16])
      for _ in range(2):
        model(images).square().mean().backward()
        optimizer.step()
        optimizer.clear_grad()
      weights.append(state(model))
  finally:
    paddle.set_flags(flag)
  for name in weights[0]:
    np.testing.assert_array_equal(weights[0][name], weights[1][name], err_msg=name)
