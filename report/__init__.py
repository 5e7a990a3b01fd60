"""The report mode: from run folders to the paper's table, `report.md` with curves as PNGs, and
`summary.md` for the README.

  python main.py --mode report --workdir runs/demo_report runs/demo/baseline runs/demo/rdrop
  python main.py --mode report --workdir runs/demo_report runs/demo/*/seed_*   (after SEEDS=3 bash run.sh demo)
  python main.py --mode report --workdir runs/demo_report runs/demo           (every run inside runs/demo)

Reading runs and grouping them into variants: report/runs.py; mean ± standard deviation over seeds and
differences paired by seed: report/statistics.py; tables and plots: report/render.py.
"""
import datetime
import os

from report.render import (NOTES, PAIR_COLUMNS, RUN_COLUMNS, VARIANT_COLUMNS, collapse_warning, group_title,
                           markdown_table, pair_row, per_class_table, plot_group, run_row, selection_notes, summary,
                           variant_row)
from report.runs import ABSENT, differing_fields, flatten, group_variants, load_run, run_folders, run_names
from report.statistics import comparisons
from utils.io import write_atomic


def write_report(run_dirs, out_dir, command=''):
  """Write `out_dir/report.md`, `out_dir/summary.md` and one PNG per group; returns the path of report.md.

  `command` is what produced the runs (e.g. `SEEDS=3 bash run.sh demo`), quoted in summary.md.
  """
  runs = [load_run(path) for path in run_folders(run_dirs)]
  for run, name in zip(runs, run_names(runs)):
    run.name = name
  os.makedirs(out_dir, exist_ok=True)
  groups = group_variants(runs)

  variant_rows, pair_rows, run_rows, sections = [], [], [], []
  for (model, data), variants in groups.items():
    title = group_title(model, data)
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
      flats = [flatten(v.config) for v in variants]
      sections += [''] + markdown_table(
          ['field'] + [v.label for v in variants],
          [dict(field=key, **{v.label: repr(flat[key]) if key in flat else ABSENT
                              for v, flat in zip(variants, flats)}) for key in differing])
    per_class = per_class_table(variants)
    if per_class:
      sections += ['', 'Top-1 per class (%) of the best checkpoint, from each run\'s `--mode eval` '
                   '(eval_<split>.json), mean over seeds:', '', *per_class]
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
              + ', '.join(f'{run.name} ({collapse_warning(run)})' for run in collapsed)
              + '. Their numbers are not a working recipe; see each run\'s log for the likely cause.']
  lines += ['', '## Results', '', *markdown_table(VARIANT_COLUMNS, variant_rows)]
  if pair_rows:
    lines += ['', '### Paired differences', '', *markdown_table(PAIR_COLUMNS, pair_rows)]
  lines += ['', 'Which number is which:', '', *selection_notes(groups), *NOTES]
  lines += ['', '## Runs', '', *markdown_table(RUN_COLUMNS, run_rows)]
  if references:
    lines += ['', 'Reference numbers:', ''] + [f'- {r}' for r in references]
  if notes:
    lines += ['', 'Notes:', ''] + notes
  lines += sections
  path = os.path.join(out_dir, 'report.md')
  write_atomic(path, '\n'.join(lines) + '\n')
  write_atomic(os.path.join(out_dir, 'summary.md'), summary(groups, runs, command, variant_rows))
  return path
