"""Models by name: `config.model.name` is a module of this package exposing `build(model_config, num_classes)`.

Every model maps a float image batch (N, C, H, W) to logits (N, num_classes). Modules may also expose
`load_pretrained(model, path)` for weights in a format other than Paddle's state dict, with
`pretrained_source(model_config)` saying where such a file is published, `pretrained_file(model_config)`
the local file that `pretrained` names when it may name something else (e.g. a download), VARIANTS, the names
`config.model.variant` may take, and FIELD_RULES, what their own `config.model.*` numbers may be (both for
training/config_check.py).
"""
import importlib
import os
import pkgutil
import warnings

import ml_collections
import paddle

from utils import checkpoint, safe_pickle

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


def build(model_config, num_classes, seed=0, initial_weights=True):
  """The model of `model_config`, its random weights drawn from `seed` (identical on every rank), then the
  weights file `model_config.pretrained` when it names one.

  Fields named `*_weights` (e.g. a ResNet's ImageNet backbone) also only initialise training.
  `initial_weights=False` skips every weights file: for a model whose checkpoint will overwrite them, so
  that resuming or evaluating does not need those files.
  """
  if not initial_weights:
    model_config = ml_collections.ConfigDict(model_config.to_dict())
    for field in model_config:
      if field.endswith('_weights') or field == 'pretrained':
        model_config[field] = ''
  paddle.seed(seed)
  model = module(model_config.name).build(model_config, num_classes)
  path = model_config.get('pretrained', '')
  if path:
    path = getattr(module(model_config.name), 'pretrained_file', lambda _: path)(model_config)
    if not os.path.isfile(path):
      source = getattr(module(model_config.name), 'pretrained_source', lambda _: '')(model_config)
      raise FileNotFoundError(f'config.model.pretrained: weights file {os.path.abspath(path)} does not exist'
                              + (f' ({source})' if source else ''))
    loader = getattr(module(model_config.name), 'load_pretrained', None)
    if loader:
      loader(model, path)
    else:
      checkpoint.load_state_strict(model, safe_pickle.load_paddle(path), source=f'weights file {path}')
  return model


def check_fits(manifest, model_config, path, num_classes=None):
  """The checkpoint at `path` (its `manifest`) is of this model (and, when given, of `num_classes`)."""
  wanted = (model_config.name, manifest.num_classes if num_classes is None else num_classes)
  if (manifest.model, manifest.num_classes) != wanted:
    raise checkpoint.CheckpointError(
        f'checkpoint {path} holds a {manifest.model!r} model with {manifest.num_classes} classes, '
        f'but the config builds {wanted[0]!r} with {wanted[1]}')


def load_trained(model_config, path, precision=None):
  """(eval-mode model with the weights of checkpoint `path`, its manifest); no dataset needed.

  With a `precision` (training/precision.py) the model is made ready for it (AMP O2: half-precision
  weights), else float32.
  """
  manifest, state = checkpoint.load(path, pieces=('model',))
  check_fits(manifest, model_config, path)
  model = build(model_config, manifest.num_classes, initial_weights=False)
  if precision is not None:
    model, _ = precision.decorate(model)
  checkpoint.load_state_strict(model, state['model'], source=f'checkpoint {path}')
  model.eval()
  return model, manifest
