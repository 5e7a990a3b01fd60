"""The DropBlock source article's small CIFAR-10 CNN: four 3x3 convolutions, DropBlock after the third.

The article's experiment (docs/SOURCES.md, DropBlock): DropBlock(block_size 5, keep_prob 0.9) on the 7x7 map
after conv3, against the same net without it. Our notes keep the layout (4 convs, 7x7 after conv3) but
not the article's layer widths: these follow Paddle's CIFAR-10 image-classification tutorial (convs 32-64-64,
fc 64), with padding on conv2 and conv3 so that conv3's map is 7x7.

  32x32 -conv1-> 30 -pool-> 15 -conv2-> 15 -pool-> 7 -conv3-> 7 [DropBlock] -conv4-> 5 -> fc 64 -> fc C

`config.model.dropblock.keep_prob = 1.0` leaves DropBlock out, which is the article's baseline.
"""
import paddle.nn as nn

from models.dropblock import DropBlock
from utils.rules import FRACTION, NON_NEGATIVE, POSITIVE

FIELD_RULES = {'img_size': POSITIVE, 'in_channels': POSITIVE, 'dropblock.block_size': POSITIVE,
               'dropblock.keep_prob': FRACTION, 'dropblock.ramp_updates': NON_NEGATIVE}


class DropBlockCNN(nn.Layer):
  def __init__(self, num_classes, in_channels=3, block_size=5, keep_prob=0.9, ramp_updates=0, img_size=32):
    super().__init__()
    relu = nn.ReLU
    self.features = nn.Sequential(
        nn.Conv2D(in_channels, 32, 3), relu(), nn.MaxPool2D(2),
        nn.Conv2D(32, 64, 3, padding=1), relu(), nn.MaxPool2D(2),
        nn.Conv2D(64, 64, 3, padding=1), relu(),
        DropBlock(block_size, keep_prob, ramp_updates) if keep_prob < 1.0 else nn.Identity(),
        nn.Conv2D(64, 64, 3), relu())
    side = (img_size - 2) // 2 // 2 - 2
    if side < 1:
      raise ValueError(f'the CNN needs images of at least 14x14, not {img_size}x{img_size} (config.data.img_size)')
    self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(64 * side * side, 64), relu(), nn.Linear(64, num_classes))

  def forward(self, x):
    return self.classifier(self.features(x))


def build(model_config, num_classes):
  drop = model_config.dropblock
  return DropBlockCNN(num_classes, model_config.in_channels, drop.block_size, drop.keep_prob, drop.ramp_updates,
                      model_config.img_size)
