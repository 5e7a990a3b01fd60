"""Command line: one experiment config, one mode.

  python main.py --config CONFIG_FILE[:ARGUMENT] --workdir DIR [--config.FIELD=VALUE ...] [--autoresume]
  python main.py --mode MODE --workdir DIR [--checkpoint PATH] [--split NAME] [--output PATH]
  python main.py --mode report --workdir OUT_DIR RUN_DIR [RUN_DIR ...]

Modes:
  train    (the default) train CONFIG_FILE into a new workdir; with --autoresume the command to repeat in
           job scripts: starts the run, continues it after an interruption, or does nothing once it finished
  resume   continue from the newest valid checkpoint of the workdir (or --checkpoint)
  eval     top-1, top-5 and loss of the best checkpoint (or --checkpoint) -> DIR/eval_<split>.json
  predict  one `filename,label` line per image of a split -> --output (default DIR/result.csv)
  export   a Paddle inference model of the best checkpoint -> --output prefix (default DIR/export/model)
  report   one table (OUT_DIR/report.md) and training curves over many runs, seeds of a variant grouped

CONFIG_FILE is one of configs/*.py; `:ARGUMENT` goes to its get_config: every config takes `smoke`
(e.g. `configs/digits_vit.py:smoke`: two tiny updates, to check a setup), some take variants (their
docstring says). `--config.FIELD=VALUE` overrides any field, e.g. --config.train.lr=1e-3. Without
--config, resume, eval, predict and export read the config the run saved (DIR/config.py); overrides
apply to it too. Paths given to --output are relative to the current folder, as any path here.
Under `python -m paddle.distributed.launch` the same command trains on every device.

Example: the offline demo's R-Drop run (no download), then its test accuracy:
  python main.py --config configs/digits_vit_rdrop.py --workdir runs/digits
  python main.py --mode eval --workdir runs/digits
"""
import collections
import contextlib
import importlib.util
import os
import re
import shlex
import sys
import traceback

from utils import threads

threads.configure()

from absl import app, flags  # noqa: E402  (after the thread settings, which Paddle reads at import)
from ml_collections import config_flags  # noqa: E402

import data  # noqa: E402
from utils import checkpoint, distributed, preemption  # noqa: E402
from utils import workdir as workdir_lib  # noqa: E402

MODES = ('train', 'resume', 'eval', 'predict', 'export', 'report')
CONTINUING = ('resume', 'eval', 'predict', 'export')
EXIT_BUSY = 75  # EX_TEMPFAIL of sysexits.h: another process trains in the workdir; try again later

flags.DEFINE_enum('mode', 'train', MODES, 'What to do.')
flags.DEFINE_string('workdir', '', 'Run folder: config, checkpoints, metrics, VisualDL logs, predictions.')
flags.DEFINE_string('checkpoint', '', 'A checkpoint folder; default: the newest valid one (resume), '
                    'the best (eval, predict, export).')
flags.DEFINE_string('split', '', 'Split to evaluate or predict; default: config.eval.split (eval), test (predict).')
flags.DEFINE_bool('autoresume', False, 'train: the command to repeat in job scripts. Starts the run if '
                  '--workdir holds none, continues it if it was interrupted (with or without a checkpoint), '
                  'does nothing if it finished; refuses a config that differs from the saved one.')
flags.DEFINE_string('output', '', 'Where eval writes its JSON (default <workdir>/eval_<split>.json) and predict '
                    'its CSV (default <workdir>/result.csv); export: path prefix of the inference model '
                    '(default <workdir>/export/model). Relative to the current folder.')
flags.DEFINE_string('command', '', 'report: the command that produced the runs, quoted in summary.md '
                    '(run.sh passes its own).')
config_flags.DEFINE_config_file('config', None, 'Experiment config file and argument: configs/<experiment>.py[:smoke]',
                                lock_config=True)
FLAGS = flags.FLAGS
HELP_FLAGS = ('-h', '-?', '--help', '--helpshort', '--helpfull')


def _with_config_file(argv):
  """argv with the config file checked; continuing modes without --config get `<workdir>/config.py`."""
  for i, arg in enumerate(argv):
    if arg == '--config' or arg.startswith('--config='):
      _check_config_file(arg.split('=', 1)[1] if '=' in arg else argv[i + 1] if i + 1 < len(argv) else '')
      return argv
  values = {}
  for i, arg in enumerate(argv):
    for name in ('mode', 'workdir'):
      if arg.startswith(f'--{name}='):
        values[name] = arg.split('=', 1)[1]
      elif arg == f'--{name}' and i + 1 < len(argv):
        values[name] = argv[i + 1]
  if values.get('mode') in CONTINUING and values.get('workdir'):
    saved = os.path.join(values['workdir'], 'config.py')
    if os.path.isfile(values['workdir']):
      sys.exit(f'error: --workdir {os.path.abspath(values["workdir"])} is a file, not a run folder')
    if not os.path.isfile(saved):
      sys.exit(f'error: {os.path.abspath(saved)} does not exist: --workdir is not a training run '
               f'(or pass --config)')
    _check_config_file(saved)
    return argv[:1] + [f'--config={saved}'] + argv[1:]
  return argv


def _check_config_file(spec):
  """Run `get_config` of the config file once before ml_collections does.

  A config file that raises (a bad `:ARGUMENT`, a typo in the file) then ends in one or two lines naming
  the file and line the user gave, instead of a traceback through ml_collections and absl.
  """
  path, has_argument, argument = spec.partition(':')
  if not os.path.isfile(path):
    sys.exit(f'error: config file {os.path.abspath(path)} does not exist')
  try:
    module_spec = importlib.util.spec_from_file_location('checked_config', path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    module.get_config(*([argument] if has_argument else []))
  except Exception as err:  # whatever the file raises is reported, with where
    if isinstance(err, SyntaxError):
      message, where = err.msg, (err.filename, err.lineno)
    else:
      lines = [frame.lineno for frame in traceback.extract_tb(err.__traceback__)
               if os.path.abspath(frame.filename) == os.path.abspath(path)]
      message, where = err, (path, lines[-1] if lines else None)
    kind = '' if isinstance(err, ValueError) else f'{type(err).__name__}: '  # ValueError: a bad value, explained
    sys.exit(f'error: --config {spec}: {kind}{message}\n  at {where[0]}' + (f', line {where[1]}' if where[1] else ''))


def train_or_resume(config, workdir, stop):
  """train, resume or train --autoresume, as the only trainer of the workdir (rank 0 holds its lock)."""
  from train import TrainingStopped, train
  from utils.config_check import check_config
  rank, world_size = distributed.rank_and_world_size()
  check_config(config, world_size)
  workdir_lib.check_writable(workdir)
  with workdir_lib.own(workdir) if rank == 0 else contextlib.nullcontext():
    resume_from = _starting_point(config, workdir)  # decided under the lock: no other start can interleave
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
          f'  curves:      visualdl --logdir {shlex.quote(os.path.join(workdir, "vdl"))}')
  return 0


def _starting_point(config, workdir):
  """Where training starts: '' (update 0), a checkpoint folder, or None when the run has finished.

  A run interrupted before its first checkpoint starts again from update 0: its seed and saved config
  make that the same run. Checkpoints that exist but are all damaged are an error, never a restart.
  """
  where, ckpt_dir = os.path.abspath(workdir), workdir_lib.checkpoints_dir(workdir)
  if FLAGS.mode == 'train' and not workdir_lib.has_run(workdir):
    return ''
  if FLAGS.mode == 'train' and not FLAGS.autoresume:
    raise app.UsageError(f'{where} already holds a run: continue it with --mode resume (or this command '
                         f'with --autoresume), or train into a new --workdir')
  if FLAGS.mode == 'resume' and not workdir_lib.has_run(workdir):
    raise app.UsageError(f'{where} holds no run to resume (no {workdir_lib.CONFIG_FILE}, no checkpoint): '
                         f'start one with --mode train')
  saved = workdir_lib.saved_config(workdir)
  if FLAGS.autoresume and saved is not None:
    changes = workdir_lib.learning_changes(saved, config)
    if changes:
      listed = '\n  '.join(f'config.{key}: {old!r} in the run, {new!r} in this command' for key, old, new in changes)
      raise app.UsageError(f'--autoresume: {where} holds a run of another config:\n  {listed}\n'
                           f'Repeat the command that started it, change the run on purpose with --mode resume '
                           f'and overrides, or train into a new --workdir')
  if FLAGS.checkpoint:
    return FLAGS.checkpoint
  latest = checkpoint.latest_valid(ckpt_dir)
  if latest is None and checkpoint.committed(ckpt_dir):
    raise app.UsageError(f'no valid checkpoint in {os.path.abspath(ckpt_dir)} to resume from')
  if latest is None:
    print(f'resume: {where} has no checkpoint yet: training again from update 0 with the saved config and seed')
    return ''
  manifest = checkpoint.read_manifest(latest, files=())
  saved_length = {k: manifest.get('config', {}).get('train', {}).get(k) for k in ('updates', 'epochs')}
  same_length = saved_length == {'updates': config.train.updates, 'epochs': config.train.epochs}
  finished = manifest['update'] >= manifest.get('total_updates', float('inf')) and not manifest.get('evaluation_due')
  if same_length and finished:
    best = manifest['best']
    print(f'{workdir} finished at update {manifest["update"]} (best {config.eval.split} top1 '
          f'{best["top1"]:.2f}% at update {best["update"]}): nothing to do')
    return None
  print(f'resume: from {latest}')
  return latest


def _check_output_file(path):
  """Fail before the work when `path` could not be written (a folder, or under one that cannot be)."""
  if os.path.isdir(path):
    raise app.UsageError(f'--output {os.path.abspath(path)} is a folder: name a file')
  workdir_lib.check_writable(os.path.dirname(os.path.abspath(path)), what='the output folder')


def _write_after_printing(write, path, what):
  """The numbers are on the screen already: a failed write names the file and loses nothing else."""
  try:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write(path)
  except OSError as err:
    sys.exit(f'error: {what} not written to {os.path.abspath(path)}: {err.strerror or err}; the results above '
             f'are complete (--output writes them elsewhere)')
  print(f'{what} written to {path}')


def main(argv, stop):
  if FLAGS.mode == 'report':
    if not FLAGS.workdir or len(argv) < 2:
      raise app.UsageError('report: python main.py --mode report --workdir OUT_DIR RUN_DIR [RUN_DIR ...]')
    from utils.report import write_report
    print(f'report written to {write_report(argv[1:], FLAGS.workdir, FLAGS.command)}')
    return 0
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if FLAGS.config is None:
    raise app.UsageError('--config is required (e.g. --config configs/digits_vit_rdrop.py)')
  if not FLAGS.workdir:
    raise app.UsageError('--workdir is required')
  if FLAGS.autoresume and FLAGS.mode != 'train':
    raise app.UsageError(f'--autoresume belongs to --mode train (the repeatable command), not --mode {FLAGS.mode}')
  config, workdir = FLAGS.config, FLAGS.workdir
  if os.path.isfile(workdir):
    raise app.UsageError(f'--workdir {os.path.abspath(workdir)} is a file, not a run folder')
  if FLAGS.mode in ('train', 'resume'):
    return train_or_resume(config, workdir, stop)

  # eval, predict, export: one checkpoint, no lock (every file a training writes is replaced atomically)
  from train import check_fits, load_trained_model
  from utils.config_check import check_config
  check_config(config, world_size=1)
  path = FLAGS.checkpoint or workdir_lib.best_checkpoint(workdir)
  if not path:
    raise app.UsageError(f'no valid checkpoint in {os.path.abspath(workdir_lib.checkpoints_dir(workdir))}; '
                         f'pass --checkpoint')
  if FLAGS.mode == 'export':
    from export import export
    prefix = FLAGS.output or os.path.join(workdir, 'export', 'model')
    print(f'export: checkpoint {path} as a Paddle inference model')
    print('written ' + ', '.join(export(config, path, prefix)))
    return 0
  from evaluate import evaluate, predict, write_json, write_predictions
  from utils.precision import Precision
  split = FLAGS.split or (config.eval.split if FLAGS.mode == 'eval' else 'test')
  out = FLAGS.output or os.path.join(workdir, f'eval_{split}.json' if FLAGS.mode == 'eval' else 'result.csv')
  if FLAGS.mode == 'predict':  # the predictions are the result: make sure they can be written first
    _check_output_file(out)
  precision = Precision(config.train)  # the run's precision, as its evaluations during training
  model, manifest = load_trained_model(config, path, precision)
  dataset, update = data.build(config.data, split), manifest['update']
  check_fits(manifest, config, path, dataset.num_classes)
  if FLAGS.mode == 'eval':
    print(f'eval: checkpoint {path} (update {update}) on {config.data.name} {split} ({len(dataset)} samples)')
    metrics = dict(evaluate(model, dataset, config, split=split, autocast=precision.autocast), checkpoint=path,
                   update=update, split=split, precision=precision.name)
    print(f'top1 {metrics["top1"]:.2f}%  top5 {metrics["top5"]:.2f}%  loss {metrics["loss"]:.4f}  '
          f'({metrics["count"]} samples)')
    _write_after_printing(lambda p: write_json(p, metrics), out, 'metrics')
  else:
    print(f'predict: checkpoint {path} (update {update}) on {config.data.name} {split} ({len(dataset)} images)')
    names, labels = predict(model, dataset, config, autocast=precision.autocast)
    counts = sorted(collections.Counter(labels.tolist()).items())
    print(f'{len(names)} predictions; images per predicted class: ' + ', '.join(f'{c}: {n}' for c, n in counts))
    _write_after_printing(lambda p: write_predictions(p, names, labels), out, 'predictions')
  return 0


def _parse_flags_or_exit(argv):
  """Parse the command line; a bad flag, config file or override ends here with one clear line."""
  try:
    return FLAGS(argv)
  except flags.Error as err:
    sys.exit(f'error: {err}')
  except (AttributeError, KeyError) as err:  # ml_collections: an override names a field that does not exist
    text = str(err)
    guess = re.search(r'Did you mean "([^"]+)" instead of "([^"]+)"', text)
    field = guess.group(2) if guess else re.sub(r'\W', '', text.split('\\n')[0])
    culprit = next((a.split('=')[0] for a in argv if re.match(rf'--config\.(\w+\.)*{field}\b', a)), '--config.')
    hint = f'; did you mean {guess.group(1)!r}?' if guess else ''
    sys.exit(f'error: {culprit}: the config has no field {field!r}{hint}')


def _run(argv):
  """Errors we raise on bad input carry their explanation; a traceback would only bury it."""
  if any(arg in HELP_FLAGS for arg in argv[1:]):
    print(__doc__ + '\nFlags:\n' + FLAGS.main_module_help().strip().split('\n', 1)[1])
    sys.exit(0)
  argv = _with_config_file(argv)
  from utils.checkpoint import CheckpointError
  argv = _parse_flags_or_exit(argv)
  # From here SIGTERM and Ctrl-C end the process within seconds, at any stage.
  stop = preemption.StopRequest(end_when_blocked=distributed.rank_and_world_size()[1] == 1)
  try:
    sys.exit(main(argv, stop))
  except preemption.Interrupted as err:
    print(err, file=sys.stderr)
    sys.exit(128 + err.signum)
  except workdir_lib.WorkdirBusy as err:
    print(f'error: {err}', file=sys.stderr)
    sys.exit(EXIT_BUSY)
  except app.UsageError as err:
    sys.exit(f'error: {err}')
  except (ValueError, OSError, CheckpointError, FloatingPointError) as err:
    sys.exit(f'error: {err}')
  except (AttributeError, KeyError) as err:
    frames = traceback.extract_tb(err.__traceback__)
    if not frames or f'{os.sep}ml_collections{os.sep}' not in frames[-1].filename:
      raise  # a bug, not a config: keep the traceback
    # A saved config of an older version lacks a newer field.
    field = err.args[0] if isinstance(err, KeyError) else err
    sys.exit(f'error: the config has no field {field}; a run saved by an older version may need '
             f'--config configs/<experiment>.py (its current defaults) with overrides')


if __name__ == '__main__':
  _run(sys.argv)
