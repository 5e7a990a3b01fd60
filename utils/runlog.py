"""What a run reports: a tqdm bar with ETA, VisualDL scalars and a `metrics.jsonl` for scripts.

Only the process of rank 0 writes; the others get a RunLog with `enabled=False` that stays silent.
"""
import json
import os
import sys

from tqdm import tqdm


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
    self.bar = tqdm(total=total_updates, initial=start_update, unit='update', dynamic_ncols=True,
                    file=sys.stderr, mininterval=1.0)

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

  def progress(self, update, **postfix):
    if self.enabled:
      self.bar.set_postfix({k: f'{v:.4g}' for k, v in postfix.items()}, refresh=False)
      self.bar.update(update - self.bar.n)

  def close(self):
    if self.enabled:
      self.bar.close()
      self.writer.close()


def _truncate_after(path, update):
  """A resumed run rewrites history after its checkpoint: drop rows logged past it before a crash."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    rows = [line for line in f if line.strip() and json.loads(line)['update'] <= update]
  with open(path + '.tmp', 'w') as f:
    f.writelines(rows)
  os.replace(path + '.tmp', path)


def read_metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f if line.strip()]
