"""Peak host memory of ViT-B/16 training micro-batches, with and without activation recompute, and the
largest micro-batch that one 80 GB GPU would hold, extrapolated from the growth per sample.

Each measurement runs in a fresh subprocess (peak RSS only grows). The child runs the recipe's update as training
does (bench/common.update_step; configs/vit_b16_cifar100_rdrop.py: ViT-B/16 at 224, 100 classes, R-Drop
'twice' with alpha 0.3 and KL summed, Momentum) on one micro-batch, once to allocate gradients and
optimizer state, then a second
update and reports the peak RSS (getrusage). The RSS before any update plus the gradient and momentum bytes
(2 x parameters x 4 B) is the static part; peak minus that is the activation peak. Two micro-batch sizes
give the growth per sample, which is what decides how many samples a GPU holds.

Recompute is the model's own switch, `config.model.recompute`: models/vit.py then wraps each encoder block
in `paddle.distributed.fleet.utils.recompute` while training, keeping only block inputs and rerunning each
block's forward (with its dropout masks) during backward. The timing child builds one model and flips
`model.transformer.encoder.recompute` between updates, so both variants share weights, optimizer state and
the machine's load.
"""
import json
import os
import statistics
import subprocess
import sys

from bench import common  # (threads before Paddle)
from configs import vit_b16_cifar100_rdrop

MICRO_BATCHES = (2, 4)
# The extrapolation to one GPU (not measured: no GPU here).
GPU_GB = 80
GPU_RESERVE = 0.10         # allocator fragmentation, cuBLAS/cuDNN workspaces, the CUDA context
BYTES_PER_PARAMETER = 16   # AMP O2: fp32 master weights, fp32 gradients, fp32 momentum, half-precision weights
RECIPE = vit_b16_cifar100_rdrop.get_config()
GLOBAL_BATCH = RECIPE.train.batch_size
AUTHORS_MICRO_BATCH = RECIPE.train.batch_size // RECIPE.train.accum_steps  # on one device


def child(mode, micro_batch):
  import resource
  import time

  import paddle
  import psutil

  # Strided views as on a GPU (utils/threads turns them off on the CPU, where the copies it makes instead
  # hold about a fifth more activation memory): the figures here are for the GPU extrapolation below.
  paddle.set_flags({'FLAGS_use_stride_kernel': True})
  config = vit_b16_cifar100_rdrop.get_config()
  config.model.pretrained = ''
  config.model.recompute = mode == 'recompute'
  config.train.update({'batch_size': micro_batch, 'accum_steps': 1, 'precision': 'fp32'})  # one micro-batch
  step, model = common.update_step(config, 100)
  parameters = sum(p.size for p in model.parameters())
  static = psutil.Process().memory_info().rss + 2 * 4 * parameters

  def update():
    start = time.perf_counter()
    step()
    return time.perf_counter() - start

  if mode == 'time':  # both variants alternating in this one process
    times = {False: [], True: []}
    update()
    for on in (False, True) * 2:
      model.transformer.encoder.recompute = on
      times[on].append(update())
    return {'plain_s': statistics.median(times[False]), 'recompute_s': statistics.median(times[True])}
  update()
  update()
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  return {'static_mb': static / 2**20, 'peak_mb': peak / 2**20, 'parameters': parameters}


def run_child(mode, micro_batch=MICRO_BATCHES[0]):
  out = subprocess.run([sys.executable, '-m', 'bench.memory', '--child', mode, str(micro_batch)],
                       capture_output=True, text=True, check=True, timeout=1800, cwd=common.ROOT)
  return json.loads(out.stdout.strip().splitlines()[-1])


def largest_micro_batch(per_sample_mb, parameters):
  """(samples that fit, the largest micro-batch dividing the global batch that fits) on one GPU."""
  usable_mb = GPU_GB * 1024 * (1 - GPU_RESERVE) - parameters * BYTES_PER_PARAMETER / 2**20
  fits = int(usable_mb // per_sample_mb)
  return fits, max(m for m in range(1, GLOBAL_BATCH + 1) if GLOBAL_BATCH % m == 0 and m <= max(fits, 1))


def gpu_text(per_sample, parameters):
  """The extrapolated largest micro-batch per variant, and the override that keeps the authors' objective."""
  plain_fits, plain_micro = largest_micro_batch(per_sample['plain'], parameters)
  recompute_fits, recompute_micro = largest_micro_batch(per_sample['recompute'], parameters)
  alpha = RECIPE.rdrop.alpha * AUTHORS_MICRO_BATCH
  return (
      f'**Extrapolation, not a measurement** (no GPU here): on one {GPU_GB} GB GPU, after '
      f'{parameters * BYTES_PER_PARAMETER / 2**30:.1f} GB of weights, gradients and momentum (AMP O2, '
      f'{BYTES_PER_PARAMETER} B per parameter) and a {GPU_RESERVE:.0%} reserve, activations growing by '
      f'{per_sample["plain"]:.0f} MB per sample hold about {plain_fits} samples: micro-batch **{plain_micro}** '
      f'(`train.accum_steps={GLOBAL_BATCH // plain_micro}` for the global batch of {GLOBAL_BATCH}); with recompute '
      f'({per_sample["recompute"]:.0f} MB per sample) about {recompute_fits}, micro-batch {recompute_micro}, at '
      'the time cost above. These are fp32 activations as measured on the CPU; in bf16 or fp16 most take half, '
      'so the estimate errs on the safe side. The authors\' KL is summed over a micro-batch of '
      f'{AUTHORS_MICRO_BATCH} (reduction `{RECIPE.rdrop.reduction}`, alpha {RECIPE.rdrop.alpha:g}): at another '
      f'micro-batch the same objective is `rdrop.reduction=batchmean` with alpha {RECIPE.rdrop.alpha:g} x '
      f'{AUTHORS_MICRO_BATCH} = {alpha:g}, i.e. '
      f'`--config.train.accum_steps={GLOBAL_BATCH // plain_micro} --config.rdrop.reduction=batchmean '
      f'--config.rdrop.alpha={alpha:g}`.'), plain_micro


def main():
  runs = {(mode, m): run_child(mode, m) for mode in ('plain', 'recompute') for m in MICRO_BATCHES}
  timing = run_child('time')
  small, large = MICRO_BATCHES
  rows, activations, per_sample = [], {}, {}
  for mode, name in (('plain', 'no recompute'), ('recompute', 'recompute each block')):
    a, b = runs[(mode, small)], runs[(mode, large)]
    activations[mode] = a['peak_mb'] - a['static_mb']
    per_sample[mode] = (b['peak_mb'] - a['peak_mb']) / (large - small)
    rows.append((name, f'{a["static_mb"]:.0f}', f'{a["peak_mb"]:.0f}', f'{b["peak_mb"]:.0f}',
                 f'{activations[mode]:.0f}', f'{per_sample[mode]:.0f}'))
  saved = 1 - activations['recompute'] / activations['plain']
  parameters = runs[('plain', small)]['parameters']
  print('### 5. Memory: ViT-B/16 training at 224 px, R-Drop twice (fp32, CPU, strided views as on a GPU)\n')
  print(common.table(['variant', 'static: model + grads + momentum (MB)', f'peak RSS at micro-batch {small} (MB)',
                      f'at {large} (MB)', f'activation peak at {small} (MB)', 'growth per sample (MB)'], rows))
  print(f'\nRecompute cuts the activation peak by {saved:.0%} '
        f'({runs[("plain", small)]["peak_mb"] - runs[("recompute", small)]["peak_mb"]:.0f} MB less peak RSS at '
        f'micro-batch {small}); time per update recompute / plain = {timing["recompute_s"] / timing["plain_s"]:.2f} '
        f'(micro-batch {small}, after a warm-up update, alternating in one process, 2 each, median; plain '
        f'{timing["plain_s"]:.1f} s per update).\n')
  text, micro = gpu_text(per_sample, parameters)
  print(text)
  common.save_results({'per_sample_mb': per_sample, 'activation_mb': activations, 'parameters': parameters,
                       'gpu_micro_batch': micro, 'gpu_text': text,
                       'recompute_time_ratio': timing['recompute_s'] / timing['plain_s']})


if __name__ == '__main__':
  if len(sys.argv) == 4 and sys.argv[1] == '--child':
    print(json.dumps(child(sys.argv[2], int(sys.argv[3]))))
  else:
    main()
