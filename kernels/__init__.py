"""How this machine runs a layer, apart from what the model is: faster stand-ins for Paddle's CPU kernels
(cpu_ops.py; several on the oneDNN inside Paddle's wheel, onednn.py).

The models' layers come from cpu_ops, and each call asks `fast_cpu_ops()` (through `cpu_ops.applies`)
whether a stand-in may run, as timm's layers ask `use_fused_attn()`. `FAST_CPU_OPS=0` in the environment
answers no: every layer then runs Paddle's own ops, to compare or to rule the stand-ins out; 1, the
default, runs them where they apply (fp32 in dynamic mode on a CPU).
"""
import functools
import os


@functools.cache
def fast_cpu_ops():
  """Whether the stand-ins may run: FAST_CPU_OPS in the environment (1, the default, or 0), read once."""
  value = os.environ.get('FAST_CPU_OPS', '1')
  if value not in ('0', '1'):
    raise ValueError(f'FAST_CPU_OPS={value!r} in the environment: 1 (the default) runs the faster CPU stand-ins '
                     f'of kernels/cpu_ops.py, 0 runs Paddle\'s own ops everywhere')
  return value == '1'


class KernelError(RuntimeError):
  """A stand-in failed in its backward: a fault of this code or of the machine, not of the command."""
