"""oneDNN's CPU primitives on Paddle tensors, through oneDNN's C API.

Paddle's CPU wheel ships oneDNN (paddle/libs/libdnnl.so.3, the library PyTorch's CPU convolutions and
normalisations run on), but its dynamic-mode kernels for convolution, layer norm, GELU and attention are
its own (im2col and a matrix product per image; a dozen ops for layer norm's backward). This module calls
oneDNN's primitives directly on the tensors' memory, through ctypes: nothing to compile. A primitive is
built once per shape and kept (for the KEPT_SHAPES most recent shapes; a training run meets a handful:
its micro-batch, evaluation batch and last partial batches); each call passes the tensors' data pointers.
Tensors stay in Paddle's plain layouts (NCHW, row-major); where a primitive runs faster in a blocked
layout of its choosing, reorders to and from it are part of the call. Constants and signatures are those
of oneDNN 3.x's include/oneapi/dnnl/dnnl.h and dnnl_types.h; `available()` is false for other versions.
"""
import ctypes
import functools
import os
import threading

import paddle

F32 = 3  # dnnl_f32
FORMAT_ANY = 1  # dnnl_format_tag_any
FORWARD_TRAINING, BACKWARD = 64, 128  # dnnl_prop_kind_t
CONVOLUTION_DIRECT = 0x1
ELTWISE_LINEAR, ELTWISE_GELU_ERF = 0x20 + 6, 0x20 + 17  # after dnnl_eltwise_relu = 0x20 in dnnl_types.h
SOFTMAX_ACCURATE = 0x30000
USE_SCALE, USE_SHIFT = 0x2, 0x4
QUERY_SCRATCHPAD_MD, QUERY_EXEC_ARG_MD = 136, 255  # dnnl_query_some_md = 128 + 8; exec_arg_md
SCRATCHPAD_MODE_USER = 1
ARG = dict(src=1, dst=17, weights=33, mean=49, variance=50, scale=51, shift=52, scratchpad=80,  # DNNL_ARG_*
           diff_src=129, diff_dst=145, diff_weights=161, diff_scale=255, diff_shift=256)
MAX_DIMS = 12

_handle = ctypes.c_void_p


class _ExecArg(ctypes.Structure):
  _fields_ = [('arg', ctypes.c_int), ('memory', _handle)]


def _dims(values):
  return (ctypes.c_int64 * MAX_DIMS)(*values)


@functools.cache
def _library():
  """libdnnl from Paddle's wheel, with the signatures used here; None where Paddle has none."""
  path = os.path.join(os.path.dirname(paddle.__file__), 'libs', 'libdnnl.so.3')
  try:
    lib = ctypes.CDLL(path)
  except OSError:
    return None
  lib.dnnl_version.restype = ctypes.POINTER(ctypes.c_int)  # dnnl_version_t starts with major, minor
  if lib.dnnl_version()[0] != 3:  # the C API and the constants above are version 3's
    return None
  status, p, dims = ctypes.c_int, ctypes.POINTER(_handle), ctypes.POINTER(ctypes.c_int64)
  signatures = {
      'dnnl_engine_create': [p, ctypes.c_int, ctypes.c_size_t],
      'dnnl_stream_create': [p, _handle, ctypes.c_uint],
      'dnnl_memory_desc_create_with_strides': [p, ctypes.c_int, dims, ctypes.c_int, dims],
      'dnnl_memory_desc_create_with_tag': [p, ctypes.c_int, dims, ctypes.c_int, ctypes.c_int],
      'dnnl_memory_create': [p, _handle, _handle, _handle],
      'dnnl_memory_set_data_handle': [_handle, _handle],
      'dnnl_primitive_create': [p, _handle],
      'dnnl_primitive_execute': [_handle, _handle, ctypes.c_int, ctypes.POINTER(_ExecArg)],
      'dnnl_reorder_primitive_desc_create': [p, _handle, _handle, _handle, _handle, _handle],
      'dnnl_convolution_forward_primitive_desc_create':
          [p, _handle, ctypes.c_int, ctypes.c_int] + [_handle] * 4 + [dims] * 4 + [_handle],
      'dnnl_convolution_backward_data_primitive_desc_create':
          [p, _handle, ctypes.c_int] + [_handle] * 3 + [dims] * 4 + [_handle, _handle],
      'dnnl_convolution_backward_weights_primitive_desc_create':
          [p, _handle, ctypes.c_int] + [_handle] * 4 + [dims] * 4 + [_handle, _handle],
      'dnnl_eltwise_forward_primitive_desc_create':
          [p, _handle, ctypes.c_int, ctypes.c_int, _handle, _handle, ctypes.c_float, ctypes.c_float, _handle],
      'dnnl_eltwise_backward_primitive_desc_create':
          [p, _handle, ctypes.c_int, _handle, _handle, _handle, ctypes.c_float, ctypes.c_float, _handle,
           _handle],
      'dnnl_layer_normalization_forward_primitive_desc_create':
          [p, _handle, ctypes.c_int, _handle, _handle, _handle, ctypes.c_float, ctypes.c_uint, _handle],
      'dnnl_layer_normalization_backward_primitive_desc_create':
          [p, _handle, ctypes.c_int, _handle, _handle, _handle, _handle, ctypes.c_float, ctypes.c_uint,
           _handle, _handle],
      'dnnl_matmul_primitive_desc_create': [p, _handle, _handle, _handle, _handle, _handle, _handle],
      'dnnl_softmax_forward_primitive_desc_create':
          [p, _handle, ctypes.c_int, ctypes.c_int, _handle, _handle, ctypes.c_int, _handle],
      'dnnl_softmax_backward_primitive_desc_create':
          [p, _handle, ctypes.c_int, _handle, _handle, _handle, ctypes.c_int, _handle, _handle],
      'dnnl_primitive_attr_create': [p],
      'dnnl_post_ops_create': [p],
      'dnnl_post_ops_append_eltwise': [_handle, ctypes.c_int, ctypes.c_float, ctypes.c_float],
      'dnnl_primitive_attr_set_post_ops': [_handle, _handle],
      'dnnl_primitive_attr_set_scratchpad_mode': [_handle, ctypes.c_int],
  }
  for name, argtypes in signatures.items():
    function = getattr(lib, name)
    function.argtypes, function.restype = argtypes, status
  for name in ('dnnl_primitive_destroy', 'dnnl_memory_destroy') + tuple(_DESTROY_TRANSIENT.values()):
    getattr(lib, name).argtypes, getattr(lib, name).restype = [_handle], status
  lib.dnnl_primitive_desc_query_md.argtypes = [_handle, ctypes.c_int, ctypes.c_int]
  lib.dnnl_primitive_desc_query_md.restype = _handle
  lib.dnnl_memory_desc_equal.argtypes = [_handle, _handle]
  lib.dnnl_memory_desc_get_size.argtypes = [_handle]
  lib.dnnl_memory_desc_get_size.restype = ctypes.c_size_t
  return lib


def available():
  return _library() is not None


def _check(status, what):
  if status != 0:
    raise RuntimeError(f'oneDNN: {what} failed (dnnl_status_t {status})')


# Descriptors, made while building primitives and destroyed once those exist (_kept): by the function
# that makes them, the one that destroys them.
_DESTROY_TRANSIENT = {'dnnl_memory_desc_create': 'dnnl_memory_desc_destroy',
                      'primitive_desc_create': 'dnnl_primitive_desc_destroy',
                      'dnnl_primitive_attr_create': 'dnnl_primitive_attr_destroy',
                      'dnnl_post_ops_create': 'dnnl_post_ops_destroy'}
_transient = []
# One caller at a time: a Primitive's memory objects take each call's pointers (Python threads would
# overwrite each other's), and building collects descriptors in _transient.
_lock = threading.RLock()
KEPT_SHAPES = 128  # per kind of primitive; a training run meets a handful


def _create(function, *args):
  out = _handle()
  _check(getattr(_library(), function)(ctypes.byref(out), *args), function)
  _transient.extend((destroy, out) for maker, destroy in _DESTROY_TRANSIENT.items() if maker in function)
  return out


def _kept(builder):
  """`builder`, its primitives kept for the most recent KEPT_SHAPES argument sets (freed when dropped),
  the descriptors it made on the way destroyed once the primitives exist."""
  @functools.lru_cache(maxsize=KEPT_SHAPES)
  @functools.wraps(builder)
  def build(*args):
    with _lock:
      try:
        return builder(*args)
      finally:
        while _transient:
          destroy, handle = _transient.pop()
          getattr(_library(), destroy)(handle)
  return build


@functools.cache
def _engine():
  engine = _create('dnnl_engine_create', 1, 0)  # dnnl_cpu, device 0
  return engine, _create('dnnl_stream_create', engine, 1)  # in order


def plain(shape, strides=None):
  """The memory descriptor of a float32 tensor of `shape`: contiguous (row-major), or a view of one with
  `strides` (in elements)."""
  if strides is None:
    strides, step = [], 1
    for size in reversed(shape):
      strides.insert(0, step)
      step *= size
  return _create('dnnl_memory_desc_create_with_strides', len(shape), _dims(shape), F32, _dims(strides))


def any_layout(shape):
  """A memory descriptor that lets the primitive choose its layout."""
  return _create('dnnl_memory_desc_create_with_tag', len(shape), _dims(shape), F32, FORMAT_ANY)


def attributes(scale=None):
  """Primitive attributes: a scratchpad passed by each call (oneDNN's own is shared per thread and sized
  when a primitive is built, so a primitive run from another thread, such as a predictor's thread pool,
  could overrun it), and optionally a factor that multiplies the result (an eltwise post-op)."""
  attr = _create('dnnl_primitive_attr_create')
  _check(_library().dnnl_primitive_attr_set_scratchpad_mode(attr, SCRATCHPAD_MODE_USER), 'set_scratchpad_mode')
  if scale is not None:
    post_ops = _create('dnnl_post_ops_create')
    _check(_library().dnnl_post_ops_append_eltwise(post_ops, ELTWISE_LINEAR, scale, 0.0), 'append_eltwise')
    _check(_library().dnnl_primitive_attr_set_post_ops(attr, post_ops), 'set_post_ops')
  return attr


def _bind_new_buffer(lib, memory, size, buffers):
  """Points `memory` at a new buffer of `size` bytes, appended to `buffers` (which keeps it alive)."""
  buffers.append(paddle.empty([size], dtype=paddle.uint8))
  _check(lib.dnnl_memory_set_data_handle(memory, _handle(buffers[-1].data_ptr())), 'set_data_handle')


class _Step:
  """A primitive with the size of the scratchpad it wants from each call (user scratchpads: see attributes)."""

  def __init__(self, lib, pd):
    self.primitive = _create('dnnl_primitive_create', pd)
    scratchpad_md = lib.dnnl_primitive_desc_query_md(pd, QUERY_SCRATCHPAD_MD, 0)
    self.scratchpad_size = lib.dnnl_memory_desc_get_size(scratchpad_md)
    self.scratchpad = (_create('dnnl_memory_create', scratchpad_md, _engine()[0], None)
                       if self.scratchpad_size else None)

  def execute(self, lib, args, buffers):
    """Runs on `args` {oneDNN argument: memory}, with a scratchpad appended to `buffers` (kept alive)."""
    if self.scratchpad is not None:
      _bind_new_buffer(lib, self.scratchpad, self.scratchpad_size, buffers)
      args = {**args, ARG['scratchpad']: self.scratchpad}
    array = (_ExecArg * len(args))(*[_ExecArg(key, memory) for key, memory in args.items()])
    _check(lib.dnnl_primitive_execute(self.primitive, _engine()[1], len(args), array), 'dnnl_primitive_execute')

  def destroy(self, lib):
    lib.dnnl_primitive_destroy(self.primitive)
    if self.scratchpad is not None:
      lib.dnnl_memory_destroy(self.scratchpad)


class Primitive:
  """One oneDNN primitive with its arguments bound to plain float32 tensors.

  `plain_mds` gives, for each argument name, the plain layout of the tensor passed for it; where the
  primitive wants another layout, each call reorders into (`inputs`) or out of a buffer in that layout.
  """

  def __init__(self, pd, plain_mds, inputs):
    lib, (engine, _) = _library(), _engine()
    self._lib = lib  # for __del__, which may run after this module's globals are gone
    self.user, self.own, self.reorders_before, self.reorders_after = {}, {}, [], []
    self.main = _Step(lib, pd)
    for name, md in plain_mds.items():
      own_md = lib.dnnl_primitive_desc_query_md(pd, QUERY_EXEC_ARG_MD, ARG[name])
      self.user[name] = _create('dnnl_memory_create', md, engine, None)
      if lib.dnnl_memory_desc_equal(own_md, md):
        continue
      self.own[name] = (_create('dnnl_memory_create', own_md, engine, None),
                        lib.dnnl_memory_desc_get_size(own_md))
      source, target = (md, own_md) if name in inputs else (own_md, md)
      reorder = _Step(lib, _create('dnnl_reorder_primitive_desc_create', source, engine, target, engine,
                                   attributes()))
      (self.reorders_before if name in inputs else self.reorders_after).append((reorder, name))

  def __del__(self):
    for step in [self.main] + [reorder for reorder, _ in self.reorders_before + self.reorders_after]:
      step.destroy(self._lib)
    for memory in [*self.user.values(), *(memory for memory, _ in self.own.values())]:
      self._lib.dnnl_memory_destroy(memory)

  def run(self, **tensors):
    """Runs the primitive on contiguous float32 tensors, one per argument name (outputs preallocated); a
    (tensor, offset) pair passes the view that starts `offset` elements into the tensor."""
    with _lock:
      self._run(tensors)

  def _run(self, tensors):
    lib = self._lib
    for name, tensor in tensors.items():
      tensor, offset = tensor if isinstance(tensor, tuple) else (tensor, 0)
      if tensor.dtype != paddle.float32 or not tensor.is_contiguous():  # oneDNN would read other memory
        raise ValueError(f'oneDNN argument {name}: a contiguous float32 tensor is needed, not {tensor.dtype} '
                         f'{"contiguous" if tensor.is_contiguous() else "strided"}')
      address = _handle(tensor.data_ptr() + 4 * offset)  # float32
      _check(lib.dnnl_memory_set_data_handle(self.user[name], address), 'set_data_handle')
    buffers = []  # alive until the primitive has run
    for memory, size in self.own.values():
      _bind_new_buffer(lib, memory, size, buffers)
    for reorder, name in self.reorders_before:
      reorder.execute(lib, {ARG['src']: self.user[name], ARG['dst']: self.own[name][0]}, buffers)
    self.main.execute(lib, {ARG[name]: self.own[name][0] if name in self.own else memory
                            for name, memory in self.user.items()}, buffers)
    for reorder, name in self.reorders_after:
      reorder.execute(lib, {ARG['src']: self.own[name][0], ARG['dst']: self.user[name]}, buffers)


def convolution_output_shape(x_shape, w_shape, stride, padding, dilation):
  """The NCHW shape a 2-D convolution of an `x_shape` input with `w_shape` weights writes."""
  spatial = (
      (size + 2 * pad - dilate * (kernel - 1) - 1) // step + 1
      for size, kernel, step, pad, dilate in zip(x_shape[2:], w_shape[2:], stride, padding, dilation))
  return (x_shape[0], w_shape[0], *spatial)


@_kept
def convolution(x_shape, w_shape, stride, padding, dilation):
  """(output shape, forward, backward data, backward weights) primitives of a 2-D convolution without
  bias, one group.

  Convolutions with a spatial kernel over 16 or more channels run in the blocked layout oneDNN chooses
  (16 channels a block), reordered from and to NCHW in each call; 1x1 convolutions and those of few
  input channels (a network's first, of the image's 3) run on NCHW itself, for which the reorders cost
  more than they gain. Measured at ResNet50's shapes (batch 8, forward and backward, 2-core AMD EPYC):
  3x3 in the blocked layout 0.5-0.9x the time on NCHW, 1x1 on NCHW 0.4-1.1x the time blocked.
  """
  engine, _ = _engine()
  c, (kh, kw) = x_shape[1], w_shape[2:]
  y_shape = convolution_output_shape(x_shape, w_shape, stride, padding, dilation)
  geometry = (_dims(stride), _dims([d - 1 for d in dilation]), _dims(padding), _dims(padding))
  x_md, w_md, y_md = plain(x_shape), plain(w_shape), plain(y_shape)
  blocked = kh * kw > 1 and c >= 16
  x_any, w_any, y_any = ((any_layout(x_shape), any_layout(w_shape), any_layout(y_shape)) if blocked
                         else (x_md, w_md, y_md))
  forward_pd = _create('dnnl_convolution_forward_primitive_desc_create', engine, FORWARD_TRAINING,
                       CONVOLUTION_DIRECT, x_any, w_any, None, y_any, *geometry, attributes())
  data_pd = _create('dnnl_convolution_backward_data_primitive_desc_create', engine, CONVOLUTION_DIRECT,
                    x_any, w_any, y_any, *geometry, forward_pd, attributes())
  weights_pd = _create('dnnl_convolution_backward_weights_primitive_desc_create', engine,
                       CONVOLUTION_DIRECT, x_any, w_any, None, y_any, *geometry, forward_pd, attributes())
  return (y_shape,
          Primitive(forward_pd, {'src': x_md, 'weights': w_md, 'dst': y_md}, inputs={'src', 'weights'}),
          Primitive(data_pd, {'diff_dst': y_md, 'weights': w_md, 'diff_src': x_md},
                    inputs={'diff_dst', 'weights'}),
          Primitive(weights_pd, {'src': x_md, 'diff_dst': y_md, 'diff_weights': w_md},
                    inputs={'src', 'diff_dst'}))


@_kept
def layer_normalization(rows, width, epsilon):
  """(forward, backward) primitives of layer norm over the last axis of a (rows, width) matrix, with a
  scale and a shift; the forward also writes each row's mean and variance, which the backward reads."""
  engine, _ = _engine()
  x_md, stat_md, parameter_md = plain((rows, width)), plain((rows,)), plain((width,))
  flags = USE_SCALE | USE_SHIFT
  forward_pd = _create('dnnl_layer_normalization_forward_primitive_desc_create', engine, FORWARD_TRAINING,
                       x_md, x_md, stat_md, ctypes.c_float(epsilon), flags, attributes())
  backward_pd = _create('dnnl_layer_normalization_backward_primitive_desc_create', engine, BACKWARD,
                        x_md, x_md, x_md, stat_md, ctypes.c_float(epsilon), flags, forward_pd, attributes())
  forward_args = {'src': x_md, 'scale': parameter_md, 'shift': parameter_md, 'dst': x_md,
                  'mean': stat_md, 'variance': stat_md}
  backward_inputs = {'src': x_md, 'diff_dst': x_md, 'mean': stat_md, 'variance': stat_md, 'scale': parameter_md,
                     'shift': parameter_md}
  backward_outputs = {'diff_src': x_md, 'diff_scale': parameter_md, 'diff_shift': parameter_md}
  return (Primitive(forward_pd, forward_args, inputs={'src', 'scale', 'shift'}),
          Primitive(backward_pd, {**backward_inputs, **backward_outputs}, inputs=set(backward_inputs)))


@_kept
def gelu(size):
  """(forward, backward) primitives of the exact (erf) GELU of `size` float32 values."""
  engine, _ = _engine()
  md = plain((size,))
  forward_pd = _create('dnnl_eltwise_forward_primitive_desc_create', engine, FORWARD_TRAINING,
                       ELTWISE_GELU_ERF, md, md, 0.0, 0.0, attributes())
  backward_pd = _create('dnnl_eltwise_backward_primitive_desc_create', engine, ELTWISE_GELU_ERF, md, md, md,
                        0.0, 0.0, forward_pd, attributes())
  return (Primitive(forward_pd, {'src': md, 'dst': md}, inputs={'src'}),
          Primitive(backward_pd, {'src': md, 'diff_dst': md, 'diff_src': md}, inputs={'src', 'diff_dst'}))


def _matmul(a, b, out, scale=None):
  """A batched matrix product a @ b -> out of memory descriptors (strided views allowed)."""
  pd = _create('dnnl_matmul_primitive_desc_create', _engine()[0], a, b, None, out, attributes(scale))
  return Primitive(pd, {'src': a, 'weights': b, 'dst': out}, inputs={'src', 'weights'})


@_kept
def attention(batch, tokens, heads, head_dim):
  """Primitives of softmax(q k^T / sqrt(head_dim)) v and its backward, reading q, k and v in place from a
  fused projection [batch, tokens, 3, heads, head_dim] and writing [batch, tokens, heads, head_dim]: no
  splitting of q, k and v, no transposes of heads (strided views instead), gradients written in place
  into one [batch, tokens, 3, heads, head_dim] tensor. The views start at element offsets 0 (q), `width`
  (k) and 2 `width` (v), width = heads x head_dim.
  """
  width = heads * head_dim
  fused = (tokens * 3 * width, head_dim, 3 * width, 1)  # [batch, heads, tokens, head_dim] of q, k or v
  fused_transposed = (tokens * 3 * width, head_dim, 1, 3 * width)  # [batch, heads, head_dim, tokens]
  merged = (tokens * width, head_dim, width, 1)  # [batch, heads, tokens, head_dim] of [b, t, h, d]
  scores = plain((batch, heads, tokens, tokens))
  scores_transposed = plain((batch, heads, tokens, tokens), (heads * tokens * tokens, tokens * tokens, 1, tokens))
  by_token = plain((batch, heads, tokens, head_dim), fused)
  by_dim = plain((batch, heads, head_dim, tokens), fused_transposed)
  out = plain((batch, heads, tokens, head_dim), merged)
  scale = head_dim ** -0.5
  engine = _engine()[0]
  softmax_pd = _create('dnnl_softmax_forward_primitive_desc_create', engine, FORWARD_TRAINING, SOFTMAX_ACCURATE,
                       scores, scores, 3, attributes())
  softmax_backward_pd = _create('dnnl_softmax_backward_primitive_desc_create', engine, SOFTMAX_ACCURATE,
                                scores, scores, scores, 3, softmax_pd, attributes())
  return {
      'scores': _matmul(by_token, by_dim, scores, scale),  # q @ k^T / sqrt(d)
      'softmax': Primitive(softmax_pd, {'src': scores, 'dst': scores}, inputs={'src'}),
      'out': _matmul(scores, by_token, out),  # p @ v
      'grad_p': _matmul(out, by_dim, scores),  # dout @ v^T
      'grad_v': _matmul(scores_transposed, out, by_token),  # p^T @ dout
      'softmax_backward': Primitive(softmax_backward_pd, {'dst': scores, 'diff_dst': scores, 'diff_src': scores},
                                    inputs={'dst', 'diff_dst'}),
      'grad_q': _matmul(scores, by_token, by_token, scale),  # ds @ k / sqrt(d)
      'grad_k': _matmul(scores_transposed, by_token, by_token, scale),  # ds^T @ q / sqrt(d)
  }

