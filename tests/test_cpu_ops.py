"""kernels/: each CPU stand-in gives Paddle's own op's outputs and gradients (float32 rounding), Paddle's op
runs wherever the switch is off (FAST_CPU_OPS=0, autocast, other dtypes, static graphs), and what a stand-in
cannot do is refused with an error naming it, never a crash."""
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
import pytest

import kernels
from helpers import ROOT, child_env
from kernels import KernelError, cpu_ops, onednn
from test_step import _step, _tiny

# float32: the stand-ins sum in another order than Paddle's kernels (matrix products), so compare with
# tolerances of a few float32 roundings of the values' scale.
RTOL, ATOL = 1e-4, 1e-4


def leaf(shape, seed, scale=1.0, offset=0.0):
  values = np.random.default_rng(seed).standard_normal(shape).astype('float32') * scale + offset
  return paddle.to_tensor(values, stop_gradient=False)


def outputs_and_grads(op, inputs, grad):
  out = op()
  out.backward(grad)
  grads = [None if t.grad is None else t.grad.numpy() for t in inputs]
  for t in inputs:
    t.clear_gradient()
  return out.numpy(), grads


ONEDNN_STAND_INS = (cpu_ops._CpuLayerNorm, cpu_ops._CpuGelu, cpu_ops._CpuConv2D, cpu_ops._CpuAttention)
ALL_STAND_INS = (cpu_ops._CpuLinear, *ONEDNN_STAND_INS)


def refuse(monkeypatch, *stand_ins, masks=False):
  """Make these stand-ins (and with `masks`, cpu_ops' dropout masks) fail the test if they run."""
  def refused(*args):
    raise AssertionError('a stand-in ran')
  for stand_in in stand_ins:
    monkeypatch.setattr(stand_in, 'apply', refused)
  if masks:
    monkeypatch.setattr(cpu_ops, 'dropout_mask', refused)


def assert_same(ours, paddles, names):
  (out_a, grads_a), (out_b, grads_b) = ours, paddles
  np.testing.assert_allclose(out_a, out_b, rtol=RTOL, atol=ATOL, err_msg='output')
  for name, a, b in zip(names, grads_a, grads_b):
    assert (a is None) == (b is None), name
    if a is not None:
      np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL, err_msg=f'gradient of {name}')


def test_the_switch_is_on_for_float32_cpu_tensors_without_autocast_only(amp_standin):
  x = paddle.ones([2, 3])
  assert cpu_ops.applies(x)
  assert not cpu_ops.applies(x.astype('float64'))
  assert not cpu_ops.applies(x.astype('float16'))
  with paddle.amp.auto_cast(dtype='bfloat16'):  # on, as on a GPU (tests/amp_standin.py)
    assert not cpu_ops.applies(x)


@pytest.mark.parametrize('shape', [(7, 13), (2, 5, 16), (3, 1, 4, 6)])
def test_linear_gives_paddles_outputs_and_gradients(shape):
  paddle.seed(0)
  layer = cpu_ops.Linear(shape[-1], 9)
  x = leaf(shape, 1)
  grad = paddle.to_tensor(np.random.default_rng(2).standard_normal([*shape[:-1], 9]).astype('float32'))
  inputs = [x, layer.weight, layer.bias]
  assert_same(outputs_and_grads(lambda: layer(x), inputs, grad),
              outputs_and_grads(lambda: F.linear(x, layer.weight, layer.bias), inputs, grad), ('x', 'weight', 'bias'))


@pytest.mark.parametrize('shape', [(5, 7), (4160, 192), (2, 3, 33), (1, 1)])
def test_layer_norm_gives_paddles_outputs_and_gradients(shape):
  # A mean far from 0 and a small spread: the centring must happen before the variance is taken.
  x = leaf(shape, 0, scale=0.5, offset=3.0)
  weight, bias = leaf(shape[-1:], 1), leaf(shape[-1:], 2)
  grad = paddle.to_tensor(np.random.default_rng(3).standard_normal(shape).astype('float32'))
  inputs = [x, weight, bias]
  assert_same(outputs_and_grads(lambda: cpu_ops.layer_norm(x, weight, bias, 1e-6), inputs, grad),
              outputs_and_grads(lambda: F.layer_norm(x, shape[-1], weight, bias, 1e-6), inputs, grad),
              ('x', 'weight', 'bias'))


def test_layer_norm_gradients_only_where_wanted():
  x, weight, bias = leaf((6, 10), 0), leaf((10,), 1), leaf((10,), 2)
  x.stop_gradient, bias.stop_gradient = True, True
  grad = paddle.ones([6, 10])
  inputs = [x, weight, bias]
  assert_same(outputs_and_grads(lambda: cpu_ops.layer_norm(x, weight, bias, 1e-5), inputs, grad),
              outputs_and_grads(lambda: F.layer_norm(x, 10, weight, bias, 1e-5), inputs, grad), ('x', 'weight', 'bias'))


def test_layer_norm_layer_keeps_nn_layer_norms_parameters():
  paddle.seed(0)
  ours, paddles = cpu_ops.LayerNorm(12, epsilon=1e-6), nn.LayerNorm(12, epsilon=1e-6)
  assert list(ours.state_dict()) == list(paddles.state_dict()) == ['weight', 'bias']
  paddles.set_state_dict(ours.state_dict())
  x = leaf((3, 4, 12), 0)
  np.testing.assert_allclose(ours(x).numpy(), paddles(x).numpy(), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize('shape', [(4160, 768), (2, 3, 5), (1,)])
def test_gelu_gives_paddles_outputs_and_gradients(shape):
  x = leaf(shape, 0, scale=3.0)  # far into both tails
  grad = paddle.to_tensor(np.random.default_rng(1).standard_normal(shape).astype('float32'))
  assert_same(outputs_and_grads(lambda: cpu_ops.gelu(x), [x], grad),
              outputs_and_grads(lambda: F.gelu(x), [x], grad), ('x',))


@pytest.mark.parametrize('batch, tokens, heads, head_dim', [(64, 65, 3, 64), (2, 5, 4, 8), (1, 1, 1, 3)])
def test_attention_gives_paddles_outputs_and_gradients(batch, tokens, heads, head_dim):
  width = heads * head_dim
  qkv = leaf((batch, tokens, 3 * width), 0)
  grad = paddle.to_tensor(np.random.default_rng(1).standard_normal((batch, tokens, width)).astype('float32'))

  def paddles():
    q, k, v = qkv.reshape([batch, tokens, 3, heads, head_dim]).unbind(axis=2)
    return F.scaled_dot_product_attention(q, k, v).reshape([batch, tokens, width])
  assert_same(outputs_and_grads(lambda: cpu_ops.attention(qkv, heads, 0.0, training=True), [qkv], grad),
              outputs_and_grads(paddles, [qkv], grad), ('qkv',))


def test_attention_with_dropout_in_training_is_paddles(monkeypatch):
  refuse(monkeypatch, cpu_ops._CpuAttention)
  assert cpu_ops.attention(paddle.ones([2, 3, 12]), 2, 0.1, training=True).shape == [2, 3, 4]


# (batch, channels in, size, channels out, kernel, stride, padding, dilation): ResNet's kinds and odd ones
CONVOLUTIONS = [(2, 3, 32, 8, 7, 2, 3, 1), (2, 16, 9, 16, 3, 1, 1, 1), (3, 8, 11, 12, 3, 2, 1, 1),
                (2, 16, 8, 4, 1, 1, 0, 1), (2, 8, 10, 16, 1, 2, 0, 1), (1, 4, 13, 5, 3, 1, 2, 2),
                (1, 3, 6, 2, (2, 3), 1, (0, 1), 1)]


@pytest.mark.parametrize('batch, channels, size, out_channels, kernel, stride, padding, dilation', CONVOLUTIONS)
def test_convolution_gives_paddles_outputs_and_gradients(batch, channels, size, out_channels, kernel, stride,
                                                          padding, dilation):
  paddle.seed(0)
  layer = cpu_ops.Conv2D(channels, out_channels, kernel, stride, padding, dilation, bias_attr=False)
  x = leaf((batch, channels, size, size), 0)
  inputs = [x, layer.weight]
  out_shape = layer(x).shape
  grad = paddle.to_tensor(np.random.default_rng(1).standard_normal(out_shape).astype('float32'))
  assert_same(outputs_and_grads(lambda: layer(x), inputs, grad),
              outputs_and_grads(lambda: F.conv2d(x, layer.weight, stride=stride, padding=padding,
                                                 dilation=dilation), inputs, grad), ('x', 'weight'))


def test_convolution_of_images_that_need_no_gradient():
  layer = cpu_ops.Conv2D(3, 4, 3, padding=1, bias_attr=False)
  x = paddle.randn([2, 3, 6, 6])
  layer(x).sum().backward()
  assert x.grad is None and layer.weight.grad is not None


def test_convolutions_oneDNN_cannot_run_are_paddles(monkeypatch):
  refuse(monkeypatch, cpu_ops._CpuConv2D)
  x = paddle.randn([2, 4, 8, 8])
  for kwargs in ({'groups': 2}, {'bias_attr': None}, {'padding': 'SAME'}, {'padding_mode': 'reflect'}):
    layer = cpu_ops.Conv2D(4, 4, 3, **{'padding': 1, 'bias_attr': False, **kwargs})
    np.testing.assert_allclose(layer(x).numpy(), nn.Conv2D.forward(layer, x).numpy())


def test_inputs_of_the_wrong_shape_get_paddles_errors():
  with pytest.raises(ValueError, match="input's channels"):
    cpu_ops.Conv2D(3, 4, 3, bias_attr=False)(paddle.ones([1, 5, 8, 8]))
  with pytest.raises(ValueError, match='4-D or 5-D'):
    cpu_ops.Conv2D(3, 4, 3, bias_attr=False)(paddle.ones([3, 8, 8]))
  with pytest.raises(ValueError, match='Scale'):
    cpu_ops.layer_norm(paddle.ones([2, 5]), paddle.ones([4]), paddle.zeros([4]), 1e-5)
  with pytest.raises(ValueError, match='shape'):
    cpu_ops.attention(paddle.ones([2, 3, 10]), 2, 0.0, True)


STAND_INS = {  # name: (input shape, the op on it)
    'convolution': ((2, 4, 6, 6), lambda x, layer=cpu_ops.Conv2D(4, 3, 3, padding=1, bias_attr=False): layer(x)),
    'layer norm': ((3, 8), lambda x, norm=cpu_ops.LayerNorm(8): norm(x)),
    'GELU': ((3, 8), cpu_ops.gelu),
    'attention': ((2, 3, 12), lambda x: cpu_ops.attention(x, 2, 0.0, True)),
    'linear': ((3, 8), lambda x, layer=cpu_ops.Linear(8, 5): layer(x)),
}


@pytest.mark.parametrize('name', STAND_INS)
def test_an_input_changed_in_place_after_the_forward_is_refused_as_paddle_does(name):
  shape, op = STAND_INS[name]
  x = leaf(shape, 0)
  h = x * 1.0
  out = op(h)
  h.add_(paddle.ones(shape))
  with pytest.raises(cpu_ops.Refused, match=f'{name} .*modified by an inplace operation'), cpu_ops.errors_as_raised():
    out.sum().backward()


@pytest.mark.parametrize('name', STAND_INS)
def test_second_order_gradients_are_refused_clearly(name):
  shape, op = STAND_INS[name]
  x = leaf(shape, 0)
  with pytest.raises(cpu_ops.Refused, match=f'{name} .*second-order gradients'), cpu_ops.errors_as_raised():
    paddle.grad((op(x) ** 2).sum(), x, create_graph=True)


def test_a_second_backward_through_any_stand_in_is_refused_clearly_not_a_crash():
  """Paddle's PyLayer frees its context after the first backward even with retain_graph=True: a second one
  ended the process with a segmentation fault, hence a process of its own."""
  script = textwrap.dedent('''
      from kernels import cpu_ops
      from test_cpu_ops import STAND_INS, leaf
      for name, (shape, op) in STAND_INS.items():
        out = op(leaf(shape, 0))
        out.sum().backward(retain_graph=True)
        try:
          with cpu_ops.errors_as_raised():
            out.sum().backward()
        except cpu_ops.Refused as refused:
          print(refused)
      ''')
  proc = subprocess.run([sys.executable, '-c', script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                        env=child_env(PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, 'tests')])))
  assert proc.returncode == 0, proc.stderr[-3000:]
  refusals = proc.stdout.splitlines()
  assert [line.split(' (')[0] for line in refusals] == list(STAND_INS)
  assert all('a second backward through the same graph (retain_graph=True) is not available' in line
             and 'FAST_CPU_OPS=0' in line for line in refusals)


def test_an_error_inside_a_stand_ins_backward_reaches_the_update_as_a_kernel_error_naming_the_op(monkeypatch):
  """Paddle's PyLayer turns it into an OSError, which the command line would report as a bad file."""
  real_gelu = onednn.gelu

  class Failing:
    def run(self, **buffers):
      raise MemoryError('no room for the gradient')
  monkeypatch.setattr(onednn, 'gelu', lambda size: (real_gelu(size)[0], Failing()))
  config = _tiny()
  step, _, batches = _step(config, paddle.to_tensor(np.zeros((4, 1, 8, 8), dtype=np.uint8)))
  with pytest.raises(KernelError, match=r"GELU \(kernels/cpu_ops.py\) failed in its backward: MemoryError: no room "
                                        r"for the gradient; FAST_CPU_OPS=0") as failed:
    step(1, batches)
  assert isinstance(failed.value.__cause__, MemoryError)


@pytest.mark.slow
def test_the_command_line_reports_a_stand_ins_failure_as_a_fault_of_the_program_not_of_the_command(tmp_path):
  script = textwrap.dedent(f'''
      import runpy, sys
      from kernels import onednn
      real_gelu = onednn.gelu
      class Failing:
        def run(self, **buffers):
          raise MemoryError('no room for the gradient')
      onednn.gelu = lambda size: (real_gelu(size)[0], Failing())
      sys.argv = ['main.py', '--config', 'configs/digits_vit.py:smoke', '--workdir', {str(tmp_path / 'run')!r}]
      runpy.run_path('main.py', run_name='__main__')
      ''')
  proc = subprocess.run([sys.executable, '-c', script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                        env=child_env())
  assert proc.returncode == 70, proc.stderr[-3000:]  # EX_SOFTWARE, not 1 (a mistake in the command)
  assert proc.stderr.rstrip().endswith('kernels.KernelError: GELU (kernels/cpu_ops.py) failed in its backward: '
                                       'MemoryError: no room for the gradient; FAST_CPU_OPS=0 in the environment '
                                       'runs Paddle\'s own ops instead')
  assert 'Traceback' in proc.stderr and '\nerror:' not in proc.stderr


def test_fast_cpu_ops_0_trains_with_paddles_ops_to_the_same_loss(monkeypatch):
  config = _tiny()
  config.model.dropout_rate = 0.0  # dropout's masks come from another generator in the stand-in
  images = paddle.to_tensor(np.random.default_rng(0).integers(0, 256, (4, 1, 8, 8), dtype=np.uint8))

  def losses():
    step, _, batches = _step(config, images)
    return [step(update, batches).means for update in (1, 2, 3)]
  fast = losses()
  monkeypatch.setattr(kernels, 'fast_cpu_ops', lambda: False)
  refuse(monkeypatch, *ALL_STAND_INS, masks=True)
  np.testing.assert_allclose(losses(), fast, rtol=1e-5, atol=1e-6)


def test_the_switch_is_read_from_fast_cpu_ops_in_the_environment():
  def switch(value):
    return subprocess.run([sys.executable, '-c', 'import kernels; print(kernels.fast_cpu_ops())'], cwd=ROOT,
                          capture_output=True, text=True, env=child_env(FAST_CPU_OPS=value))
  assert [switch(value).stdout.strip() for value in ('1', '0')] == ['True', 'False']
  assert "ValueError: FAST_CPU_OPS='yes' in the environment: 1 (the default)" in switch('yes').stderr


@pytest.mark.parametrize('epsilon', [-1.0, 2e-3, 1.0, float('nan')])
def test_layer_norm_refuses_the_epsilons_paddles_refuses(epsilon):
  x, weight, bias = paddle.ones([2, 4]), paddle.ones([4]), paddle.zeros([4])
  with pytest.raises(ValueError, match='epsilon'):
    F.layer_norm(x, 4, weight, bias, epsilon)
  with pytest.raises(ValueError, match=rf'layer norm: epsilon {epsilon} is outside \[0, 0.001\]'):
    cpu_ops.layer_norm(x, weight, bias, epsilon)


def test_threads_calling_one_layer_at_once_get_their_own_results():
  """oneDNN's memory objects take each call's pointers: concurrent callers must not mix them up."""
  layer = cpu_ops.Conv2D(8, 8, 3, padding=1, bias_attr=False)
  inputs = [paddle.full([2, 8, 10, 10], float(i)) for i in range(4)]
  with paddle.no_grad():
    expected = [layer(x).numpy() for x in inputs]
  wrong = []

  def call(i):
    with paddle.no_grad():
      for _ in range(30):
        if not np.allclose(layer(inputs[i]).numpy(), expected[i]):
          wrong.append(i)
  threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  assert not wrong


def test_primitives_are_kept_for_a_bounded_number_of_shapes():
  for rows in range(1, onednn.KEPT_SHAPES + 20):
    cpu_ops.layer_norm(paddle.ones([rows, 4]), paddle.ones([4]), paddle.zeros([4]), 1e-5)
  assert onednn.layer_normalization.cache_info().currsize == onednn.KEPT_SHAPES


def test_models_built_by_others_get_fast_convolutions_with_their_parameters_unchanged():
  paddle.seed(0)
  model = paddle.vision.models.resnet18(num_classes=3)
  keys = {name: p.numpy() for name, p in model.state_dict().items()}
  cpu_ops.with_fast_convolutions(model)
  assert all(type(layer) is not nn.Conv2D for layer in model.sublayers())
  assert sum(type(layer) is cpu_ops.Conv2D for layer in model.sublayers()) == 20
  assert list(model.state_dict()) == list(keys)
  for name, value in model.state_dict().items():
    np.testing.assert_array_equal(value.numpy(), keys[name])


@pytest.mark.parametrize('shape', [(64, 65, 768), (7, 13), (3,)])
def test_dropout_zeroes_at_the_rate_and_scales_the_rest(shape):
  rate = 0.1
  paddle.seed(0)
  x = leaf(shape, 0, offset=5.0)  # no input element is 0
  out = cpu_ops.dropout(x, rate)
  grad = paddle.to_tensor(np.random.default_rng(1).standard_normal(shape).astype('float32'))
  out.backward(grad)
  kept = out.numpy() != 0
  scale = np.float32(1 / (1 - rate))
  np.testing.assert_allclose(out.numpy(), np.where(kept, x.numpy() * scale, 0), rtol=1e-6)
  np.testing.assert_allclose(x.grad.numpy(), np.where(kept, grad.numpy() * scale, 0), rtol=1e-6)
  if kept.size > 100000:  # binomial: the dropped share within 5 standard deviations of the rate
    assert abs((1 - kept.mean()) - rate) < 5 * np.sqrt(rate * (1 - rate) / kept.size)


def test_dropout_masks_follow_paddles_seed_and_differ_between_calls():
  x = paddle.ones([40, 50])
  paddle.seed(7)
  first, second = cpu_ops.dropout(x, 0.3).numpy(), cpu_ops.dropout(x, 0.3).numpy()
  paddle.seed(7)
  again = cpu_ops.dropout(x, 0.3).numpy()
  np.testing.assert_array_equal(first, again)
  assert (first != second).any()


def test_dropout_is_the_identity_in_evaluation_and_at_rate_0():
  x = leaf((4, 5), 0)
  np.testing.assert_array_equal(cpu_ops.dropout(x, 0.5, training=False).numpy(), x.numpy())
  np.testing.assert_array_equal(cpu_ops.dropout(x, 0.0).numpy(), x.numpy())
  layer = cpu_ops.Dropout(0.5)
  layer.eval()
  np.testing.assert_array_equal(layer(x).numpy(), x.numpy())


@pytest.mark.parametrize('dtype', ['float64', 'float16'])
def test_other_dtypes_run_paddles_ops(dtype, monkeypatch):
  refuse(monkeypatch, *ALL_STAND_INS, masks=True)
  x = paddle.ones([3, 8], dtype=dtype)
  if dtype == 'float64':  # Paddle's CPU kernels of these ops have no float16
    layer = cpu_ops.Linear(8, 4)
    layer.to(dtype=dtype)
    assert layer(x).dtype == x.dtype
    assert cpu_ops.layer_norm(x, paddle.ones([8], dtype), paddle.zeros([8], dtype), 1e-6).dtype == x.dtype
    assert cpu_ops.gelu(x).dtype == x.dtype
    assert cpu_ops.attention(paddle.ones([1, 2, 6], dtype), 1, 0.0, True).dtype == x.dtype
    conv = cpu_ops.Conv2D(3, 2, 3, bias_attr=False)
    conv.to(dtype=dtype)
    assert conv(paddle.ones([1, 3, 5, 5], dtype=dtype)).dtype == x.dtype
  assert cpu_ops.dropout(x, 0.5, training=False).dtype == x.dtype


def test_without_onednn_paddles_ops_run(monkeypatch):
  """A Paddle build without oneDNN (or with another major version of it): Paddle's own ops, same values."""
  x = leaf((2, 3, 6), 0)
  conv, norm = cpu_ops.Conv2D(2, 3, 3, padding=1, bias_attr=False), cpu_ops.LayerNorm(6)
  expected = [conv(x.reshape([1, 2, 3, 6])), norm(x), cpu_ops.gelu(x), cpu_ops.attention(x, 1, 0.0, True)]
  monkeypatch.setattr(cpu_ops.onednn, 'available', lambda: False)
  refuse(monkeypatch, *ONEDNN_STAND_INS)
  got = [conv(x.reshape([1, 2, 3, 6])), norm(x), cpu_ops.gelu(x), cpu_ops.attention(x, 1, 0.0, True)]
  for a, b in zip(got, expected):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=RTOL, atol=ATOL)


def test_autocast_runs_paddles_ops(monkeypatch, amp_standin):
  refuse(monkeypatch, *ALL_STAND_INS, masks=True)
  conv, layer, norm = cpu_ops.Conv2D(2, 2, 1, bias_attr=False), cpu_ops.Linear(8, 6), cpu_ops.LayerNorm(6)
  with paddle.amp.auto_cast(dtype='bfloat16'):
    x = conv(paddle.ones([2, 2, 2, 2])).reshape([2, 8])
    x = cpu_ops.attention(cpu_ops.gelu(norm(layer(x))).reshape([2, 1, 6]), 1, 0.0, True)
    cpu_ops.Dropout(0.5)(x)


def test_static_graphs_run_paddles_ops(tmp_path):
  """paddle.jit.save traces the layers into a static program: Paddle's own ops, not the PyLayers."""
  paddle.seed(0)
  model = nn.Sequential(cpu_ops.Conv2D(1, 1, 3, padding=1, bias_attr=False), nn.Flatten(),
                        cpu_ops.Linear(6, 5), cpu_ops.LayerNorm(5), cpu_ops.Dropout(0.5))
  model.eval()
  x = paddle.randn([2, 1, 2, 3])
  expected = model(x).numpy()
  path = str(tmp_path / 'model')
  paddle.jit.save(model, path, input_spec=[paddle.static.InputSpec([None, 1, 2, 3], 'float32')])
  loaded = paddle.jit.load(path)
  np.testing.assert_allclose(loaded(x).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_onednn_takes_this_processes_share_of_the_cores_under_a_launch():
  """oneDNN runs on GNU OpenMP, which Paddle's set_num_threads does not reach (utils/threads.py)."""
  script = ('from utils import threads; threads.configure(); import ctypes, os; '
            'print(ctypes.CDLL("libgomp.so.1").omp_get_max_threads(), threads.cores_per_process())')
  for local_processes in ('1', '2'):
    out = subprocess.run([sys.executable, '-c', script], cwd=ROOT, capture_output=True, text=True, check=True,
                         env=child_env(PADDLE_LOCAL_SIZE=local_processes)).stdout.split()
    assert out[0] == out[1], f'{local_processes} local processes: GNU OpenMP {out[0]} threads, ours {out[1]}'
