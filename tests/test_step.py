"""The update step and what the loop carries between updates, in this process (training/step.py,
training/runlog.py's LogWindow, train.every, training/distributed.py on one process)."""
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


def _step(config, images):
  import models
  model = models.build(config.model, 10, config.seed, initial_weights=False)
  optimizer, scheduler = optim.build(config.train, model.parameters(), 10)
  precision = Precision(config.train)
  model.train()
  labels = paddle.to_tensor(np.arange(len(images)) % 10)
  return UpdateStep(model, optimizer, scheduler, precision, config), model, itertools.repeat((images, labels))


def _tiny():
  config = digits_vit_rdrop.get_config('smoke')
  config.model.variant = 'testing'
  return config


def test_an_update_takes_accum_steps_micro_batches_and_returns_the_agreed_means():
  config = _tiny()
  config.train.accum_steps = 2
  images = paddle.to_tensor(np.random.default_rng(0).integers(0, 256, (4, 1, 8, 8), dtype=np.uint8))
  step, model, batches = _step(config, images)
  taken = []
  counted = map(lambda batch: taken.append(1) or batch, batches)
  before = model.head.weight.numpy().copy()
  outcome = step(1, counted, flags=lambda: (True, False))
  assert len(taken) == 2 and outcome.agreed == [True, False] and not outcome.skipped
  assert outcome.means.shape == (3,) and np.isfinite(outcome.means).all() and outcome.means[2] >= 0  # the KL
  assert not np.array_equal(model.head.weight.numpy(), before)


def test_a_non_finite_loss_stops_the_update_before_the_weights_change(monkeypatch):
  from training import step as step_module
  config = _tiny()
  images = paddle.to_tensor(np.zeros((4, 1, 8, 8), dtype=np.uint8))
  step, model, batches = _step(config, images)
  original = step_module.rdrop_loss

  def nan_loss(*args, **kwargs):
    loss, ce, kl = original(*args, **kwargs)
    return loss * float('nan'), ce, kl
  monkeypatch.setattr(step_module, 'rdrop_loss', nan_loss)
  weights = {k: v.numpy().copy() for k, v in model.state_dict().items()}
  with pytest.raises(NonFiniteLoss) as stopped:
    step(1, batches)
  assert np.isnan(stopped.value.value)
  assert all(np.array_equal(v.numpy(), weights[k]) for k, v in model.state_dict().items())


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
