"""DropBlock: whole blocks inside the map, the paper's drop rate, rescaling, eval identity, the keep_prob ramp,
and R-Drop's KL term when DropBlock is a model's only randomness."""
import ml_collections
import numpy as np
import paddle
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from models import cnn
from models.dropblock import DropBlock
from rdrop import rdrop_loss

SHAPES = [(3, 9, 9), (5, 7, 7), (4, 10, 10), (2, 6, 11), (4, 13, 8)]  # (block, H, W): odd, even, non-square


def _dropped(block, keep_prob, shape, seed=0):
  paddle.seed(seed)
  layer = DropBlock(block, keep_prob)
  layer.train()
  out = layer(paddle.ones(shape)).numpy()
  assert out.shape == tuple(shape)
  return out == 0, out


@pytest.mark.parametrize('block,height,width', SHAPES)
def test_every_dropped_unit_lies_in_a_fully_dropped_block_inside_the_map(block, height, width):
  dropped, _ = _dropped(block, 0.7, [4, 8, height, width])
  assert 0 < dropped.mean() < 1  # the check below must have blocks to look at
  # Top-left corners (inside the map) of blocks whose every unit is dropped ...
  full = sliding_window_view(dropped, (block, block), axis=(2, 3)).all(axis=(-2, -1))
  covered = np.zeros_like(dropped)
  for i, j in zip(*np.nonzero(full.any(axis=(0, 1)))):
    covered[:, :, i:i + block, j:j + block] |= full[:, :, i, j][:, :, None, None]
  # ... account for every dropped unit.
  assert (covered == dropped).all()


@pytest.mark.parametrize('block,height,width', SHAPES)
def test_kept_units_are_rescaled_by_count_over_kept(block, height, width):
  dropped, out = _dropped(block, 0.8, [2, 3, height, width], seed=1)
  kept = (~dropped).sum()
  np.testing.assert_allclose(out[~dropped], dropped.size / kept, rtol=1e-6)
  assert abs(out.mean() - 1.0) < 1e-5


@pytest.mark.parametrize('block,keep_prob', [(5, 0.9), (4, 0.9), (3, 0.8)])
def test_dropped_fraction_matches_the_paper_rate(block, keep_prob):
  """Over 16k draws of a 40x36 map, the dropped fraction is 1 - keep_prob up to block overlaps.

  Exactly: a unit covered by n possible seeds is dropped with probability 1 - (1 - gamma)^n, which is
  slightly below n * gamma when blocks overlap; both bounds are asserted.
  """
  height, width, maps = 40, 36, 64 * 256
  dropped, _ = _dropped(block, keep_prob, [64, 256, height, width], seed=2)
  gamma = DropBlock(block, keep_prob).gamma(height, width)
  seeds_per_row = np.convolve(np.ones(height - block + 1), np.ones(block))  # seeds covering each row
  seeds_per_col = np.convolve(np.ones(width - block + 1), np.ones(block))
  expected = (1 - (1 - gamma) ** np.outer(seeds_per_row, seeds_per_col)).mean()
  # Each seed drops at most block^2 units: the count's std is at most block^2 * std(number of seeds).
  sigma = block**2 * np.sqrt((height - block + 1) * (width - block + 1) * gamma * (1 - gamma) / maps) / (height * width)
  assert abs(dropped.mean() - expected) < 4 * sigma
  assert abs(dropped.mean() - (1 - keep_prob)) < 0.1 * (1 - keep_prob)


def test_eval_mode_and_keep_prob_one_are_the_identity():
  x = paddle.randn([2, 3, 9, 9])
  layer = DropBlock(3, 0.5)
  layer.eval()
  assert (layer(x).numpy() == x.numpy()).all()
  layer = DropBlock(3, 1.0)
  layer.train()
  assert (layer(x).numpy() == x.numpy()).all()


def test_keep_prob_ramps_linearly_from_one_to_the_target():
  layer = DropBlock(3, 0.8, ramp_updates=10)
  assert layer.keep_prob == 1.0  # before the first update
  values = []
  for update in (0, 1, 5, 10, 25):
    layer.on_update(update)
    values.append(layer.keep_prob)
  np.testing.assert_allclose(values, [1.0, 0.98, 0.9, 0.8, 0.8], atol=1e-12)
  assert DropBlock(3, 0.8).keep_prob == 0.8  # no ramp: the target from the start


def test_a_block_larger_than_the_map_is_an_error_naming_the_block_size():
  layer = DropBlock(7, 0.9)
  layer.train()
  with pytest.raises(ValueError, match='block_size=7 does not fit a 5x9'):
    layer(paddle.ones([1, 1, 5, 9]))


def _cnn(keep_prob):
  config = ml_collections.ConfigDict({'in_channels': 3, 'img_size': 32, 'dropblock': {
      'block_size': 5, 'keep_prob': keep_prob, 'ramp_updates': 0}})
  paddle.seed(0)
  model = cnn.build(config, 10)
  model.train()
  return model


@pytest.mark.parametrize('form', ['concat', 'twice'])
def test_rdrop_kl_is_positive_with_dropblock_alone_and_zero_without_randomness(form):
  rdrop = ml_collections.ConfigDict({'alpha': 1.0, 'reduction': 'batchmean', 'ce_of_passes': 'sum', 'form': form})
  images, labels = paddle.randn([4, 3, 32, 32]), paddle.to_tensor([0, 1, 2, 3])
  _, _, kl_with = rdrop_loss(_cnn(0.9), images, labels, rdrop)
  _, _, kl_without = rdrop_loss(_cnn(1.0), images, labels, rdrop)
  assert float(kl_with) > 1e-6
  assert abs(float(kl_without)) < 1e-9
