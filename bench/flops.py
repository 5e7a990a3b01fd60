"""The arithmetic of one training update, counted from a model's shapes (bench/peer.py's fraction of peak).

Counted: every convolution and linear layer (2 x multiply-adds of its output), and in a ViT the two
matrix products of attention (scores q k^T, then scores @ v); elementwise work (norms, activations,
softmax, dropout, the optimizer) is left out, being a few percent of it. The backward pass of a matrix
product is two matrix products of its size (the input's and the weight's gradients), so a forward and
backward pass is 3x the forward's count, also for the first layer (whose input gradient autograd skips:
a fraction of a percent of these models' count). An R-Drop update runs the model on its batch twice.
"""
import paddle
import paddle.nn as nn

import models
from models import vit


def forward_flops(model, images):
  """Floating-point operations of one forward pass of `model` on `images` (counted, not timed)."""
  counted = []

  def conv(layer, inputs, output):
    kernel = layer.weight.shape  # (out, in / groups, kh, kw)
    counted.append(2 * output.size * kernel[1] * kernel[2] * kernel[3])

  def linear(layer, inputs, output):
    counted.append(2 * output.size * layer.weight.shape[0])

  def attention(layer, inputs, output):
    batch, tokens, width = inputs[0].shape
    counted.append(2 * 2 * batch * tokens * tokens * width)  # q k^T and scores @ v, all heads together

  hooks = {nn.Conv2D: conv, nn.Linear: linear, vit.Attention: attention}
  handles = [layer.register_forward_post_hook(hook) for layer in model.sublayers()
             for kind, hook in hooks.items() if isinstance(layer, kind)]
  try:
    with paddle.no_grad():
      model(images)
  finally:
    for handle in handles:
      handle.remove()
  return sum(counted)


def update_flops(config, classes):
  """Floating-point operations of one update of `config`: forward and backward (3x forward) of every
  micro-batch, twice with R-Drop (either form: two passes of the batch or one of the batch doubled)."""
  model = models.build(config.model, classes, config.seed, initial_weights=False)
  model.eval()
  tc = config.train
  size = config.data.img_size
  images = paddle.zeros([tc.batch_size, config.model.get('in_channels', len(config.data.mean)), size, size])
  passes = 2 if config.rdrop.alpha else 1
  return 3 * passes * forward_flops(model, images)
