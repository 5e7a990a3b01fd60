"""The ablation report of a sweep folder (tools/sweep.py): the paper's ablation table and its plot.

  python main.py --mode report --workdir runs/sweep_digits_vit_rdrop_rdrop.alpha [--reference rdrop.alpha=0]

Writes, into the sweep folder: `ablation.md` (one row per point of the grid: n, mean ± std over seeds of the
final and best top-1, the difference to the reference point paired by seed; every run that is not a result,
listed), `ablation.png` (final top-1 against each swept field, error bars over seeds, one line per value of
the other fields), `summary.md` (the same in a few lines, for the README) and, in `runs/`, the report of
every run with its training curves (report/__init__.py).

The reference of a point is the point with the reference values and the same values of the other fields:
with `--reference rdrop.alpha=0` each alpha is compared with alpha 0 at the same dropout rate.
"""
import dataclasses
import datetime
import os

from report import write_report
from report.render import NOT_SHOWN, _machines, _revisions, _speed, collapse_warning, markdown_table
from report.runs import Variant, best_top1, final_top1, load_run
from report.statistics import Spread, paired_difference
from utils.sweep_plan import PLAN_FILE, Run, Sweep, point_name, reference_values, run_dir, value_text
from utils.io import read_json, write_atomic

PLOT = 'ablation.png'


def is_sweep(folder):
  return os.path.isfile(os.path.join(folder, PLAN_FILE))


def read_sweep(folder):
  fields = {f.name for f in dataclasses.fields(Sweep)}
  saved = read_json(os.path.join(folder, PLAN_FILE))
  sweep = Sweep(**{k: v for k, v in saved.items() if k in fields})
  sweep.grid = [(field, values) for field, values in sweep.grid]
  return sweep


@dataclasses.dataclass
class Point:
  values: tuple         # ((field, value), ...)
  variant: Variant      # its runs that exist (possibly none)
  missing: list         # seeds with no run yet

  @property
  def name(self):
    return point_name(self.values)

  def finished(self):
    return self.variant.finished()


def read_points(sweep, folder):
  points = []
  for values in sweep.points():
    runs, missing = [], []
    for seed in range(sweep.seeds):
      path = run_dir(folder, Run(values, seed))
      if os.path.isfile(os.path.join(path, 'config.json')):
        runs.append(load_run(path))
      else:
        missing.append(seed)
    points.append(Point(values, Variant(runs), missing))
  return points


def _reference_of(point, reference, by_values):
  return by_values[tuple((field, reference.get(field, value)) for field, value in point.values)]


def _difference_cell(point, ref):
  if point is ref:
    return 'reference'
  pair = paired_difference(ref.variant, point.variant, final_top1)
  d = pair.difference
  if d is None:
    return NOT_SHOWN
  if d.n == 1:
    return f'{d.format("+")} (one seed: one draw)'
  return f'{d.format("+")} (min {d.low:+.2f}, max {d.high:+.2f}; better on {pair.later_better} of {d.n} seeds)'


def _spread_cell(runs, metric):
  if not runs:
    return NOT_SHOWN
  spread = Spread.of(map(metric, runs))
  return spread.format() + (' (one draw)' if spread.n == 1 else '')


def point_rows(sweep, points, reference):
  by_values = {p.values: p for p in points}
  others = ' at the same other values' if len(reference) < len(sweep.grid) else ''
  difference = f'final - reference ({point_name(tuple(reference.items()))}{others}), paired by seed'
  rows = []
  for point in points:
    runs = list(point.finished().values())
    ref = _reference_of(point, reference, by_values)
    row = {field: value_text(value) for field, value in point.values}
    row.update({'n': f'{len(runs)} of {sweep.seeds}', 'final top1 (%)': _spread_cell(runs, final_top1),
                'best top1 (%)': _spread_cell(runs, best_top1),
                difference: _difference_cell(point, ref), 'wall time per run': _speed(runs)[0]})
    rows.append(row)
  return rows


def not_counted(points):
  """One line per planned run that is not a result: not started, unfinished, failed before its end."""
  lines = []
  for point in points:
    by_seed = {run.seed: run for run in point.variant.runs}
    for seed in sorted(point.missing + list(by_seed)):
      run = by_seed.get(seed)
      if run is None or not run.finished():
        # a start that fails (a bad value, a batch larger than the data) leaves its folder as it was
        status = f'{run.status()[0]} ({os.path.abspath(run.path)})' if run else \
            'not started, or its start failed (its output says why)'
        lines.append(f'- {point.name}, seed {seed}: {status}')
  return lines


def plot(sweep, points, path):
  """Final top-1 against each swept field: mean with ± std error bars, one line per value of the other
  fields, every seed's value as a cross; hollow markers where only one seed finished."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fields = [field for field, _ in sweep.grid]
  figure = Figure(figsize=(5.5 * len(fields), 4.2), layout='constrained')
  FigureCanvasAgg(figure)
  axes = figure.subplots(1, len(fields), squeeze=False)[0]
  for ax, (field, values) in zip(axes, sweep.grid):
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    xs = values if numeric else list(range(len(values)))
    others = sorted({tuple((f, v) for f, v in p.values if f != field) for p in points}, key=str)
    for index, rest in enumerate(others):
      color = f'C{index}'
      line = [next(p for p in points if dict(p.values)[field] == value and
                   tuple((f, v) for f, v in p.values if f != field) == rest) for value in values]
      label = point_name(rest) or 'all runs'
      means, stds, at, single = [], [], [], []
      for x, point in zip(xs, line):
        top1 = [final_top1(run) for run in point.finished().values()]
        # crosses, unlike dashes, cannot be taken for the error bars' caps
        ax.plot([x] * len(top1), top1, 'x', color=color, alpha=0.8, markersize=6, zorder=3)
        if top1:
          spread = Spread.of(top1)
          at.append(x), means.append(spread.mean), stds.append(spread.std or 0.0)
          single.append(spread.n == 1)
      if at:
        ax.errorbar(at, means, yerr=stds, color=color, capsize=3, label=label)
        for x, mean, one in zip(at, means, single):
          ax.plot(x, mean, 'o', color=color, markerfacecolor='white' if one else color, markersize=6, zorder=3)
    if numeric and min(values) >= 0 and max(values) > 0 and max(values) / min(v for v in values if v > 0) >= 10:
      ax.set_xscale('symlog', linthresh=min(v for v in values if v > 0))  # 0, 0.1, 0.3, 1, 3 evenly apart
    ax.set_xticks(xs, [value_text(v) for v in values])
    ax.set_xlabel(field)
    ax.set_ylabel('final top-1 (%)')
    ax.grid(alpha=0.3)
    if len(others) > 1:
      ax.legend(fontsize='small')
  figure.suptitle(f'{sweep.name}\nfinal top-1, mean ± std over seeds (x: each seed; hollow: one seed only)',
                  fontsize='medium')
  figure.savefig(path, dpi=100)


def _header(sweep, command, points):
  runs = [run for p in points for run in p.variant.runs]
  made_by = f'`{command}`' if command else f'the sweep of `{sweep.config}` in this folder'
  return (f'Produced by {made_by} on {datetime.date.today().isoformat()}; trained on '
          f'{"; ".join(_machines(runs))}; code {", ".join(_revisions(r for run in runs for r in run.invocations)) or "unknown"}.')


NOTES = [
    '- One row per point of the grid; n: seeds finished of those planned. Mean ± sample standard deviation '
    '(n - 1) over them; a point with one finished seed is one draw, without spread.',
    '- final: top-1 at the last update, nothing chosen on the evaluation data. best: the highest of a run\'s '
    'evaluations on the same split, so optimistic.',
    '- final - reference: per seed finished at both points, this point\'s final top-1 minus the reference '
    'point\'s (same seed, so the same initialisation and data order); mean ± std of those differences, '
    'their extremes and on how many seeds this point did better.']


def write_ablation(folder, reference='', command=''):
  """Write the ablation report of a sweep folder; returns the path of ablation.md."""
  sweep = read_sweep(folder)
  command = command or sweep.command
  chosen = reference_values(sweep, reference or sweep.reference)
  points = read_points(sweep, folder)
  rows = point_rows(sweep, points, chosen)
  header = list(rows[0])
  plot(sweep, points, os.path.join(folder, PLOT))
  missing = not_counted(points)
  planned = {p.name for p in points}
  strays = sorted(name for name in os.listdir(folder) if '=' in name and name not in planned
                  and os.path.isdir(os.path.join(folder, name)))
  existing = [run.path for p in points for run in p.variant.runs]
  if existing:
    write_report(existing, os.path.join(folder, 'runs'), command)
  warnings = [f'- {p.name}, seed {run.seed}: {collapse_warning(run)}' for p in points for run in p.variant.runs
              if run.collapsed()]
  table = markdown_table(header, rows)
  done = sum(len(p.finished()) for p in points)
  status = (f'All {done} runs finished.' if not missing else
            f'{done} of {done + len(missing)} planned runs finished; not counted:')
  lines = [f'# Ablation: {sweep.name}', '', _header(sweep, command, points), '',
           f'Config `{sweep.config}`' + (f' with {" ".join(f"`{o}`" for o in sweep.overrides)}' if sweep.overrides
                                          else '') + f'; {sweep.seeds} seed(s) per point.', '', *table, '',
           status, *missing, '']
  if warnings:
    lines += ['Collapsed runs (counted, but not a working recipe):', *warnings, '']
  if strays:
    lines += [f'Also in this folder, not in this grid (an earlier command\'s points): {", ".join(strays)}.', '']
  lines += [f'![final top-1 against the swept values]({PLOT})', '', *NOTES,
            '- Every run\'s status, curves and the usual comparisons: [runs/report.md](runs/report.md).', '']
  path = os.path.join(folder, 'ablation.md')
  write_atomic(path, '\n'.join(lines))
  summary = [_header(sweep, command, points), '', *table, '']
  if missing:
    summary += [f'Not counted ({len(missing)} runs):', *missing, '']
  summary += [f'![final top-1 against the swept values]({PLOT})', '',
              'Mean ± sample standard deviation over seeds; final: top-1 at the last update; best: the highest '
              'evaluation on the same split, so optimistic; differences paired by seed.']
  write_atomic(os.path.join(folder, 'summary.md'), '\n'.join(summary) + '\n')
  return path
