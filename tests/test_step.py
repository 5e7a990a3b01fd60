"""The update step and what the loop carries between updates, in this process (training/step.py,
training/runlog.py's LogWindow, train.every, training/distributed.py on one process)."""
import contextlib
import itertools

import numpy as np
import paddle
import pytest

import train
from configs import digits_vit_rdrop
from training import distributed, optim
from training.precision import Precision
from training.runlog import LogWindow
from training.step import NonFiniteLoss, Skips, TooManySkips, UpdateStep


def _step(config, images, wrap=lambda model: model, **placement):
  """(UpdateStep of `wrap(model)` on `placement` (rank, world_size), the model, endless (images, labels))."""
  import models
  model = models.build(config.model, 10, config.seed, initial_weights=False)
  optimizer, scheduler = optim.build(config.train, model.parameters(), 10)
  precision = Precision(config.train)
  model.train()
  step = UpdateStep(wrap(model), optimizer, scheduler, precision, config, **placement)
  return step, model, itertools.repeat((images, _labels(len(images))))


def _labels(count):
  return paddle.to_tensor(np.arange(count) % 10)


def _images(count, seed=0):
  return paddle.to_tensor(np.random.default_rng(seed).integers(0, 256, (count, 1, 8, 8), dtype=np.uint8))


def _weights(model):
  return {k: v.numpy().copy() for k, v in model.state_dict().items()}


def _tiny():
  config = digits_vit_rdrop.get_config('smoke')
  config.model.variant = 'testing'
  return config


def test_an_update_takes_accum_steps_micro_batches_and_returns_the_agreed_means():
  config = _tiny()
  config.train.accum_steps = 2
  step, model, batches = _step(config, _images(4))
  taken = []
  counted = map(lambda batch: taken.append(1) or batch, batches)
  before = model.head.weight.numpy().copy()
  outcome = step(1, counted, flags=lambda: (True, False))
  assert len(taken) == 2 and outcome.agreed == [True, False] and not outcome.skipped
  assert outcome.means.shape == (3,) and np.isfinite(outcome.means).all() and outcome.means[2] >= 0  # the KL
  assert not np.array_equal(model.head.weight.numpy(), before)


@pytest.mark.parametrize('bad', [float('nan'), float('inf'), -float('inf')])
def test_a_non_finite_loss_stops_the_update_before_the_weights_change(monkeypatch, bad):
  """An infinite loss added to a finite one still has finite gradients: only the check keeps them out."""
  from training import step as step_module
  config = _tiny()
  images = paddle.to_tensor(np.zeros((4, 1, 8, 8), dtype=np.uint8))
  step, model, batches = _step(config, images)
  original = step_module.rdrop_loss

  def bad_loss(*args, **kwargs):
    loss, ce, kl = original(*args, **kwargs)
    return loss + bad, ce, kl
  monkeypatch.setattr(step_module, 'rdrop_loss', bad_loss)
  weights = _weights(model)
  with pytest.raises(NonFiniteLoss) as stopped:
    step(1, batches)
  np.testing.assert_equal(stopped.value.value, bad)
  assert all(np.array_equal(v.numpy(), weights[k]) for k, v in model.state_dict().items())


def test_accumulated_micro_batches_step_as_one_batch_of_their_union():
  """Without clipping (at norm 1 it would hide a wrongly scaled gradient), dropout or R-Drop (its KL does not split
  over micro-batches), and with momentum SGD (Adam's step does not depend on the gradient's scale)."""
  images, labels = _images(8), _labels(8)
  weights = []
  for accum_steps in (1, 4):
    config = _tiny()
    config.train.update(accum_steps=accum_steps, clip_grad_norm=0.0, optimizer='momentum', lr=0.05)
    config.model.dropout_rate, config.rdrop.alpha = 0.0, 0.0
    step, model, _ = _step(config, images)
    micro = len(images) // accum_steps
    batches = itertools.cycle([(images[i:i + micro], labels[i:i + micro]) for i in range(0, len(images), micro)])
    for update in (1, 2, 3):
      step(update, batches)
    weights.append(_weights(model))
  assert max(float(np.abs(weights[0][k] - weights[1][k]).max()) for k in weights[0]) < 1e-6


class _DataParallelSpy(paddle.nn.Layer):
  """Stands in for paddle.DataParallel: notes, for each forward, whether its backward would all-reduce."""

  def __init__(self, model):
    super().__init__()
    self.model, self.all_reduced, self._syncing = model, [], True

  @contextlib.contextmanager
  def no_sync(self):
    self._syncing = False
    try:
      yield
    finally:
      self._syncing = True

  def forward(self, x):
    self.all_reduced.append(self._syncing)
    return self.model(x)


def test_gradients_are_all_reduced_once_per_update_after_its_last_micro_batch(monkeypatch):
  monkeypatch.setattr(distributed, 'agree', lambda sums, flags, world_size: (sums.numpy(), list(flags)))
  config = _tiny()
  config.train.accum_steps, config.rdrop.alpha = 3, 0.0  # one forward per micro-batch
  config.train.batch_size = 3 * 2 * 4  # micro-batches of 4 on each of 2 devices
  step, _, batches = _step(config, _images(4), wrap=_DataParallelSpy, rank=0, world_size=2)
  step(1, batches)
  assert step.model.all_reduced == [False, False, True]


def test_ranks_draw_different_dropout_masks_and_a_rank_the_same_ones_again():
  """The same update of the same weights on the same batch, on rank 0, 1 and 0 again. The masks show in the
  head's gradient (the zero head makes the loss ln C whatever they are)."""
  heads = []
  for rank in (0, 1, 0):
    step, model, batches = _step(_tiny(), _images(4), rank=rank)
    step(1, batches)
    heads.append(model.head.weight.numpy())
  assert not np.array_equal(heads[0], heads[1]) and np.array_equal(heads[0], heads[2])


def test_more_skipped_updates_in_a_row_than_allowed_stop_and_an_applied_one_resets_the_count():
  skips = Skips(limit=2)
  for skipped in (True, True, False, True, True):
    skips.count(skipped, loss_scale=1024.0)
  assert (skips.in_a_row, skips.total) == (2, 4)
  with pytest.raises(TooManySkips) as stopped:
    skips.count(True, loss_scale=512.0)
  assert str(stopped.value) == ('3 updates in a row overflowed in fp16 (loss scale now 512), more than '
                                'train.max_skipped_updates=2')


def test_the_log_window_averages_the_applied_updates_and_survives_a_checkpoint():
  window = LogWindow()
  window.add(np.array([1.0, 2.0, 0.5], dtype=np.float32), skipped=False)
  window.add(np.array([np.inf, np.inf, 0.0]), skipped=True)  # a skipped fp16 update's loss may be infinite
  window.add(np.array([3.0, 4.0, 1.5], dtype=np.float32), skipped=False)
  resumed = LogWindow()
  resumed.load_state_dict(window.state_dict())
  assert resumed.averages() == window.averages() == {'objective': 2.0, 'ce': 3.0, 'kl': 1.0}
  assert resumed.skipped == 1
  resumed.reset()
  assert resumed.averages() == {} and resumed.skipped == 0


@pytest.mark.parametrize('period,due', [(3, [3, 6, 9, 10]), (0, [10]), (1, list(range(1, 11)))])
def test_every_n_updates_or_the_last(period, due):
  assert [u for u in range(1, 11) if train.every(u, period, 10)] == due


def test_one_process_agrees_with_itself_and_decides_alone():
  means, flags = distributed.agree(paddle.to_tensor([1.0, 2.0, 3.0]), [False, True], world_size=1)
  assert means.tolist() == [1.0, 2.0, 3.0] and flags == [False, True]
  assert distributed.on_rank0(lambda: 'rank 0 decides', world_size=1) == 'rank 0 decides'
  with pytest.raises(ValueError, match='refused'):
    distributed.on_rank0(lambda: (_ for _ in ()).throw(ValueError('refused')), world_size=1)
