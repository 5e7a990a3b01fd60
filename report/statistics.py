"""Statistics over seeds: a variant's spread, and two variants' difference paired by seed.

The paired difference cancels what a seed does to both runs: its spread, not the spread of each variant,
says whether a change is real.
"""
import dataclasses
import statistics

from report.runs import differing_fields


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
