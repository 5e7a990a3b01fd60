"""Ablation sweeps: the cross product of some config values, times seeds, each point one run of main.py.

  python -m tools.sweep [--plan] [--seeds N] [--runs-dir DIR] [--gpus IDS] [--reference FIELD=VALUE]
                        CONFIG FIELD=V1,V2,... [FIELD2=...] [--config.X=Y ...]

(`bash run.sh sweep ...` calls it with SEEDS, PLAN, RUNS_DIR and GPUS.) Every run goes into
`RUNS_DIR/sweep_<config>_<fields>/<field=value,...>/seed_<s>` and is trained by `main.py --autoresume`: the
same command repeated after any interruption continues the unfinished runs and leaves finished ones alone.
The ablation report follows (`python main.py --mode report --workdir SWEEP_FOLDER`, report/ablation.py).

The grid is checked before anything runs: every field must exist, be learning-relevant (configs/base.py,
NOT_LEARNING) and take values of its type, and every list must hold values. `--plan` trains nothing: it
prints one independent command per run (for GNU parallel or `xargs -P`) and writes `sweep.slurm`, a Slurm
job array of the same commands with the report as a job that depends on it. `sweep.json` in the sweep folder
records the grid, so the report knows the points that have no run yet.
"""
import argparse
import copy
import difflib
import importlib.util
import json
import os
import shlex
import signal
import subprocess
import sys

from configs import missing_config
from configs.base import NOT_LEARNING
from utils.sweep_plan import PLAN_FILE, Sweep, point_name, reference_values, run_dir, value_text
from utils.io import read_json, write_atomic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SLURM_FILE = 'sweep.slurm'
# Fields that neither a grid nor an override may set here: the sweep sets them itself.
SET_BY_SWEEP = {'seed': 'SEEDS=N sets the seeds (0..N-1)', 'experiment': 'a name, not something learned'}


class GridError(ValueError):
  """A grid or override that cannot run; its message is the one line the user sees."""


def load_config(spec):
  """The ConfigDict of `configs/x.py[:ARGUMENT]`."""
  path, has_argument, argument = spec.partition(':')
  if not os.path.isfile(path):
    raise GridError(missing_config(path))
  module_spec = importlib.util.spec_from_file_location('sweep_config', path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
    return module.get_config(*([argument] if has_argument else []))
  except Exception as err:  # the file's own error, named with the file
    raise GridError(f'--config {spec}: {type(err).__name__}: {err}') from err


def flat_fields(config, prefix=''):
  """{dotted field: value} of a ConfigDict, nested dicts flattened."""
  fields = {}
  for key, value in config.items():
    if hasattr(value, 'items'):
      fields.update(flat_fields(value, f'{prefix}{key}.'))
    else:
      fields[f'{prefix}{key}'] = value
  return fields


def _known_field(field, fields, where):
  if field in fields:
    return
  suffix = [name for name in fields if name.endswith('.' + field)]
  close = suffix + [name for name in difflib.get_close_matches(field, fields, n=3, cutoff=0.6) if name not in suffix]
  hint = f'; did you mean {" or ".join(close)}?' if close else ''
  raise GridError(f'{where}: the config has no field {field!r}{hint}')


def parse_value(field, text, default):
  """`text` as a value of the type of the field's `default` (bool, int, float or str)."""
  kind = type(default)
  try:
    if kind is bool:
      if text.lower() not in ('true', 'false'):
        raise ValueError
      return text.lower() == 'true'
    if kind in (int, float, str):
      return kind(text)
  except ValueError:
    article = 'an' if kind.__name__[0] in 'aeiou' else 'a'
    raise GridError(f'{field}={text}: {text!r} is not {article} {kind.__name__}, the type of {field} '
                    f'(default {default!r})') from None
  raise GridError(f'{field}: a {kind.__name__} field ({default!r}) cannot be swept; give it with --config.{field}=')


def parse_grid(config, items):
  """[(field, [typed values])] from `FIELD=V1,V2,...` items, checked against the config's fields."""
  fields = flat_fields(config)
  grid = []
  for item in items:
    field, has_values, values = item.partition('=')
    if not has_values:
      raise GridError(f'{item}: give a field and its values, e.g. rdrop.alpha=0,0.3,1')
    _known_field(field, fields, item)
    if field in SET_BY_SWEEP or field in NOT_LEARNING:
      why = SET_BY_SWEEP.get(field, 'it names, locates, paces or watches a run without changing what it learns '
                                    '(configs/base.py, NOT_LEARNING)')
      raise GridError(f'{field}: not a field to sweep: {why}')
    if field in (f for f, _ in grid):
      raise GridError(f'{field} is given twice: list all its values once, e.g. {field}=1,2,3')
    texts = [text.strip() for text in values.split(',') if text.strip()]
    if not texts:
      raise GridError(f'{item}: no values; list them separated by commas, e.g. {field}=1,2,3')
    typed = [parse_value(field, text, fields[field]) for text in texts]
    if any('/' in text for text in texts):
      raise GridError(f'{item}: a value with / cannot name a folder; sweep names, not paths')
    repeated = sorted({value_text(v) for v in typed if typed.count(v) > 1})
    if repeated:
      raise GridError(f'{item}: {", ".join(repeated)} listed more than once')
    grid.append((field, typed))
  if not grid:
    raise GridError('no grid: give at least one FIELD=V1,V2,... after the config, e.g. rdrop.alpha=0,0.3,1')
  return grid


def check_overrides(config, overrides, grid):
  """Each --config.X=Y names a field of the config, with a value of its type, that the sweep does not set.
  Returns {field: value} of those whose type is checked here (the others main.py checks)."""
  fields = flat_fields(config)
  swept = {field for field, _ in grid}
  typed = {}
  for override in overrides:
    field, _, text = override[len('--config.'):].partition('=')
    _known_field(field, fields, override)
    if field in swept:
      raise GridError(f'{override}: {field} is swept by the grid; give its values there only')
    if field in SET_BY_SWEEP:
      raise GridError(f'{override}: {SET_BY_SWEEP[field]}')
    if isinstance(fields[field], (bool, int, float, str)):
      typed[field] = parse_value(field, text, fields[field])
  return typed


def check_points(sweep, config, overrides):
  """Every point's config through the trainer's own check (training/config_check.py), before any run: a value
  out of range, a name that is not a choice, a batch that does not split over the devices."""
  from utils import threads
  threads.configure()  # Paddle's import, as main.py makes it: only once the grid itself is sound
  from training.config_check import check_config
  for point in sweep.points():
    point_config = copy.deepcopy(config)
    for field, value in [*overrides.items(), *point]:
      *parents, name = field.split('.')
      parent = point_config
      for key in parents:
        parent = parent[key]
      parent[name] = value
    try:
      check_config(point_config, max(len(_devices(sweep.gpus)), 1))
    except ValueError as err:
      raise GridError(f'{point_name(point)}: ' + '; '.join(line.strip() for line in str(err).splitlines())) from None


def _devices(gpus):
  return [g for g in gpus.split(',') if g]


def train_argv(sweep, sweep_dir, run, devices=None):
  """The main.py command of one run; under paddle.distributed.launch when the sweep has GPUs.
  `devices` renames the GPUs (a Slurm task sees its own as 0..k-1)."""
  workdir = run_dir(sweep_dir, run)
  args = ['main.py', '--config', sweep.config, '--workdir', workdir, '--autoresume', f'--config.seed={run.seed}',
          *(f'--config.{field}={value if isinstance(value, str) else repr(value)}' for field, value in run.point),
          *sweep.overrides]
  devices = devices or _devices(sweep.gpus)
  if not devices:
    return ['python', *args]
  logs = os.path.join(sweep_dir, 'launch_logs', run.point_name, f'seed_{run.seed}')
  return ['python', '-m', 'paddle.distributed.launch', '--devices', ','.join(devices), '--log_dir', logs, *args]


def command_line(argv):
  """One line a shell runs from any folder: the project folder first, as run.sh does."""
  return f'cd {shlex.quote(ROOT)} && {shlex.join(argv)}'


def report_argv(sweep_dir, reference=''):
  return ['python', 'main.py', '--mode', 'report', '--workdir', sweep_dir,
          *([f'--reference={reference}'] if reference else [])]


def slurm_script(sweep, sweep_dir):
  """A job array, one run per task, whose submission also queues the report after every task has ended."""
  runs = sweep.runs()
  gpus = len(_devices(sweep.gpus))
  task_devices = [str(i) for i in range(gpus)]  # Slurm's allocation numbers a task's GPUs from 0
  lines = [command_line(train_argv(sweep, sweep_dir, run, task_devices)) for run in runs]
  logs = os.path.join(sweep_dir, 'slurm')
  report = command_line(report_argv(sweep_dir, sweep.reference))
  return '\n'.join([
      '#!/usr/bin/env bash',
      f'# Slurm job array of {sweep.name}: one run (a point of the grid and a seed) per array task.',
      '# Submit it with `bash THIS_FILE` (not sbatch): that queues the array, then the ablation report as a job',
      '# that starts when every task has ended, failed ones included (the report lists them). A requeued or',
      '# resubmitted task continues its run (--autoresume) or, finished, does nothing.',
      f'#SBATCH --job-name={sweep.name}',
      f'#SBATCH --array=0-{len(runs) - 1}',
      '#SBATCH --requeue',
      f'#SBATCH --output={logs}/%A_%a.out',
      *([f'#SBATCH --gres=gpu:{gpus}'] if gpus else []),
      'set -euo pipefail',
      'runs=(',
      *(f'  {shlex.quote(line)}' for line in lines),
      ')',
      'if [ -z "${SLURM_ARRAY_TASK_ID:-}" ]; then',
      f'  mkdir -p {shlex.quote(logs)}',
      '  array=$(sbatch --parsable "$0")',
      f'  sbatch --parsable --dependency="afterany:${{array%%;*}}" --job-name={shlex.quote(sweep.name + "_report")} '
      f'--output={shlex.quote(logs + "/report_%j.out")} --wrap={shlex.quote(report)}',
      f'  echo "submitted job array $array ({len(runs)} runs) and its report"',
      '  exit 0',
      'fi',
      'eval "${runs[$SLURM_ARRAY_TASK_ID]}"',
      ''])


def prepare(sweep, runs_dir):
  """The sweep folder with sweep.json written; refuses a folder that holds this grid with other overrides."""
  sweep_dir = os.path.abspath(os.path.join(runs_dir, sweep.name))
  path = os.path.join(sweep_dir, PLAN_FILE)
  if os.path.isfile(path):
    before = read_json(path)
    if (before['config'], before['overrides']) != (sweep.config, sweep.overrides):
      raise GridError(f'{sweep_dir} holds a sweep of {before["config"]} with overrides {before["overrides"] or "none"}, '
                      f'not {sweep.config} with {sweep.overrides or "none"}: repeat that command, or set RUNS_DIR '
                      f'to another folder')
  os.makedirs(sweep_dir, exist_ok=True)
  write_atomic(path, json.dumps(sweep.to_json(), indent=1) + '\n')
  return sweep_dir


def _stop_on_signals(child):
  """Pass SIGTERM and SIGINT on to the running training, which saves a checkpoint and exits; the sweep then
  stops with it. A signal to the whole process group (Ctrl-C, a scheduler's) reaches the training twice
  within a second, which it counts as one request (utils/preemption.py)."""
  def forward(signum, frame):
    if child.poll() is None:
      child.send_signal(signum)
  for signum in (signal.SIGTERM, signal.SIGINT):
    signal.signal(signum, forward)


def run_all(sweep, sweep_dir):
  """Train every run in turn; the exit codes of those that failed, by run."""
  failed = {}
  runs = sweep.runs()
  for index, run in enumerate(runs, 1):
    argv = train_argv(sweep, sweep_dir, run)
    print(f'== sweep {index}/{len(runs)}: {run.point_name}, seed {run.seed}', flush=True)
    child = subprocess.Popen(argv, cwd=ROOT)
    _stop_on_signals(child)
    code = child.wait()
    if code > 128 or code < 0:  # stopped by a signal: the sweep stops too, the run resumes on repeat
      print(f'sweep: stopped during run {index} of {len(runs)}: repeat the same command to continue (finished '
            f'runs are left alone)', file=sys.stderr)
      sys.exit(code if code > 0 else 128 - code)
    if code:
      failed[run] = code
  return failed


def parse_args(argv):
  parser = argparse.ArgumentParser(prog='python -m tools.sweep', description=__doc__.split('\n\n')[0],
                                   usage='%(prog)s [options] CONFIG FIELD=V1,V2,... [FIELD2=...] [--config.X=Y ...]',
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--plan', action='store_true', help='train nothing: print the commands, write sweep.slurm')
  parser.add_argument('--seeds', type=int, default=1, help='seeds 0..N-1 per point (default 1)')
  parser.add_argument('--runs-dir', default='runs', help='the sweep folder goes under it (default runs)')
  parser.add_argument('--gpus', default='', help='GPU ids for paddle.distributed.launch (default: one process)')
  parser.add_argument('--reference', default='', help='the report\'s reference point, FIELD=VALUE[,...] '
                      '(default rdrop.alpha=0 when swept, else the first value of the first field)')
  parser.add_argument('--command', default='', help='the command to quote in the report (run.sh passes its own)')
  parser.add_argument('config', help='configs/<experiment>.py[:ARGUMENT]')
  args, rest = parser.parse_known_args(argv)
  args.overrides = [a for a in rest if a.startswith('--config.')]
  args.grid = [a for a in rest if not a.startswith('-')]
  unknown = [a for a in rest if a.startswith('-') and not a.startswith('--config.')]
  if unknown:
    parser.error(f'unknown option {unknown[0]}')
  if args.seeds < 1:
    parser.error(f'--seeds {args.seeds}: give the number of seeds, at least 1')
  return args


def make_sweep(args):
  """The checked Sweep of the command line; GridError before anything is written or trained."""
  config = load_config(args.config)
  grid = parse_grid(config, args.grid)
  overrides = check_overrides(config, args.overrides, grid)
  sweep = Sweep(args.config, grid, args.overrides, args.seeds, args.gpus, args.reference, args.command)
  try:
    reference_values(sweep, sweep.reference)  # the report's, checked now rather than after every run
  except ValueError as err:
    raise GridError(err) from None
  check_points(sweep, config, overrides)
  return sweep


def main(argv):
  args = parse_args(argv)
  try:
    sweep = make_sweep(args)
    sweep_dir = prepare(sweep, args.runs_dir)
  except GridError as err:
    sys.exit(f'error: {err}')
  runs = sweep.runs()
  if args.plan:
    for run in runs:
      print(command_line(train_argv(sweep, sweep_dir, run)))
    write_atomic(os.path.join(sweep_dir, SLURM_FILE), slurm_script(sweep, sweep_dir))
    print(f'# {len(runs)} runs, one a line: e.g. `parallel -j 2 < FILE`; then the report: '
          f'{command_line(report_argv(sweep_dir, sweep.reference))}', file=sys.stderr)
    print(f'# Slurm: bash {os.path.join(sweep_dir, SLURM_FILE)} (a job array and its report)', file=sys.stderr)
    return
  failed = run_all(sweep, sweep_dir)
  report = subprocess.run(report_argv(sweep_dir, sweep.reference), cwd=ROOT, check=False)
  if failed:
    listed = '; '.join(f'{run.point_name} seed {run.seed} (exit {code})' for run, code in failed.items())
    sys.exit(f'sweep: {len(failed)} of {len(runs)} runs failed: {listed}; the report lists them. Mend the cause '
             f'and repeat the command: finished runs are left alone')
  sys.exit(report.returncode)  # every run trained: the sweep succeeded only with its report


if __name__ == '__main__':
  main(sys.argv[1:])
