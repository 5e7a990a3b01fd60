"""Models by name: `config.model.name` is a module of this package exposing `build(model_config, num_classes)`.

Every model maps a float image batch (N, C, H, W) to logits (N, num_classes). Modules may also expose
`load_pretrained(model, path)` for weights in a format other than Paddle's state dict, and VARIANTS, the
names `config.model.variant` may take, for utils/config_check.py.
"""
import importlib
import pkgutil
import warnings

import ml_collections

# Paddle's BatchNorm warns at every training forward that it tracks running statistics: what it has always
# done and what these models want, so a warning users can do nothing about.
warnings.filterwarnings('ignore', message='When training, we now always track global mean and variance')

_LAYERS = {'dropblock'}  # building blocks of other models, not models


def available():
  return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith('_') and m.name not in _LAYERS)


def module(name):
  if name not in available():
    raise ValueError(f'config.model.name={name!r} is not a model; choose one of {available()}')
  return importlib.import_module(f'{__name__}.{name}')


def build(model_config, num_classes, initial_weights=True):
  """The model of `model_config`. Fields named `*_weights` (e.g. a ResNet's ImageNet backbone) only
  initialise training; `initial_weights=False` skips them when a checkpoint will overwrite every weight."""
  if not initial_weights:
    model_config = ml_collections.ConfigDict(model_config.to_dict())
    for field in model_config:
      if field.endswith('_weights'):
        model_config[field] = ''
  return module(model_config.name).build(model_config, num_classes)
