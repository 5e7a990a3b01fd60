"""Optimizer and learning-rate schedule from `config.train`, and its durations counted in updates.

The schedule is a function of the update number u = 1..total and is stepped before each optimizer
step, as in the authors' ViT code (update u uses lr * factor(u)); the LR scheduler lives inside the
optimizer's state dict, so a resumed optimizer restores it.
"""
import math

import ml_collections
import paddle

from utils.rules import INT64_LIMIT

SCHEDULES = ('constant', 'cosine', 'linear', 'polynomial', 'step')
OPTIMIZERS = ('sgd', 'momentum', 'adam', 'adamw')


def batch_split(train_config, world_size):
  """(accumulation steps, micro-batch) of each of `world_size` devices for one update of train.batch_size.

  `train.accum_steps` micro-batches make an update; without `train.keep_micro_batch` every device takes
  its share of each (micro-batch = batch_size / (accum_steps x devices)), with it the devices share the
  micro-batches instead, each keeping the one-device micro-batch of batch_size / accum_steps, on which an
  objective summed over the micro-batch (R-Drop's KL with reduction `sum`, the authors' ViT recipe) depends.
  """
  tc = train_config
  if tc.keep_micro_batch:
    accum, rest = divmod(tc.accum_steps, world_size)
    if rest or tc.batch_size % tc.accum_steps:
      raise ValueError(f'config.train.accum_steps={tc.accum_steps} with config.train.keep_micro_batch=True: '
                       f'{tc.accum_steps} micro-batches of {tc.batch_size / tc.accum_steps:g} samples cannot be '
                       f'shared by {world_size} devices; run on a number of devices that divides {tc.accum_steps}, '
                       f'or set config.train.keep_micro_batch=False (docs/distributed.md: the global batch)')
    return accum, tc.batch_size // tc.accum_steps
  micro, rest = divmod(tc.batch_size, tc.accum_steps * world_size)
  if rest or micro == 0:
    raise ValueError(f'config.train.batch_size={tc.batch_size} cannot be split into {tc.accum_steps} '
                     f'accumulation steps on {world_size} devices: make it a multiple of '
                     f'{tc.accum_steps * world_size} or change config.train.accum_steps')
  return tc.accum_steps, micro


def updates_per_epoch(train_config, num_samples, world_size=1):
  """Optimizer updates in one pass over the data (the sampler drops the last incomplete micro-batch)."""
  accum, micro = batch_split(train_config, world_size)
  return num_samples // (micro * world_size) / accum


def in_updates(train_config, num_samples, world_size=1):
  """`config.train` with every duration counted in optimizer updates, converted once from epochs where
  the config gives epochs (`updates` 0, `warmup_epochs`, `decay_epochs`, `eval_every` 0 = each epoch)."""
  tc = ml_collections.ConfigDict(train_config.to_dict())
  per_epoch = updates_per_epoch(tc, num_samples, world_size)
  if tc.updates <= 0:
    tc.updates = max(1, math.ceil(tc.epochs * per_epoch))
  if tc.warmup_epochs > 0:
    tc.warmup_updates = round(tc.warmup_epochs * per_epoch)
  if tc.decay_epochs > 0:
    tc.decay_updates = round(tc.decay_epochs * per_epoch)
  if tc.eval_every == 0:
    tc.eval_every = max(1, round(per_epoch))
  for key, source in (('updates', 'epochs'), ('warmup_updates', 'warmup_epochs'), ('decay_updates', 'decay_epochs')):
    if tc[key] >= INT64_LIMIT:
      raise ValueError(f'config.train.{source}={train_config[source]!r}: that is {tc[key]:.3g} updates of '
                       f'{tc.batch_size} samples, beyond what 64 bits count')
  return tc


def lr_factor(update, train_config, total_updates):
  """Multiplier of train.lr at `update`: linear warmup from 0, then the configured decay."""
  tc = train_config
  if update < tc.warmup_updates:
    return update / tc.warmup_updates
  done = update - tc.warmup_updates
  span = max(1, (tc.decay_updates or total_updates) - tc.warmup_updates)
  if tc.schedule == 'constant':
    return 1.0
  if tc.schedule == 'cosine':
    return 0.5 * (1.0 + math.cos(math.pi * min(done, span) / span))
  if tc.schedule == 'linear':
    return 1.0 - (1.0 - tc.end_lr_ratio) * min(done, span) / span
  if tc.schedule == 'polynomial':  # paddle.optimizer.lr.PolynomialDecay without cycling
    return (1.0 - tc.end_lr_ratio) * (1.0 - min(done, span) / span) ** tc.poly_power + tc.end_lr_ratio
  if tc.schedule == 'step':
    return tc.step_gamma ** (done // span)
  raise ValueError(f'config.train.schedule={tc.schedule!r}: choose one of {SCHEDULES}')


class ClipGradByGlobalNorm(paddle.nn.ClipGradByGlobalNorm):
  """Paddle's global-norm clipping with the squared norms computed in float32.

  Under AMP O2 the gradients are half precision, and Paddle's clip computes each one's squared norm and
  their sum in that precision: in fp16 (largest value 65504) a global norm above 256 becomes infinite and
  clipping then multiplies every gradient by 0; in bf16 the sum keeps 8 significant bits (and the
  CPU has no bf16 kernel for it). Paddle has the float32 variant built in behind a module switch,
  `_clip_by_global_norm_using_mp_type`; we turn it on for the duration of our clip only. Float32 gradients
  are unaffected. The alternative, `paddle.amp.decorate(master_grad=True)`, makes every gradient float32,
  but the plain SGD kernel reads gradients in the parameter's dtype and then fails.
  """

  def _dygraph_clip(self, params_grads):
    previous = paddle.nn.clip._clip_by_global_norm_using_mp_type(True)
    try:
      return super()._dygraph_clip(params_grads)
    finally:
      paddle.nn.clip._clip_by_global_norm_using_mp_type(previous)


def build(train_config, parameters, total_updates):
  tc = train_config
  scheduler = paddle.optimizer.lr.LambdaDecay(tc.lr, lambda u: lr_factor(u, tc, total_updates))
  clip = ClipGradByGlobalNorm(tc.clip_grad_norm) if tc.clip_grad_norm > 0 else None
  # fp32 master weights when the model is cast to half precision (AMP O2).
  master = tc.precision != 'fp32' and tc.amp_level == 'O2'
  if tc.optimizer == 'sgd':
    optimizer = paddle.optimizer.SGD(scheduler, parameters, weight_decay=tc.weight_decay or None, grad_clip=clip,
                                     multi_precision=master)
  elif tc.optimizer == 'momentum':
    optimizer = paddle.optimizer.Momentum(scheduler, tc.momentum, parameters, weight_decay=tc.weight_decay or None,
                                          grad_clip=clip, multi_precision=master)
  elif tc.optimizer == 'adam':
    optimizer = paddle.optimizer.Adam(scheduler, parameters=parameters, weight_decay=tc.weight_decay or None,
                                      grad_clip=clip, multi_precision=master)
  elif tc.optimizer == 'adamw':
    optimizer = paddle.optimizer.AdamW(scheduler, parameters=parameters, weight_decay=tc.weight_decay,
                                       grad_clip=clip, multi_precision=master)
  else:
    raise ValueError(f'config.train.optimizer={tc.optimizer!r}: choose one of {OPTIMIZERS}')
  return optimizer, scheduler
