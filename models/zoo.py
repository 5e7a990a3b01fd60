"""A backbone of Paddle's own model zoo (paddle.vision.models) with a new head: dropout, then a Linear layer.

`config.model.variant` names the zoo's function (resnet18, resnet50, mobilenet_v3_small, densenet121, ...).
The zoo network keeps everything up to its ImageNet classifier, which is replaced by
Dropout(`config.model.dropout`) -> Linear(features, classes). That dropout is where R-Drop gets its two
different passes: most of the zoo's networks (ResNets, DenseNets, ShuffleNets) hold no dropout of their
own, so with `dropout` 0 their two passes agree and R-Drop's KL term is 0 (training warns). MobileNetV2/V3,
VGG and AlexNet keep the dropout inside their own classifier as well.

`config.model.pretrained`: '' for random weights, a local `.pdparams` of the zoo network (Paddle's ImageNet
file), or 'imagenet' for Paddle's published file: downloaded only then, into Paddle's cache
(~/.cache/paddle/hapi/weights), checked against the md5 Paddle publishes beside its address. The ImageNet
classifier's weights are not used; the new head starts from random weights.
"""
import sys

import paddle
import paddle.nn as nn
import paddle.vision.models as paddle_models
from paddle.utils import download

from utils import checkpoint, safe_pickle
from utils.rules import RATE

FAMILIES = ('resnet', 'resnext', 'wide_resnet', 'vgg', 'mobilenet_v', 'densenet', 'shufflenet_v2', 'alexnet')
# Networks with one output and one Linear classifier at the end (googlenet returns three outputs;
# squeezenet classifies with a convolution).
VARIANTS = tuple(name for name in paddle_models.__all__ if name.startswith(FAMILIES) and name.islower())
FIELD_RULES = {'dropout': RATE}
IMAGENET_CLASSES = 1000
# Zoo names whose published file Paddle lists under another key of its model_urls.
URL_KEYS = {'mobilenet_v1': 'mobilenetv1_1.0', 'mobilenet_v2': 'mobilenetv2_1.0',
            'mobilenet_v3_small': 'mobilenet_v3_small_x1.0', 'mobilenet_v3_large': 'mobilenet_v3_large_x1.0'}


def _imagenet_head(network):
  """(dotted name, layer) of the network's ImageNet classifier: its last Linear with 1000 outputs."""
  return [(name, layer) for name, layer in network.named_sublayers()
          if isinstance(layer, nn.Linear) and layer.weight.shape[1] == IMAGENET_CLASSES][-1]


class ZooClassifier(nn.Layer):
  def __init__(self, variant, num_classes, dropout):
    super().__init__()
    self.backbone = getattr(paddle_models, variant)(num_classes=IMAGENET_CLASSES)
    self.imagenet_head, head = _imagenet_head(self.backbone)
    parent_name, _, attribute = self.imagenet_head.rpartition('.')
    parent = self.backbone
    for part in parent_name.split('.') if parent_name else []:
      parent = getattr(parent, part)
    setattr(parent, attribute, nn.Identity())  # the backbone now ends in the classifier's input features
    self.dropout = nn.Dropout(dropout)
    self.head = nn.Linear(head.weight.shape[0], num_classes)

  def forward(self, x):
    return self.head(self.dropout(self.backbone(x)))


def build(model_config, num_classes):
  if model_config.variant not in VARIANTS:
    raise ValueError(f'config.model.variant={model_config.variant!r}: choose one of {", ".join(VARIANTS)}')
  return ZooClassifier(model_config.variant, num_classes, model_config.dropout)


def published(variant):
  """(address, md5) of Paddle's ImageNet weights of `variant`, or None when Paddle publishes none."""
  urls = sys.modules[getattr(paddle_models, variant).__module__].model_urls
  return urls.get(URL_KEYS.get(variant, variant))


def pretrained_file(model_config):
  """The local weights file that config.model.pretrained names; 'imagenet' downloads Paddle's when not cached."""
  if model_config.pretrained != 'imagenet':
    return model_config.pretrained
  if published(model_config.variant) is None:
    raise ValueError(f'config.model.pretrained=imagenet: Paddle publishes no ImageNet weights for '
                     f'{model_config.variant}; it does for {", ".join(v for v in VARIANTS if published(v))}')
  url, md5 = published(model_config.variant)
  try:
    return download.get_weights_path_from_url(url, md5)  # the cached file when its md5 matches
  except (RuntimeError, OSError) as error:
    raise OSError(f'config.model.pretrained=imagenet: could not download {url} (md5 {md5}): {error}. Offline, '
                  f'copy that file into {download.WEIGHTS_HOME}, or set config.model.pretrained to its local '
                  f'path') from error


def pretrained_source(model_config):
  address = published(model_config.variant)
  return f'Paddle\'s ImageNet weights of {model_config.variant}: {address[0]}, md5 {address[1]}' if address else ''


def load_pretrained(model, path):
  """Weights of the zoo network (with its ImageNet classifier, which is left out) into the backbone."""
  state = safe_pickle.load_paddle(path)
  prefix = model.imagenet_head + '.'
  backbone = {key: value for key, value in state.items() if not key.startswith(prefix)}
  checkpoint.load_state_strict(model.backbone, backbone, source=f'weights file {path}')
