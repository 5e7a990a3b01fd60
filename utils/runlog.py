"""What a run reports: a tqdm bar with ETA, VisualDL scalars and hyper-parameters, and `metrics.jsonl`.

Only the process of rank 0 writes; the others get a RunLog with `enabled=False` that stays silent.
"""
import json
import os
import sys

from tqdm import tqdm

from utils.workdir import write_atomic

# Config fields that name, locate or pace a run without changing what it learns.
NOT_HYPERPARAMETERS = frozenset({
    'reference.top1', 'reference.source', 'data.root', 'data.num_workers', 'eval.batch_size', 'train.log_every',
    'train.eval_every', 'train.checkpoint_every', 'train.keep_checkpoints', 'train.max_skipped_updates'})
# Scalars VisualDL's hyper-parameter view shows beside the hyper-parameters (their last logged value).
HPARAM_METRICS = ['eval/top1', 'eval/top5', 'eval/loss', 'train/loss']


class RunLog:

  def __init__(self, workdir, enabled, start_update, total_updates):
    self.enabled = enabled
    self.metrics_path = os.path.join(workdir, 'metrics.jsonl')
    self.vdl_dir = os.path.join(workdir, 'vdl')
    if not enabled:
      return
    _truncate_after(self.metrics_path, start_update)
    from visualdl import LogWriter
    self.writer = LogWriter(logdir=self.vdl_dir)
    # A terminal redraws the bar every second; a log file gets a line every 30 s.
    self.bar = tqdm(total=total_updates, initial=start_update, unit='update', dynamic_ncols=True,
                    file=sys.stderr, mininterval=1.0 if sys.stderr.isatty() else 30.0)

  def info(self, message):
    if self.enabled:
      self.bar.write(message, file=sys.stdout)
      sys.stdout.flush()

  def scalars(self, update, group, values):
    """Write `values` ({name: float}) as `group/name` at step `update` to VisualDL and metrics.jsonl."""
    if not self.enabled:
      return
    for name, value in values.items():
      self.writer.add_scalar(f'{group}/{name}', value, update)
    with open(self.metrics_path, 'a') as f:
      f.write(json.dumps({'update': update, 'group': group, **values}) + '\n')

  def hyperparameters(self, config):
    """Log the config's scalar fields once per invocation, for VisualDL's hyper-parameter view across runs."""
    if self.enabled:
      self.writer.add_hparams(flat_hyperparameters(config.to_dict()), HPARAM_METRICS)

  def progress(self, update, **postfix):
    if self.enabled:
      self.bar.set_postfix({k: f'{v:.4g}' for k, v in postfix.items()}, refresh=False)
      self.bar.update(update - self.bar.n)

  def close(self):
    if self.enabled:
      self.bar.close()
      self.writer.close()


def flat_hyperparameters(config_dict, prefix=''):
  """{'train.lr': 0.003, 'rdrop.alpha': 1.0, ...}: the scalar leaves VisualDL's add_hparams accepts.

  Tuples (e.g. normalisation means) are left out: VisualDL stores only int, float and str values, and
  booleans become ints because its protobuf record refuses a bool in the int field.
  """
  flat = {}
  for key, value in config_dict.items():
    name = f'{prefix}{key}'
    if isinstance(value, dict):
      flat.update(flat_hyperparameters(value, f'{name}.'))
    elif isinstance(value, (bool, int, float, str)) and name not in NOT_HYPERPARAMETERS:
      flat[name] = int(value) if isinstance(value, bool) else value
  return flat


def read_jsonl(path):
  """(rows of a JSON-lines file, whether its last line was cut off); a bad line elsewhere is an error.

  A process killed while appending leaves a partial last line: that line is not a record.
  """
  if not os.path.exists(path):
    return [], False
  with open(path) as f:
    lines = [line for line in f.read().splitlines() if line.strip()]
  rows = []
  for number, line in enumerate(lines, 1):
    try:
      rows.append(json.loads(line))
    except ValueError as err:
      if number == len(lines):
        return rows, True
      raise ValueError(f'{path}, line {number}: not a JSON record ({err}); fix or remove that line') from err
  return rows, False


def _truncate_after(path, update):
  """A resumed run rewrites history after its checkpoint: drop rows logged past it before a crash."""
  rows, _ = read_jsonl(path)
  if os.path.exists(path):
    write_atomic(path, ''.join(json.dumps(row) + '\n' for row in rows if row['update'] <= update))
