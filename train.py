"""The training loop: build, maybe resume, then for each update: step, log, evaluate, checkpoint.

Exact resume rests on one rule: every random stream is a pure function of (seed, update) — the data order
and augmentations through data.pipeline, dropout through `paddle.seed` at the start of each update (per
rank, so data-parallel replicas draw different masks). A checkpoint therefore needs only the model,
optimizer (with its LR schedule), loss scaler, the loop's counters (`Progress`) and its update number to
continue bit for bit, its logs included (on a GPU only with deterministic kernels: docs/preemption.md).

Nothing is written to the workdir before the first update has succeeded: a start that fails for any
reason (data, weights, a checkpoint of another model, memory, a non-finite first loss, a signal) leaves
the workdir as it found it.
"""
import contextlib
import dataclasses
import math
import os
import shlex
import signal
import sys
import time

import paddle

import data
import models
import rdrop
from data import pipeline
from evaluate import evaluate
from training import distributed, optim
from training import workdir as workdir_lib
from training.collapse import CollapseGuard, TrainingCollapsed, collapse_warning, collapsed
from training.config_check import check_config
from training.lock import own
from training.precision import Precision
from training.runlog import VISUALDL_CURVES, LogWindow, RunLog
from training.step import NonFiniteLoss, Skips, TooManySkips, UpdateStep
from utils import checkpoint
from utils.io import write_atomic
from utils.preemption import Interrupted, StopRequest

# What each evaluation logs as eval/<name> (besides best_top1 and collapsed).
EVAL_SCALARS = ('top1', 'top5', 'loss', 'majority_fraction', 'prediction_information')


class TrainingStopped(Exception):
  """The run stopped early on purpose (signal) after saving; carries the exit code."""

  def __init__(self, message, exit_code):
    super().__init__(message)
    self.exit_code = exit_code


@dataclasses.dataclass
class Progress:
  """What the loop carries from one update to the next. A checkpoint holds all of it: `update`, `best`,
  `train_seconds` and `evaluation_due` in its manifest, the rest (`state_dict`) in its `trainer` piece."""
  update: int = 0
  best: dict = dataclasses.field(default_factory=lambda: {'top1': -1.0, 'update': 0})
  train_seconds: float = 0.0    # before this process started
  evaluation_due: bool = False  # stopped before the evaluation of `update` was complete
  skips: Skips = dataclasses.field(default_factory=lambda: Skips(0))  # fp16's skipped updates
  window: LogWindow = dataclasses.field(default_factory=LogWindow)
  collapses: CollapseGuard = dataclasses.field(default_factory=lambda: CollapseGuard(0))

  def state_dict(self):
    return {'skips': self.skips.state_dict(), 'window': self.window.state_dict(), **self.collapses.state_dict()}

  def load_state_dict(self, state):
    self.skips.load_state_dict(state['skips'])
    self.window.load_state_dict(state['window'])
    self.collapses.load_state_dict(state)


def every(update, period, last):
  """Whether `update` is due for something done every `period` updates (0: never) and at the `last`."""
  return update == last or (period > 0 and update % period == 0)


def run(config, workdir, mode='train', autoresume=False, explicit_checkpoint='', stop=None):
  """The train and resume modes: train `config` in `workdir` as its only trainer; returns the exit code.

  Rank 0 takes the workdir's lock and decides where training starts (training/workdir.py:
  starting_point); every rank follows that decision, so no node's view of the folder can differ.
  """
  rank, world_size = distributed.setup()
  check_config(config, world_size)
  with contextlib.ExitStack() as held:  # the workdir's lock, once rank 0 has taken it
    def decide():
      writable = workdir_lib.writable(workdir)
      if writable:  # (on a read-only filesystem nobody trains: no lock is needed to find a run finished)
        held.enter_context(own(workdir))
      resume_from, message = workdir_lib.starting_point(config, workdir, mode, autoresume, explicit_checkpoint)
      if resume_from is not None and not writable:
        workdir_lib.check_writable(workdir)  # raises, naming the folder
      if message:
        print(message)
      return resume_from

    resume_from = distributed.on_rank0(decide, world_size)
    if resume_from is None:
      return 0
    try:
      result = train(config, workdir, resume_from, stop)
    except TrainingStopped as stopped:
      print(stopped, file=sys.stderr)
      return stopped.exit_code
  if rank == 0:
    print(f'done: best {config.eval.split} top1 {result["best"]["top1"]:.2f}% at update {result["best"]["update"]}\n'
          f'  checkpoints: {workdir_lib.checkpoints_dir(workdir)}\n'
          f'  metrics:     {os.path.join(workdir, "metrics.jsonl")}\n'
          f'  curves:      visualdl --logdir {shlex.quote(os.path.join(workdir, "vdl"))}, then open {VISUALDL_CURVES}')
  return 0


def train(config, workdir, resume_from='', stop=None):
  """Train `config` into `workdir`; with `resume_from` (a checkpoint folder) continue from it.

  Under the launcher every rank calls this (the process group already set up); rank 0 alone writes.
  `stop` is the process's StopRequest (main.py installs one at start); without it, one is installed for
  the duration of the loop.
  """
  rank, world_size = distributed.rank_and_world_size()
  is_main = rank == 0
  say = print if is_main else lambda _: None
  train_set, eval_set = _datasets(config)
  train_config = optim.in_updates(config.train, len(train_set), world_size)  # its length in updates
  model = models.build(config.model, train_set.num_classes, config.seed, initial_weights=not resume_from)
  optimizer, scheduler = optim.build(train_config, model.parameters(), train_config.updates)
  precision = Precision(train_config, log=say)
  model, optimizer = precision.decorate(model, optimizer)
  progress = Progress(skips=Skips(train_config.max_skipped_updates),
                      collapses=CollapseGuard(config.eval.stop_after_collapses))
  if resume_from:
    _restore(resume_from, config, train_set.label_names(), model, optimizer, precision, progress, say)
  start = progress.update
  own_stop = stop is None
  stop = StopRequest() if own_stop else stop
  # The model is what is evaluated and saved; the ranks train their DataParallel wrapper of it.
  trained_model = paddle.DataParallel(model) if world_size > 1 else model
  step = UpdateStep(trained_model, optimizer, scheduler, precision, config, rank, world_size, stop, progress.skips)
  log = RunLog(workdir, is_main, start, train_config.updates, samples_per_update=train_config.batch_size)
  log.info(_describe(config, train_config, world_size, start, workdir))
  objective_warning = _objective_warning(config, train_config, world_size)
  if objective_warning:
    log.info(objective_warning)
  per_epoch = optim.updates_per_epoch(train_config, len(train_set), world_size)
  log.info(_data_summary(config, train_set, eval_set, per_epoch))
  if config.rdrop.alpha and not rdrop.drops_anything(model):
    log.info(f'WARNING: config.rdrop.alpha={config.rdrop.alpha:g}, but the model holds no dropout: both passes agree '
             f'and the KL term is 0 throughout (a zoo model: set config.model.dropout > 0)')
  expected_first_loss = _expected_first_loss(model, config, train_set.num_classes) if start == 0 else None
  if expected_first_loss:
    log.info(f'check: the head starts at zero, so the first loss must be {expected_first_loss:.4f} '
             f'({"2 ln" if config.rdrop.alpha else "ln"} {train_set.num_classes})')
  # After the lines above: starting the data workers reads an image, which a stalled filesystem can block.
  accum, micro = optim.batch_split(train_config, world_size)
  batches = iter(pipeline.loader(train_set, pipeline.TrainBatches(
      len(train_set), micro * world_size, config.seed, rank, world_size, start_micro_step=start * accum),
      config.data.num_workers))
  started = last_save = time.monotonic()

  def open_run():  # the first write: the first update (or the evaluation due) has succeeded
    if is_main and not log.is_open:
      workdir_lib.start_run(workdir, config, world_size, resume_from)
      write_atomic(os.path.join(workdir, 'class_names.txt'), ''.join(f'{name}\n' for name in train_set.label_names()))
      log.open(config)

  def save(update, evaluation_due=False):
    nonlocal last_save
    last_save = time.monotonic()
    if is_main:
      seconds = progress.train_seconds + last_save - started
      pieces, manifest = _checkpoint(update, config, train_config, train_set.label_names(), world_size, model,
                                     optimizer, precision, progress, seconds, evaluation_due)
      with stop.working():
        checkpoint.save(workdir_lib.checkpoints_dir(workdir), pieces, manifest, train_config.keep_checkpoints,
                        protect={progress.best['update']})

  def checkpoint_time():  # rank 0's clock decides, the ranks agree with the loss
    minutes = train_config.checkpoint_every_minutes
    return is_main and minutes > 0 and time.monotonic() - last_save >= 60 * minutes

  def evaluate_and_log(update):
    # One process stops an evaluation at a signal (Interrupted); ranks under the launcher finish theirs,
    # since they could not agree on where to stop without one all-reduce per batch.
    try:
      metrics = evaluate(model, eval_set, config, rank, world_size, autocast=precision.autocast,
                         stop=stop if world_size == 1 else None)
    except Interrupted:
      save(update, evaluation_due=True)
      raise _stopped(workdir, update, stop, evaluation_due=True) from None
    if metrics['top1'] > progress.best['top1']:
      progress.best = {'top1': metrics['top1'], 'update': update}
    collapse = collapsed(metrics, config.eval)
    log.scalars(update, 'eval', {**{k: metrics[k] for k in EVAL_SCALARS}, 'best_top1': progress.best['top1'],
                                 'collapsed': collapse})
    log.info(f'update {update}: {config.eval.split} top1 {metrics["top1"]:.2f}% top5 {metrics["top5"]:.2f}% '
             f'loss {metrics["loss"]:.4f} (best {progress.best["top1"]:.2f}% at update {progress.best["update"]})')
    if collapse:
      log.info(collapse_warning(update, metrics, config, train_set.num_classes, progress.collapses.recent_train))
    try:
      progress.collapses.count(collapse, update)
    except TrainingCollapsed:
      save(update)
      raise

  def log_training(update):
    averages, skipped = progress.window.take()
    if not config.rdrop.alpha:
      averages.pop('kl', None)  # without R-Drop it is 0 throughout: a chart that could never change
    log.scalars(update, 'train', {**averages, 'lr': optimizer.get_lr(), **_loss_scaling(precision, progress, skipped)})
    progress.collapses.recent_train = averages or progress.collapses.recent_train

  trained_model.train()  # evaluate() puts it back after each evaluation
  stop.defer(True)  # from here a signal stops the loop at the end of an update, or during an evaluation
  try:
    if progress.evaluation_due:
      open_run()
      evaluate_and_log(start)
      save(start)
    for update in range(start + 1, train_config.updates + 1):
      try:
        outcome = step(update, batches, flags=lambda: (bool(stop), checkpoint_time()))
      except (NonFiniteLoss, TooManySkips) as err:
        raise _failed(err, update, workdir) from None
      stopping, checkpoint_due = outcome.agreed
      if update == start + 1:
        open_run()
        if expected_first_loss and abs(outcome.means[0] - expected_first_loss) > 1e-3:
          log.info(f'WARNING: the first loss is {outcome.means[0]:.4f}, not {expected_first_loss:.4f}: '
                   'the head was not zero or the loss is not the one configured')
      progress.update = update
      progress.window.add(outcome.means, outcome.skipped)
      if every(update, train_config.log_every, train_config.updates):
        log_training(update)
      log.progress(update, objective=float(outcome.means[0]), lr=optimizer.get_lr())
      evaluated = every(update, train_config.eval_every, train_config.updates)
      saving = (evaluated or stopping or checkpoint_due
                or every(update, train_config.checkpoint_every, train_config.updates))
      if saving:  # what is evaluated and saved is the same on every rank
        distributed.average_running_statistics(model, world_size)
      if evaluated:
        evaluate_and_log(update)
      if saving:
        save(update)
      if stopping:
        distributed.barrier(world_size)  # the launcher ends every rank when one exits: let rank 0 finish saving
        raise _stopped(workdir, update, stop)
  finally:
    stop.defer(False)
    if own_stop:
      stop.restore()
    log.close()
  return {'updates': train_config.updates, 'best': progress.best}


def _datasets(config):
  """(training set, evaluation set); an evaluation split that could not evaluate is an error now."""
  train_set = data.build(config.data, 'train')
  eval_set = data.build(config.data, config.eval.split, train_set.label_names())
  if len(eval_set) == 0 or not eval_set.labelled:
    raise ValueError(f'config.eval.split={config.eval.split!r}: that split of {config.data.name} is '
                     f'{"empty" if len(eval_set) == 0 else "unlabelled"}, so training could not be evaluated')
  return train_set, eval_set


def _checkpoint(update, config, train_config, class_names, world_size, model, optimizer, precision, progress,
                train_seconds, evaluation_due):
  """(pieces, manifest) of the checkpoint of `update`: what `_restore` reads back."""
  optimizer_state = optimizer.state_dict()
  pieces = {'model': checkpoint.float32_weights(model.state_dict(), optimizer_state.get('master_weights')),
            'optimizer': optimizer_state,
            'trainer': {'precision': precision.state_dict(), 'loop': progress.state_dict()}}
  manifest = checkpoint.Manifest(
      update=update, experiment=config.experiment, model=config.model.name, num_classes=len(class_names),
      class_names=class_names, best=progress.best, total_updates=train_config.updates,
      evaluation_due=evaluation_due, world_size=world_size, train_seconds=train_seconds, config=config.to_dict())
  return pieces, manifest


def _restore(path, config, class_names, model, optimizer, precision, progress, say):
  """Load checkpoint `path` (written by `_checkpoint`) into the model, optimizer, loss scaler and the loop's
  `progress`."""
  rank, world_size = distributed.rank_and_world_size()
  try:
    manifest, state = checkpoint.load(path)
  except checkpoint.CheckpointError as err:
    if rank == 0:
      raise
    raise checkpoint.CheckpointError(f'{err}, seen from rank {rank}: every rank resumes from the checkpoint rank 0 '
                                     f'chose, so the workdir must be on a filesystem that every node shares') from err
  models.check_fits(manifest, config.model, path, len(class_names))
  saved = manifest.class_names or class_names  # (absent from older checkpoints)
  if saved != class_names:
    changed = [f'{i}: {a!r} -> {b!r}' for i, (a, b) in enumerate(zip(saved, class_names)) if a != b]
    raise checkpoint.CheckpointError(f'checkpoint {path} was trained on other classes than the data has now '
                                     f'({", ".join(changed[:5])}): resume on the data it was trained on')
  written_on = manifest.world_size or world_size  # (absent from older checkpoints)
  if written_on != world_size:
    say(f'resume: the run trained on {written_on} process(es) until now and continues on {world_size}: the same '
        f'samples in every update, other dropout masks, so another run than on {written_on} (docs/distributed.md)')
  checkpoint.load_state_strict(model, state['model'], source=f'checkpoint {path}')
  optimizer.set_state_dict(precision.optimizer_state(state['optimizer'], model, state['model']))
  trainer = state['trainer']
  precision.load_state_dict(trainer['precision'], log=say)
  progress.update, progress.best = manifest.update, manifest.best
  progress.train_seconds = manifest.train_seconds or 0.0
  progress.evaluation_due = manifest.evaluation_due
  if 'loop' in trainer:  # absent from older checkpoints: the first log row after resuming then averages fewer updates
    progress.load_state_dict(trainer['loop'])


def _loss_scaling(precision, progress, skipped_in_window):
  """fp16's log scalars; nothing for a run without loss scaling, where they could never change."""
  if not precision.scaling:
    return {}
  return {'loss_scale': precision.loss_scale(), 'skipped_in_window': skipped_in_window,
          'skipped_updates': progress.skips.total}


def _describe(config, train_config, world_size, start, workdir):
  """The log line that says what this run trains, how, and from where."""
  rc = config.rdrop
  accum, micro = optim.batch_split(train_config, world_size)
  shared = (f' sharing the {train_config.accum_steps} micro-batches of one device (train.keep_micro_batch)'
            if train_config.keep_micro_batch and world_size > 1 else '')
  return (f'train: {config.experiment} for {train_config.updates} updates of {train_config.batch_size} samples '
          f'({accum} x {micro} per device on {world_size} device(s){shared}), '
          + (f'R-Drop alpha={rc.alpha} (KL {rc.reduction}, CE {rc.ce_of_passes} of the passes, {rc.form}), '
             if rc.alpha else 'without R-Drop, ')
          + f'{_origin(config.model, start)}; writing to {workdir}')


def _origin(model_config, start):
  """Where the run's weights start from, as its first log line says it."""
  if start:
    return f'from update {start}'
  if model_config.get('pretrained'):
    return f'from the weights {model_config.pretrained}'
  if model_config.get('backbone_weights'):
    return f'from the backbone weights {model_config.backbone_weights}'
  return 'from scratch'


def _objective_warning(config, train_config, world_size):
  """A warning when the device count changes the objective: R-Drop's KL summed over a smaller micro-batch."""
  rc = config.rdrop
  if world_size == 1 or train_config.keep_micro_batch or not rc.alpha or rc.reduction != 'sum':
    return ''
  one, here = optim.batch_split(train_config, 1)[1], optim.batch_split(train_config, world_size)[1]
  return (f'WARNING: R-Drop\'s KL (reduction sum) is summed over the micro-batch, {here} samples per device here '
          f'and {one} on one device: its weight is {world_size}x smaller than this config gives on one device. '
          f'Set --config.train.keep_micro_batch=True to keep {one} per device, or use rdrop.reduction=batchmean '
          f'with alpha x {one} (docs/distributed.md: the global batch)')


def _data_summary(config, train_set, eval_set, per_epoch):
  """One log line: what the run trains and evaluates on."""
  def split(name, dataset):
    left_out = len(dataset.left_out)
    return f'{name} {len(dataset)} samples (left out: {left_out} file{"s" if left_out != 1 else ""})'
  return (f'data: {config.data.name}, {train_set.num_classes} classes; {split("train", train_set)}, '
          f'{split(config.eval.split, eval_set)}; updates per epoch: {per_epoch:g} '
          f'(of {config.train.batch_size} samples)')


def _expected_first_loss(model, config, num_classes):
  """With a zero head every class is equally likely: CE = ln C per pass and the KL term is 0."""
  if not getattr(model, 'zero_head', False):
    return None
  return (2 if config.rdrop.alpha and config.rdrop.ce_of_passes == 'sum' else 1) * math.log(num_classes)


def _resume_command(workdir, *overrides):
  return distributed.command_line(['main.py', '--mode', 'resume', '--workdir', str(workdir), *overrides])


def _failed(err, update, workdir):
  """The error that ends a run whose update `update` failed numerically, with where to continue from."""
  last = checkpoint.latest_valid(workdir_lib.checkpoints_dir(workdir)) or 'none'
  if isinstance(err, NonFiniteLoss):
    return FloatingPointError(f'the training loss is not finite at update {update} (here: {err.value}); nothing '
                              f'was saved after update {update - 1}. Last good checkpoint: {last}')
  return FloatingPointError(
      f'{err.in_a_row} updates in a row overflowed in fp16 (updates {update - err.in_a_row + 1} to {update}; loss '
      f'scale now {err.loss_scale:g}), more than train.max_skipped_updates={err.limit}. Last good checkpoint: '
      f'{last}; continue from it in bf16 (or with a lower train.lr):\n'
      f'  {_resume_command(workdir, "--config.train.precision=bf16")}')


def _stopped(workdir, update, stop, evaluation_due=False):
  unevaluated = ' before its evaluation was complete (it runs first on resume)' if evaluation_due else ''
  return TrainingStopped(f'stopped by a signal after update {update}{unevaluated}, checkpoint saved. Continue '
                         f'with:\n  {_resume_command(workdir)}', 128 + (stop.signum or signal.SIGTERM))
