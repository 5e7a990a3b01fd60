"""Mixed precision as Paddle documents it: `paddle.amp.auto_cast` (O1 or O2) and a dynamic `GradScaler`.

Paddle's AMP works on GPUs (and XPUs); on a CPU it disables itself, so we say so once and run fp32.
bf16 needs no loss scaling. A checkpoint records whether a scaler was active, so that a run saved
without one (CPU, fp32, bf16) resumes with fp16 and the reverse: Paddle raises on loading the empty
state of a disabled scaler into an enabled one.
"""
import contextlib

import paddle

DTYPES = {'fp16': 'float16', 'bf16': 'bfloat16'}


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


class Precision:

  def __init__(self, train_config, log=print):
    tc = train_config  # names of choices already checked by train.check_config
    on_accelerator = not paddle.device.get_device().startswith('cpu')
    self.enabled = tc.precision != 'fp32' and on_accelerator
    if tc.precision != 'fp32' and not on_accelerator:
      log(f'precision: {tc.precision} needs a GPU; Paddle disables AMP on the CPU, so this run is fp32')
    self.dtype = DTYPES.get(tc.precision, 'float32')
    self.level = tc.amp_level
    self.scaler = GradScaler(enable=self.enabled and self.dtype == 'float16',
                             init_loss_scaling=tc.init_loss_scale, decr_every_n_nan_or_inf=1)

  @property
  def scaling(self):
    return self.scaler.is_enable()

  def decorate(self, model, optimizer):
    """O2 keeps the model in half precision and the optimizer's fp32 master weights."""
    if self.enabled and self.level == 'O2':
      return paddle.amp.decorate(models=model, optimizers=optimizer, level='O2', dtype=self.dtype,
                                 master_weight=True)
    return model, optimizer

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
    return {'scaling': self.scaling, 'scaler': self.scaler.state_dict() if self.scaling else {}}

  def load_state_dict(self, state, log=print):
    if self.scaling and state['scaling']:
      self.scaler.load_state_dict(state['scaler'])
    elif self.scaling:
      log(f'precision: the checkpoint was written without a loss scaler; starting at scale '
          f'{self.loss_scale():g} from the config')
    elif state['scaling']:
      log('precision: the checkpoint had an fp16 loss scaler; this run does not scale (fp32/bf16/CPU)')
