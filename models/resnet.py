"""paddle.vision's ResNet with the Cat-12 source notebook's head (docs/SOURCES.md):
backbone (1000 ImageNet logits) -> Linear(1000, 128) -> Sigmoid -> Dropout -> Linear(128, classes) -> Dropout.

The head's dropout is what R-Drop acts on: a plain ResNet has no dropout, so both passes would agree
and the KL term would be 0. The last Dropout, on the logits themselves, is the source's choice.
In fp32 on a CPU the backbone's convolutions run oneDNN's (kernels/cpu_ops.py), with the same parameters.
`config.model.backbone_weights` loads ImageNet weights into the backbone: a local `.pdparams` file, or
'download' for Paddle's own (`pretrained=True`) mechanism and cache.
"""
import os

import paddle.nn as nn
from paddle.utils import download
from paddle.vision.models import resnet as paddle_resnet

from kernels import cpu_ops
from utils import checkpoint, safe_pickle
from utils.rules import POSITIVE, RATE, one_of

BACKBONES = {18: paddle_resnet.resnet18, 34: paddle_resnet.resnet34, 50: paddle_resnet.resnet50,
             101: paddle_resnet.resnet101, 152: paddle_resnet.resnet152}
FIELD_RULES = {'depth': one_of(tuple(BACKBONES)), 'head_width': POSITIVE, 'head_dropout': RATE}
IMAGENET_CLASSES = 1000


class ResNetClassifier(nn.Layer):
  def __init__(self, depth, num_classes, head_width, head_dropout):
    super().__init__()
    self.backbone = cpu_ops.with_fast_convolutions(BACKBONES[depth](num_classes=IMAGENET_CLASSES))
    self.head = nn.Sequential(
        cpu_ops.Linear(IMAGENET_CLASSES, head_width), nn.Sigmoid(), cpu_ops.Dropout(head_dropout),
        cpu_ops.Linear(head_width, num_classes), cpu_ops.Dropout(head_dropout))

  def forward(self, x):
    return self.head(self.backbone(x))


def cached_weights_path(depth):
  """Where `paddle.vision.models.resnet<depth>(pretrained=True)` keeps its download."""
  url, _ = paddle_resnet.model_urls[f'resnet{depth}']
  return os.path.join(download.WEIGHTS_HOME, os.path.basename(url))


def backbone_weights_path(depth, setting):
  """The local file that `config.model.backbone_weights` = `setting` names, downloading only for 'download'."""
  if setting != 'download':
    if not os.path.isfile(setting):
      raise FileNotFoundError(
          f'config.model.backbone_weights: {os.path.abspath(setting)} does not exist. Place Paddle\'s ImageNet '
          f'resnet{depth}.pdparams there ({" md5 ".join(paddle_resnet.model_urls[f"resnet{depth}"])}), set it to '
          f'\'download\', or to \'\' to start from random weights')
    return setting
  cached = cached_weights_path(depth)
  if os.path.isfile(cached):
    # Used as it is, without Paddle's md5 check (which would re-download a file that differs): the strict
    # load below still rejects a file that does not fit the backbone.
    return cached
  url, md5 = paddle_resnet.model_urls[f'resnet{depth}']
  try:
    return download.get_weights_path_from_url(url, md5)
  except (RuntimeError, OSError) as error:
    raise OSError(
        f'config.model.backbone_weights=download: could not download {url} ({error}). On a machine without '
        f'network, copy resnet{depth}.pdparams to {cached}, or set config.model.backbone_weights to a local '
        f'.pdparams path') from error


def build(model_config, num_classes):
  mc = model_config
  if mc.depth not in BACKBONES:
    raise ValueError(f'config.model.depth={mc.depth}: choose one of {sorted(BACKBONES)}')
  model = ResNetClassifier(mc.depth, num_classes, mc.head_width, mc.head_dropout)
  if mc.backbone_weights:
    path = backbone_weights_path(mc.depth, mc.backbone_weights)
    checkpoint.load_state_strict(model.backbone, safe_pickle.load_paddle(path), source=f'backbone weights {path}')
  return model
