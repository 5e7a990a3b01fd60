"""Run folders as the report reads them, and runs grouped into variants.

A run is a workdir: its saved config, metrics.jsonl, run.jsonl and newest checkpoint manifest. Runs with
the same model and dataset form a group; within a group, runs whose configs are the same but for `seed`
(and fields that only name, locate, pace or watch a run) are one variant, labelled by the fields that
set it apart (baseline / R-Drop alpha=...).

A run counts as finished when its newest checkpoint is at its last update and that update's evaluation
is in metrics.jsonl. The last update comes from the checkpoint manifest's `total_updates` when training
records it, else from `train.updates` in the saved config; an epoch-based run without it cannot be
judged and is reported as such. Only finished runs count: a number from a run that stopped halfway is
not a result.
"""
import dataclasses
import datetime
import os

from configs.base import NOT_LEARNING
from training import workdir as workdir_lib
from utils import checkpoint
from utils.io import read_json, read_jsonl

# Fields that differ between runs without making them different variants.
NOT_A_VARIANT = NOT_LEARNING | {'experiment', 'seed'}
ABSENT = '(absent)'  # a config field one run has and another lacks


@dataclasses.dataclass
class Run:
  path: str
  config: dict
  metrics: list
  invocations: list           # run.jsonl: one record per train / resume
  manifest: checkpoint.Manifest | None  # of the newest checkpoint
  last_write: float | None    # newest mtime of metrics.jsonl and checkpoint manifests
  notes: list
  name: str = ''              # as the report shows it: the shortest path suffix no other run shares

  def per_class_top1(self):
    """{class name: top-1} of `--mode eval` on the run's split (its best checkpoint), or None without it."""
    path = os.path.join(self.path, f'eval_{self.split}.json')
    if not os.path.isfile(path):
      return None
    return read_json(path).get('per_class_top1')

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
    if self.manifest and self.manifest.total_updates is not None:
      return self.manifest.total_updates
    return self.config['train']['updates'] or None

  def status(self):
    """('finished' or why the run is not a result, updates done, total updates or None)."""
    total = self.total_updates()
    done = self.manifest.update if self.manifest else 0
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
    if self.manifest and self.manifest.train_seconds is not None:
      return self.manifest.train_seconds, True
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
    try:
      return checkpoint.read_manifest(folder, files=()), os.path.getmtime(os.path.join(folder, checkpoint.MANIFEST))
    except (checkpoint.CheckpointError, OSError):
      continue
  return None, None


def run_folders(paths):
  """`paths` with each folder that is not a run itself replaced by the runs it holds (runs/demo: its variants,
  their seeds); a folder holding none stays, for load_run to name."""
  return [run for path in paths for run in workdir_lib.runs_inside(path) or [path]]


def load_run(path):
  """Everything the report needs from one workdir; ValueError if `path` is not a training run."""
  if not os.path.isdir(path):
    raise ValueError(f'{os.path.abspath(path)} is not a directory')
  config_path = os.path.join(path, 'config.json')
  if not os.path.isfile(config_path):
    raise ValueError(f'{os.path.abspath(path)} is not a training run: it has no config.json, which main.py '
                     f'writes when training starts')
  config = read_json(os.path.abspath(config_path))
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


def flatten(config, prefix=''):
  flat = {}
  for key, value in config.items():
    if isinstance(value, dict):
      flat.update(flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def _rdrop_detail(key):
  return key.startswith('rdrop.') and key != 'rdrop.alpha'


def what_matters(config):
  """The dotted config fields that can change what a run learns, except its seed.

  Names, paths and cadences (NOT_A_VARIANT) are left out, and so are R-Drop's details when R-Drop is off.
  """
  flat = flatten(config)
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


def run_names(runs):
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
