"""Shared by every benchmark: threads set up as main.py does, interleaved timing, markdown tables.

Import this module before Paddle: it applies utils.threads (all cores, MKL's AVX2 path on AMD), so a
benchmark times the same kernels as a training run, and subprocesses it starts (run_all.py's, the
demo's, memory.py's children) get the thread setup of an ordinary launch.
"""
import os
import platform
import statistics
import sys
import tempfile
import time

from utils import threads

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

threads.configure()  # also drops the OMP_NUM_THREADS=1 Paddle sets, so subprocesses inherit a clean environment
# What configure() chose: the user's OMP_NUM_THREADS, else every core this process may run on.
KERNEL_THREADS = os.environ.get('OMP_NUM_THREADS') or str(threads.cores_per_process())


def interleaved(candidates, repeats, warmup=1):
  """{name: median seconds per call} of callables run in turn A, B, A, B, ...

  Other processes share this machine, so two things compared are timed alternately in one process
  and the median of each is kept: a slow spell hits both rather than one of them.
  """
  for fn in candidates.values():
    for _ in range(warmup):
      fn()
  times = {name: [] for name in candidates}
  for _ in range(repeats):
    for name, fn in candidates.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  return {name: statistics.median(values) for name, values in times.items()}


def per_call(fn, calls):
  """A callable that runs `fn` `calls` times; the timing of it divided by `calls` is per call."""
  def run():
    for _ in range(calls):
      fn()
  return run


def table(headers, rows):
  """A markdown table; floats with 3 significant digits."""
  def cell(value):
    return f'{value:.3g}' if isinstance(value, float) else str(value)
  lines = ['| ' + ' | '.join(headers) + ' |', '|' + '---|' * len(headers)]
  lines += ['| ' + ' | '.join(cell(v) for v in row) + ' |' for row in rows]
  return '\n'.join(lines)


def machine():
  """One line: CPU model, cores used, memory, Python and Paddle versions."""
  import paddle
  import psutil
  from training import workdir
  return (f'{workdir.machine()}, {psutil.virtual_memory().total / 2**30:.0f} GB RAM, '
          f'Python {platform.python_version()}, Paddle {paddle.__version__} '
          f'({paddle.device.get_device()}, {KERNEL_THREADS} '
          'kernel threads as utils/threads.py sets them'
          f'{", MKL_DEBUG_CPU_TYPE=" + os.environ["MKL_DEBUG_CPU_TYPE"] if "MKL_DEBUG_CPU_TYPE" in os.environ else ""})')


def scratch_dir(prefix):
  return tempfile.mkdtemp(prefix=f'bench_{prefix}_')


def update_step(config, classes, model=None):
  """(update, model): `update()` runs one update of `config` exactly as training does (training/step.py:
  micro-batches, R-Drop loss, autocast, backward, the loss check, the LR schedule, the optimizer step), on
  one device and a fixed random uint8 batch of the config's shape. `model` (built from the config when
  None) may be shared by several updates, e.g. to time R-Drop's forms on the same weights."""
  import itertools

  import numpy as np
  import paddle

  import models
  from training import optim
  from training.precision import Precision
  from training.step import UpdateStep
  tc = config.train
  model = model or models.build(config.model, classes, config.seed, initial_weights=False)
  optimizer, scheduler = optim.build(tc, model.parameters(), max(tc.updates, 1))
  precision = Precision(tc, log=print)
  model, optimizer = precision.decorate(model, optimizer)
  rng = np.random.default_rng(0)
  size = config.data.img_size
  shape = (tc.batch_size // tc.accum_steps, config.model.get('in_channels', len(config.data.mean)), size, size)
  images = paddle.to_tensor(rng.integers(0, 256, shape, dtype=np.uint8))
  labels = paddle.to_tensor(rng.integers(0, classes, shape[0]))
  model.train()
  step = UpdateStep(model, optimizer, scheduler, precision, config)
  batches, updates = itertools.repeat((images, labels)), itertools.count(1)
  return lambda: step(next(updates), batches), model


def small_vit_config():
  """A ViT-B/16-shaped model cut to Ti width and 4 blocks: 224 px, 197 tokens, fast enough on a CPU."""
  from models import vit
  return vit._config(16, 192, 768, 3, 4)


def small_recipe_config(root):
  """The ViT-B/16 CIFAR-100 recipe with the small ViT above, reading the tarball at `root`."""
  from configs import vit_b16_cifar100_rdrop
  from models import vit
  c = vit_b16_cifar100_rdrop.get_config()
  c.data.root = root
  c.model.pretrained = ''
  vit.VARIANTS['bench_ti16x4'] = small_vit_config
  c.model.variant = 'bench_ti16x4'
  return c


def fake_cifar100(directory, train=512, test=256, seed=0):
  """A `cifar-100-python.tar.gz` in the official pickle layout with random images; returns its path."""
  from tools.fakedata import make_cifar100
  return str(make_cifar100(os.path.join(directory, 'cifar-100-python.tar.gz'), train=train, test=test, seed=seed))


def save_results(results):
  """With `--results PATH` on the command line, also write `results` (numbers) as JSON for run_all.py."""
  import json
  if '--results' in sys.argv:
    with open(sys.argv[sys.argv.index('--results') + 1], 'w') as f:
      json.dump(results, f)
