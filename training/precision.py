"""Mixed precision as Paddle documents it: `paddle.amp.auto_cast` (O1 or O2) and a dynamic `GradScaler`.

Whether AMP runs here is Paddle's decision: it switches itself off on a CPU, and on a GPU whose compute
capability lacks the dtype (fp16 needs 7.0, bf16 8.0). We ask it once, say so, and run fp32 when it declines.
bf16 needs no loss scaling. Checkpoints hold float32 weights (utils/checkpoint.py), so a run may resume
in another precision: this module fits the optimizer's float32 master weights (AMP O2) and the loss
scaler to the run, and says in one line what changed.
"""
import contextlib
import warnings

import paddle

DTYPES = {'fp16': 'float16', 'bf16': 'bfloat16'}
PRECISIONS = ('fp32', *DTYPES)
AMP_LEVELS = ('O1', 'O2')
# What Paddle appends to a parameter's name for its O2 master copy (unique_name's first in a process).
MASTER_SUFFIX = '_fp32_master_0'


class GradScaler(paddle.amp.GradScaler):
  """Paddle's dynamic loss scaler, minus the print of each overflow that crashes it under NumPy >= 2.4.

  Paddle 3.3's `_update` prints `float(self._scale)` of a 1-element tensor, which NumPy 2.4 refuses
  (TypeError): the first skipped fp16 step would end the run. This is the same update without the print;
  the training loop logs skipped updates itself.
  """

  def _update(self):
    if not self._enable:
      return
    if self._cache_found_inf:
      self._incr_count = 0
      self._decr_count += 1
      if self._decr_count == self._decr_every_n_nan_or_inf:
        self._scale = self._scale * self._decr_ratio
        self._decr_count = 0
    else:
      self._decr_count = 0
      self._incr_count += 1
      if self._incr_count == self._incr_every_n_steps:
        self._scale = self._scale * self._incr_ratio
        self._incr_count = 0


def amp_refusal(dtype):
  """'' when Paddle's auto_cast turns itself on here for `dtype`, else Paddle's reason for declining."""
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    with paddle.amp.auto_cast(enable=True, dtype=dtype, level='O1'):
      enabled = paddle.amp.is_autocast_enabled()
  return '' if enabled else ' '.join(str(w.message) for w in caught) or 'AMP is not available'


class Precision:
  """The run's precision: autocast, O2 decoration, loss scaling, and its part of a checkpoint."""

  def __init__(self, train_config, log=print):
    tc = train_config  # its names were checked by training/config_check.py
    self.dtype, self.level = DTYPES.get(tc.precision, 'float32'), tc.amp_level
    refusal = amp_refusal(self.dtype) if tc.precision != 'fp32' else ''
    if refusal:
      log(f'precision: Paddle declines {tc.precision} here ({refusal}); this run is fp32')
    self.enabled = tc.precision != 'fp32' and not refusal
    self.name = f'{tc.precision} {tc.amp_level}' if self.enabled else 'fp32'
    self.scaler = GradScaler(enable=self.enabled and self.dtype == 'float16',
                             init_loss_scaling=tc.init_loss_scale, decr_every_n_nan_or_inf=1)

  @property
  def scaling(self):
    return self.scaler.is_enable()

  @property
  def master_weights(self):
    """O2: the model holds half-precision weights, the optimizer float32 master copies of them."""
    return self.enabled and self.level == 'O2'

  def decorate(self, model, optimizer=None):
    """(model, optimizer) ready for this precision: under O2 the weights cast to half precision."""
    if not self.master_weights:
      return model, optimizer
    if optimizer is None:
      return paddle.amp.decorate(models=model, level='O2', dtype=self.dtype), None
    return paddle.amp.decorate(models=model, optimizers=optimizer, level='O2', dtype=self.dtype, master_weight=True)

  def autocast(self):
    if not self.enabled:  # auto_cast(enable=False) still looks up op lists for float32 and fails
      return contextlib.nullcontext()
    return paddle.amp.auto_cast(enable=True, dtype=self.dtype, level=self.level)

  def backward(self, loss):
    (self.scaler.scale(loss) if self.scaling else loss).backward()

  def step(self, optimizer):
    """Apply the gradients; True when the update was skipped because they overflowed."""
    if not self.scaling:
      optimizer.step()
      return False
    self.scaler.step(optimizer)
    # Paddle exposes no public flag for "this step was skipped"; the scaler keeps it here.
    skipped = bool(self.scaler._found_inf)
    self.scaler.update()
    return skipped

  def loss_scale(self):
    # GradScaler has no getter of the current scale (`get_loss_scaling` was the static-graph API).
    return float(self.scaler.state_dict()['scale'][0]) if self.scaling else 1.0

  def state_dict(self):
    return {'precision': self.name, 'scaling': self.scaling, 'scaler': self.scaler.state_dict() if self.scaling else {}}

  def optimizer_state(self, state, model, weights):
    """A checkpoint's optimizer `state` fitted to this run: float32 master weights and the accumulators'
    names exactly where this run's precision puts them.

    Paddle names an accumulator after the tensor it updates (python/paddle/optimizer/optimizer.py,
    `_add_accumulator`): after the parameter (`<param>_velocity_0`), or under O2 after its float32 master
    copy (`<param>_fp32_master_0_velocity_0`, momentum.py and adamw.py), and `set_state_dict` then fails at
    the first update on the other name. Which parameters have a master copy changes with the precision
    (fp16 O2 keeps layer norms in float32, bf16 O2 does not), so each accumulator is renamed for its
    parameter. A master copy is the checkpoint's where it has one, else rebuilt from its float32 `weights`
    (a model state dict); a parameter without one here drops it: Paddle would otherwise carry it along
    unused and save it again, stale, into every later checkpoint.
    """
    masters = state.get('master_weights') or {}
    keys = {param.name: key for key, param in model.named_parameters()}
    half = {param.name for param in model.parameters()
            if self.master_weights and param.dtype in (paddle.float16, paddle.bfloat16)}
    owners = sorted(keys, key=len, reverse=True)  # the longest parameter name that prefixes a key owns it
    fitted = {}
    for key, value in state.items():
      if key == 'master_weights':
        continue
      owner = next((name for name in owners if key.startswith(name + '_')), None)
      if owner is None:  # the LR schedule
        fitted[key] = value
        continue
      accumulator = key[len(owner):].removeprefix(MASTER_SUFFIX)
      fitted[f'{owner}{MASTER_SUFFIX if owner in half else ""}{accumulator}'] = value
    if half:
      fitted['master_weights'] = {name: self._master(name, masters.get(name), weights[keys[name]]) for name in half}
    return fitted

  @staticmethod
  def _master(name, saved, weight):
    """The float32 master copy of parameter `name`: the `saved` one or a copy of its float32 `weight`, named
    as Paddle names it, since the accumulators of O2 take their names from it."""
    master = saved if saved is not None else paddle.assign(weight.astype('float32'))
    master.name = name + MASTER_SUFFIX
    return master

  def load_state_dict(self, state, log=print):
    """The loss scaler of a checkpoint; one line when the checkpoint was written in another precision."""
    # Checkpoints written before the precision was recorded: only a loss scaler tells fp16 apart.
    saved = state.get('precision', 'fp16' if state['scaling'] else 'fp32')
    if self.scaling and state['scaling']:
      self.scaler.load_state_dict(state['scaler'])
    if saved == self.name:
      return
    changes = []
    if self.master_weights and not saved.endswith('O2'):
      changes.append('float32 master weights rebuilt from its float32 weights')
    elif saved.endswith('O2') and not self.master_weights:
      changes.append('the model trains on its float32 weights, without master copies')
    if self.scaling and not state['scaling']:
      changes.append(f'the loss scale starts at {self.loss_scale():g} from the config')
    elif state['scaling'] and not self.scaling:
      changes.append('its fp16 loss scale is not needed')
    log(f'precision: the checkpoint was written in {saved}, this run is {self.name}'
        + (f': {"; ".join(changes)}' if changes else ''))
