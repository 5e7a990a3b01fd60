"""One optimizer update, as training runs it and every benchmark measures it.

An update draws its dropout masks from a seed of its own (a pure function of the run's seed, the rank and
the update number, which exact resume rests on) and tells layers that follow training progress (DropBlock's
keep_prob ramp) where it is. It takes `accum_steps` micro-batches: each through the R-Drop loss under the run's autocast, its
backward scaled for accumulation (gradients all-reduced once, on the last micro-batch: `no_sync` on the
others). Then the ranks agree, in one all-reduce that is also the update's one host sync, on the mean
loss and on any flags the loop needs agreed (a stop request, a checkpoint due): a non-finite loss on any
rank stops them all before the weights change. Then the LR schedule steps (update u uses lr x factor(u),
as in the authors' code) and the optimizer steps, unless fp16's loss scaler skips an update whose
gradients overflowed.
"""
import collections
import contextlib
import math

import paddle

from data import pipeline
from kernels.cpu_ops import errors_as_raised
from rdrop import rdrop_loss
from training import distributed, optim

# The agreed means of the update's loss terms over the global batch (numpy: objective, ce, kl), whether
# fp16's scaler skipped the update, and the caller's flags, each True if it was on any rank.
Outcome = collections.namedtuple('Outcome', 'means skipped agreed')


class NonFiniteLoss(FloatingPointError):
  """The loss of an update is NaN or infinite (fp32, bf16): the weights were not changed."""

  def __init__(self, value):
    super().__init__(f'the training loss is not finite (here: {value})')
    self.value = value


class TooManySkips(FloatingPointError):
  """fp16: more updates in a row overflowed than train.max_skipped_updates allows."""

  def __init__(self, in_a_row, loss_scale, limit):
    super().__init__(f'{in_a_row} updates in a row overflowed in fp16 (loss scale now {loss_scale:g}), more than '
                     f'train.max_skipped_updates={limit}')
    self.in_a_row, self.loss_scale, self.limit = in_a_row, loss_scale, limit


class Skips:
  """fp16's skipped updates, in a row and in all; more than `limit` in a row raise TooManySkips."""

  def __init__(self, limit):
    self.limit, self.in_a_row, self.total = limit, 0, 0

  def count(self, skipped, loss_scale):
    self.in_a_row = self.in_a_row + 1 if skipped else 0
    self.total += int(skipped)
    if self.in_a_row > self.limit:
      raise TooManySkips(self.in_a_row, loss_scale, self.limit)

  def state_dict(self):
    return {'in_a_row': self.in_a_row, 'total': self.total}

  def load_state_dict(self, state):
    self.in_a_row, self.total = state['in_a_row'], state['total']


def seed_dropout(seed, rank, update):
  """The dropout masks of `update` on `rank`: a pure function of them (ranks draw different masks)."""
  paddle.seed(pipeline.derived_seed(seed, 1_000_003 + rank, update))


class UpdateStep:
  """`step(update, batches, flags)` runs update number `update` on the next `accum_steps` micro-batches of
  the iterator `batches` ((uint8 images, labels) on the device) and returns its Outcome. `flags()` gives the booleans
  for the ranks to agree on, asked once the update's gradients are computed (a signal that arrived
  meanwhile stops this update's run, not the next one's).

  `model` is the network as trained (paddle.DataParallel under the launcher); `stop` (a StopRequest)
  learns which of the update's time is computation, which a signal never counts as being blocked; `skips`
  counts fp16's skipped updates (the training loop keeps it in its checkpoints).
  """

  def __init__(self, model, optimizer, scheduler, precision, config, rank=0, world_size=1, stop=None, skips=None):
    self.model, self.optimizer, self.scheduler, self.precision = model, optimizer, scheduler, precision
    self.config, self.rank, self.world_size, self.stop = config, rank, world_size, stop
    self.accum_steps, _ = optim.batch_split(config.train, world_size)
    self.skips = skips or Skips(config.train.max_skipped_updates)
    self.progress_layers = [layer for layer in model.sublayers(include_self=True) if hasattr(layer, 'on_update')]

  def __call__(self, update, batches, flags=tuple):
    seed_dropout(self.config.seed, self.rank, update)
    for layer in self.progress_layers:
      layer.on_update(update)
    sums = paddle.zeros([3], dtype='float32')  # objective, ce, kl of this update
    for micro_step in range(self.accum_steps):
      images, labels = next(batches)  # waiting for a batch is not computing: a stalled read can be ended
      all_reduce = micro_step == self.accum_steps - 1 or self.world_size == 1
      with self._computing(), contextlib.nullcontext() if all_reduce else self.model.no_sync():
        with self.precision.autocast():
          loss, ce, kl = rdrop_loss(self.model, pipeline.to_model_input(images, self.config.data), labels,
                                    self.config.rdrop)
        with errors_as_raised():  # an error in a CPU stand-in's backward as raised, not as Paddle's OSError
          self.precision.backward(loss / self.accum_steps)
      sums += paddle.stack([loss.detach(), ce.detach(), kl.detach()]) / self.accum_steps
    with self._computing():  # the host sync waits for the device's work
      means, agreed = distributed.agree(sums, flags(), self.world_size)
    if not math.isfinite(means[0]) and not self.precision.scaling:  # fp16 overflow is the scaler's to skip
      raise NonFiniteLoss(means[0])
    self.scheduler.step()
    skipped = self.precision.step(self.optimizer)
    self.optimizer.clear_grad()
    self.skips.count(skipped, self.precision.loss_scale())
    return Outcome(means, skipped, agreed)

  def _computing(self):
    return self.stop.working() if self.stop is not None else contextlib.nullcontext()
