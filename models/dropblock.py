"""DropBlock (Ghiasi et al. 2018, arXiv 1810.12890): dropout of contiguous square regions of a feature map.

Dropping single units of a conv feature map barely regularises, since the neighbours carry the same
information; DropBlock drops block_size x block_size squares instead. Block seeds are drawn with
probability gamma only where a whole block fits, and max-pooling grows each seed into its square, so
every dropped unit belongs to a complete square inside the map. The paper's gamma, generalised to an
H x W map,
    gamma = (1 - keep_prob) / block_size^2 * H W / ((H - block_size + 1) (W - block_size + 1)),
makes the expected dropped fraction about 1 - keep_prob (less where squares overlap). Kept units are
rescaled by count / kept, as in the paper. Each channel of each sample gets its own mask (the paper's
better variant), so R-Drop's two passes see different masks.

(The source article's layer pads the pooling with block_size // 2 and draws seeds over the whole map:
the output has the wrong shape for even block sizes, and border blocks are cut off by the edge.)
"""
import paddle
import paddle.nn as nn
import paddle.nn.functional as F


class DropBlock(nn.Layer):
  """DropBlock on (N, C, H, W) maps; identity in eval mode.

  keep_prob falls linearly from 1.0 at update 0 to `keep_prob` at update `ramp_updates`, as the paper
  schedules it; the training loop reports the update through `on_update`. With ramp_updates = 0 the
  target applies from the start. The schedule is a function of the update only, so a resumed run needs
  no extra state.
  """

  def __init__(self, block_size, keep_prob, ramp_updates=0):
    super().__init__()
    if block_size < 1:
      raise ValueError(f'DropBlock block_size={block_size} must be at least 1')
    if not 0.0 < keep_prob <= 1.0:
      raise ValueError(f'DropBlock keep_prob={keep_prob} must be in (0, 1]')
    if ramp_updates < 0:
      raise ValueError(f'DropBlock ramp_updates={ramp_updates} must be >= 0')
    self.block_size = block_size
    self.target_keep_prob = keep_prob
    self.ramp_updates = ramp_updates
    self.keep_prob = 1.0 if ramp_updates else keep_prob

  def on_update(self, update):
    progress = min(update, self.ramp_updates) / self.ramp_updates if self.ramp_updates else 1.0
    self.keep_prob = 1.0 - (1.0 - self.target_keep_prob) * progress

  def gamma(self, height, width):
    """Seed probability per valid position for the current keep_prob on a height x width map."""
    b = self.block_size
    return (1.0 - self.keep_prob) / b**2 * (height * width) / ((height - b + 1) * (width - b + 1))

  def forward(self, x):
    if not self.training or self.keep_prob >= 1.0:
      return x
    batch, channels, height, width = x.shape
    b = self.block_size
    if b > height or b > width:
      raise ValueError(f'DropBlock block_size={b} does not fit a {height}x{width} feature map')
    seeds = (paddle.rand([batch, channels, height - b + 1, width - b + 1]) < self.gamma(height, width))
    # A seed at (i, j) drops rows i..i+b-1 and columns j..j+b-1: max-pooling the seeds, padded by b - 1
    # on every side (padding never wins a max), marks exactly those units and restores H x W.
    dropped = F.max_pool2d(seeds.astype('float32'), b, stride=1, padding=b - 1)
    keep = 1.0 - dropped
    # In float32: under fp16 the unit count overflows past 65504. An all-dropped mask would divide by 0.
    scale = keep.numel().astype('float32') / keep.sum().clip(min=1.0)
    return x * (keep * scale).astype(x.dtype)

  def extra_repr(self):
    return (f'block_size={self.block_size}, keep_prob={self.target_keep_prob}, '
            f'ramp_updates={self.ramp_updates}')
