"""The training loop: build, maybe resume, then for each update: micro-batches, step, log, eval, checkpoint.

Exact resume rests on one rule: every random stream is a pure function of (seed, update) — the data order
and augmentations through data.pipeline, dropout through `paddle.seed` at the start of each update (per
rank, so data-parallel replicas draw different masks). A checkpoint therefore needs only the model,
optimizer (with its LR schedule), loss scaler, update count and best metric to continue bit for bit.
"""
import contextlib
import math
import os
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
from utils.preemption import StopRequest
from utils.rdrop import CE_OF_PASSES, FORMS, REDUCTIONS, rdrop_loss
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


def micro_batch_size(train_config, world_size):
  """Per-device micro-batch: the global batch split over accumulation steps and devices."""
  tc = train_config
  micro, rest = divmod(tc.batch_size, tc.accum_steps * world_size)
  if rest or micro == 0:
    raise ValueError(f'config.train.batch_size={tc.batch_size} cannot be split into {tc.accum_steps} '
                     f'accumulation steps on {world_size} devices: make it a multiple of '
                     f'{tc.accum_steps * world_size} or change config.train.accum_steps')
  return micro


def check_config(config, world_size):
  """Fail before any work on values that would only break later (names of choices, the batch split)."""
  choices = {'train.optimizer': optim.OPTIMIZERS, 'train.schedule': optim.SCHEDULES,
             'train.precision': ('fp32', 'fp16', 'bf16'), 'train.amp_level': ('O1', 'O2'),
             'rdrop.reduction': REDUCTIONS, 'rdrop.ce_of_passes': CE_OF_PASSES, 'rdrop.form': FORMS}
  for key, allowed in choices.items():
    group, field = key.split('.')
    if config[group][field] not in allowed:
      raise ValueError(f'config.{key}={config[group][field]!r}: choose one of {", ".join(allowed)}')
  if config.rdrop.alpha < 0:
    raise ValueError(f'config.rdrop.alpha={config.rdrop.alpha} must be >= 0')
  if not 0 < config.eval.collapse_majority <= 1:
    raise ValueError(f'config.eval.collapse_majority={config.eval.collapse_majority} must be in (0, 1]')
  if not 0 <= config.eval.collapse_information < 1:
    raise ValueError(f'config.eval.collapse_information={config.eval.collapse_information} must be in [0, 1)')
  if config.eval.stop_after_collapses < 0:
    raise ValueError(f'config.eval.stop_after_collapses={config.eval.stop_after_collapses} must be >= 0 '
                     f'(0: never stop)')
  minimum = {'accum_steps': 1, 'log_every': 1, 'keep_checkpoints': 1, 'eval_every': 0, 'checkpoint_every': 0}
  for field, low in minimum.items():
    if config.train[field] < low:
      raise ValueError(f'config.train.{field}={config.train[field]} must be >= {low}')
  if config.model.get('recompute', False) and world_size > 1:
    # Recompute replays each block in a second, re-entrant backward pass, which DataParallel's gradient
    # hooks do not support (parameters reported ready twice, Paddle issue 52980).
    raise ValueError('config.model.recompute=True is not supported under paddle.distributed.launch; '
                     'lower the micro-batch through train.accum_steps instead')
  micro_batch_size(config.train, world_size)


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


def collapsed(metrics, eval_config):
  """Whether an evaluation shows a collapsed model: (nearly) one predicted class, or one output for all."""
  return (metrics['majority_fraction'] >= eval_config.collapse_majority
          or metrics['prediction_information'] < eval_config.collapse_information)


def collapse_warning(update, metrics, config, num_classes, recent_train):
  """The log line for a collapsed evaluation (see `collapsed`), naming the likely cause.

  R-Drop's KL is smallest when both passes give the same distribution whatever the dropout mask; with
  dropout on the logits (the Cat-12 head) that is all logits at zero: one output for every image, training
  CE at ln C, the KL near 0, and either one constant predicted class or an argmax left to tiny differences.
  A KL weight too large against the cross entropy, or a step too large (R-Drop sums two cross entropies),
  pushes the model there. Training CE near ln C alone is no trigger: a healthy model trained from random
  weights sits there during its first epochs too.
  """
  rc, ec = config.rdrop, config.eval
  signs = []
  if metrics['majority_fraction'] >= ec.collapse_majority:
    signs.append(f'{metrics["majority_fraction"]:.1%} of the {metrics["count"]} {ec.split} samples are predicted as '
                 f'class {metrics["majority_class"]} (eval.collapse_majority={ec.collapse_majority:g})')
  if metrics['prediction_information'] < ec.collapse_information:
    signs.append(f'the predictions carry {metrics["prediction_information"]:.2g} x ln {num_classes} of information '
                 f'about the image, nearly one output for all (eval.collapse_information={ec.collapse_information:g})')
  text = f'WARNING: collapse at update {update}: {"; ".join(signs)}'
  if recent_train:
    text += (f'; training CE {recent_train["ce"]:.4f} (ln {num_classes} = {math.log(num_classes):.4f}), '
             f'KL {recent_train["kl"]:.3g}')
  if rc.alpha > 0:
    remedies = 'lower rdrop.alpha or train.lr' + (', or average the two cross entropies (rdrop.ce_of_passes=mean)'
                                                  if rc.ce_of_passes == 'sum' else '')
    return (f'{text}. If it persists, the likely cause is the R-Drop KL term (rdrop.alpha={rc.alpha:g}, reduction '
            f'{rc.reduction}) outweighing the cross entropy, which drives both passes to one output for every '
            f'image: {remedies}')
  return (f'{text}. If it persists, the likely cause is a step too large for this model: lower train.lr '
          f'(a model from random weights can start this way and recover)')


def check_fits(manifest, config, path, num_classes=None):
  """The checkpoint at `path` is of the config's model (and, when given, of its number of classes)."""
  wanted = (config.model.name, manifest['num_classes'] if num_classes is None else num_classes)
  if (manifest['model'], manifest['num_classes']) != wanted:
    raise checkpoint.CheckpointError(
        f'checkpoint {path} holds a {manifest["model"]!r} model with {manifest["num_classes"]} classes, '
        f'but the config builds {wanted[0]!r} with {wanted[1]}')


def _seed_update(config, rank, update):
  paddle.seed(pipeline.derived_seed(config.seed, 1_000_003 + rank, update))


def train(config, workdir, resume_from=''):
  """Train `config` into `workdir`; with `resume_from` (a checkpoint folder) continue from it."""
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
  start, best, seconds_before = 0, {'top1': -1.0, 'update': 0}, 0.0
  if resume_from:
    manifest, state = checkpoint.load(resume_from)
    check_fits(manifest, config, resume_from, train_set.num_classes)
    checkpoint.load_state_strict(model, state['model.pdparams'], source=f'checkpoint {resume_from}')
    optimizer.set_state_dict(state['optimizer.pdopt'])
    precision.load_state_dict(state['trainer.pdstate']['precision'], log=say)
    start, best, seconds_before = manifest['update'], manifest['best'], manifest.get('train_seconds', 0.0)
  if is_main:  # only now that data, weights and checkpoint have loaded: a failed start leaves no trace
    workdir_lib.start_run(workdir, config, world_size, resume_from)
  net = model
  if world_size > 1:
    model = paddle.DataParallel(model)

  batches = iter(pipeline.loader(
      train_set, pipeline.TrainBatches(len(train_set), micro * world_size, config.seed, rank, world_size,
                                       start_micro_step=start * tc.accum_steps), config.data.num_workers))
  log = RunLog(workdir, is_main, start, updates)
  log.hyperparameters(config)
  rc = config.rdrop
  log.info(f'train: {config.experiment} for {updates} updates of {tc.batch_size} samples '
           f'({tc.accum_steps} x {micro} per device on {world_size} device(s)), '
           + (f'R-Drop alpha={rc.alpha} (KL {rc.reduction}, CE {rc.ce_of_passes} of the passes, {rc.form}), '
              if rc.alpha else 'without R-Drop, ')
           + f'{"from update " + str(start) if start else "from scratch"}; writing to {workdir}')
  log.info(data_summary(config, train_set, eval_set, updates_per_epoch(tc, len(train_set))))

  def save(update):
    if is_main:
      pieces = {'model.pdparams': net.state_dict(), 'optimizer.pdopt': optimizer.state_dict(),
                'trainer.pdstate': {'precision': precision.state_dict()}}
      meta = {'best': best, 'experiment': config.experiment, 'model': config.model.name,
              'num_classes': train_set.num_classes, 'total_updates': updates,
              'train_seconds': seconds_before + time.monotonic() - started, 'config': config.to_dict()}
      return checkpoint.save(ckpt_dir, update, pieces, meta, tc.keep_checkpoints, protect={best['update']})

  # Layers whose behaviour follows training progress (e.g. DropBlock's keep_prob ramp) get the update.
  progress_layers = [layer for layer in net.sublayers(include_self=True) if hasattr(layer, 'on_update')]
  expected_first_loss = _expected_first_loss(net, config, train_set.num_classes) if start == 0 else None
  if expected_first_loss:
    log.info(f'check: the head starts at zero, so the first loss must be {expected_first_loss:.4f} '
             f'({"2 ln" if config.rdrop.alpha else "ln"} {train_set.num_classes})')
  stop = StopRequest()
  started = time.monotonic()
  sums = paddle.zeros([3], dtype='float32')  # loss, ce, kl summed over the updates since the last log
  updates_in_sums = 0
  recent_train = None  # the last logged training averages, for the collapse warning
  skipped_in_a_row = skipped_total = 0
  collapses_in_a_row = 0
  model.train()  # evaluate() puts it back after each evaluation
  try:
    for update in range(start + 1, updates + 1):
      _seed_update(config, rank, update)
      for layer in progress_layers:
        layer.on_update(update)
      update_sums = paddle.zeros([3], dtype='float32')  # loss, ce, kl of this update
      for micro_step in range(tc.accum_steps):
        images, labels = next(batches)
        sync = micro_step == tc.accum_steps - 1 or world_size == 1
        with model.no_sync() if not sync else contextlib.nullcontext():  # all-reduce gradients once per update
          with precision.autocast():
            loss, ce, kl = rdrop_loss(model, pipeline.to_model_input(images, config.data), labels, config.rdrop)
          precision.backward(loss / tc.accum_steps)
        update_sums += paddle.stack([loss.detach(), ce.detach(), kl.detach()]) / tc.accum_steps

      sums += update_sums
      updates_in_sums += 1
      loss_value = float(update_sums[0])  # the one host sync of an update
      # Ranks must agree before stepping: a NaN on any rank stops them all; a signal on any rank stops
      # them all after this update (one all-reduce for both under the launcher).
      faulty, stopping = distributed.any_rank(
          [not math.isfinite(loss_value) and not precision.scaling, bool(stop)], world_size)
      if faulty:
        last = checkpoint.latest_valid(ckpt_dir)
        raise FloatingPointError(f'the training loss is not finite at update {update} (here: {loss_value}); '
                                 f'nothing was saved after update {update - 1}. Last good checkpoint: {last or "none"}')
      if update == 1 and expected_first_loss and abs(loss_value - expected_first_loss) > 1e-3:
        log.info(f'WARNING: the first loss is {loss_value:.4f}, not {expected_first_loss:.4f}: '
                 'the head was not zero or the loss is not the one configured')
      scheduler.step()
      if precision.step(optimizer):
        skipped_in_a_row, skipped_total = skipped_in_a_row + 1, skipped_total + 1
        if skipped_in_a_row > tc.max_skipped_updates:
          raise FloatingPointError(f'{skipped_in_a_row} updates in a row overflowed in fp16 (up to update {update}); '
                                   f'loss scale is {precision.loss_scale():g}. Lower train.lr or use bf16/fp32.')
      else:
        skipped_in_a_row = 0
      optimizer.clear_grad()

      if update % tc.log_every == 0 or update == updates:
        distributed.all_reduce_sum(sums, world_size)  # each rank saw its own shard: log the global mean
        loss_avg, ce_avg, kl_avg = (sums.numpy() / (world_size * updates_in_sums)).tolist()
        sums.zero_()
        updates_in_sums = 0
        log.scalars(update, 'train', {'loss': loss_avg, 'ce': ce_avg, 'kl': kl_avg, 'lr': optimizer.get_lr(),
                                      'loss_scale': precision.loss_scale(), 'skipped_updates': skipped_total})
        recent_train = {'ce': ce_avg, 'kl': kl_avg}
      log.progress(update, loss=loss_value, lr=optimizer.get_lr())

      evaluated = update % tc.eval_every == 0 or update == updates
      if evaluated:
        metrics = evaluate(net, eval_set, config, rank, world_size)
        if metrics['top1'] > best['top1']:
          best = {'top1': metrics['top1'], 'update': update}
        collapse = collapsed(metrics, config.eval)
        collapses_in_a_row = collapses_in_a_row + 1 if collapse else 0
        log.scalars(update, 'eval', {**{k: metrics[k] for k in EVAL_SCALARS}, 'best_top1': best['top1'],
                                     'collapsed': collapse})
        log.info(f'update {update}: {config.eval.split} top1 {metrics["top1"]:.2f}% top5 {metrics["top5"]:.2f}% '
                 f'loss {metrics["loss"]:.4f} (best {best["top1"]:.2f}% at update {best["update"]})')
        if collapse:
          log.info(collapse_warning(update, metrics, config, train_set.num_classes, recent_train))
      if (evaluated or stopping or update == updates
          or (tc.checkpoint_every and update % tc.checkpoint_every == 0)):
        save(update)
      if config.eval.stop_after_collapses and collapses_in_a_row == config.eval.stop_after_collapses:
        raise TrainingCollapsed(f'stopped after {collapses_in_a_row} collapsed evaluation(s) in a row, the last at '
                                f'update {update} (config.eval.stop_after_collapses={collapses_in_a_row}); '
                                f'checkpoint saved. The warning above names the likely cause')
      if stopping:
        distributed.barrier(world_size)  # the launcher ends every rank when one exits: let rank 0 finish saving
        raise TrainingStopped(f'stopped by a signal after update {update}, checkpoint saved. Continue with:\n'
                              f'  python main.py --mode resume --workdir {workdir}', 128 + (stop.signum or 15))
  finally:
    stop.restore()
    log.close()
  return {'updates': updates, 'best': best}


def load_trained_model(config, path):
  """(eval-mode model with the weights of checkpoint `path`, its manifest); no dataset needed."""
  manifest, state = checkpoint.load(path, names=('model.pdparams',))
  check_fits(manifest, config, path)
  model = build_model(config, manifest['num_classes'], initial_weights=False)
  checkpoint.load_state_strict(model, state['model.pdparams'], source=f'checkpoint {path}')
  model.eval()
  return model, manifest
