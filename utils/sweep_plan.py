"""What a sweep folder holds: its plan (`sweep.json`, written by tools/sweep.py, read by report/ablation.py),
the grid's points and runs, and where each run's folder is."""
import dataclasses
import itertools
import os

PLAN_FILE = 'sweep.json'


def value_text(value):
  """How a value appears in folder names and reports: 0.0 -> '0', 3.0 -> '3', 0.1 -> '0.1'."""
  text = repr(value) if not isinstance(value, str) else value
  return text[:-2] if isinstance(value, float) and text.endswith('.0') else text


@dataclasses.dataclass(frozen=True)
class Run:
  """One training of the sweep: a point of the grid ((field, value), ...) and a seed."""
  point: tuple
  seed: int

  @property
  def point_name(self):
    return point_name(self.point)


def point_name(point):
  return ','.join(f'{field}={value_text(value)}' for field, value in point)


@dataclasses.dataclass
class Sweep:
  config: str          # CONFIG[:ARGUMENT] as given
  grid: list           # [(field, [values])], in the order given
  overrides: list      # --config.X=Y for every run
  seeds: int
  gpus: str = ''       # GPU ids for paddle.distributed.launch; '' one process
  reference: str = ''  # FIELD=VALUE[,...]: the report's reference point ('' its default)
  command: str = ''    # what the user ran (run.sh passes its own), quoted by the report

  @property
  def name(self):
    stem = os.path.splitext(os.path.basename(self.config.partition(':')[0]))[0]
    argument = self.config.partition(':')[2].replace(',', '-')
    return f'sweep_{stem}{"-" + argument if argument else ""}_{",".join(field for field, _ in self.grid)}'

  def points(self):
    fields = [field for field, _ in self.grid]
    return [tuple(zip(fields, values)) for values in itertools.product(*(values for _, values in self.grid))]

  def runs(self):
    """Every run, seed by seed: after the first pass over the grid each point has one draw."""
    return [Run(point, seed) for seed in range(self.seeds) for point in self.points()]

  def to_json(self):
    return {**dataclasses.asdict(self), 'points': [point_name(p) for p in self.points()]}


def run_dir(sweep_dir, run):
  return os.path.join(sweep_dir, run.point_name, f'seed_{run.seed}')


def reference_values(sweep, text):
  """{field: value} of `--reference FIELD=VALUE[,...]`; default rdrop.alpha=0 when swept, else the first
  value of the first field. ValueError naming what does not match the grid."""
  grid = dict(sweep.grid)
  if not text:
    if 0.0 in grid.get('rdrop.alpha', ()):
      return {'rdrop.alpha': 0.0}
    field, values = sweep.grid[0]
    return {field: values[0]}
  chosen = {}
  for item in text.split(','):
    field, _, wanted = item.partition('=')
    if field not in grid:
      raise ValueError(f'--reference {text}: {field!r} is not swept here (swept: {", ".join(grid)})')
    match = [v for v in grid[field] if value_text(v) == wanted or str(v) == wanted or _same_number(v, wanted)]
    if not match:
      raise ValueError(f'--reference {text}: {field} takes {", ".join(map(value_text, grid[field]))} in this '
                       f'sweep, not {wanted}')
    chosen[field] = match[0]
  return chosen


def _same_number(value, text):
  try:
    return not isinstance(value, (bool, str)) and float(text) == value
  except ValueError:
    return False
