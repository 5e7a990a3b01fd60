"""LeNet-5 for 32x32 colour images, as in the source article's dropout ablation (docs/SOURCES.md, Dropout on LeNet-5).

  conv 5x5 -> 6, pool, conv 5x5 -> 16, pool, conv 5x5 -> 120 (1x1 map), fc 84, fc C; ReLU, max-pooling.

The article's four networks differ only in dropout, all with p = 0.5:
  A none; B `fc_dropout` on the inputs of both fully connected layers; C `conv_dropout` as Dropout2D
  (whole channels) after the first two conv stages; D both.
Paddle's Dropout is inverted (scaled by 1/(1-p) in training, identity at test time), as the article uses.
"""
import paddle.nn as nn

from utils.rules import POSITIVE, RATE

FIELD_RULES = {'img_size': POSITIVE, 'in_channels': POSITIVE, 'conv_dropout': RATE, 'fc_dropout': RATE}


def _dropout(layer, p):
  return [layer(p)] if p > 0 else []


class LeNet5(nn.Layer):
  def __init__(self, num_classes, in_channels=3, fc_dropout=0.0, conv_dropout=0.0):
    super().__init__()
    self.features = nn.Sequential(
        nn.Conv2D(in_channels, 6, 5), nn.ReLU(), nn.MaxPool2D(2), *_dropout(nn.Dropout2D, conv_dropout),
        nn.Conv2D(6, 16, 5), nn.ReLU(), nn.MaxPool2D(2), *_dropout(nn.Dropout2D, conv_dropout),
        nn.Conv2D(16, 120, 5), nn.ReLU(), nn.Flatten())
    self.classifier = nn.Sequential(
        *_dropout(nn.Dropout, fc_dropout), nn.Linear(120, 84), nn.ReLU(),
        *_dropout(nn.Dropout, fc_dropout), nn.Linear(84, num_classes))

  def forward(self, x):
    return self.classifier(self.features(x))


def build(model_config, num_classes):
  if model_config.img_size != 32:  # conv3 must see a 5x5 map to leave the 1x1 map fc1 expects
    raise ValueError(f'LeNet-5 takes 32x32 images, not config.model.img_size={model_config.img_size}')
  return LeNet5(num_classes, model_config.in_channels, model_config.fc_dropout, model_config.conv_dropout)
