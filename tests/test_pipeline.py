"""From a dataset to model inputs (data/pipeline.py): the training order and where a resume takes it up, each
rank's share of a micro-batch, the evaluation shards, the input normalisation."""
import itertools

import ml_collections
import numpy as np
import paddle
import pytest

from data.pipeline import EvalBatches, TrainBatches, to_model_input


def _first(batches, count):
  return list(itertools.islice(iter(batches), count))


def _indices(batches):
  return [index for batch in batches for index, _ in batch]


def test_a_resumed_sampler_continues_exactly_where_the_uninterrupted_one_was():
  """10 samples in micro-batches of 3: 3 micro-steps per epoch, so the starts cover both sides of an epoch's end."""
  straight = _first(TrainBatches(10, 3, seed=7), 12)
  for start in (1, 2, 3, 4, 7):
    assert _first(TrainBatches(10, 3, seed=7, start_micro_step=start), 12 - start) == straight[start:], start


def _epochs(batches, steps_per_epoch):
  return [sum(batches[e * steps_per_epoch:(e + 1) * steps_per_epoch], []) for e in range(len(batches) // steps_per_epoch)]


@pytest.mark.parametrize('seed', range(4))
def test_each_epoch_is_the_training_set_in_an_order_of_its_own_with_new_augmentations(seed):
  """9 samples in micro-batches of 3: each run of 3 micro-steps from the start is one whole epoch."""
  epochs = _epochs(_first(TrainBatches(9, 3, seed=seed), 9), 3)
  orders = [[index for index, _ in epoch] for epoch in epochs]
  assert all(sorted(order) == list(range(9)) for order in orders)
  assert orders[0] != orders[1] and orders[1] != orders[2] and orders[0] != orders[2]
  seeds = [dict(epoch) for epoch in epochs]  # index -> the seed of its random crops and flips
  assert all(len({epoch_seeds[i] for epoch_seeds in seeds}) == 3 for i in range(9))
  assert _indices(_first(TrainBatches(9, 3, seed=seed + 100), 3)) != orders[0]  # another seed, another order


def test_an_epoch_drops_its_incomplete_last_micro_batch_and_shows_no_sample_twice():
  for epoch in _epochs(_first(TrainBatches(10, 3, seed=7), 9), 3):
    assert len({index for index, _ in epoch}) == 9


def test_the_ranks_slices_are_disjoint_and_together_are_the_single_device_micro_batch():
  single = _first(TrainBatches(20, 4, seed=3, start_micro_step=2), 8)
  ranks = [_first(TrainBatches(20, 4, seed=3, rank=r, world_size=2, start_micro_step=2), 8) for r in range(2)]
  assert [a + b for a, b in zip(*ranks)] == single


def test_a_training_set_smaller_than_one_micro_batch_is_refused_and_the_sampler_has_no_length():
  with pytest.raises(ValueError, match='has 3 samples, fewer than one micro-batch of 4'):
    TrainBatches(3, 4, seed=0)
  with pytest.raises(TypeError, match='endless'):
    len(TrainBatches(4, 4, seed=0))


@pytest.mark.parametrize('world_size', [1, 2, 3])
def test_the_evaluation_shards_cover_every_sample_exactly_once_in_batches_of_at_most_the_size(world_size):
  shards = [EvalBatches(7, 2, rank, world_size) for rank in range(world_size)]
  batches = [list(shard) for shard in shards]
  assert sorted(_indices(sum(batches, []))) == list(range(7))
  assert all(1 <= len(batch) <= 2 for batch in sum(batches, []))
  assert [len(shard) for shard in shards] == [len(b) for b in batches]


def test_model_input_is_the_image_in_0_1_minus_the_mean_over_the_std_of_each_channel():
  """A greyscale image takes the first channel's statistics."""
  data_config = ml_collections.ConfigDict({'mean': (0.4, 0.5, 0.6), 'std': (0.2, 0.25, 0.3)})
  images = np.random.default_rng(0).integers(0, 256, (2, 3, 4, 5), dtype=np.uint8)
  mean, std = np.array(data_config.mean)[:, None, None], np.array(data_config.std)[:, None, None]
  for channels in (3, 1):
    got = to_model_input(paddle.to_tensor(images[:, :channels]), data_config)
    assert got.dtype == paddle.float32
    expected = (images[:, :channels] / 255.0 - mean[:channels]) / std[:channels]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-5)
