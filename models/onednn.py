"""oneDNN's CPU primitives on Paddle tensors, through oneDNN's C API.

Paddle's CPU wheel ships oneDNN (paddle/libs/libdnnl.so.3, the library PyTorch's CPU convolutions and
normalisations run on) but its dynamic-mode kernels for convolution, layer norm and GELU are its own
(im2col and a matrix product per image; a dozen ops for layer norm's backward). This module calls
oneDNN's primitives directly on the tensors' memory: a primitive is built once per shape and kept, each
call passes the tensors' data pointers. Tensors stay in Paddle's plain layouts (NCHW, row-major); where
a primitive runs faster in a blocked layout of its choosing, reorders to and from it are part of the call.
"""
import ctypes
import functools
import os

import paddle

F32 = 3  # dnnl_f32
FORMAT_ANY = 1  # dnnl_format_tag_any
FORWARD_TRAINING, FORWARD_INFERENCE, BACKWARD, BACKWARD_DATA, BACKWARD_WEIGHTS = 64, 96, 128, 160, 192
CONVOLUTION_DIRECT = 0x1
ELTWISE_GELU_ERF = 0x20 + 17  # dnnl_eltwise_relu = 0x20, gelu_erf the 17th after it
USE_SCALE, USE_SHIFT = 0x2, 0x4
QUERY_EXEC_ARG_MD = 255
ARG = dict(src=1, dst=17, weights=33, bias=41, mean=49, variance=50, scale=51, shift=52, workspace=64,
           diff_src=129, diff_dst=145, diff_weights=161, diff_bias=169, diff_scale=255, diff_shift=256)
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
      'dnnl_batch_normalization_forward_primitive_desc_create':
          [p, _handle, ctypes.c_int, _handle, _handle, ctypes.c_float, ctypes.c_uint, _handle],
      'dnnl_batch_normalization_backward_primitive_desc_create':
          [p, _handle, ctypes.c_int, _handle, _handle, _handle, ctypes.c_float, ctypes.c_uint, _handle,
           _handle],
  }
  for name, argtypes in signatures.items():
    function = getattr(lib, name)
    function.argtypes, function.restype = argtypes, status
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


def _create(function, *args):
  out = _handle()
  _check(getattr(_library(), function)(ctypes.byref(out), *args), function)
  return out


@functools.cache
def _engine():
  engine = _create('dnnl_engine_create', 1, 0)  # dnnl_cpu, device 0
  return engine, _create('dnnl_stream_create', engine, 1)  # in order


def plain(shape):
  """The memory descriptor of a contiguous float32 tensor of `shape` (row-major)."""
  strides, step = [], 1
  for size in reversed(shape):
    strides.insert(0, step)
    step *= size
  return _create('dnnl_memory_desc_create_with_strides', len(shape), _dims(shape), F32, _dims(strides))


def any_layout(shape):
  """A memory descriptor that lets the primitive choose its layout."""
  return _create('dnnl_memory_desc_create_with_tag', len(shape), _dims(shape), F32, FORMAT_ANY)


class Primitive:
  """One oneDNN primitive with its arguments bound to plain float32 tensors.

  `plain_mds` gives, for each argument name, the plain layout of the tensor passed for it; where the
  primitive wants another layout, each call reorders into (`inputs`) or out of a buffer in that layout.
  """

  def __init__(self, pd, plain_mds, inputs):
    lib, (engine, _) = _library(), _engine()
    self.primitive = _create('dnnl_primitive_create', pd)
    self.user, self.own, self.reorders_before, self.reorders_after = {}, {}, [], []
    for name, md in plain_mds.items():
      own_md = lib.dnnl_primitive_desc_query_md(pd, QUERY_EXEC_ARG_MD, ARG[name])
      self.user[name] = _create('dnnl_memory_create', md, engine, None)
      if lib.dnnl_memory_desc_equal(own_md, md):
        continue
      self.own[name] = (_create('dnnl_memory_create', own_md, engine, None),
                        lib.dnnl_memory_desc_get_size(own_md))
      source, target = (md, own_md) if name in inputs else (own_md, md)
      reorder = _create('dnnl_primitive_create',
                        _create('dnnl_reorder_primitive_desc_create', source, engine, target, engine, None))
      (self.reorders_before if name in inputs else self.reorders_after).append((reorder, name))

  def run(self, **tensors):
    """Runs the primitive on contiguous float32 tensors, one per argument name (outputs preallocated)."""
    lib, (_, stream) = _library(), _engine()
    for name, tensor in tensors.items():
      _check(lib.dnnl_memory_set_data_handle(self.user[name], _handle(tensor.data_ptr())), 'set_data_handle')
    buffers = []  # alive until the primitive has run
    for name, (memory, size) in self.own.items():
      buffers.append(paddle.empty([size], dtype=paddle.uint8))
      _check(lib.dnnl_memory_set_data_handle(memory, _handle(buffers[-1].data_ptr())), 'set_data_handle')
    for reorder, name in self.reorders_before:
      _execute(reorder, stream, {ARG['src']: self.user[name], ARG['dst']: self.own[name][0]})
    _execute(self.primitive, stream,
             {ARG[name]: self.own[name][0] if name in self.own else memory for name, memory in self.user.items()})
    for reorder, name in self.reorders_after:
      _execute(reorder, stream, {ARG['src']: self.own[name][0], ARG['dst']: self.user[name]})


def _execute(primitive, stream, args):
  array = (_ExecArg * len(args))(*[_ExecArg(key, memory) for key, memory in args.items()])
  _check(_library().dnnl_primitive_execute(primitive, stream, len(args), array), 'dnnl_primitive_execute')


@functools.lru_cache(maxsize=256)
def convolution(x_shape, w_shape, stride, padding, dilation, free_layout=True):
  """(forward, backward data, backward weights) primitives of a 2-D convolution without bias, groups 1."""
  engine, _ = _engine()
  n, c, h, w = x_shape
  o, _, kh, kw = w_shape
  out_h = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
  out_w = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
  y_shape = (n, o, out_h, out_w)
  geometry = (_dims(stride), _dims([d - 1 for d in dilation]), _dims(padding), _dims(padding))
  x_md, w_md, y_md = plain(x_shape), plain(w_shape), plain(y_shape)
  x_any, w_any, y_any = (any_layout(x_shape), any_layout(w_shape), any_layout(y_shape)) if free_layout else (x_md, w_md, y_md)
  forward_pd = _create('dnnl_convolution_forward_primitive_desc_create', engine, FORWARD_TRAINING,
                       CONVOLUTION_DIRECT, x_any, w_any, None, y_any, *geometry, None)
  data_pd = _create('dnnl_convolution_backward_data_primitive_desc_create', engine, CONVOLUTION_DIRECT,
                    x_any, w_any, y_any, *geometry, forward_pd, None)
  weights_pd = _create('dnnl_convolution_backward_weights_primitive_desc_create', engine,
                       CONVOLUTION_DIRECT, x_any, w_any, None, y_any, *geometry, forward_pd, None)
  return (y_shape,
          Primitive(forward_pd, {'src': x_md, 'weights': w_md, 'dst': y_md}, inputs={'src', 'weights'}),
          Primitive(data_pd, {'diff_dst': y_md, 'weights': w_md, 'diff_src': x_md},
                    inputs={'diff_dst', 'weights'}),
          Primitive(weights_pd, {'src': x_md, 'diff_dst': y_md, 'diff_weights': w_md},
                    inputs={'src', 'diff_dst'}))


@functools.lru_cache(maxsize=256)
def layer_normalization(rows, width, epsilon):
  """(forward, backward) primitives of layer norm over the last axis of a (rows, width) matrix, with a
  scale and a shift; the forward also writes each row's mean and variance, which the backward reads."""
  engine, _ = _engine()
  x_md, stat_md, parameter_md = plain((rows, width)), plain((rows,)), plain((width,))
  flags = USE_SCALE | USE_SHIFT
  forward_pd = _create('dnnl_layer_normalization_forward_primitive_desc_create', engine, FORWARD_TRAINING,
                       x_md, x_md, stat_md, ctypes.c_float(epsilon), flags, None)
  backward_pd = _create('dnnl_layer_normalization_backward_primitive_desc_create', engine, BACKWARD,
                        x_md, x_md, x_md, stat_md, ctypes.c_float(epsilon), flags, forward_pd, None)
  forward_args = {'src': x_md, 'scale': parameter_md, 'shift': parameter_md, 'dst': x_md,
                  'mean': stat_md, 'variance': stat_md}
  backward_args = {'src': x_md, 'diff_dst': x_md, 'mean': stat_md, 'variance': stat_md, 'scale': parameter_md,
                   'shift': parameter_md,
                   'diff_src': x_md, 'diff_scale': parameter_md, 'diff_shift': parameter_md}
  return (Primitive(forward_pd, forward_args, inputs={'src', 'scale', 'shift'}),
          Primitive(backward_pd, backward_args, inputs={'src', 'diff_dst', 'mean', 'variance', 'scale', 'shift'}))


@functools.lru_cache(maxsize=256)
def gelu(size):
  """(forward, backward) primitives of the exact (erf) GELU of `size` float32 values."""
  engine, _ = _engine()
  md = plain((size,))
  forward_pd = _create('dnnl_eltwise_forward_primitive_desc_create', engine, FORWARD_TRAINING,
                       ELTWISE_GELU_ERF, md, md, 0.0, 0.0, None)
  backward_pd = _create('dnnl_eltwise_backward_primitive_desc_create', engine, ELTWISE_GELU_ERF, md, md, md,
                        0.0, 0.0, forward_pd, None)
  return (Primitive(forward_pd, {'src': md, 'dst': md}, inputs={'src'}),
          Primitive(backward_pd, {'src': md, 'diff_dst': md, 'diff_src': md}, inputs={'src', 'diff_dst'}))
