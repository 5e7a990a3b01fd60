"""A preflight for a new GPU machine, before the paper run: `bash run.sh gpu-check` (a few minutes).

  python -m tools.gpu_check [--keep DIR]   (bash run.sh gpu-check)

Runs the real command line (`main.py`) on random data in the ViT-B/16 recipe's shapes (a CIFAR-100 tarball
in the official layout, 32 px images that the recipe resizes to 224; no dataset or weights needed) and prints
one line per check, ok / failed / skipped, with the reason and what to do:
  - Paddle sees the GPUs (`paddle.utils.run_check`);
  - 3 updates of configs/vit_b16_cifar100_rdrop.py at its micro-batch of 32 in fp32, fp16 O2 and bf16 O2
    (those Paddle enables on this GPU), each saved and resumed in its own precision and in the next one
    (fp32 -> fp16 O2 -> bf16 O2 -> fp32: the resume the fp16 overflow error advises included);
  - which attention kernel Paddle chose (flash attention or not);
  - the peak GPU memory at micro-batch 32, and from a second run at 16 the largest micro-batch that fits;
  - the measured time of an update, and from it the expected time of the paper run;
  - two runs with FLAGS_cudnn_deterministic=1 (deterministic cuDNN algorithms and flash attention backward)
    end on the same weights, and what the flag costs per update;
  - on 2 or more GPUs, the recipe under `paddle.distributed.launch` on two of them.
Exits 0 only if no check failed. On a machine without a GPU it says so and runs what a CPU can, the recipe's
tiny smoke variant in fp32 (tests/test_gpu_path.py runs it so).

Each training runs in a process of its own, started as `tools/gpu_check.py --child RESULT.json main.py-args`:
that process runs main.py unchanged, noting only what Paddle's attention chose, how long each update took
and the peak memory, and writes them to RESULT.json.
"""
import json
import os
import runpy
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

RECIPE = 'configs/vit_b16_cifar100_rdrop.py'
UPDATES = 3
PRECISIONS = {'fp32': ('fp32', 'O1'), 'fp16 O2': ('fp16', 'O2'), 'bf16 O2': ('bf16', 'O2')}
CHILD_TIMEOUT = 1800  # seconds for one training of a few updates
HALF_BATCH = 16  # the second micro-batch whose memory gives the growth per sample
FIXES = {
    'fp32': 'see the error in the log named; a failure here is not about precision',
    'fp16 O2': 'the recipe\'s precision: check the GPU build of Paddle (requirements-gpu.txt); '
               'bf16 O2 (--config.train.precision=bf16) on a GPU of compute capability 8.0 or more',
    'bf16 O2': 'bf16 O2 with Momentum needs a bf16 momentum kernel in this Paddle build: train in fp16 O2 (the '
               'recipe), or bf16 O1 (--config.train.precision=bf16 --config.train.amp_level=O1)',
}


def child(result_path, args):
  """Run main.py with `args` as a user would, and note what the preflight reports about it."""
  from utils import threads
  threads.configure()  # as main.py does first: before Paddle is imported
  import paddle
  import paddle.nn.functional.sdpa as sdpa
  from training import distributed
  from training.step import UpdateStep
  noted = {'attention': [], 'update_seconds': []}

  choose = sdpa.select_sdp_for_sdpa
  def chosen(params):  # Paddle's own choice of attention kernel, noted
    backend = choose(params)
    if backend not in noted['attention']:
      noted['attention'].append(backend)
    return backend
  sdpa.select_sdp_for_sdpa = chosen

  update = UpdateStep.__call__
  def timed(self, *a, **kw):  # an update ends in a host sync (the ranks' agreement), so wall time is its time
    start = time.perf_counter()
    outcome = update(self, *a, **kw)
    noted['update_seconds'].append(time.perf_counter() - start)
    return outcome
  UpdateStep.__call__ = timed

  sys.argv = [os.path.join(ROOT, 'main.py'), *args]
  try:
    runpy.run_path(sys.argv[0], run_name='__main__')
  finally:
    if paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count():
      noted['peak_bytes'] = paddle.device.cuda.max_memory_allocated()
      noted['total_bytes'] = paddle.device.cuda.get_device_properties().total_memory
    rank = distributed.rank_and_world_size()[0]
    with open(f'{result_path}.{rank}', 'w') as f:
      json.dump(noted, f)


class Preflight:
  """The checks in order, printed as they finish; `failed` counts the failures."""

  def __init__(self, scratch, gpus):
    self.scratch, self.gpus, self.failed = scratch, gpus, 0
    self.recipe = RECIPE if gpus else RECIPE + ':smoke'
    from tools.fakedata import make_cifar100
    self.data = str(make_cifar100(os.path.join(scratch, 'cifar-100-python.tar.gz'), train=64, test=64))

  def report(self, status, check, detail):
    self.failed += status == 'failed'
    print(f'{status:8}{check:38}{detail}', flush=True)

  def main_py(self, name, *args, launcher=(), env=None):
    """(exit code, output, [noted results per rank]) of main.py ARGS in a child, its output in <name>.log."""
    result = os.path.join(self.scratch, f'{name}.json')
    command = [sys.executable, *launcher, os.path.abspath(__file__), '--child', result, *args]
    try:
      proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=CHILD_TIMEOUT,
                            env={**os.environ, **(env or {})})
      code, output = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired:  # e.g. a collective waiting for a GPU that never answers
      code, output = 1, f'error: no answer after {CHILD_TIMEOUT} s'
    if launcher and os.path.isdir(os.path.join(self.scratch, name + '_launch')):
      logs = os.path.join(self.scratch, name + '_launch')
      output += ''.join(open(os.path.join(logs, f)).read() for f in sorted(os.listdir(logs)) if f.startswith('worker'))
    with open(os.path.join(self.scratch, f'{name}.log'), 'w') as f:
      f.write(output)
    ranks = sorted(p for p in os.listdir(self.scratch) if p.startswith(f'{name}.json.'))
    return code, output, [json.load(open(os.path.join(self.scratch, p))) for p in ranks]

  def train_args(self, precision, workdir, *extra):
    level = PRECISIONS[precision]
    return ['--config', self.recipe, '--workdir', workdir, f'--config.data.root={self.data}',
            '--config.model.pretrained=', f'--config.train.updates={UPDATES}', '--config.train.log_every=1',
            f'--config.train.eval_every={UPDATES}', f'--config.train.checkpoint_every={UPDATES}',
            f'--config.train.precision={level[0]}', f'--config.train.amp_level={level[1]}', *extra]

  def why(self, name, output):
    lines = [line for line in output.strip().splitlines() if line.strip()]
    error = next((line for line in reversed(lines) if line.startswith(('error:', 'Error', 'RuntimeError',
                                                                       'AssertionError', 'OSError'))), None)
    return f'{error or (lines[-1] if lines else "no output")} (log: {os.path.join(self.scratch, name + ".log")})'

  def run_check(self):
    proc = subprocess.run([sys.executable, '-c', 'import paddle; paddle.utils.run_check()'], capture_output=True,
                          text=True)
    with open(os.path.join(self.scratch, 'run_check.log'), 'w') as f:
      f.write(proc.stdout + proc.stderr)
    works = proc.returncode == 0 and 'works well' in proc.stdout
    last = (proc.stdout.strip().splitlines() or [''])[-1]
    self.report('ok' if works else 'failed', 'paddle.utils.run_check',
                last if works else f'{self.why("run_check", proc.stdout + proc.stderr)}; fix: install Paddle\'s '
                                   f'GPU build for this CUDA driver (requirements-gpu.txt)')

  def precisions(self):
    """Train, resume, resume in the next precision; returns {precision: noted results} of those that trained."""
    trained = {}
    for precision in PRECISIONS:
      name = precision.replace(' ', '_')
      workdir = os.path.join(self.scratch, name)
      code, output, noted = self.main_py(name, *self.train_args(precision, workdir))
      if 'Paddle declines' in output:
        reason = next(line for line in output.splitlines() if 'Paddle declines' in line)
        self.report('skipped', f'train {precision}', reason.removeprefix('precision: '))
        continue
      if code:
        self.report('failed', f'train {precision}', f'{self.why(name, output)}; fix: {FIXES[precision]}')
        continue
      trained[precision] = noted[0]
      attention = ', '.join(noted[0]['attention']) or "not Paddle's scaled_dot_product_attention"
      self.report('ok', f'train {precision}', f'{UPDATES} updates, checkpoint written; attention: {attention}')
      code, output, _ = self.main_py(name + '_resume', '--mode', 'resume', '--workdir', workdir,
                                     f'--config.train.updates={UPDATES + 1}')
      self.report('failed' if code else 'ok', f'resume {precision}',
                  f'{self.why(name + "_resume", output)}; fix: report it, with the log' if code
                  else f'continued from update {UPDATES} to {UPDATES + 1}')
    order = list(PRECISIONS)
    for precision in order:
      target = order[(order.index(precision) + 1) % len(order)]
      check = f'resume {precision} -> {target}'
      if precision not in trained or target not in trained:
        self.report('skipped', check, 'needs both precisions to train here')
        continue
      name = f'{precision}_to_{target}'.replace(' ', '_')
      workdir = shutil.copytree(os.path.join(self.scratch, precision.replace(' ', '_')), os.path.join(self.scratch, name))
      level = PRECISIONS[target]
      code, output, _ = self.main_py(name, '--mode', 'resume', '--workdir', workdir,
                                     f'--config.train.updates={UPDATES + 2}', f'--config.train.precision={level[0]}',
                                     f'--config.train.amp_level={level[1]}')
      said = next((line for line in output.splitlines() if line.startswith('precision: the checkpoint')), '')
      self.report('failed' if code else 'ok', check,
                  f'{self.why(name, output)}; fix: resume in {precision} (the checkpoint\'s precision)' if code
                  else f'continued, optimizer state carried over ({said.removeprefix("precision: ")})')
    return trained

  def memory_and_time(self, trained):
    if not self.gpus:
      self.report('skipped', 'peak GPU memory', 'no GPU')
      times = [t for noted in trained.values() for t in noted['update_seconds'][1:]]
      self.report('skipped', 'paper-run time', f'no GPU (a tiny ViT update here: '
                                               f'{statistics.median(times):.2f} s)' if times else 'no GPU')
      return
    precision = next((p for p in ('fp16 O2', 'bf16 O2', 'fp32') if p in trained), None)
    if precision is None:
      self.report('skipped', 'peak GPU memory', 'no precision trained')
      return
    noted = trained[precision]
    name = 'memory_' + precision.replace(' ', '_')
    code, output, smaller = self.main_py(name, *self.train_args(
        precision, os.path.join(self.scratch, name), f'--config.train.batch_size={HALF_BATCH}',
        '--config.train.accum_steps=1', '--config.train.updates=1'))
    peak, total = noted['peak_bytes'], noted['total_bytes']
    if code:
      self.report('failed', 'peak GPU memory', f'{self.why(name, output)}; fix: report it, with the log')
    else:
      per_sample = max(1, (peak - smaller[0]['peak_bytes']) / (32 - HALF_BATCH))
      fits = int((0.95 * total - (peak - 32 * per_sample)) // per_sample)
      divisors = [m for m in (512, 256, 128, 64, 32, 16, 8, 4, 2, 1) if m <= fits]
      self.report('ok' if fits >= 32 else 'failed', 'peak GPU memory',
                  f'{peak / 2**30:.1f} of {total / 2**30:.0f} GB at micro-batch 32 ({precision}); about {fits} '
                  f'samples fit (95% of the memory, from 16 and 32), largest micro-batch dividing 512: '
                  f'{divisors[0] if divisors else "none"}' + ('' if fits >= 32 else
                  '; fix: --config.model.recompute=True (less memory, about 1/3 more time)'))
    seconds = statistics.median(noted['update_seconds'][1:] or noted['update_seconds'])
    hours = seconds * 20000 / 3600
    self.report('ok', 'paper-run time', f'{seconds:.2f} s per update of 512 ({precision}, 1 GPU): 20000 updates '
                                        f'about {hours:.1f} h for the R-Drop run, about half for the baseline '
                                        f'(evaluations extra); on N GPUs about 1/N of it')

  def determinism(self, trained):
    """Two runs with FLAGS_cudnn_deterministic: the same weights bit for bit, and what the flag costs."""
    precision = next((p for p in ('fp16 O2', 'bf16 O2', 'fp32') if p in trained), None)
    check = 'FLAGS_cudnn_deterministic=1'
    if precision is None:
      self.report('skipped', check, 'no precision trained')
      return
    import numpy as np
    import paddle
    from utils import checkpoint
    weights, seconds = [], []
    for run in ('a', 'b'):
      name = f'deterministic_{run}'
      workdir = os.path.join(self.scratch, name)
      code, output, noted = self.main_py(name, *self.train_args(precision, workdir),
                                         env={'FLAGS_cudnn_deterministic': '1'})
      if code:
        self.report('failed', check, f'{self.why(name, output)}; fix: report it, with the log')
        return
      _, pieces = checkpoint.load(checkpoint.folder(os.path.join(workdir, 'checkpoints'), UPDATES), pieces=('model',))
      weights.append({k: v.numpy() for k, v in pieces['model'].items()})
      seconds.append(statistics.median(noted[0]['update_seconds'][1:] or noted[0]['update_seconds']))
    same = all(np.array_equal(weights[0][k], weights[1][k]) for k in weights[0])
    default = statistics.median(trained[precision]['update_seconds'][1:] or trained[precision]['update_seconds'])
    self.report('ok' if same else 'failed', check,
                (f'two runs ({precision}) end on the same weights bit for bit; ' if same else
                 f'two runs ({precision}) end on different weights: some kernel is not deterministic '
                 f'(report it); ') + f'{statistics.median(seconds):.2f} s per update, {default:.2f} s without it')

  def launcher(self, trained):
    if self.gpus < 2 or not trained:
      self.report('skipped', 'paddle.distributed.launch, 2 GPUs', f'{self.gpus} GPU(s)' if self.gpus < 2 else
                  'no precision trained')
      return
    workdir = os.path.join(self.scratch, 'launch')
    precision = next(p for p in ('fp16 O2', 'bf16 O2', 'fp32') if p in trained)
    code, output, ranks = self.main_py('launch', *self.train_args(precision, workdir), launcher=(
        '-m', 'paddle.distributed.launch', '--devices', '0,1', '--log_dir', workdir + '_launch'))
    shared = 'sharing the 16 micro-batches of one device' in output
    self.report('ok' if code == 0 and shared and len(ranks) == 2 else 'failed', 'paddle.distributed.launch, 2 GPUs',
                f'{UPDATES} updates on 2 GPUs, 8 micro-batches of 32 each' if code == 0 and shared else
                f'{self.why("launch", output)}; fix: check NCCL (NCCL_DEBUG=INFO) and docs/distributed.md')


def main(argv):
  keep = argv[argv.index('--keep') + 1] if '--keep' in argv else None
  scratch = keep or tempfile.mkdtemp(prefix='gpu_check_')
  os.makedirs(scratch, exist_ok=True)
  from utils import threads
  threads.configure()  # as main.py does first: before Paddle is imported
  import paddle
  gpus = paddle.device.cuda.device_count() if paddle.device.is_compiled_with_cuda() else 0
  print(f'GPU preflight: Paddle {paddle.__version__}, {gpus} GPU(s); working in {scratch}')
  if not gpus:
    print('no GPU here: running what a CPU can (the recipe\'s tiny smoke variant in fp32); GPU checks skipped')
  checks = Preflight(scratch, gpus)
  print(f'{"result":8}{"check":38}detail')
  checks.run_check()
  trained = checks.precisions()
  checks.memory_and_time(trained)
  checks.determinism(trained)
  checks.launcher(trained)
  if checks.failed:
    print(f'{checks.failed} check(s) failed; logs in {scratch}')
    return 1
  print('every check passed' + (' that a CPU can run' if not gpus else ''))
  if keep is None:
    shutil.rmtree(scratch, ignore_errors=True)
  return 0


if __name__ == '__main__':
  if sys.argv[1:2] == ['--child']:
    child(sys.argv[2], sys.argv[3:])
  else:
    sys.exit(main(sys.argv[1:]))
