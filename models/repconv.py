"""Structural re-parameterisation (RepVGG, Ding et al. 2021; docs/SOURCES.md, RepConv fusion).

A RepConv block trains as three parallel branches, a 3x3 conv, a 1x1 conv and (when the input and output
have the same channels and the stride is 1) the identity, each optionally followed by BatchNorm as in
RepVGG, and sums them. All three are linear in eval mode, so the sum is one 3x3 conv: fold each BN into
its branch, pad the 1x1 kernel to 3x3, write the identity as a 3x3 kernel with 1 at the centre of its
own channel, and add kernels and biases. `fuse()` builds that conv; the multi-branch form is for training,
the fused one for evaluation and deployment (`--mode export` fuses before saving).
"""
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from utils.rules import ALL_POSITIVE, POSITIVE

FIELD_RULES = {'in_channels': POSITIVE, 'widths': ALL_POSITIVE, 'blocks_per_stage': POSITIVE}


def _fold(kernel, bias, bn):
  """(kernel, bias) of `conv followed by bn` in eval mode: bn(z) = (z - mean) * weight / std + bias."""
  if bn is None:
    return kernel, bias
  scale = bn.weight / paddle.sqrt(bn._variance + bn._epsilon)
  return kernel * scale.reshape([-1, 1, 1, 1]), bn.bias + (bias - bn._mean) * scale


class RepConvBlock(nn.Layer):
  """Sum of 3x3 conv, 1x1 conv and identity branches (no activation: the network applies it)."""

  def __init__(self, in_channels, out_channels, stride=1, batch_norm=True):
    super().__init__()
    self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
    norm = (lambda: nn.BatchNorm2D(out_channels)) if batch_norm else (lambda: None)
    # A conv followed by BN needs no bias of its own: BN's shift replaces it.
    self.conv3x3 = nn.Conv2D(in_channels, out_channels, 3, stride=stride, padding=1,
                             bias_attr=False if batch_norm else None)
    self.bn3x3 = norm()
    self.conv1x1 = nn.Conv2D(in_channels, out_channels, 1, stride=stride, bias_attr=False if batch_norm else None)
    self.bn1x1 = norm()
    self.has_identity = in_channels == out_channels and stride == 1
    self.bn_identity = norm() if self.has_identity else None

  def forward(self, x):
    out = self._branch(self.conv3x3(x), self.bn3x3) + self._branch(self.conv1x1(x), self.bn1x1)
    if self.has_identity:
      out = out + self._branch(x, self.bn_identity)
    return out

  @staticmethod
  def _branch(z, bn):
    return bn(z) if bn is not None else z

  @paddle.no_grad()
  def fuse(self):
    """One 3x3 conv equal to this block in eval mode (BN folded with its running statistics)."""
    zeros = paddle.zeros([self.out_channels])
    kernel, bias = _fold(self.conv3x3.weight, self.conv3x3.bias if self.conv3x3.bias is not None else zeros,
                         self.bn3x3)
    kernel1, bias1 = _fold(self.conv1x1.weight, self.conv1x1.bias if self.conv1x1.bias is not None else zeros,
                           self.bn1x1)
    kernel, bias = kernel + F.pad(kernel1, [1, 1, 1, 1]), bias + bias1  # the 1x1 tap is the 3x3's centre
    if self.has_identity:
      identity = F.pad(paddle.eye(self.out_channels).reshape([self.out_channels, self.out_channels, 1, 1]),
                       [1, 1, 1, 1])
      kernel_id, bias_id = _fold(identity, zeros, self.bn_identity)
      kernel, bias = kernel + kernel_id, bias + bias_id
    fused = nn.Conv2D(self.in_channels, self.out_channels, 3, stride=self.stride, padding=1)
    fused.weight.set_value(kernel)
    fused.bias.set_value(bias)
    return fused


class RepConvNet(nn.Layer):
  """A small RepVGG-style classifier: stages of RepConv blocks with ReLU, global average pool, linear head.

  Each stage's first block changes the width and (after the first stage) halves the resolution; the
  other blocks keep both, so they have the identity branch.
  """

  def __init__(self, num_classes, in_channels=3, widths=(32, 64, 128), blocks_per_stage=2, batch_norm=True):
    super().__init__()
    blocks, channels = [], in_channels
    for stage, width in enumerate(widths):
      for index in range(blocks_per_stage):
        stride = 2 if stage > 0 and index == 0 else 1
        blocks.append(RepConvBlock(channels, width, stride, batch_norm))
        channels = width
    self.blocks = nn.LayerList(blocks)
    self.head = nn.Linear(channels, num_classes)

  def forward(self, x):
    for block in self.blocks:
      x = F.relu(block(x))
    return self.head(x.mean(axis=[2, 3]))

  def fuse(self):
    """Replace every block by its fused 3x3 conv, in place; the network then computes its eval-mode function."""
    self.blocks = nn.LayerList([block.fuse() if isinstance(block, RepConvBlock) else block for block in self.blocks])
    return self


def build(model_config, num_classes):
  if not model_config.widths or model_config.blocks_per_stage < 1:
    raise ValueError(f'config.model.widths={model_config.widths} and config.model.blocks_per_stage='
                     f'{model_config.blocks_per_stage} must give at least one block')
  return RepConvNet(num_classes, model_config.in_channels, tuple(model_config.widths),
                    model_config.blocks_per_stage, model_config.batch_norm)
