"""From run folders to the paper's table: `report.md` with curves as PNGs, and `summary.md` for the README.

  python main.py --mode report --workdir reports/demo runs/demo/baseline runs/demo/rdrop
  python main.py --mode report --workdir reports/demo runs/demo/*/seed_*     (after SEEDS=3 bash run.sh demo)

Runs with the same model and dataset form a group. Within a group, runs whose configs are the same but
for `seed` (and fields that only name, locate or pace a run) are one variant, labelled by the fields
that set it apart (baseline / R-Drop alpha=...). A variant's finished seeds are summarised as mean +-
sample standard deviation; two variants that differ in one field (or the only two of a group) are
compared seed by seed, because the paired difference cancels what a seed does to both runs: its spread,
not the spread of each variant, says whether the change is real.

A run counts as finished when its newest checkpoint is at its last update and that update's evaluation
is in metrics.jsonl. The last update comes from the checkpoint manifest's `total_updates` when training
records it, else from `train.updates` in the saved config; an epoch-based run without it cannot be
judged and is reported as such. Only finished runs count: a number from a run that stopped halfway is
not a result.
"""
import dataclasses
import datetime
import json
import os
import statistics

from utils import checkpoint
from utils import workdir as workdir_lib
from utils.runlog import read_jsonl

# Fields that differ between runs without making them different variants.
NOT_A_VARIANT = workdir_lib.NOT_LEARNING | {'experiment', 'seed'}
# (metrics group, name, axis title) of each panel of a group's plot.
PANELS = (('train', 'objective', 'training objective (the optimised loss)'),
          ('train', 'ce', 'training cross-entropy (mean of the passes)'),
          ('train', 'kl', 'R-Drop KL term (before alpha)'),
          ('eval', 'top1', 'eval top-1 accuracy (%)'))
VARIANT_COLUMNS = ('group', 'variant', 'seeds', 'split', 'final top1 (%)', 'best top1 (%)', 'best at update',
                   'wall time per run', 'samples/s', 'reference top1 (%)', 'best - reference', 'warnings')
PAIR_COLUMNS = ('group', 'comparison', 'fields that differ', 'seeds paired', 'final: difference',
                'final: min, max', 'final: seeds favouring', 'best: difference')
RUN_COLUMNS = ('run', 'variant', 'seed', 'status', 'best top1 (%)', 'best at update', 'final top1 (%)',
               'updates', 'wall time', 'samples/s', 'warnings', 'code')
NOT_SHOWN = '-'
ABSENT = '(absent)'  # a config field one run has and another lacks


@dataclasses.dataclass
class Run:
  path: str
  config: dict
  metrics: list
  invocations: list           # run.jsonl: one record per train / resume
  manifest: dict | None       # of the newest checkpoint
  last_write: float | None    # newest mtime of metrics.jsonl and checkpoint manifests
  notes: list
  name: str = ''              # as the report shows it: the shortest path suffix no other run shares

  @property
  def group(self):
    return self.config['model']['name'], self.config['data']['name']

  @property
  def seed(self):
    return self.config.get('seed', 0)

  @property
  def split(self):
    return self.config.get('eval', {}).get('split', 'test')

  def evals(self):
    return [row for row in self.metrics if row['group'] == 'eval']

  def total_updates(self):
    if self.manifest and 'total_updates' in self.manifest:
      return self.manifest['total_updates']
    return self.config['train']['updates'] or None

  def status(self):
    """('finished' or why the run is not a result, updates done, total updates or None)."""
    total = self.total_updates()
    done = self.manifest['update'] if self.manifest else 0
    if total is None:
      return ('length unknown: epoch-based run whose checkpoints do not record total_updates', done, None)
    if done < total:
      what = 'no checkpoint yet' if not done else f'last checkpoint at update {done}'
      return (f'unfinished: {what} of {total}', done, total)
    if not any(row['update'] == total for row in self.evals()):
      return (f'incomplete: metrics.jsonl has no evaluation at the last update {total}', done, total)
    return ('finished', done, total)

  def finished(self):
    return self.status()[0] == 'finished'

  def best(self):
    """The evaluation with the highest top-1, at the first update that reached it."""
    return max(self.evals(), key=lambda r: r['top1'])

  def final(self):
    """The evaluation at the last update (of a finished run)."""
    return next(r for r in self.evals() if r['update'] == self.total_updates())

  def collapsed(self):
    """Evaluations that training flagged as collapsed: (nearly) one class, or one output, for every sample."""
    return [row for row in self.evals() if row.get('collapsed')]

  def wall_seconds(self):
    """(seconds, whether training measured them) or (None, False) when the files cannot tell."""
    if self.manifest and 'train_seconds' in self.manifest:
      return self.manifest['train_seconds'], True
    starts = [datetime.datetime.fromisoformat(r['time']) for r in self.invocations
              if r.get('mode') in ('train', 'resume')]
    if not starts or self.last_write is None:
      return None, False
    seconds = self.last_write - starts[0].timestamp()
    return (seconds, False) if seconds >= 0 else (None, False)  # negative: copied without file times


def final_top1(run):
  return run.final()['top1']


def best_top1(run):
  return run.best()['top1']


def _read_jsonl(path, notes):
  """Rows of a JSON-lines file (none if it is missing); a cut-off last line, as a kill leaves, is noted."""
  rows, cut_off = read_jsonl(path)
  if cut_off:
    notes.append(f'{os.path.basename(path)} ends in a cut-off line (ignored)')
  return rows


def _newest_manifest(workdir):
  """(manifest, its mtime) of the newest checkpoint folder that holds one, or (None, None).

  The checksums are not verified: the report loads no weights, and resume and eval check them.
  """
  for folder in reversed(checkpoint.committed(workdir_lib.checkpoints_dir(workdir))):
    path = os.path.join(folder, checkpoint.MANIFEST)
    try:
      with open(path) as f:
        return json.load(f), os.path.getmtime(path)
    except (OSError, ValueError):
      continue
  return None, None


def load_run(path):
  """Everything the report needs from one workdir; ValueError if `path` is not a training run."""
  if not os.path.isdir(path):
    raise ValueError(f'{os.path.abspath(path)} is not a directory')
  config_path = os.path.join(path, 'config.json')
  if not os.path.isfile(config_path):
    raise ValueError(f'{os.path.abspath(path)} is not a training run: it has no config.json, which main.py '
                     f'writes when training starts')
  try:
    with open(config_path) as f:
      config = json.load(f)
  except ValueError as err:
    raise ValueError(f'{os.path.abspath(config_path)} is not valid JSON: {err}') from err
  notes = []
  metrics_path = os.path.join(path, 'metrics.jsonl')
  metrics = _read_jsonl(metrics_path, notes)
  for row in metrics:  # runs written before the objective had its own name logged it as `loss`
    if row['group'] == 'train' and 'objective' not in row and 'loss' in row:
      row['objective'] = row['loss']
  invocations = _read_jsonl(os.path.join(path, 'run.jsonl'), notes)
  manifest, manifest_time = _newest_manifest(path)
  write_times = [t for t in (manifest_time, os.path.getmtime(metrics_path) if metrics else None) if t]
  return Run(path, config, metrics, invocations, manifest, max(write_times, default=None), notes)


def _flatten(config, prefix=''):
  flat = {}
  for key, value in config.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def _rdrop_detail(key):
  return key.startswith('rdrop.') and key != 'rdrop.alpha'


def what_matters(config):
  """The dotted config fields that can change what a run learns, except its seed.

  Names, paths and cadences (NOT_A_VARIANT) are left out, and so are R-Drop's details when R-Drop is off.
  """
  flat = _flatten(config)
  rdrop_off = not flat.get('rdrop.alpha', 0.0)
  return {key: value for key, value in flat.items()
          if key not in NOT_A_VARIANT and not (rdrop_off and _rdrop_detail(key))}


def differing_fields(configs):
  """Fields of what_matters whose values are not the same in all `configs` (a missing field differs too).

  An R-Drop detail (form, reduction) is compared among the configs with R-Drop on: a baseline has none.
  """
  flats = [what_matters(c) for c in configs]
  differing = []
  for key in sorted(set().union(*flats)):
    values = [f.get(key, ABSENT) for f in flats if not (_rdrop_detail(key) and not f.get('rdrop.alpha', 0.0))]
    if any(value != values[0] for value in values):
      differing.append(key)
  return differing


def variant_label(config, differing):
  """'baseline' or 'R-Drop alpha=...', plus every other field in `differing`, as this config sets it."""
  matters = what_matters(config)
  alpha = matters.get('rdrop.alpha', 0.0)
  parts = [f'R-Drop alpha={alpha:g}' if alpha else 'baseline']
  for key in differing:
    if key == 'rdrop.alpha' or (_rdrop_detail(key) and not alpha):
      continue  # without R-Drop its reduction and form change nothing
    name = key[len('rdrop.'):] if _rdrop_detail(key) else key
    parts.append(f'{name}={matters.get(key, ABSENT)}')
  return ', '.join(parts)


@dataclasses.dataclass
class Variant:
  """The runs of one config over seeds."""
  runs: list
  label: str = ''

  @property
  def config(self):
    return self.runs[0].config

  def finished(self):
    """{seed: run} of the finished runs; a second run of one seed is a repeat, not more evidence."""
    by_seed = {}
    for run in self.runs:
      if run.finished():
        by_seed.setdefault(run.seed, run)
    return dict(sorted(by_seed.items()))

  def repeats(self):
    """Finished runs left out because an earlier finished run has the same seed."""
    counted = self.finished()
    return [run for run in self.runs if run.finished() and counted[run.seed] is not run]


def group_variants(runs):
  """{(model, data): [Variant, ...]}, both in the order the runs were given; labels set per group."""
  groups = {}
  for run in runs:
    variants = groups.setdefault(run.group, [])
    same = next((v for v in variants if what_matters(v.config) == what_matters(run.config)), None)
    if same:
      same.runs.append(run)
    else:
      variants.append(Variant([run]))
  for variants in groups.values():
    differing = differing_fields([v.config for v in variants])
    for v in variants:
      v.label = variant_label(v.config, differing)
  return groups


@dataclasses.dataclass(frozen=True)
class Spread:
  """Count, mean, sample standard deviation (None for fewer than 2 values) and extremes of some numbers."""
  n: int
  mean: float
  std: float | None
  low: float
  high: float

  @classmethod
  def of(cls, values):
    values = list(values)
    return cls(len(values), statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None,
               min(values), max(values))

  def format(self, sign=''):
    text = f'{self.mean:{sign}.2f}'
    return text + (f' ± {self.std:.2f}' if self.std is not None else '')


@dataclasses.dataclass(frozen=True)
class Paired:
  """`later` minus `earlier` over the seeds both finished."""
  seeds: list
  difference: Spread | None   # None when no seed finished in both
  later_better: int
  earlier_better: int
  ties: int


def paired_difference(earlier, later, metric):
  """Per seed finished in both variants, metric(later run) - metric(earlier run), summarised."""
  a, b = earlier.finished(), later.finished()
  seeds = sorted(a.keys() & b.keys())
  differences = [metric(b[seed]) - metric(a[seed]) for seed in seeds]
  return Paired(seeds, Spread.of(differences) if differences else None, sum(d > 0 for d in differences),
                sum(d < 0 for d in differences), sum(d == 0 for d in differences))


def comparisons(variants):
  """(earlier, later, differing fields) for the pairs worth comparing: those that differ in one field, or
  the two variants of a group of two (whatever differs, e.g. R-Drop with the learning rate tuned for it)."""
  pairs = []
  for i, earlier in enumerate(variants):
    for later in variants[i + 1:]:
      fields = differing_fields([earlier.config, later.config])
      if len(fields) == 1 or len(variants) == 2:
        pairs.append((earlier, later, fields))
  return pairs


def mean_curve(runs, group, name):
  """(updates, mean, low, high) of one logged scalar over `runs`, at the updates every run logged."""
  series = [{row['update']: row[name] for row in run.metrics if row['group'] == group and name in row}
            for run in runs]
  updates = sorted(set.intersection(*map(set, series))) if series else []
  values = [[s[u] for s in series] for u in updates]
  return updates, [statistics.mean(v) for v in values], [min(v) for v in values], [max(v) for v in values]


def _names(runs):
  """Each run's shortest path suffix that no other run shares: 'baseline', or 'baseline/seed_0'."""
  parts = [os.path.normpath(os.path.abspath(r.path)).split(os.sep) for r in runs]
  names = []
  for p in parts:
    for k in range(1, len(p) + 1):
      name = '/'.join(p[-k:])
      if sum('/'.join(q[-k:]) == name for q in parts) == 1:
        break
    names.append(name)
  return names


def _duration(seconds):
  seconds = round(seconds)
  if seconds < 60:
    return f'{seconds}s'
  if seconds < 3600:
    return f'{seconds // 60}m {seconds % 60:02d}s'
  return f'{seconds // 3600}h {seconds % 3600 // 60:02d}m'


def _unique(values):
  return list(dict.fromkeys(values))


def _revisions(invocations):
  return _unique(r.get('git_revision', '')[:7] or 'no git' for r in invocations)


def _provenance(run):
  revisions = _revisions(run.invocations)
  devices = _unique(f'{r.get("device", "?")} x{r.get("world_size", 1)}' for r in run.invocations)
  return ', '.join(revisions + devices) or 'no run.jsonl'


def _collapse_warning(run):
  rows = run.collapsed()
  if not rows:
    return ''
  shares = [row['majority_fraction'] for row in rows if 'majority_fraction' in row]
  information = [row['prediction_information'] for row in rows if 'prediction_information' in row]
  measures = ([f'up to {100 * max(shares):.0f}% of samples in one class'] if shares else []) + \
      ([f'as little as {min(information):.1g} x ln C of information about the image'] if information else [])
  return f'COLLAPSED at update {", ".join(str(row["update"]) for row in rows)}' + \
      (f': {", ".join(measures)}' if measures else '')


def _samples_per_second(run, seconds):
  return run.status()[1] * run.config['train']['batch_size'] / seconds


def _speed(runs):
  """(wall time, samples/s) cells: means over finished `runs`; '~' marks an estimate from file times."""
  timed = [(run, *run.wall_seconds()) for run in runs]
  timed = [(run, seconds, measured) for run, seconds, measured in timed if seconds]
  if not timed:
    return NOT_SHOWN, NOT_SHOWN
  mark = '' if all(measured for _, _, measured in timed) else '~'
  return (mark + _duration(statistics.mean(seconds for _, seconds, _ in timed)),
          f'{mark}{statistics.mean(_samples_per_second(run, seconds) for run, seconds, _ in timed):.1f}')


def run_row(run, label):
  """The cells of one run, in RUN_COLUMNS order; result cells stay empty unless the run finished."""
  status, done, total = run.status()
  row = dict.fromkeys(RUN_COLUMNS, NOT_SHOWN)
  row.update({'run': run.name, 'variant': label, 'seed': str(run.seed), 'status': status,
              'updates': f'{done} / {total or "?"}', 'warnings': _collapse_warning(run) or NOT_SHOWN,
              'code': _provenance(run)})
  if status == 'finished':
    best = run.best()
    row.update({'best top1 (%)': f'{best["top1"]:.2f}', 'best at update': str(best['update']),
                'final top1 (%)': f'{final_top1(run):.2f}'})
    row['wall time'], row['samples/s'] = _speed([run])
  return row


def _seeds_cell(variant):
  finished = variant.finished()
  others = [run for run in variant.runs if not run.finished()]
  cell = f'{len(finished)} of {len(variant.runs)}'
  if others:
    cell += ' (not counted: ' + ', '.join(f'seed {run.seed} {run.status()[0].split(":")[0]}' for run in others) + ')'
  if variant.repeats():
    cell += ' (repeats of a seed not counted: ' + ', '.join(run.name for run in variant.repeats()) + ')'
  return cell


def variant_row(title, variant):
  """The cells of one variant, in VARIANT_COLUMNS order: statistics over its finished seeds."""
  runs = list(variant.finished().values())
  row = dict.fromkeys(VARIANT_COLUMNS, NOT_SHOWN)
  row.update({'group': title, 'variant': variant.label, 'seeds': _seeds_cell(variant),
              'split': ', '.join(_unique(run.split for run in variant.runs))})
  collapsed = [run for run in variant.runs if run.collapsed()]
  if collapsed:
    row['warnings'] = f'COLLAPSED: {len(collapsed)} of {len(variant.runs)} runs (' + \
        ', '.join(f'seed {run.seed}' for run in collapsed) + ')'
  reference = variant.config.get('reference', {}).get('top1', 0.0)
  if reference > 0:
    row['reference top1 (%)'] = f'{reference:.2f}'
  if not runs:
    return row
  best = Spread.of(map(best_top1, runs))
  at = Spread.of(run.best()['update'] for run in runs)
  row.update({'final top1 (%)': Spread.of(map(final_top1, runs)).format(), 'best top1 (%)': best.format(),
              'best at update': str(at.low) if at.low == at.high else f'{at.low}-{at.high}'})
  row['wall time per run'], row['samples/s'] = _speed(runs)
  if reference > 0:
    row['best - reference'] = f'{best.mean - reference:+.2f}'
  return row


def _favouring(pair, earlier, later):
  return f'{later.label}: {pair.later_better}, {earlier.label}: {pair.earlier_better}, tie: {pair.ties}'


def pair_row(title, earlier, later, fields):
  """The cells of one comparison, in PAIR_COLUMNS order: later minus earlier, matched by seed."""
  final, best = paired_difference(earlier, later, final_top1), paired_difference(earlier, later, best_top1)
  row = dict.fromkeys(PAIR_COLUMNS, NOT_SHOWN)
  row.update({'group': title, 'comparison': f'{later.label} minus {earlier.label}', 'fields that differ':
              ', '.join(fields), 'seeds paired': f'{len(final.seeds)} ({", ".join(map(str, final.seeds))})'})
  if final.difference:
    row.update({'final: difference': final.difference.format('+'),
                'final: min, max': f'{final.difference.low:+.2f}, {final.difference.high:+.2f}',
                'final: seeds favouring': _favouring(final, earlier, later),
                'best: difference': best.difference.format('+')})
  return row


def _cell(value):
  return str(value).replace('|', '\\|').replace('\n', ' ')


def markdown_table(header, rows):
  """Lines of a markdown table; `rows` are dicts keyed by the header's names."""
  lines = ['| ' + ' | '.join(map(_cell, header)) + ' |', '|' + '---|' * len(header)]
  return lines + ['| ' + ' | '.join(_cell(row[c]) for c in header) + ' |' for row in rows]


def plot_group(variants, title, path):
  """One PNG: a panel per curve in PANELS; per variant the mean over finished seeds with a min-max band,
  and each unfinished run dashed on its own."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  from matplotlib.ticker import MaxNLocator
  figure = Figure(figsize=(11, 7.5), layout='constrained')
  FigureCanvasAgg(figure)
  axes = figure.subplots(2, 2).flatten()
  for ax, (group, name, axis_title) in zip(axes, PANELS):
    for index, variant in enumerate(variants):
      color, marker = f'C{index}', 'o' if group == 'eval' else None
      finished = list(variant.finished().values())
      updates, mean, low, high = mean_curve(finished, group, name)
      if updates:
        seeds = f'mean of {len(finished)} seeds, band min-max' if len(finished) > 1 else '1 run'
        ax.plot(updates, mean, color=color, marker=marker, markersize=3, label=f'{variant.label} ({seeds})')
        if len(finished) > 1:
          ax.fill_between(updates, low, high, color=color, alpha=0.2, linewidth=0)
      for run in variant.runs:
        if not run.finished():
          updates, values, _, _ = mean_curve([run], group, name)
          ax.plot(updates, values, color=color, linestyle='--', linewidth=1, marker=marker, markersize=2,
                  label=f'{variant.label}, seed {run.seed} (unfinished)')
    ax.set_title(axis_title)
    ax.set_xlabel('update')
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
  # One legend under all panels: variant labels can be long, and every panel shows the same variants.
  legend = {}
  for ax in axes:
    legend.update(zip(*reversed(ax.get_legend_handles_labels())))
  figure.legend(legend.values(), legend.keys(), loc='outside lower center', fontsize='small')
  figure.suptitle(title)
  figure.savefig(path, dpi=100)


def _group_title(model, data):
  return f'{model} on {data}'


def _selection_notes(groups):
  """What `final` and `best` are, and on which split each group selects and reports."""
  by_split = {}
  for (model, data), variants in groups.items():
    for split in _unique(run.split for v in variants for run in v.runs):
      by_split.setdefault(split, []).append(_group_title(model, data))
  notes = ['- **final**: top-1 at the last update. Nothing is chosen on the evaluation data: compare recipes on it.',
           '- **best**: the highest of a run\'s evaluations, at the first update that reached it. It is chosen on '
           'the same data it is measured on, so it is biased upwards (optimistic), the more so the more often a '
           'run evaluates; it is shown because papers often report it (`best - reference` compares it with the '
           'source\'s number).']
  for split, titles in by_split.items():
    where = ', '.join(titles)
    if split == 'test':
      notes.append(f'- {where}: evaluated on the test split, with no validation split: best is selected on '
                   f'the test set itself.')
    else:
      notes.append(f'- {where}: evaluated on the `{split}` split (`eval.split`), not on a test split: final '
                   f'and best are {split} accuracies, best selected on {split}. A test accuracy at the '
                   f'selected update would need evaluations on a labelled test split too, which these runs '
                   f'do not log.')
  return notes


NOTES = [
    '- A variant is the runs whose configs are the same but for `seed` (paths, names and cadences aside); '
    'mean ± sample standard deviation (n - 1) over its finished seeds, one run per seed.',
    '- Paired difference: for each seed finished by both variants, the later variant\'s top-1 minus the '
    'earlier one\'s; mean ± sample standard deviation of those differences, their extremes, and how many '
    'seeds favour each side. Pairs compared: variants that differ in one field, or the two variants of a '
    'group of two.',
    '- Only finished runs count (see the status column of the runs; resume the others with '
    '`python main.py --mode resume --workdir RUN`).',
    '- Wall time: as recorded by training when its checkpoints hold `train_seconds`; marked ~ when '
    'estimated instead from the first start in run.jsonl to the last write of metrics.jsonl or a '
    'checkpoint, which also counts any pause between a stop and its resume.',
    '- samples/s: updates x train.batch_size / wall time, so start-up and evaluation are counted '
    '(R-Drop runs pass each sample through the model twice).',
    '- COLLAPSED: an evaluation at which training found the model giving (nearly) one class, or one '
    'output, for every sample (eval.collapse_majority, eval.collapse_information); the run\'s log names '
    'the likely cause.',
    '- code: git revision(s) and device(s) of the invocations in run.jsonl.']


def _machines(runs):
  """Where the runs trained, from run.jsonl ('machine' when training recorded it, else the device)."""
  return _unique(', '.join(filter(None, (r.get('machine'), f'{r.get("device", "?")} x{r.get("world_size", 1)}',
                                          f'Paddle {r.get("paddle", "?")}')))
                 for run in runs for r in run.invocations) or ['unknown (no run.jsonl)']


def summary(groups, runs, command, variant_rows):
  """`summary.md`: the results in a few lines, stating the command, date, machine and code that made them.
  `variant_rows` are report.md's, in the order of `groups`."""
  revisions = _revisions(r for run in runs for r in run.invocations)
  made_by = f'`{command}`' if command else 'runs given to `python main.py --mode report` (no --command)'
  lines = [f'Produced by {made_by} on {datetime.date.today().isoformat()}; trained on '
           f'{"; ".join(_machines(runs))}; code {", ".join(revisions) or "unknown"}.', '']
  columns = ('group', 'variant', 'seeds', 'split', 'final top1 (%)', 'best top1 (%)', 'wall time per run')
  warnings = [f'**Warning**: {row["group"]}, {row["variant"]}: {row["warnings"]}.' for row in variant_rows
              if row['warnings'] != NOT_SHOWN]
  pairs = []
  for (model, data), variants in groups.items():
    title = _group_title(model, data)
    for earlier, later, _ in comparisons(variants):
      final = paired_difference(earlier, later, final_top1)
      if final.difference and final.difference.n > 1:
        d = final.difference
        pairs.append(f'{title}, {later.label} minus {earlier.label}, paired by seed: final top-1 '
                     f'{d.format("+")} points (min {d.low:+.2f}, max {d.high:+.2f}); {later.label} better on '
                     f'{final.later_better} of {d.n} seeds, {earlier.label} on {final.earlier_better}.')
  lines += markdown_table(columns, variant_rows) + ['']
  lines += [line for text in pairs + warnings for line in (text, '')]
  lines.append('Mean ± sample standard deviation over seeds. Final: top-1 at the last update. Best: the highest '
               'of the evaluations on the same split, so optimistic.')
  return '\n'.join(lines) + '\n'


def write_report(run_dirs, out_dir, command=''):
  """Write `out_dir/report.md`, `out_dir/summary.md` and one PNG per group; returns the path of report.md.

  `command` is what produced the runs (e.g. `SEEDS=3 bash run.sh demo`), quoted in summary.md.
  """
  runs = [load_run(path) for path in run_dirs]
  for run, name in zip(runs, _names(runs)):
    run.name = name
  os.makedirs(out_dir, exist_ok=True)
  groups = group_variants(runs)

  variant_rows, pair_rows, run_rows, sections = [], [], [], []
  for (model, data), variants in groups.items():
    title = _group_title(model, data)
    variant_rows += [variant_row(title, v) for v in variants]
    pair_rows += [pair_row(title, *pair) for pair in comparisons(variants)]
    run_rows += [run_row(run, v.label) for v in variants for run in v.runs]
    plot_name = f'{data}_{model}.png'
    plot_group(variants, title, os.path.join(out_dir, plot_name))
    sections += ['', f'## {title}', '']
    differing = differing_fields([v.config for v in variants])
    if len(variants) == 1:
      sections.append('One variant in this group: nothing to compare.')
    else:
      sections.append('Config fields that differ between these variants:')
      flats = [_flatten(v.config) for v in variants]
      sections += [''] + markdown_table(
          ['field'] + [v.label for v in variants],
          [dict(field=key, **{v.label: repr(flat[key]) if key in flat else ABSENT
                              for v, flat in zip(variants, flats)}) for key in differing])
    sections += ['', f'![{title}: training curves]({plot_name})', '',
                 'Lines: mean over the finished seeds of each variant; shaded: their minimum to maximum; '
                 'dashed: unfinished runs, not in the mean.']

  collapsed = [run for run in runs if run.collapsed()]
  references = sorted({f'{r.config.get("experiment")}: {r.config["reference"]["source"]}' for r in runs
                       if r.config.get('reference', {}).get('top1', 0.0) > 0})
  notes = [f'- {run.name}: {"; ".join(run.notes)}' for run in runs if run.notes]
  lines = [f'# Report on {len(runs)} run(s), {len(variant_rows)} variant(s)', '',
           f'Written {datetime.datetime.now().isoformat(timespec="seconds")} from:', '']
  lines += [f'- `{os.path.abspath(run.path)}`' for run in runs]
  if collapsed:
    lines += ['', f'**Warning**: {len(collapsed)} run(s) collapsed to one output for every sample: '
              + ', '.join(f'{run.name} ({_collapse_warning(run)})' for run in collapsed)
              + '. Their numbers are not a working recipe; see each run\'s log for the likely cause.']
  lines += ['', '## Results', '', *markdown_table(VARIANT_COLUMNS, variant_rows)]
  if pair_rows:
    lines += ['', '### Paired differences', '', *markdown_table(PAIR_COLUMNS, pair_rows)]
  lines += ['', 'Which number is which:', '', *_selection_notes(groups), *NOTES]
  lines += ['', '## Runs', '', *markdown_table(RUN_COLUMNS, run_rows)]
  if references:
    lines += ['', 'Reference numbers:', ''] + [f'- {r}' for r in references]
  if notes:
    lines += ['', 'Notes:', ''] + notes
  lines += sections
  path = os.path.join(out_dir, 'report.md')
  workdir_lib.write_atomic(path, '\n'.join(lines) + '\n')
  workdir_lib.write_atomic(os.path.join(out_dir, 'summary.md'), summary(groups, runs, command, variant_rows))
  return path
