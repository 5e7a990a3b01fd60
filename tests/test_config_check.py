"""Config values checked before any work (training/config_check.py): every field named, its value and what is
allowed, the rules of every model's and dataset's own fields."""
import pytest


def _numeric_fields(config_dict, prefix=''):
  """Dotted names of the int, float and number-tuple fields of a config dict."""
  fields = []
  for key, value in config_dict.items():
    if isinstance(value, dict):
      fields += _numeric_fields(value, f'{prefix}{key}.')
    elif (isinstance(value, (int, float)) and not isinstance(value, bool)) or (
        isinstance(value, (tuple, list)) and value and all(isinstance(v, (int, float)) for v in value)):
      fields.append(f'{prefix}{key}')
  return fields


def test_every_numeric_field_of_every_config_has_a_validation_rule():
  import importlib
  import pkgutil
  import configs
  from training import config_check
  unchecked = set()
  for module in pkgutil.iter_modules(configs.__path__):
    get_config = getattr(importlib.import_module(f'configs.{module.name}'), 'get_config', None)
    if get_config:
      config = get_config()
      unchecked |= set(_numeric_fields(config.to_dict())) - set(config_check.field_rules(config))
  assert not unchecked, (f'add a rule for these fields to FIELD_RULES (training/config_check.py for the trainer\'s, '
                         f'the model\'s or dataset\'s module for theirs): {sorted(unchecked)}')


@pytest.mark.parametrize('field,value,allowed', [
    ('train.batch_size', -64, 'must be > 0'), ('train.batch_size', 0, 'must be > 0'),
    ('train.updates', -5, 'must be >= 0'), ('train.epochs', -1.0, 'must be >= 0'),
    ('train.lr', -1.0, 'must be in [1.18e-38, 10]'), ('train.lr', 0.0, 'must be in [1.18e-38, 10]'),
    ('train.lr', 1e-46, 'must be in [1.18e-38, 10] (Paddle computes in float32, where a smaller lr is 0)'),
    ('train.lr', 1e30, 'must be in [1.18e-38, 10]'), ('train.lr', float('inf'), "must be a finite number within float32's range"),
    ('train.weight_decay', float('inf'), "must be a finite number within float32's range"),
    ('train.weight_decay', 1e39, "must be a finite number within float32's range"),
    ('train.weight_decay', 500.0, 'with config.train.lr=0.003, lr x weight_decay must be < 1'),
    ('train.epochs', float('inf'), "must be a finite number within float32's range"),
    ('train.updates', 99999999999999999999, 'must fit in 64 bits'),
    ('train.momentum', 1.0, 'must be in [0, 1)'), ('model.dropout_rate', 1.5, 'must be in [0, 1)'),
    ('model.attention_dropout_rate', -0.1, 'must be in [0, 1)'), ('train.accum_steps', 0, 'must be > 0'),
    ('train.checkpoint_every', -1, 'must be >= 0'), ('train.checkpoint_every_minutes', -5.0, 'must be >= 0'),
    ('train.eval_every', -1, 'must be >= 0'), ('train.keep_checkpoints', 0, 'must be > 0'),
    ('train.warmup_updates', -1, 'must be >= 0'), ('train.weight_decay', -0.1, 'must be >= 0'),
    ('eval.batch_size', -8, 'must be > 0'), ('data.num_workers', -2, 'must be >= -1'),
    ('data.std', (0.0,), 'must be positive numbers'), ('seed', -1, 'must be >= 0'),
    ('rdrop.alpha', -1.0, 'must be >= 0'), ('reference.top1', 101.0, 'must be a percentage in [0, 100]'),
    ('eval.collapse_majority', 1.5, 'must be in [0, 1] (0: no check)'), ('eval.stop_after_collapses', -1, 'must be >= 0'),
    ('rdrop.ce_of_passes', 'avg', 'choose one of sum, mean'),
    ('train.optimizer', 'adamm', 'choose one of sgd, momentum, adam, adamw'),
    ('data.name', 'digit', 'choose one of '),
    ('model.variant', 'ViT-B_17', 'choose one of ViT-B_16, '), ('eval.split', 'val', 'choose one of train, test'),
    ('data.mean', ('(0.5,nan)',), 'must be numbers in [0, 1]'), ('data.std', ('x',), 'must be positive numbers'),
    ('data.mean', (0.5, 0.5), 'digits images have 1 channel(s), so it must be 1 number(s)'),
    ('model.in_channels', 3, 'digits images have 1 channel(s), so it must be 1'),
    ('train.end_lr_ratio', 1e6, 'must be in [0, 1] (the final lr as a share of train.lr)'),
    ('train.step_gamma', 2.0, 'must be in (0, 1]'),
])
def test_a_bad_value_is_refused_naming_the_field_its_value_and_what_is_allowed(field, value, allowed):
  from training import config_check
  from configs import digits_vit_rdrop
  config = digits_vit_rdrop.get_config()
  group, _, name = field.rpartition('.')
  (config[group] if group else config)[name] = value
  with pytest.raises(ValueError) as refused:
    config_check.check_config(config, world_size=1)
  assert str(refused.value).startswith(f'config.{field}={value!r}: {allowed}')


def test_epochs_that_come_to_more_updates_than_64_bits_count_are_refused_naming_the_field():
  from configs import digits_vit_rdrop
  from training import optim
  tc = digits_vit_rdrop.get_config().train
  tc.updates, tc.epochs = 0, 1e30
  with pytest.raises(ValueError, match=r'^config.train.epochs=1e\+30: that is 2.2e\+31 updates of 64 samples'):
    optim.in_updates(tc, 1438)
