"""RepConv fusion: one 3x3 conv computes what the three branches compute in eval mode."""
import numpy as np
import paddle
import pytest

from models.repconv import RepConvBlock, RepConvNet


def _randomise_batch_norms(layer, seed):
  """Random running statistics and affine parameters: with Paddle's defaults a missing fold could pass."""
  rng = np.random.default_rng(seed)
  for bn in (m for m in layer.sublayers() if isinstance(m, paddle.nn.BatchNorm2D)):
    for tensor in (bn.weight, bn.bias, bn._mean):
      tensor.set_value(rng.normal(size=tensor.shape).astype('float32'))
    bn._variance.set_value(rng.uniform(0.3, 2.0, size=bn._variance.shape).astype('float32'))


@pytest.mark.parametrize('batch_norm', [True, False])
@pytest.mark.parametrize('in_channels,out_channels,stride', [(4, 4, 1), (3, 8, 1), (8, 4, 1), (6, 6, 2), (3, 5, 2)])
def test_fused_conv_equals_the_block_in_eval_mode(in_channels, out_channels, stride, batch_norm):
  paddle.seed(0)
  block = RepConvBlock(in_channels, out_channels, stride, batch_norm)
  assert block.has_identity == (in_channels == out_channels and stride == 1)
  _randomise_batch_norms(block, seed=in_channels * 10 + out_channels)
  block.eval()
  x = paddle.randn([3, in_channels, 11, 9])  # odd, non-square: stride 2 must crop like the branches do
  fused = block.fuse()
  assert isinstance(fused, paddle.nn.Conv2D) and fused.weight.shape == [out_channels, in_channels, 3, 3]
  np.testing.assert_allclose(fused(x).numpy(), block(x).numpy(), rtol=1e-5, atol=1e-5)


def test_fused_network_equals_the_eval_network_and_has_no_branches_left():
  paddle.seed(1)
  net = RepConvNet(10, in_channels=3, widths=(8, 16), blocks_per_stage=2)
  _randomise_batch_norms(net, seed=5)
  net.eval()
  x = paddle.randn([4, 3, 16, 16])
  expected = net(x).numpy()
  net.fuse()
  assert not any(isinstance(m, (RepConvBlock, paddle.nn.BatchNorm2D)) for m in net.sublayers())
  assert len(net.blocks) == 4
  np.testing.assert_allclose(net(x).numpy(), expected, rtol=1e-5, atol=1e-5)
