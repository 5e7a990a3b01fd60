"""Optimizer and learning-rate schedule from `config.train`.

The schedule is a function of the update number u = 1..total and is stepped before each optimizer
step, as in the authors' ViT code (update u uses lr * factor(u)); the LR scheduler lives inside the
optimizer's state dict, so a resumed optimizer restores it.
"""
import math

import paddle

SCHEDULES = ('constant', 'cosine', 'linear', 'polynomial', 'step')
OPTIMIZERS = ('sgd', 'momentum', 'adam', 'adamw')


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


def build(train_config, parameters, total_updates):
  tc = train_config
  scheduler = paddle.optimizer.lr.LambdaDecay(tc.lr, lambda u: lr_factor(u, tc, total_updates))
  clip = paddle.nn.ClipGradByGlobalNorm(tc.clip_grad_norm) if tc.clip_grad_norm > 0 else None
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
