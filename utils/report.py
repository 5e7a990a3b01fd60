"""From run folders to the paper's table: `report.md` with one row per run, and training curves as PNGs.

  python main.py --mode report --workdir reports/digits runs/digits_vit runs/digits_vit_rdrop

Runs with the same model and dataset form a group: the report names the config fields that differ
between them, labels each run by them (baseline / R-Drop alpha=...) and plots the group's curves on
shared axes. Everything is read from what training leaves in a workdir; nothing is recomputed.

A run counts as finished when its newest checkpoint is at its last update and that update's evaluation
is in metrics.jsonl. The last update comes from the checkpoint manifest's `total_updates` when training
records it, else from `train.updates` in the saved config; an epoch-based run without it cannot be
judged and is reported as such. Only finished runs show accuracies: a number from a run that stopped
halfway is not a result.
"""
import dataclasses
import datetime
import json
import os

from utils import checkpoint
from utils import workdir as workdir_lib
from utils.runlog import NOT_HYPERPARAMETERS, read_jsonl

# Fields that differ between runs without making them different experiments.
NOT_A_VARIANT = NOT_HYPERPARAMETERS | {'experiment'}
# (metrics group, name, axis title) of each panel of a group's plot.
PANELS = (('train', 'objective', 'training objective (R-Drop: 2 CE + alpha KL)'),
          ('train', 'ce', 'training cross-entropy (mean of the passes)'),
          ('train', 'kl', 'R-Drop KL term (before alpha)'),
          ('eval', 'top1', 'eval top-1 accuracy (%)'))
COLUMNS = ('run', 'experiment', 'variant', 'status', 'best top1 (%)', 'best at update', 'final top1 (%)',
           'updates', 'wall time', 'samples/s', 'reference top1 (%)', 'best - reference', 'code')
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

  @property
  def group(self):
    return self.config['model']['name'], self.config['data']['name']

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
  # Training rows written before the objective got its own name call it 'loss'.
  metrics = [{'objective': r['loss'], **r} if r['group'] == 'train' and 'loss' in r else r
             for r in _read_jsonl(metrics_path, notes)]
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


def differing_fields(configs):
  """Dotted config fields whose values are not the same in all `configs` (a missing field differs too)."""
  flats = [_flatten(c) for c in configs]
  keys = sorted(set().union(*flats))
  return [k for k in keys if any(f.get(k, ABSENT) != flats[0].get(k, ABSENT) for f in flats)]


def variant(config, differing):
  """'baseline' or 'R-Drop alpha=...', plus the other fields that set this run apart from its group."""
  flat = _flatten(config)
  alpha = flat.get('rdrop.alpha', 0.0)
  parts = [f'R-Drop alpha={alpha:g}' if alpha else 'baseline']
  for key in differing:
    if key in NOT_A_VARIANT or key == 'rdrop.alpha':
      continue
    if key.startswith('rdrop.'):
      if alpha:  # without R-Drop its reduction and form change nothing
        parts.append(f'{key[len("rdrop."):]}={flat.get(key, ABSENT)}')
    else:
      parts.append(f'{key}={flat.get(key, ABSENT)}')
  return parts[0] + (', ' + ', '.join(parts[1:]) if parts[1:] else '')


def _names(runs):
  """Folder names, or the paths as given where two folders share a name."""
  names = [os.path.basename(os.path.normpath(r.path)) for r in runs]
  return [n if names.count(n) == 1 else r.path for n, r in zip(names, runs)]


def _duration(seconds):
  seconds = round(seconds)
  if seconds < 60:
    return f'{seconds}s'
  if seconds < 3600:
    return f'{seconds // 60}m {seconds % 60:02d}s'
  return f'{seconds // 3600}h {seconds % 3600 // 60:02d}m'


def _provenance(run):
  revisions = list(dict.fromkeys(r.get('git_revision', '')[:7] or 'no git' for r in run.invocations))
  devices = list(dict.fromkeys(f'{r.get("device", "?")} x{r.get("world_size", 1)}' for r in run.invocations))
  return ', '.join(revisions + devices) or 'no run.jsonl'


def table_row(run, name, label):
  """The cells of one run, in COLUMNS order; result cells stay empty unless the run finished."""
  status, done, total = run.status()
  row = dict.fromkeys(COLUMNS, NOT_SHOWN)
  row.update({'run': name, 'experiment': run.config.get('experiment') or NOT_SHOWN, 'variant': label,
              'status': status, 'updates': f'{done} / {total or "?"}', 'code': _provenance(run)})
  reference = run.config.get('reference', {}).get('top1', 0.0)
  if reference > 0:
    row['reference top1 (%)'] = f'{reference:.2f}'
  if status != 'finished':
    return row
  evals = run.evals()
  best = max(evals, key=lambda r: r['top1'])  # max() keeps the first: the update where it was first reached
  final = next(r for r in evals if r['update'] == total)
  row.update({'best top1 (%)': f'{best["top1"]:.2f}', 'best at update': str(best['update']),
              'final top1 (%)': f'{final["top1"]:.2f}'})
  seconds, measured = run.wall_seconds()
  if seconds:
    estimate = '' if measured else '~'
    row['wall time'] = estimate + _duration(seconds)
    row['samples/s'] = f'{estimate}{done * run.config["train"]["batch_size"] / seconds:.1f}'
  if reference > 0:
    row['best - reference'] = f'{best["top1"] - reference:+.2f}'
  return row


def _cell(value):
  return str(value).replace('|', '\\|').replace('\n', ' ')


def markdown_table(header, rows):
  lines = ['| ' + ' | '.join(map(_cell, header)) + ' |', '|' + '---|' * len(header)]
  return lines + ['| ' + ' | '.join(map(_cell, row)) + ' |' for row in rows]


def plot_group(runs, labels, title, path):
  """One PNG: a panel per curve in PANELS, every run of the group on the same axes."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  from matplotlib.ticker import MaxNLocator
  figure = Figure(figsize=(11, 7.5), layout='constrained')
  FigureCanvasAgg(figure)
  axes = figure.subplots(2, 2).flatten()
  for ax, (group, name, axis_title) in zip(axes, PANELS):
    for run, label in zip(runs, labels):
      points = [(r['update'], r[name]) for r in run.metrics if r['group'] == group and name in r]
      if not points:
        continue
      finished = run.status()[0] == 'finished'
      updates, values = zip(*points)
      ax.plot(updates, values, label=label if finished else f'{label} (unfinished)',
              linestyle='-' if finished else '--', marker='o' if group == 'eval' or len(points) < 20 else None,
              markersize=3)
    ax.set_title(axis_title)
    ax.set_xlabel('update')
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
  # One legend under all panels: variant labels can be long, and every panel shows the same runs.
  legend = {}
  for ax in axes:
    legend.update(zip(*reversed(ax.get_legend_handles_labels())))
  figure.legend(legend.values(), legend.keys(), loc='outside lower center', fontsize='small')
  figure.suptitle(title)
  figure.savefig(path, dpi=100)


def write_report(run_dirs, out_dir):
  """Write `out_dir/report.md` and one PNG per group of runs; returns the path of report.md."""
  runs = [load_run(path) for path in run_dirs]
  os.makedirs(out_dir, exist_ok=True)
  names = _names(runs)
  groups = {}
  for index, run in enumerate(runs):
    groups.setdefault(run.group, []).append(index)

  labels, sections = [None] * len(runs), []
  for (model, data), members in groups.items():
    differing = differing_fields([runs[i].config for i in members])
    for i in members:
      labels[i] = variant(runs[i].config, differing)
    title = f'{model} on {data}'
    plot_name = f'{data}_{model}.png'
    plot_group([runs[i] for i in members], [f'{labels[i]} ({names[i]})' for i in members], title,
               os.path.join(out_dir, plot_name))
    sections += ['', f'## {title}', '']
    if len(members) == 1:
      sections.append('One run in this group: nothing to compare.')
    elif not differing:
      sections.append('The configs of these runs are identical: they are repeats.')
    else:
      sections.append('Config fields that differ between these runs:')
      flats = [_flatten(runs[i].config) for i in members]
      sections += [''] + markdown_table(
          ['field'] + [names[i] for i in members],
          [[key] + [repr(flat[key]) if key in flat else ABSENT for flat in flats] for key in differing])
    sections += ['', f'![{title}: training curves]({plot_name})']

  rows = [table_row(run, name, label) for run, name, label in zip(runs, names, labels)]
  references = sorted({f'{r.config.get("experiment")}: {r.config["reference"]["source"]}' for r in runs
                       if r.config.get('reference', {}).get('top1', 0.0) > 0})
  notes = [f'- {name}: {"; ".join(run.notes)}' for run, name in zip(runs, names) if run.notes]
  lines = [f'# Report on {len(runs)} run(s)', '',
           f'Written {datetime.datetime.now().isoformat(timespec="seconds")} from:', '']
  lines += [f'- `{os.path.abspath(run.path)}`' for run in runs]
  lines += ['', *markdown_table(COLUMNS, [[row[c] for c in COLUMNS] for row in rows]), '',
            '- Only finished runs show accuracies (see the status column; resume the others with '
            '`python main.py --mode resume --workdir RUN`).',
            '- Best: the highest evaluation top-1 in metrics.jsonl, at the first update that reached it; '
            'final: the evaluation at the last update.',
            '- Wall time: as recorded by training when its checkpoints hold `train_seconds`; marked ~ when '
            'estimated instead from the first start in run.jsonl to the last write of metrics.jsonl or a '
            'checkpoint, which also counts any pause between a stop and its resume.',
            '- samples/s: updates x train.batch_size / wall time, so start-up and evaluation are counted '
            '(R-Drop runs pass each sample through the model twice).',
            '- best - reference: our best top-1 minus the source\'s number (config `reference.top1`).',
            '- code: git revision(s) and device(s) of the invocations in run.jsonl.']
  if references:
    lines += ['', 'Reference numbers:', ''] + [f'- {r}' for r in references]
  if notes:
    lines += ['', 'Notes:', ''] + notes
  lines += sections
  path = os.path.join(out_dir, 'report.md')
  workdir_lib.write_atomic(path, '\n'.join(lines) + '\n')
  return path
