"""Command line: one experiment config, one mode.

  python main.py --config CONFIG_FILE[:ARGUMENT] --workdir DIR [--config.FIELD=VALUE ...]
  python main.py --mode MODE --workdir DIR [--checkpoint PATH] [--split NAME] [--output PATH]
  python main.py --mode report --workdir OUT_DIR RUN_DIR [RUN_DIR ...]

Modes:
  train    (the default) train CONFIG_FILE into a new workdir
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
import importlib.util
import os
import re
import sys
import traceback

from utils import threads

threads.configure()

from absl import app, flags  # noqa: E402  (after the thread settings, which Paddle reads at import)
from ml_collections import config_flags  # noqa: E402

import data  # noqa: E402
from utils import checkpoint, distributed  # noqa: E402
from utils import workdir as workdir_lib  # noqa: E402

MODES = ('train', 'resume', 'eval', 'predict', 'export', 'report')
CONTINUING = ('resume', 'eval', 'predict', 'export')

flags.DEFINE_enum('mode', 'train', MODES, 'What to do.')
flags.DEFINE_string('workdir', '', 'Run folder: config, checkpoints, metrics, VisualDL logs, predictions.')
flags.DEFINE_string('checkpoint', '', 'A checkpoint folder; default: the newest valid one (resume), '
                    'the best (eval, predict, export).')
flags.DEFINE_string('split', '', 'Split to evaluate or predict; default: config.eval.split (eval), test (predict).')
flags.DEFINE_string('output', '', 'Where predict writes its CSV (default <workdir>/result.csv); export: path '
                    'prefix of the inference model (default <workdir>/export/model). Relative to the current folder.')
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


def train_mode(config, workdir, resume_from=''):
  from train import TrainingStopped, check_config, train
  rank, world_size = distributed.rank_and_world_size()
  check_config(config, world_size)
  workdir_lib.check_writable(workdir)
  try:
    result = train(config, workdir, resume_from)
  except TrainingStopped as stopped:
    print(stopped, file=sys.stderr)
    return stopped.exit_code
  if rank == 0:
    print(f'done: best {config.eval.split} top1 {result["best"]["top1"]:.2f}% at update {result["best"]["update"]}\n'
          f'  checkpoints: {workdir_lib.checkpoints_dir(workdir)}\n'
          f'  metrics:     {os.path.join(workdir, "metrics.jsonl")}\n'
          f'  curves:      visualdl --logdir {os.path.join(workdir, "vdl")}')
  return 0


def main(argv):
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
  config, workdir = FLAGS.config, FLAGS.workdir
  ckpt_dir = workdir_lib.checkpoints_dir(workdir)

  if FLAGS.mode == 'train':
    if checkpoint.committed(ckpt_dir):
      raise app.UsageError(f'{os.path.abspath(ckpt_dir)} already holds checkpoints: continue with '
                           f'--mode resume, or train into a new --workdir')
    return train_mode(config, workdir)

  if FLAGS.mode == 'resume':
    resume_from = FLAGS.checkpoint or checkpoint.latest_valid(ckpt_dir)
    if not resume_from:
      raise app.UsageError(f'no valid checkpoint in {os.path.abspath(ckpt_dir)} to resume from')
    manifest = checkpoint.read_manifest(resume_from, files=())
    saved_length = {k: manifest.get('config', {}).get('train', {}).get(k) for k in ('updates', 'epochs')}
    same_length = saved_length == {'updates': config.train.updates, 'epochs': config.train.epochs}
    if same_length and manifest['update'] >= manifest.get('total_updates', float('inf')) and not FLAGS.checkpoint:
      best = manifest['best']
      print(f'{workdir} finished at update {manifest["update"]} (best {config.eval.split} top1 '
            f'{best["top1"]:.2f}% at update {best["update"]}): nothing to resume')
      return 0
    print(f'resume: from {resume_from}')
    return train_mode(config, workdir, resume_from)

  # eval, predict, export: one checkpoint
  path = FLAGS.checkpoint or workdir_lib.best_checkpoint(workdir)
  if not path:
    raise app.UsageError(f'no valid checkpoint in {os.path.abspath(ckpt_dir)}; pass --checkpoint')
  if FLAGS.mode == 'export':
    from export import export
    prefix = FLAGS.output or os.path.join(workdir, 'export', 'model')
    print(f'export: checkpoint {path} as a Paddle inference model')
    print('written ' + ', '.join(export(config, path, prefix)))
    return 0
  from evaluate import evaluate, predict, write_json, write_predictions
  from train import check_fits, load_trained_model
  from utils.precision import Precision
  split = FLAGS.split or (config.eval.split if FLAGS.mode == 'eval' else 'test')
  precision = Precision(config.train)  # the run's precision, as its evaluations during training
  model, manifest = load_trained_model(config, path, precision)
  dataset, update = data.build(config.data, split), manifest['update']
  check_fits(manifest, config, path, dataset.num_classes)
  if FLAGS.mode == 'eval':
    print(f'eval: checkpoint {path} (update {update}) on {config.data.name} {split} ({len(dataset)} samples)')
    metrics = dict(evaluate(model, dataset, config, split=split, autocast=precision.autocast), checkpoint=path,
                   update=update, split=split, precision=precision.name)
    out = os.path.join(workdir, f'eval_{split}.json')
    write_json(out, metrics)
    print(f'top1 {metrics["top1"]:.2f}%  top5 {metrics["top5"]:.2f}%  loss {metrics["loss"]:.4f}  '
          f'({metrics["count"]} samples)\nwritten to {out}')
  else:
    out = FLAGS.output or os.path.join(workdir, 'result.csv')
    print(f'predict: checkpoint {path} (update {update}) on {config.data.name} {split} ({len(dataset)} images)')
    names, labels = predict(model, dataset, config, autocast=precision.autocast)
    write_predictions(out, names, labels)
    print(f'{len(names)} predictions written to {out}')
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
  try:
    sys.exit(main(_parse_flags_or_exit(argv)))
  except app.UsageError as err:
    sys.exit(f'error: {err}')
  except (ValueError, OSError, CheckpointError, FloatingPointError) as err:
    sys.exit(f'error: {err}')
  except (AttributeError, KeyError) as err:  # a saved config of an older version lacks a newer field
    sys.exit(f'error: the config has no field {err}; a run saved by an older version may need '
             f'--config configs/<experiment>.py (its current defaults) with overrides')


if __name__ == '__main__':
  _run(sys.argv)
