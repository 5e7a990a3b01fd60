"""Command line: one experiment config, one mode.

  python main.py --config CONFIG_FILE[:ARGUMENT] --workdir DIR [--config.FIELD=VALUE ...] [--autoresume]
  python main.py --mode MODE --workdir DIR [--checkpoint PATH] [--split NAME] [--output PATH]
  python main.py --mode report --workdir OUT_DIR RUN_DIR [RUN_DIR ...]
  python main.py --mode report --workdir SWEEP_DIR [--reference FIELD=VALUE]

Modes:
  train    (the default) train CONFIG_FILE into a new workdir; with --autoresume the command to repeat in
           job scripts: starts the run, continues it after an interruption, or does nothing once it finished
  resume   continue from the newest valid checkpoint of the workdir (or --checkpoint)
  eval     top-1, top-5 and loss of the best checkpoint (or --checkpoint) -> DIR/eval_<split>.json
  predict  one `filename,class` line per image of a split -> --output (default DIR/result.csv)
  export   a Paddle inference model of the best checkpoint -> --output prefix (default DIR/export/model)
  report   one table (OUT_DIR/report.md) and training curves over many runs, seeds of a variant grouped;
           on a sweep's folder (run.sh sweep) the ablation report: SWEEP_DIR/ablation.md and its plot

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
import errno
import importlib.util
import os
import re
import sys
import traceback

from utils import threads

threads.configure()

from absl import app, flags  # noqa: E402  (after the thread settings, which Paddle reads at import)
from ml_collections import config_flags  # noqa: E402

from configs import missing_config  # noqa: E402
from kernels import KernelError  # noqa: E402
from training import distributed  # noqa: E402
from training.lock import WorkdirBusy  # noqa: E402
from training.workdir import runs_inside  # noqa: E402
from utils import preemption  # noqa: E402
from utils.checkpoint import CheckpointError  # noqa: E402

MODES = ('train', 'resume', 'eval', 'predict', 'export', 'report')
CONTINUING = ('resume', 'eval', 'predict', 'export')
MODES_OF_FLAG = {'autoresume': ('train',), 'checkpoint': CONTINUING, 'split': ('eval', 'predict'),
                 'output': ('eval', 'predict', 'export'), 'command': ('report',),
                 'reference': ('report',)}
# Exit codes besides 0, 1 (a mistake in the command, config or input: repeating it will not help) and 128 + N
# (stopped by signal N), for job scripts that repeat the command (README: the retry loop).
EXIT_IO = 74    # EX_IOERR of sysexits.h: an I/O condition that may be mended, e.g. a full disk
EXIT_BUSY = 75  # EX_TEMPFAIL: another process trains in the workdir, or a job's processes did not all meet
EXIT_SOFTWARE = 70  # EX_SOFTWARE: a fault of this code or of the machine (kernels.KernelError)
MENDABLE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.ESTALE, errno.ETIMEDOUT}

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
flags.DEFINE_string('reference', '', 'report on a sweep folder: the point each point is compared with, '
                    'FIELD=VALUE[,...] (default rdrop.alpha=0 when swept, else the first value of the first field)')
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
    if not os.path.isdir(values['workdir']):
      sys.exit(f'error: --workdir {os.path.abspath(values["workdir"])} ' +
               ('is a file, not a run folder' if os.path.exists(values['workdir']) else 'does not exist'))
    if not os.path.isfile(saved):
      runs = runs_inside(values['workdir'])
      if runs:
        sys.exit(f'error: --workdir {os.path.abspath(values["workdir"])} is not a training run but holds '
                 f'{len(runs)}: {" ".join(runs)} (give one as --workdir)')
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
    sys.exit(f'error: {missing_config(path)}')
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


def main(argv, stop):
  """Run the mode of the command line; its exit code."""
  for name, modes in MODES_OF_FLAG.items():
    if FLAGS[name].present and FLAGS.mode not in modes:
      raise app.UsageError(f'--{name} belongs to --mode {" / ".join(modes)}, not --mode {FLAGS.mode}')
  if FLAGS.mode == 'report':
    from report import ablation, write_report
    if FLAGS.workdir and len(argv) == 1 and ablation.is_sweep(FLAGS.workdir):
      path = ablation.write_ablation(FLAGS.workdir, FLAGS.reference, FLAGS.command)
    elif not FLAGS.workdir or len(argv) < 2 or FLAGS.reference:
      raise app.UsageError('report: python main.py --mode report --workdir OUT_DIR RUN_DIR [RUN_DIR ...], or on '
                           'a sweep folder (holding sweep.json): --workdir SWEEP_DIR [--reference FIELD=VALUE]')
    else:
      path = write_report(argv[1:], FLAGS.workdir, FLAGS.command)
    print(f'report written to {path}')
    return 0
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not FLAGS.workdir:
    raise app.UsageError('--workdir is required')
  if FLAGS.config is None:
    raise app.UsageError('--config is required (e.g. --config configs/digits_vit_rdrop.py)')
  config, workdir = FLAGS.config, FLAGS.workdir
  if os.path.isfile(workdir):
    raise app.UsageError(f'--workdir {os.path.abspath(workdir)} is a file, not a run folder')
  # eval, predict and export read one checkpoint and take no lock: every file a training writes is
  # replaced atomically.
  if FLAGS.mode in ('train', 'resume'):
    import train
    return train.run(config, workdir, FLAGS.mode, FLAGS.autoresume, FLAGS.checkpoint, stop)
  if FLAGS.mode == 'export':
    import export
    export.run_export(config, workdir, FLAGS.checkpoint, FLAGS.output)
  else:
    import evaluate
    run_mode = evaluate.run_eval if FLAGS.mode == 'eval' else evaluate.run_predict
    run_mode(config, workdir, FLAGS.checkpoint, FLAGS.split, FLAGS.output)
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
  # From here SIGTERM and Ctrl-C end the process within seconds, at any stage (before, Paddle's own
  # handler, installed at its import, would print a C++ stack for them).
  stop = preemption.StopRequest(under_launcher=distributed.under_launcher())
  try:  # the outer try: a signal's Interrupted may also come while an error below is being reported
    argv = _parse_flags_or_exit(_with_config_file(argv))
    try:
      code = main(argv, stop)
    except (WorkdirBusy, distributed.JobIncomplete) as err:
      print(f'error: {err}', file=sys.stderr)
      code = EXIT_BUSY
    except (app.UsageError, ValueError, OSError, CheckpointError, FloatingPointError) as err:
      mendable = _mendable_io_error(err)
      print(f'error: {err}' + (f'\n(exit {EXIT_IO}: {os.strerror(mendable)}, which a later attempt may find mended; '
                               f'checkpoints already complete are kept)' if mendable else ''), file=sys.stderr)
      code = EXIT_IO if mendable else 1
    except KernelError:
      traceback.print_exc()  # not the command's fault: the traceback is what a bug report needs
      code = EXIT_SOFTWARE
    except (AttributeError, KeyError) as err:
      frames = traceback.extract_tb(err.__traceback__)
      if not frames or f'{os.sep}ml_collections{os.sep}' not in frames[-1].filename:
        raise  # a bug, not a config: keep the traceback
      # A saved config of an older version lacks a newer field.
      field = err.args[0] if isinstance(err, KeyError) else err
      print(f'error: the config has no field {field}; a run saved by an older version may need --config '
            f'configs/<experiment>.py (its current defaults) with overrides', file=sys.stderr)
      code = 1
  except preemption.Interrupted as err:
    print(err, file=sys.stderr)
    code = 128 + err.signum
  except Exception as err:
    if not stop:
      raise
    # A signal came, and its handler had not yet run where the error arose: under the launcher a peer that
    # took its SIGTERM first breaks the collective this rank waits in.
    print(f'{preemption.Interrupted(stop.signum)} ({type(err).__name__} while stopping: '
          f'{(str(err).strip().splitlines() or [""])[0]})', file=sys.stderr)
    code = 128 + stop.signum
  stop.finish()  # a signal from here on (a launcher repeating its own) changes nothing: the work is over
  sys.exit(code)


def _mendable_io_error(err):
  """The errno of an I/O condition in `err` or its causes that a later attempt may find mended, or 0."""
  while err is not None:
    if isinstance(err, OSError) and err.errno in MENDABLE_ERRNOS:
      return err.errno
    err = err.__cause__ or err.__context__
  return 0


if __name__ == '__main__':
  _run(sys.argv)
