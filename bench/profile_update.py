"""Where an update's time goes: Paddle's operator table for updates of any config, as train.py runs them.

  python -m bench.profile_update --config configs/digits_vit_rdrop.py
  python -m bench.profile_update --config configs/vit_b16_cifar100_rdrop.py --config.train.batch_size=8 \\
      --config.train.accum_steps=1 --config.model.variant=ViT-Ti_2 --updates 2

One update is training's own (training/step.py, through bench/common.update_step): `accum_steps`
micro-batches (forward with R-Drop, backward), then the optimizer step, in the config's precision. The
images are random, of the config's shape and per-device micro-batch; no dataset or weights file is read. One warm-up update runs first (first calls allocate),
then `--updates` are profiled (paddle.profiler) and the operator summary is printed, most time first:
forward kernels appear as `<op> dygraph`, their backward as `Global_<Op>GradNode`.
"""
from bench import common  # noqa: F401  (threads before Paddle, as main.py)

import time

from absl import app, flags
from ml_collections import config_flags

import paddle
import paddle.profiler as profiler

flags.DEFINE_integer('updates', 1, 'Updates to profile (after one warm-up update).')
flags.DEFINE_integer('classes', 0, 'Classes of the head; default: config.data.classes where the config has it, else 10.')
flags.DEFINE_string('trace', '', 'Also write a Chrome trace (chrome://tracing, Perfetto) into this folder.')
config_flags.DEFINE_config_file('config', None, 'Experiment config file (configs/*.py).', lock_config=True)
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  config = FLAGS.config
  if config is None:
    raise app.UsageError('--config is required (e.g. --config configs/digits_vit_rdrop.py)')
  classes = FLAGS.classes or config.data.get('classes', 10)
  update, _ = common.update_step(config, classes)
  update()
  on_gpu = paddle.device.get_device().startswith('gpu')
  targets = [profiler.ProfilerTarget.CPU] + ([profiler.ProfilerTarget.GPU] if on_gpu else [])
  trace = profiler.export_chrome_tracing(FLAGS.trace) if FLAGS.trace else (lambda prof: None)
  prof = profiler.Profiler(targets=targets, on_trace_ready=trace)
  start = time.perf_counter()
  prof.start()
  for _ in range(FLAGS.updates):
    update()
    prof.step()
  prof.stop()
  seconds = time.perf_counter() - start
  tc = config.train
  channels = config.model.get('in_channels', len(config.data.mean))
  print(f'{config.experiment or "config"}: {FLAGS.updates} update(s) of {tc.accum_steps} x '
        f'{tc.batch_size // tc.accum_steps} images {channels}x{config.data.img_size}x{config.data.img_size}, '
        f'{classes} classes, R-Drop alpha '
        f'{config.rdrop.alpha} ({config.rdrop.form}), {tc.precision}, {paddle.device.get_device()}, '
        f'{common.KERNEL_THREADS} kernel threads: {seconds / FLAGS.updates:.3f} s per update while profiled')
  prof.summary(sorted_by=profiler.SortedKeys.GPUTotal if on_gpu else profiler.SortedKeys.CPUTotal,
               op_detail=False, time_unit='ms', views=[profiler.SummaryView.OperatorView])


if __name__ == '__main__':
  app.run(main)
