"""The report's tables (markdown) and curves (PNG), from runs, variants and their statistics."""
import datetime
import statistics

from report.runs import best_top1, final_top1
from report.statistics import Spread, comparisons, mean_curve, paired_difference

# (metrics group, name, axis title) of each panel of a group's plot.
PANELS = (('train', 'objective', 'training objective (the optimised loss)'),
          ('train', 'ce', 'training cross-entropy (mean of the passes)'),
          ('train', 'kl', 'R-Drop KL term (before alpha)'),
          ('eval', 'top1', '{split} top-1 accuracy (%)'))
VARIANT_COLUMNS = ('group', 'variant', 'seeds', 'split', 'final top1 (%)', 'best top1 (%)', 'best at update',
                   'wall time per run', 'samples/s', 'reference top1 (%)', 'best - reference', 'warnings')
PAIR_COLUMNS = ('group', 'comparison', 'fields that differ', 'seeds paired', 'final: difference',
                'final: min, max', 'final: seeds favouring', 'best: difference')
RUN_COLUMNS = ('run', 'variant', 'seed', 'status', 'best top1 (%)', 'best at update', 'final top1 (%)',
               'updates', 'wall time', 'samples/s', 'warnings', 'code')
NOT_SHOWN = '-'


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


def collapse_warning(run):
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
              'updates': f'{done} / {total or "?"}', 'warnings': collapse_warning(run) or NOT_SHOWN,
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
  if final.difference and final.difference.n == 1:
    row['final: difference'] = f'{final.difference.format("+")} (one seed: one draw, no evidence either way)'
  elif final.difference:
    row.update({'final: difference': final.difference.format('+'),
                'final: min, max': f'{final.difference.low:+.2f}, {final.difference.high:+.2f}',
                'final: seeds favouring': _favouring(final, earlier, later),
                'best: difference': best.difference.format('+')})
  return row


def per_class_table(variants):
  """Lines of a table of top-1 per class, a column per variant (mean over its seeds that have an
  eval_<split>.json, as `--mode eval` writes it), or [] when no run of the variants has one."""
  columns = {}
  for variant in variants:
    tables = [table for table in (run.per_class_top1() for run in variant.finished().values()) if table]
    if tables:
      columns[f'{variant.label} ({len(tables)} seed{"s" if len(tables) > 1 else ""})'] = tables
  if not columns:
    return []
  classes = list(dict.fromkeys(name for tables in columns.values() for table in tables for name in table))

  def mean(tables, name):
    values = [table[name] for table in tables if table.get(name) is not None]
    return f'{sum(values) / len(values):.2f}' if values else '-'
  return markdown_table(['class', *columns], [dict({'class': name}, **{label: mean(tables, name)
                                                                       for label, tables in columns.items()})
                                              for name in classes])


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
  splits = ', '.join(_unique(run.split for variant in variants for run in variant.runs))
  for ax, (group, name, axis_title) in zip(axes, PANELS):
    for index, variant in enumerate(variants):
      if name == 'kl' and not variant.config.get('rdrop', {}).get('alpha'):
        continue  # without R-Drop there is no KL term: not a line at 0
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
    ax.set_title(axis_title.format(split=splits))
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


def group_title(model, data):
  return f'{model} on {data}'


def selection_notes(groups):
  """What `final` and `best` are, and on which split each group selects and reports."""
  by_split = {}
  for (model, data), variants in groups.items():
    for split in _unique(run.split for v in variants for run in v.runs):
      by_split.setdefault(split, []).append(group_title(model, data))
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
    title = group_title(model, data)
    for earlier, later, _ in comparisons(variants):
      final = paired_difference(earlier, later, final_top1)
      if final.difference and final.difference.n > 1:
        d = final.difference
        pairs.append(f'{title}, {later.label} minus {earlier.label}, paired by seed: final top-1 '
                     f'{d.format("+")} points (min {d.low:+.2f}, max {d.high:+.2f}); {later.label} better on '
                     f'{final.later_better} of {d.n} seeds, {earlier.label} on {final.earlier_better}.')
  lines += markdown_table(columns, variant_rows) + ['']
  lines += [line for text in pairs + warnings for line in (text, '')]
  seeds = max((len(variant.finished()) for variants in groups.values() for variant in variants), default=0)
  lines.append(('Mean ± sample standard deviation over seeds.' if seeds > 1 else
                'One run per variant: no spread, and a difference between single runs can be the seed\'s doing '
                '(SEEDS=3 runs every variant over 3 seeds).')
               + ' Final: top-1 at the last update. Best: the highest of the evaluations on the same split, so '
               'optimistic.')
  return '\n'.join(lines) + '\n'
