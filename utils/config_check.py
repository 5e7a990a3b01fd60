"""Every config value checked before any work: names of choices, numeric ranges, the batch split.

A bad value used to break only later, or hang (a negative batch size waited forever in Paddle's reader).
Each problem names `config.<field>`, its value and what is allowed; all problems are reported at once.
"""
import ml_collections

import data
import models
from utils import optim, precision
from utils.rdrop import CE_OF_PASSES, FORMS, REDUCTIONS

# (test, what is allowed) of a field's value.
POSITIVE = (lambda v: v > 0, 'must be > 0')
NON_NEGATIVE = (lambda v: v >= 0, 'must be >= 0')
RATE = (lambda v: 0 <= v < 1, 'must be in [0, 1)')
ALL_POSITIVE = (lambda v: len(v) > 0 and all(x > 0 for x in v), 'must be positive numbers')
# What every numeric field allows (a field absent from a config is skipped); names of choices are in
# check_config. tests/test_bad_inputs.py checks that every numeric field of every config has a rule here.
FIELD_RULES = {
    'seed': NON_NEGATIVE,
    'data.img_size': POSITIVE, 'data.num_workers': (lambda v: v >= -1, 'must be >= -1 (-1: one per core)'),
    'data.mean': (lambda v: len(v) > 0 and all(0 <= x <= 1 for x in v), 'must be numbers in [0, 1]'),
    'data.std': ALL_POSITIVE, 'data.classes': POSITIVE, 'data.resize': POSITIVE, 'data.val_every': NON_NEGATIVE,
    'model.img_size': POSITIVE, 'model.in_channels': POSITIVE, 'model.depth': POSITIVE, 'model.head_width': POSITIVE,
    'model.blocks_per_stage': POSITIVE, 'model.widths': ALL_POSITIVE,
    'model.dropout_rate': RATE, 'model.attention_dropout_rate': RATE, 'model.head_dropout': RATE,
    'model.conv_dropout': RATE, 'model.fc_dropout': RATE,
    'model.dropblock.block_size': POSITIVE, 'model.dropblock.keep_prob': (lambda v: 0 < v <= 1, 'must be in (0, 1]'),
    'model.dropblock.ramp_updates': NON_NEGATIVE,
    'train.batch_size': POSITIVE, 'train.accum_steps': POSITIVE, 'train.updates': NON_NEGATIVE,
    'train.epochs': NON_NEGATIVE, 'train.lr': POSITIVE, 'train.momentum': RATE, 'train.weight_decay': NON_NEGATIVE,
    'train.clip_grad_norm': NON_NEGATIVE, 'train.warmup_updates': NON_NEGATIVE, 'train.warmup_epochs': NON_NEGATIVE,
    'train.end_lr_ratio': NON_NEGATIVE, 'train.decay_updates': NON_NEGATIVE, 'train.decay_epochs': NON_NEGATIVE,
    'train.poly_power': POSITIVE, 'train.step_gamma': POSITIVE, 'train.init_loss_scale': POSITIVE,
    'train.max_skipped_updates': NON_NEGATIVE, 'train.log_every': POSITIVE, 'train.eval_every': NON_NEGATIVE,
    'train.checkpoint_every': NON_NEGATIVE, 'train.checkpoint_every_minutes': NON_NEGATIVE,
    'train.keep_checkpoints': POSITIVE,
    'rdrop.alpha': NON_NEGATIVE,
    'eval.batch_size': POSITIVE,
    'eval.collapse_majority': (lambda v: 0 < v <= 1, 'must be in (0, 1]'),
    'eval.collapse_information': RATE,
    'eval.stop_after_collapses': (lambda v: v >= 0, 'must be >= 0 (0: never stop)'),
    'reference.top1': (lambda v: 0 <= v <= 100, 'must be a percentage in [0, 100]'),
}


def micro_batch_size(train_config, world_size):
  """Per-device micro-batch: the global batch split over accumulation steps and devices."""
  tc = train_config
  micro, rest = divmod(tc.batch_size, tc.accum_steps * world_size)
  if rest or micro == 0:
    raise ValueError(f'config.train.batch_size={tc.batch_size} cannot be split into {tc.accum_steps} '
                     f'accumulation steps on {world_size} devices: make it a multiple of '
                     f'{tc.accum_steps * world_size} or change config.train.accum_steps')
  return micro


def _field(config, dotted):
  """The value of `config.a.b.c`, or None when the config has no such field."""
  value = config
  for part in dotted.split('.'):
    if not isinstance(value, ml_collections.ConfigDict) or part not in value:
      return None
    value = value[part]
  return value


def check_config(config, world_size):
  """Raise ValueError listing every value of `config` that is not allowed on `world_size` devices."""
  choices = {'model.name': models.available(), 'data.name': data.available(),
             'train.optimizer': optim.OPTIMIZERS, 'train.schedule': optim.SCHEDULES,
             'train.precision': precision.PRECISIONS, 'train.amp_level': precision.AMP_LEVELS,
             'rdrop.reduction': REDUCTIONS, 'rdrop.ce_of_passes': CE_OF_PASSES, 'rdrop.form': FORMS}
  # Names that a model or dataset module declares (models/__init__.py, data/__init__.py).
  if config.model.name in models.available():
    choices['model.variant'] = getattr(models.module(config.model.name), 'VARIANTS', None)
  if config.data.name in data.available():
    dataset = data.module(config.data.name)
    choices.update({'eval.split': dataset.SPLITS, 'data.augment': getattr(dataset, 'AUGMENTS', None)})
  problems = [f'config.{key}={_field(config, key)!r}: choose one of {", ".join(allowed)}'
              for key, allowed in choices.items()
              if allowed is not None and _field(config, key) is not None and _field(config, key) not in allowed]
  for key, (test, allowed) in FIELD_RULES.items():
    value = _field(config, key)
    if value is not None and not test(value):
      problems.append(f'config.{key}={value!r}: {allowed}')
  tc = config.train
  if tc.updates == 0 and tc.epochs == 0:
    problems.append('config.train.updates=0 and config.train.epochs=0: nothing to train; set either > 0')
  if config.model.get('recompute', False) and world_size > 1:
    # Recompute replays each block in a second, re-entrant backward pass, which DataParallel's gradient
    # hooks do not support (parameters reported ready twice, Paddle issue 52980).
    problems.append('config.model.recompute=True is not supported under paddle.distributed.launch; '
                    'lower the micro-batch through train.accum_steps instead')
  if len(problems) > 1:
    raise ValueError(f'{len(problems)} config values are not allowed:\n  ' + '\n  '.join(problems))
  if problems:
    raise ValueError(problems[0])
  micro_batch_size(config.train, world_size)
