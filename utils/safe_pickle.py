"""Pickles read without running code: weights, checkpoints and datasets are downloaded and shared.

`pickle.load`, and so `paddle.load`, calls whatever a file names: a `__reduce__` that returns `os.system`
runs a command on loading. The files we read are plain data: `paddle.save` writes tensors as NumPy
arrays (or `(name, array)` tuples) in dicts, CIFAR's python batches are dicts of arrays, lists and bytes.
Numbers, strings, bytes and the builtin containers need no global at all; NumPy arrays and scalars need
the few in `PLAIN` below, which are looked up in that table, never imported. Any other global is refused
with NotPlainData, naming the file and the global, before anything is called.
"""
import codecs
import collections
import pickle

import numpy as np
import paddle

STATE_DICT_NAMES = 'StructuredToParameterName@@'  # paddle.save's mark of a Layer's or optimizer's state dict


def _latin1(text, encoding):
  """How a protocol-2 pickle holds `bytes` (`_codecs.encode(text, 'latin1')`); no other codec."""
  if encoding not in ('latin1', 'latin-1'):
    raise pickle.UnpicklingError(f'bytes encoded as {encoding!r}: only latin1 holds plain bytes')
  return codecs.encode(text, encoding)


# What NumPy's own pickles call to rebuild an array and a scalar, from whichever module this NumPy keeps them in
_RECONSTRUCT, _SCALAR = np.ndarray.__reduce__(np.zeros(1))[0], np.float32(0).__reduce__()[0]
PLAIN = {
    **{(module, name): value for module in ('numpy._core.multiarray', 'numpy.core.multiarray')  # NumPy 2 / 1
       for name, value in (('_reconstruct', _RECONSTRUCT), ('scalar', _SCALAR))},
    ('numpy', 'ndarray'): np.ndarray,
    ('numpy', 'dtype'): np.dtype,
    ('_codecs', 'encode'): _latin1,
    **{(module, container.__name__): container for module in ('builtins', '__builtin__')  # Python 3 / 2
       for container in (tuple, list, dict, set, frozenset)},
    ('collections', 'OrderedDict'): collections.OrderedDict,
}


class NotPlainData(ValueError):  # bad input, reported in one line; not an UnpicklingError, which means damage
  pass


class _PlainUnpickler(pickle.Unpickler):
  def __init__(self, file, source, **options):
    super().__init__(file, **options)
    self.source = source

  def find_class(self, module, name):
    if (module, name) not in PLAIN:
      raise NotPlainData(f'{self.source}: {module}.{name} is not plain data: refusing to run code from it')
    return PLAIN[module, name]

  def persistent_load(self, pid):
    raise NotPlainData(f'{self.source}: a persistent reference is not plain data: refusing to run code from it')


def load(file, source, encoding='ASCII'):
  """The plain data pickled in the open binary `file`; NotPlainData naming `source` if it calls code."""
  return _PlainUnpickler(file, source, encoding=encoding).load()


def load_paddle(path):
  """What `paddle.load(path)` returns for a dict saved by `paddle.save` (a `.pdparams`, `.pdopt`...),
  read through `load`: arrays of a state dict, or `(name, array)` tuples (else all arrays), become Tensors."""
  try:
    with open(path, 'rb') as f:
      obj = load(f, path, encoding='latin1')
  except (pickle.UnpicklingError, EOFError) as err:
    raise ValueError(f'{path} is not a file paddle.save wrote, or it is damaged ({err})') from err
  if not isinstance(obj, dict):
    raise ValueError(f'{path} holds a Python {type(obj).__name__}, not the dict of arrays paddle.save writes')
  if STATE_DICT_NAMES in obj:
    return {key: paddle.to_tensor(value) if key in obj[STATE_DICT_NAMES] and isinstance(value, np.ndarray) else value
            for key, value in obj.items() if key != STATE_DICT_NAMES}
  tensor_tuples = _any(obj, _is_tensor_tuple)
  return _map(obj, _is_tensor_tuple if tensor_tuples else (lambda x: isinstance(x, np.ndarray)),
              (lambda pair: paddle.to_tensor(pair[1])) if tensor_tuples else paddle.to_tensor)


def _is_tensor_tuple(obj):  # how paddle.save writes a Tensor outside a state dict
  return isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], str) and isinstance(obj[1], np.ndarray)


def _any(obj, test):
  if test(obj):
    return True
  values = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else ()
  return any(_any(value, test) for value in values)


def _map(obj, test, convert):
  if test(obj):
    return convert(obj)
  if isinstance(obj, dict):
    return type(obj)((key, _map(value, test, convert)) for key, value in obj.items())
  if isinstance(obj, (list, tuple)):
    return type(obj)(_map(value, test, convert) for value in obj)
  return obj
