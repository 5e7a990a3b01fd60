"""Datasets by name: `config.data.name` is a module of this package exposing `build(data_config, split)`.

A dataset returns uint8 images (C, H, W) already at the model's size and int64 labels (-1 when the
split has none); normalisation happens on the device (see `data.pipeline.to_model_input`). A module lists
its split names in SPLITS, the channels of its images in CHANNELS (and its augmentations in AUGMENTS, if
any), for training/config_check.py.
"""
import importlib
import pkgutil

_HELPERS = {'pipeline', 'images'}


def available():
  return sorted(m.name for m in pkgutil.iter_modules(__path__)
                if not m.name.startswith('_') and m.name not in _HELPERS)


def module(name):
  if name not in available():
    raise ValueError(f'config.data.name={name!r} is not a dataset; choose one of {available()}')
  return importlib.import_module(f'{__name__}.{name}')


def build(data_config, split, class_names=None):
  """The `split` of the dataset; `class_names`, a trained model's, label the data of a dataset that finds its
  classes on disk (FINDS_CLASSES, e.g. a folder per class) by the model's classes, not the folder's of today."""
  dataset = module(data_config.name)
  if class_names is not None and getattr(dataset, 'FINDS_CLASSES', False):
    return dataset.build(data_config, split, class_names)
  return dataset.build(data_config, split)
