"""A CPU stand-in for a GPU's mixed precision, for tests only: Paddle's own AMP code runs on this CPU.

`paddle.amp.auto_cast`, `decorate` and `GradScaler` switch themselves off unless the dygraph tracer's
expected place is a GPU and, for the chosen dtype, `_is_gpu_float16_supported` /
`_is_gpu_bfloat16_supported` say the card can (read in paddle/amp/auto_cast.py and grad_scaler.py). The
stand-in answers those three questions as a compute-capability-8.0 GPU would, in those two modules only;
everything else is Paddle's real code running Paddle's real CPU kernels. What that gives on Paddle 3.3.1:
  - O1: autocast is on and the fp16 GradScaler scales, checks and skips for real; the ops still compute
    in float32 (the CPU has no half-precision kernels for them), so O1 trains as fp32 numerically.
  - O2: decorate casts the weights to bf16/fp16 and the optimizer keeps float32 master weights; model
    outputs and gradients are half precision. Only plain SGD has a bf16 update kernel on the CPU
    (Momentum, Adam and AdamW have none); the CPU build has no fp16 kernel for the update at all
    (check_finite_and_unscale, multiply, sgd, ...), so an fp16 O2 model can be evaluated here but not trained.
The project's code is not touched: it asks Paddle, and Paddle answers as on a GPU.

Use the `amp_standin` fixture of conftest.py in a test's own process, or launch a child process with
  python -m tests.amp_standin ARGS...     (patches Paddle, then runs main.py ARGS as __main__)
"""
import importlib
import os
import runpy
import sys


class _AmpCapablePlace:
  """What paddle.amp asks of the tracer's expected place, answered as for a CUDA device."""

  def is_gpu_place(self):
    return True

  def is_xpu_place(self):
    return False

  def is_custom_place(self):
    return False

  def __repr__(self):
    return 'Place(gpu:0, CPU stand-in)'


class _Tracer:
  """The real dygraph tracer, except for its expected place; attribute writes (AMP level, dtype, op
  lists) go through to the real tracer, so Paddle's C++ side really autocasts."""
  _expected_place = _AmpCapablePlace()

  def __init__(self, real):
    object.__setattr__(self, '_real', real)

  def __getattr__(self, name):
    return getattr(self._real, name)

  def __setattr__(self, name, value):
    setattr(self._real, name, value)


def install(patch=setattr):
  """Make paddle.amp act as on an AMP-capable GPU; `patch(obj, name, value)` (e.g. monkeypatch.setattr)."""
  from paddle.base import framework
  auto_cast = importlib.import_module('paddle.amp.auto_cast')  # `paddle.amp.auto_cast` is the function
  grad_scaler = importlib.import_module('paddle.amp.grad_scaler')

  def tracer():
    real = framework._dygraph_tracer()
    return _Tracer(real) if real is not None else None

  for module in (auto_cast, grad_scaler):
    patch(module, '_dygraph_tracer', tracer)
  patch(auto_cast, '_is_gpu_float16_supported', lambda: True)
  patch(auto_cast, '_is_gpu_bfloat16_supported', lambda: True)


if __name__ == '__main__':
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  from utils import threads
  threads.configure()  # as main.py does first: before Paddle is imported
  install()
  sys.argv = [os.path.join(root, 'main.py'), *sys.argv[1:]]
  runpy.run_path(sys.argv[0], run_name='__main__')
