"""What a run reports: progress with an ETA, VisualDL scalars and hyper-parameters, and `metrics.jsonl`.

Progress is a tqdm bar when stderr is a terminal with a width. Anywhere else (a log file, a pipe, a
cluster's captured output, a pseudo-terminal of 0 columns, where a bar shows nothing at all) it is one
plain line every PLAIN_LINE_SECONDS: a bar redraws itself with carriage returns, which a file keeps as
fragments glued to the log lines.
Only the process of rank 0 writes; the others get a RunLog with `enabled=False` that stays silent.
"""
import glob
import json
import os
import re
import sys
import time

from tqdm import tqdm

from utils.io import append_line, read_jsonl, write_atomic

PLAIN_LINE_SECONDS = 30
# VisualDL's scalar page sorts the tag groups by name and opens only the first (VisualDL 2.5.3,
# components/ChartPage.js: `opened: index === 0`): numbered names open it on the training curves.
VISUALDL_GROUPS = {'train': '1 train', 'eval': '2 eval'}
SIGNIFICANT_DIGITS = 4  # of what VisualDL shows: 93.87 (%), 0.1235; metrics.jsonl keeps every digit
# VisualDL's hyper-parameter page: a row per run with the config fields that most often tell runs apart, as
# numbers (sortable, and axes of its parallel-coordinates and scatter views), and as metrics the newest
# values of these scalars (VisualDL reads them from the curves, so they follow every evaluation). Column
# names without dots: VisualDL's table leaves the cells of a dotted name blank.
HPARAM_FIELDS = {'alpha': 'rdrop.alpha', 'lr': 'train.lr', 'seed': 'seed'}
HPARAM_METRICS = [f'{VISUALDL_GROUPS["eval"]}/top1', f'{VISUALDL_GROUPS["eval"]}/best_top1']
# VisualDL 2.5.3's bare address opens a page of its own choosing (here: Scalars, Graphs or Hyper Parameters,
# from one server start to the next); this one opens the curves.
VISUALDL_CURVES = 'http://localhost:8040/app/scalar'


class RunLog:
  """Log lines and progress from the start; files only from `open()` on, which training calls once its
  first update has succeeded: a start that fails before leaves no record."""

  def __init__(self, workdir, enabled, start_update, total_updates, samples_per_update=0):
    self.enabled = enabled
    self.start_update = start_update
    self.metrics_path = os.path.join(workdir, 'metrics.jsonl')
    self.vdl_dir = os.path.join(workdir, 'vdl')
    self.name = run_name(workdir)
    self.writer = None
    if not enabled:
      return
    if _terminal_columns() > 0:
      self.display = _Bar(start_update, total_updates)
    else:
      self.display = _PlainLines(start_update, total_updates, samples_per_update)

  def open(self, config):
    """Start the files: metrics.jsonl without the rows logged past the start (by a run that crashed after
    them), the VisualDL record rebuilt from it, and the run's row of VisualDL's hyper-parameter table."""
    if self.enabled:
      hparams = {'run': self.name, **{name: _field(config, field) for name, field in HPARAM_FIELDS.items()}}
      self.writer = _visualdl_writer(self.vdl_dir, self.name, hparams,
                                     _truncate_after(self.metrics_path, self.start_update))

  @property
  def is_open(self):
    return self.writer is not None

  def info(self, message):
    if self.enabled:
      self.display.write(message)

  def scalars(self, update, group, values):
    """Write `values` ({name: float}) as `group/name` at step `update` to VisualDL and metrics.jsonl."""
    if not self.enabled:
      return
    append_line(self.metrics_path, json.dumps({'update': update, 'group': group, **values}))
    _add_scalars(self.writer, update, group, values)

  def progress(self, update, **postfix):
    """Called after every update; `postfix` ({name: float}) is shown beside the count."""
    if self.enabled:
      self.display.update(update, postfix)

  def close(self):
    if self.enabled:
      self.display.close()
      if self.writer:
        self.writer.close()


class LogWindow:
  """The training scalars of the updates since the last log row: their sums, and how many updates were
  applied and skipped (fp16). A checkpoint holds it, so a resumed run logs the rows an uninterrupted
  one does."""

  NAMES = ('objective', 'ce', 'kl')

  def __init__(self):
    self.reset()

  def reset(self):
    self.sums, self.applied, self.skipped = [0.0] * len(self.NAMES), 0, 0

  def add(self, means, skipped):
    """One update's agreed means; a skipped update's loss (possibly inf) is left out of the averages."""
    if skipped:
      self.skipped += 1
    else:
      self.sums = [total + float(value) for total, value in zip(self.sums, means)]
      self.applied += 1

  def averages(self):
    """{'objective', 'ce', 'kl'} over the applied updates; {} when every update was skipped."""
    return {name: total / self.applied for name, total in zip(self.NAMES, self.sums)} if self.applied else {}

  def take(self):
    """(averages, skipped updates) of the window, which starts again empty."""
    taken = self.averages(), self.skipped
    self.reset()
    return taken

  def state_dict(self):
    return {'sums': list(self.sums), 'applied': self.applied, 'skipped': self.skipped}

  def load_state_dict(self, state):
    self.sums, self.applied, self.skipped = list(state['sums']), state['applied'], state['skipped']


def run_name(workdir):
  """The run's name in VisualDL: the last two folders of its workdir (`demo/rdrop`).

  VisualDL names a run by the path of its log folder, cut short in its run list and tables, so that
  every run of a batch reads `/home/me/project/runs/...`. Two folders tell apart the variants of an
  experiment and the experiments of a batch.
  """
  parts = os.path.abspath(workdir).split(os.sep)
  return '/'.join(part for part in parts[-2:] if part)


def _truncate_after(path, update):
  """A resumed run rewrites history after its checkpoint: drop rows logged past it before a crash.

  Returns the rows kept.
  """
  rows, _ = read_jsonl(path)
  kept = [row for row in rows if row['update'] <= update]
  if os.path.exists(path):
    write_atomic(path, ''.join(json.dumps(row) + '\n' for row in kept))
  return kept


def _add_scalars(writer, update, group, values):
  for name, value in values.items():
    writer.add_scalar(f'{VISUALDL_GROUPS[group]}/{name}', float(f'{value:.{SIGNIFICANT_DIGITS}g}'), update)


def _field(config, dotted):
  for key in dotted.split('.'):
    config = config[key]
  return config


def _visualdl_writer(vdl_dir, name, hparams, history):
  """A VisualDL LogWriter on a new record file that starts with the run's row of the hyper-parameter table
  (`hparams`) and `history` (metrics.jsonl rows).

  VisualDL reads only the newest record file of a folder (by name), so a resumed run that simply opened a
  second file would lose its earlier curves there, and rows past the resumed checkpoint must go. So each
  start replays metrics.jsonl, the record of truth, into a file named after every older one, then removes
  those.
  """
  from visualdl import LogWriter
  older = glob.glob(os.path.join(vdl_dir, 'vdlrecords.*'))
  stamps = [int(match.group(1)) for match in (re.search(r'vdlrecords\.(\d+)', path) for path in older) if match]
  # VisualDL's own name is the time in seconds, and it appends to a file of that name that already exists.
  newest = max([int(time.time())] + [stamp + 1 for stamp in stamps])
  writer = LogWriter(logdir=vdl_dir, display_name=name, file_name=f'vdlrecords.{newest:010d}.log')
  writer.add_hparams(hparams, HPARAM_METRICS)
  for row in history:
    _add_scalars(writer, row['update'], row['group'],
                 {key: value for key, value in row.items() if key not in ('update', 'group')})
  writer.flush()
  for path in older:
    os.remove(path)
  return writer


class _Bar:
  """A tqdm bar on the terminal; log lines print above it."""

  def __init__(self, start_update, total_updates):
    self.bar = tqdm(total=total_updates, initial=start_update, unit='update', dynamic_ncols=True,
                    file=sys.stderr, mininterval=1.0)

  def update(self, update, postfix):
    self.bar.set_postfix({name: f'{value:.4g}' for name, value in postfix.items()}, refresh=False)
    self.bar.update(update - self.bar.n)

  def write(self, message):
    self.bar.write(message, file=sys.stdout)
    sys.stdout.flush()

  def close(self):
    self.bar.close()


class _PlainLines:
  """`update 120/600 (20%)  objective 0.59  lr 0.0016  260 samples/s  elapsed 0:30  ETA 1:55` on stderr,
  for the first update, then every PLAIN_LINE_SECONDS, and for the last; speed and ETA over the last interval.
  The first line has neither: its interval holds the first update's one-off costs (memory, kernels), and an
  ETA from it was twice the run's time here."""

  def __init__(self, start_update, total_updates, samples_per_update):
    self.total, self.samples_per_update = total_updates, samples_per_update
    self.started = self.last_time = time.monotonic()
    self.first, self.last_update = start_update + 1, start_update

  def update(self, update, postfix):
    now = time.monotonic()
    if update not in (self.first, self.total) and now - self.last_time < PLAIN_LINE_SECONDS:
      return
    per_second = (update - self.last_update) / max(now - self.last_time, 1e-9)
    fields = [f'update {update}/{self.total} ({100 * update / self.total:.0f}%)',
              *(f'{name} {value:.4g}' for name, value in postfix.items())]
    first = update == self.first
    if self.samples_per_update and not first:
      fields.append(f'{per_second * self.samples_per_update:.1f} samples/s')
    fields.append(f'elapsed {_clock(now - self.started)}')
    if not first:
      fields.append(f'ETA {_clock((self.total - update) / per_second)}')
    print('  '.join(fields), file=sys.stderr, flush=True)
    self.last_time, self.last_update = now, update

  def write(self, message):
    print(message, flush=True)

  def close(self):
    pass


def _terminal_columns():
  """The width of the terminal that stderr is, or 0 when it is none."""
  try:
    return os.get_terminal_size(sys.stderr.fileno()).columns if sys.stderr.isatty() else 0
  except (OSError, ValueError):
    return 0


def _clock(seconds):
  """'1:05:09' or '5:09'."""
  minutes, seconds = divmod(round(seconds), 60)
  hours, minutes = divmod(minutes, 60)
  return f'{hours}:{minutes:02d}:{seconds:02d}' if hours else f'{minutes}:{seconds:02d}'
