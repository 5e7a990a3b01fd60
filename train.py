"""The training loop: build, maybe resume, then for each update: micro-batches, step, log, eval, checkpoint.

Exact resume rests on one rule: every random stream is a pure function of (seed, update) — the data order
and augmentations through data.pipeline, dropout through `paddle.seed` at the start of each update (per
rank, so data-parallel replicas draw different masks). A checkpoint therefore needs only the model,
optimizer (with its LR schedule), loss scaler, update count and best metric to continue bit for bit.
"""
import contextlib
import math
import os
import shlex
import signal
import time

import ml_collections
import paddle

import data
import models
from data import pipeline
from evaluate import evaluate
from utils import checkpoint, distributed, optim
from utils import workdir as workdir_lib
from utils.precision import Precision
from utils.collapse import collapse_warning, collapsed
from utils.config_check import micro_batch_size
from utils.preemption import Interrupted, StopRequest
from utils.rdrop import rdrop_loss
from utils.runlog import RunLog


# What each evaluation logs as eval/<name> (besides best_top1 and collapsed).
EVAL_SCALARS = ('top1', 'top5', 'loss', 'majority_fraction', 'prediction_information')


class TrainingStopped(Exception):
  """The run stopped early on purpose (signal) after saving; carries the exit code."""

  def __init__(self, message, exit_code):
    super().__init__(message)
    self.exit_code = exit_code


class TrainingCollapsed(ValueError):
  """Evaluations collapsed config.eval.stop_after_collapses times in a row (reported as a one-line error)."""


def updates_per_epoch(train_config, num_samples):
  """Optimizer updates in one pass over the data (the sampler drops the last incomplete micro-batch)."""
  tc = train_config
  return num_samples // (tc.batch_size // tc.accum_steps) / tc.accum_steps


def in_updates(train_config, num_samples):
  """`config.train` with every duration counted in optimizer updates, converted once from epochs where
  the config gives epochs (`updates` 0, `warmup_epochs`, `decay_epochs`, `eval_every` 0 = each epoch)."""
  tc = ml_collections.ConfigDict(train_config.to_dict())
  per_epoch = updates_per_epoch(tc, num_samples)
  if tc.updates <= 0:
    tc.updates = max(1, math.ceil(tc.epochs * per_epoch))
  if tc.warmup_epochs > 0:
    tc.warmup_updates = round(tc.warmup_epochs * per_epoch)
  if tc.decay_epochs > 0:
    tc.decay_updates = round(tc.decay_epochs * per_epoch)
  if tc.eval_every == 0:
    tc.eval_every = max(1, round(per_epoch))
  return tc


def build_model(config, num_classes, initial_weights=True):
  """The model of `config`, with its pretrained weights when the config names a file.

  `initial_weights=False` skips every weights file (`model.pretrained`, `model.*_weights`): for a model
  whose checkpoint will overwrite them, so that resuming or evaluating does not need those files.
  """
  paddle.seed(config.seed)  # identical initial weights on every rank
  model = models.build(config.model, num_classes, initial_weights)
  if config.model.pretrained and initial_weights:
    path = config.model.pretrained
    if not os.path.isfile(path):
      raise FileNotFoundError(f'config.model.pretrained: weights file {os.path.abspath(path)} does not exist')
    loader = getattr(models.module(config.model.name), 'load_pretrained', None)
    if loader:
      loader(model, path)
    else:
      checkpoint.load_state_strict(model, paddle.load(path), source=f'weights file {path}')
  return model


def _expected_first_loss(net, config, num_classes):
  """With a zero head every class is equally likely: CE = ln C per pass and the KL term is 0."""
  if not getattr(net, 'zero_head', False):
    return None
  return (2 if config.rdrop.alpha and config.rdrop.ce_of_passes == 'sum' else 1) * math.log(num_classes)


def data_summary(config, train_set, eval_set, per_epoch):
  """One log line: what the run trains and evaluates on."""
  def split(name, dataset):
    return f'{name} {len(dataset)} samples (left out: {len(dataset.left_out)} undecodable)'
  return (f'data: {config.data.name}, {train_set.num_classes} classes; {split("train", train_set)}, '
          f'{split(config.eval.split, eval_set)}; updates per epoch: {per_epoch:g} '
          f'(of {config.train.batch_size} samples)')


def check_fits(manifest, config, path, num_classes=None):
  """The checkpoint at `path` is of the config's model (and, when given, of its number of classes)."""
  wanted = (config.model.name, manifest['num_classes'] if num_classes is None else num_classes)
  if (manifest['model'], manifest['num_classes']) != wanted:
    raise checkpoint.CheckpointError(
        f'checkpoint {path} holds a {manifest["model"]!r} model with {manifest["num_classes"]} classes, '
        f'but the config builds {wanted[0]!r} with {wanted[1]}')


def _seed_update(config, rank, update):
  paddle.seed(pipeline.derived_seed(config.seed, 1_000_003 + rank, update))


def train(config, workdir, resume_from='', stop=None):
  """Train `config` into `workdir`; with `resume_from` (a checkpoint folder) continue from it.

  `stop` is the process's StopRequest (main.py installs one at start); without it, one is installed for
  the duration of the loop.
  """
  rank, world_size = distributed.setup()
  is_main = rank == 0
  micro = micro_batch_size(config.train, world_size)
  train_set = data.build(config.data, 'train')
  eval_set = data.build(config.data, config.eval.split)
  if len(eval_set) == 0 or not eval_set.labelled:
    raise ValueError(f'config.eval.split={config.eval.split!r}: that split of {config.data.name} is '
                     f'{"empty" if len(eval_set) == 0 else "unlabelled"}, so training could not be evaluated')
  tc = in_updates(config.train, len(train_set))
  updates = tc.updates
  ckpt_dir = workdir_lib.checkpoints_dir(workdir)

  model = build_model(config, train_set.num_classes, initial_weights=not resume_from)
  optimizer, scheduler = optim.build(tc, model.parameters(), updates)
  say = print if is_main else lambda _: None
  precision = Precision(tc, log=say)
  model, optimizer = precision.decorate(model, optimizer)
  start, best, seconds_before, evaluation_due = 0, {'top1': -1.0, 'update': 0}, 0.0, False
  if resume_from:
    manifest, state = checkpoint.load(resume_from)
    check_fits(manifest, config, resume_from, train_set.num_classes)
    checkpoint.load_state_strict(model, state['model.pdparams'], source=f'checkpoint {resume_from}')
    optimizer.set_state_dict(precision.optimizer_state(state['optimizer.pdopt'], model, state['model.pdparams']))
    precision.load_state_dict(state['trainer.pdstate']['precision'], log=say)
    start, best, seconds_before = manifest['update'], manifest['best'], manifest.get('train_seconds', 0.0)
    evaluation_due = manifest.get('evaluation_due', False)  # stopped before evaluating update `start`
  if is_main:  # only now that data, weights and checkpoint have loaded: a failed start leaves no trace
    workdir_lib.start_run(workdir, config, world_size, resume_from)
  net = model
  if world_size > 1:
    model = paddle.DataParallel(model)

  batches = iter(pipeline.loader(
      train_set, pipeline.TrainBatches(len(train_set), micro * world_size, config.seed, rank, world_size,
                                       start_micro_step=start * tc.accum_steps), config.data.num_workers))
  log = RunLog(workdir, is_main, start, updates, samples_per_update=tc.batch_size)
  log.hyperparameters(config)
  rc = config.rdrop
  log.info(f'train: {config.experiment} for {updates} updates of {tc.batch_size} samples '
           f'({tc.accum_steps} x {micro} per device on {world_size} device(s)), '
           + (f'R-Drop alpha={rc.alpha} (KL {rc.reduction}, CE {rc.ce_of_passes} of the passes, {rc.form}), '
              if rc.alpha else 'without R-Drop, ')
           + f'{"from update " + str(start) if start else "from scratch"}; writing to {workdir}')
  log.info(data_summary(config, train_set, eval_set, updates_per_epoch(tc, len(train_set))))

  def save(update, evaluation_due=False):
    nonlocal last_save
    last_save = time.monotonic()
    if is_main:
      optimizer_state = optimizer.state_dict()
      pieces = {'model.pdparams': checkpoint.float32_weights(net.state_dict(), optimizer_state.get('master_weights')),
                'optimizer.pdopt': optimizer_state, 'trainer.pdstate': {'precision': precision.state_dict()}}
      meta = {'best': best, 'experiment': config.experiment, 'model': config.model.name,
              'num_classes': train_set.num_classes, 'total_updates': updates, 'evaluation_due': evaluation_due,
              'train_seconds': seconds_before + time.monotonic() - started, 'config': config.to_dict()}
      with stop.working():
        checkpoint.save(ckpt_dir, update, pieces, meta, tc.keep_checkpoints, protect={best['update']})

  def evaluate_and_log(update):
    nonlocal best
    # One process stops an evaluation at a signal (Interrupted); ranks under the launcher finish theirs,
    # since they could not agree on where to stop without one all-reduce per batch.
    metrics = evaluate(net, eval_set, config, rank, world_size, autocast=precision.autocast,
                       stop=stop if world_size == 1 else None)
    if metrics['top1'] > best['top1']:
      best = {'top1': metrics['top1'], 'update': update}
    collapse = collapsed(metrics, config.eval)
    log.scalars(update, 'eval', {**{k: metrics[k] for k in EVAL_SCALARS}, 'best_top1': best['top1'],
                                 'collapsed': collapse})
    log.info(f'update {update}: {config.eval.split} top1 {metrics["top1"]:.2f}% top5 {metrics["top5"]:.2f}% '
             f'loss {metrics["loss"]:.4f} (best {best["top1"]:.2f}% at update {best["update"]})')
    if collapse:
      log.info(collapse_warning(update, metrics, config, train_set.num_classes, recent_train))
    return collapse

  def stopped(update, evaluation_due=False):
    unevaluated = ' before its evaluation was complete (it runs first on resume)' if evaluation_due else ''
    return TrainingStopped(f'stopped by a signal after update {update}{unevaluated}, checkpoint saved. Continue '
                           f'with:\n  python main.py --mode resume --workdir {shlex.quote(str(workdir))}',
                           128 + (stop.signum or signal.SIGTERM))

  # Layers whose behaviour follows training progress (e.g. DropBlock's keep_prob ramp) get the update.
  progress_layers = [layer for layer in net.sublayers(include_self=True) if hasattr(layer, 'on_update')]
  expected_first_loss = _expected_first_loss(net, config, train_set.num_classes) if start == 0 else None
  if expected_first_loss:
    log.info(f'check: the head starts at zero, so the first loss must be {expected_first_loss:.4f} '
             f'({"2 ln" if config.rdrop.alpha else "ln"} {train_set.num_classes})')
  own_stop = stop is None
  stop = StopRequest() if own_stop else stop
  started = last_save = time.monotonic()
  sums = paddle.zeros([3], dtype='float32')  # loss, ce, kl summed over the applied updates since the last log
  updates_in_sums = skipped_in_window = skipped_in_a_row = skipped_total = collapses_in_a_row = 0
  recent_train = {}  # the last logged training averages, for the collapse warning
  model.train()  # evaluate() puts it back after each evaluation
  stop.defer(True)  # from here a signal stops the loop at the end of an update, or during an evaluation
  try:
    if evaluation_due:
      try:
        collapses_in_a_row = int(evaluate_and_log(start))
      except Interrupted:
        raise stopped(start, evaluation_due=True) from None
      save(start)
    for update in range(start + 1, updates + 1):
      _seed_update(config, rank, update)
      for layer in progress_layers:
        layer.on_update(update)
      update_sums = paddle.zeros([3], dtype='float32')  # loss, ce, kl of this update
      for micro_step in range(tc.accum_steps):
        images, labels = next(batches)
        sync = micro_step == tc.accum_steps - 1 or world_size == 1
        # Computing, however long, is not being blocked (utils/preemption.py); waiting for a batch is.
        with stop.working(), model.no_sync() if not sync else contextlib.nullcontext():  # one all-reduce per update
          with precision.autocast():
            loss, ce, kl = rdrop_loss(model, pipeline.to_model_input(images, config.data), labels, config.rdrop)
          precision.backward(loss / tc.accum_steps)
        update_sums += paddle.stack([loss.detach(), ce.detach(), kl.detach()]) / tc.accum_steps

      with stop.working():
        loss_value = float(update_sums[0])  # the one host sync of an update: waits for the device's work
      # Ranks must agree before stepping: a NaN on any rank stops them all; a signal on any rank stops
      # them all after this update; rank 0's clock decides a time-based checkpoint (one all-reduce).
      checkpoint_time = (is_main and tc.checkpoint_every_minutes > 0
                         and time.monotonic() - last_save >= 60 * tc.checkpoint_every_minutes)
      faulty, stopping, checkpoint_time = distributed.any_rank(
          [not math.isfinite(loss_value) and not precision.scaling, bool(stop), checkpoint_time], world_size)
      if faulty:
        last = checkpoint.latest_valid(ckpt_dir)
        raise FloatingPointError(f'the training loss is not finite at update {update} (here: {loss_value}); '
                                 f'nothing was saved after update {update - 1}. Last good checkpoint: {last or "none"}')
      if update == 1 and expected_first_loss and abs(loss_value - expected_first_loss) > 1e-3:
        log.info(f'WARNING: the first loss is {loss_value:.4f}, not {expected_first_loss:.4f}: '
                 'the head was not zero or the loss is not the one configured')
      scheduler.step()
      if precision.step(optimizer):  # fp16: the gradients overflowed and the scaler skipped the update
        skipped_in_a_row += 1
        skipped_in_window += 1
        skipped_total += 1
        if skipped_in_a_row > tc.max_skipped_updates:
          raise FloatingPointError(
              f'{skipped_in_a_row} updates in a row overflowed in fp16 (updates {update - skipped_in_a_row + 1} to '
              f'{update}; loss scale now {precision.loss_scale():g}), more than train.max_skipped_updates='
              f'{tc.max_skipped_updates}. Last good checkpoint: {checkpoint.latest_valid(ckpt_dir) or "none"}; '
              f'continue from it in bf16 (or with a lower train.lr):\n'
              f'  python main.py --mode resume --workdir {shlex.quote(str(workdir))} --config.train.precision=bf16')
      else:
        skipped_in_a_row = 0
        sums += update_sums  # the log averages the updates applied: a skipped one's loss may be inf
        updates_in_sums += 1
      optimizer.clear_grad()

      if update % tc.log_every == 0 or update == updates:
        distributed.all_reduce_sum(sums, world_size)  # each rank saw its own shard: log the global mean
        averages = dict(zip(('objective', 'ce', 'kl'), (sums.numpy() / (world_size * updates_in_sums)).tolist())) \
            if updates_in_sums else {}
        log.scalars(update, 'train', {**averages, 'lr': optimizer.get_lr(), 'loss_scale': precision.loss_scale(),
                                      'skipped_in_window': skipped_in_window, 'skipped_updates': skipped_total})
        sums.zero_()
        updates_in_sums = skipped_in_window = 0
        recent_train = averages or recent_train
      log.progress(update, objective=loss_value, lr=optimizer.get_lr())

      evaluated = update % tc.eval_every == 0 or update == updates
      if evaluated:
        try:
          collapses_in_a_row = collapses_in_a_row + 1 if evaluate_and_log(update) else 0
        except Interrupted:
          save(update, evaluation_due=True)
          raise stopped(update, evaluation_due=True) from None
      if (evaluated or stopping or checkpoint_time or update == updates
          or (tc.checkpoint_every and update % tc.checkpoint_every == 0)):
        save(update)
      limit = config.eval.stop_after_collapses
      if limit and collapses_in_a_row == limit:
        raise TrainingCollapsed(f'stopped after {limit} collapsed evaluation(s) in a row, the last at update '
                                f'{update} (config.eval.stop_after_collapses={limit}); checkpoint saved. The '
                                f'warning above names the likely cause')
      if stopping:
        distributed.barrier(world_size)  # the launcher ends every rank when one exits: let rank 0 finish saving
        raise stopped(update)
  finally:
    stop.defer(False)
    if own_stop:
      stop.restore()
    log.close()
  return {'updates': updates, 'best': best}


def load_trained_model(config, path, precision=None):
  """(eval-mode model with the weights of checkpoint `path`, its manifest); no dataset needed.

  With a `precision` the model is made ready for it (AMP O2: half-precision weights), else float32.
  """
  manifest, state = checkpoint.load(path, names=('model.pdparams',))
  check_fits(manifest, config, path)
  model = build_model(config, manifest['num_classes'], initial_weights=False)
  if precision is not None:
    model, _ = precision.decorate(model)
  checkpoint.load_state_strict(model, state['model.pdparams'], source=f'checkpoint {path}')
  model.eval()
  return model, manifest
