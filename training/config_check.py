"""Every config value checked before any work: names of choices, numeric ranges, the batch split.

A bad value used to break only later, or hang (a negative batch size waited forever in Paddle's reader).
Each problem names `config.<field>`, its value and what is allowed; all problems are reported at once.
The rules of the trainer's own fields are here; a model or dataset module declares those of its own
fields in FIELD_RULES (e.g. models/vit.py), as it declares its VARIANTS and SPLITS.
"""
import math

import ml_collections

import data
import models
from rdrop import CE_OF_PASSES, FORMS, REDUCTIONS
from training import optim, precision
from utils.rules import ALL_POSITIVE, FRACTION, INT64_LIMIT, NON_NEGATIVE, POSITIVE, RATE, numbers

FLOAT32_MAX = 3.4028234663852886e38  # Paddle computes in float32: a larger number becomes infinite
# An infinite initial loss scale overflows every fp16 update, which the run stops on with its own message
# after train.max_skipped_updates (the tests force overflows this way).
MAY_BE_INFINITE = {'train.init_loss_scale'}
MAX_LR = 10.0
FLOAT32_TINY = 1.1754943508222875e-38  # float32's smallest normal number: below it an lr is 0, or flushed to 0
LR_RANGE = f'must be in [{FLOAT32_TINY:.3g}, {MAX_LR:g}] (Paddle computes in float32, where a smaller lr is 0)'
# What the trainer's numeric fields allow (a field absent from a config is skipped); names of choices are
# in check_config. tests/test_bad_inputs.py checks that every numeric field of every config has a rule.
FIELD_RULES = {
    'seed': NON_NEGATIVE,
    'data.img_size': POSITIVE, 'data.num_workers': (lambda v: v >= -1, 'must be >= -1 (-1: one per core)'),
    'data.mean': (lambda v: numbers(v) and all(0 <= x <= 1 for x in v), 'must be numbers in [0, 1]'),
    'data.std': ALL_POSITIVE,
    'train.batch_size': POSITIVE, 'train.accum_steps': POSITIVE, 'train.updates': NON_NEGATIVE,
    'train.epochs': NON_NEGATIVE, 'train.lr': (lambda v: FLOAT32_TINY <= v <= MAX_LR, LR_RANGE),
    'train.momentum': RATE, 'train.weight_decay': NON_NEGATIVE,
    'train.clip_grad_norm': NON_NEGATIVE, 'train.warmup_updates': NON_NEGATIVE, 'train.warmup_epochs': NON_NEGATIVE,
    'train.end_lr_ratio': (lambda v: 0 <= v <= 1, 'must be in [0, 1] (the final lr as a share of train.lr)'),
    'train.decay_updates': NON_NEGATIVE, 'train.decay_epochs': NON_NEGATIVE,
    'train.poly_power': POSITIVE, 'train.step_gamma': FRACTION, 'train.init_loss_scale': POSITIVE,
    'train.max_skipped_updates': NON_NEGATIVE, 'train.log_every': POSITIVE, 'train.eval_every': NON_NEGATIVE,
    'train.checkpoint_every': NON_NEGATIVE, 'train.checkpoint_every_minutes': NON_NEGATIVE,
    'train.keep_checkpoints': POSITIVE,
    'rdrop.alpha': NON_NEGATIVE,
    'eval.batch_size': POSITIVE,
    'eval.collapse_majority': (lambda v: 0 <= v <= 1, 'must be in [0, 1] (0: no check)'),
    'eval.collapse_information': RATE,
    'eval.stop_after_collapses': (lambda v: v >= 0, 'must be >= 0 (0: never stop)'),
    'reference.top1': (lambda v: 0 <= v <= 100, 'must be a percentage in [0, 100]'),
}


def field_rules(config):
  """{dotted field: (test, what is allowed)}: the trainer's rules, and those its model and dataset declare."""
  rules = dict(FIELD_RULES)
  for prefix, registry, name in (('model', models, config.model.name), ('data', data, config.data.name)):
    if name in registry.available():
      rules.update({f'{prefix}.{key}': rule for key, rule in getattr(registry.module(name), 'FIELD_RULES', {}).items()})
  return rules


def _field(config, dotted):
  """The value of `config.a.b.c`, or None when the config has no such field."""
  value = config
  for part in dotted.split('.'):
    if not isinstance(value, ml_collections.ConfigDict) or part not in value:
      return None
    value = value[part]
  return value


def _out_of_range(config_dict, prefix=''):
  """(field, value, what is allowed) of every number that Paddle could not hold: a float that is not
  finite or is beyond float32, an int beyond 64 bits (numbers in tuples too)."""
  for key, value in config_dict.items():
    values = value if isinstance(value, (tuple, list)) else [value]
    if isinstance(value, dict):
      yield from _out_of_range(value, f'{prefix}{key}.')
    elif f'{prefix}{key}' not in MAY_BE_INFINITE and any(
        isinstance(v, float) and not (math.isfinite(v) and abs(v) <= FLOAT32_MAX) for v in values):
      yield f'{prefix}{key}', value, 'must be a finite number within float32\'s range'
    elif any(isinstance(v, int) and not -INT64_LIMIT <= v < INT64_LIMIT for v in values):
      yield f'{prefix}{key}', value, 'must fit in 64 bits'


def _dotted_keys(config_dict, prefix=''):
  for key, value in config_dict.items():
    yield f'{prefix}{key}'
    if isinstance(value, dict):
      yield from _dotted_keys(value, f'{prefix}{key}.')


def check_config(config, world_size):
  """Raise ValueError listing every value of `config` that is not allowed on `world_size` devices."""
  choices = {'model.name': models.available(), 'data.name': data.available(),
             'train.optimizer': optim.OPTIMIZERS, 'train.schedule': optim.SCHEDULES,
             'train.precision': precision.PRECISIONS, 'train.amp_level': precision.AMP_LEVELS,
             'rdrop.reduction': REDUCTIONS, 'rdrop.ce_of_passes': CE_OF_PASSES, 'rdrop.form': FORMS}
  # Names that a model or dataset module declares (models/__init__.py, data/__init__.py).
  if config.model.name in models.available():
    choices['model.variant'] = getattr(models.module(config.model.name), 'VARIANTS', None)
  channels = None
  if config.data.name in data.available():
    dataset = data.module(config.data.name)
    choices.update({'eval.split': dataset.SPLITS, 'data.augment': getattr(dataset, 'AUGMENTS', None)})
    channels = dataset.CHANNELS
  problems = {key: f'config.{key}={_field(config, key)!r}: choose one of {", ".join(allowed)}'
              for key, allowed in choices.items()
              if allowed is not None and _field(config, key) is not None and _field(config, key) not in allowed}
  problems.update({key: f'config.{key}={value!r}: {allowed}' for key, value, allowed in _out_of_range(config.to_dict())})
  for key, (test, allowed) in field_rules(config).items():
    value = _field(config, key)
    if value is not None and key not in problems and not test(value):
      problems[key] = f'config.{key}={value!r}: {allowed}'
  for key in ('data.mean', 'data.std', 'model.in_channels'):
    value = _field(config, key)
    count = len(value) if isinstance(value, (tuple, list)) else value
    if channels and value is not None and key not in problems and count != channels:
      problems[key] = (f'config.{key}={value!r}: {config.data.name} images have {channels} channel(s), so it must '
                       f'be {channels if key == "model.in_channels" else f"{channels} number(s)"}')
  tc = config.train
  if tc.updates == 0 and tc.epochs == 0:
    problems['train.updates'] = 'config.train.updates=0 and config.train.epochs=0: nothing to train; set either > 0'
  if not {'train.lr', 'train.weight_decay'} & problems.keys() and tc.lr * tc.weight_decay >= 1:
    problems['train.weight_decay'] = (f'config.train.weight_decay={tc.weight_decay!r}: with config.train.lr='
                                      f'{tc.lr!r}, lr x weight_decay must be < 1, or every update shrinks the '
                                      f'weights past zero')
  if config.model.get('recompute', False) and world_size > 1:
    # Recompute replays each block in a second, re-entrant backward pass, which DataParallel's gradient
    # hooks do not support (parameters reported ready twice, Paddle issue 52980).
    problems['model.recompute'] = ('config.model.recompute=True is not supported under paddle.distributed.launch; '
                                   'lower the micro-batch through train.accum_steps instead')
  order = {key: i for i, key in enumerate(_dotted_keys(config.to_dict()))}  # the config's own order
  problems = [problems[key] for key in sorted(problems, key=lambda key: order.get(key, len(order)))]
  if len(problems) > 1:
    raise ValueError(f'{len(problems)} config values are not allowed:\n  ' + '\n  '.join(problems))
  if problems:
    raise ValueError(problems[0])
  optim.batch_split(config.train, world_size)
