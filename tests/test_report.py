"""`--mode report`: real runs in, a table whose numbers are those of metrics.jsonl and readable plots out."""
import glob
import json
import os
import shutil

import pytest

from conftest import run_main
from utils import report
from utils.runlog import HPARAM_METRICS, RunLog

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
# Evaluating after each of 4 updates makes the R-Drop run's best (update 1) differ from its final accuracy.
SHORT = ['--config.train.updates=4', '--config.train.eval_every=1']


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """A finished baseline and R-Drop smoke run, a copy of the baseline that crashed before its final
  checkpoint (last metrics line cut off), and a folder where training died right after saving its config."""
  root = tmp_path_factory.mktemp('runs')
  run_main('--config', 'configs/digits_vit.py:smoke', '--workdir', root / 'base', *SHORT)
  run_main('--config', 'configs/digits_vit_rdrop.py:smoke', '--workdir', root / 'rdrop', *SHORT)
  shutil.copytree(root / 'base', root / 'crashed')
  shutil.rmtree(root / 'crashed' / 'checkpoints')
  with open(root / 'crashed' / 'metrics.jsonl', 'a') as f:
    f.write('{"update": 3, "group": "tr')
  os.makedirs(root / 'config_only')
  shutil.copy(root / 'base' / 'config.json', root / 'config_only')
  return root


def _table(markdown):
  """The report's run table as a list of {column: cell}."""
  lines = markdown.splitlines()
  start = next(i for i, line in enumerate(lines) if line.startswith('| run |'))
  header = [cell.strip() for cell in lines[start].strip('|').split('|')]
  rows = []
  for line in lines[start + 2:]:
    if not line.startswith('|'):
      break
    rows.append(dict(zip(header, (cell.strip() for cell in line.strip('|').split('|')))))
  return rows


def _evals(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [row for row in map(json.loads, f) if row['group'] == 'eval']


def test_report_shows_each_finished_run_with_the_accuracies_of_its_metrics(runs, tmp_path):
  out = tmp_path / 'report'
  proc = run_main('--mode', 'report', '--workdir', out, runs / 'base', runs / 'rdrop')
  assert str(out / 'report.md') in proc.stdout
  markdown = (out / 'report.md').read_text()
  rows = {row['run']: row for row in _table(markdown)}
  assert rows.keys() == {'base', 'rdrop'}
  assert rows['base']['variant'] == 'baseline'
  assert rows['rdrop']['variant'] == 'R-Drop alpha=1'
  bests = {}
  for name, row in rows.items():
    evals = _evals(runs / name)
    best = bests[name] = max(evals, key=lambda r: r['top1'])
    assert row['status'] == 'finished'
    assert row['best top1 (%)'] == f'{best["top1"]:.2f}'
    assert row['best at update'] == str(best['update'])
    assert row['final top1 (%)'] == f'{evals[-1]["top1"]:.2f}'
    assert row['updates'] == '4 / 4'
    assert row['wall time'] != '-' and row['samples/s'] != '-'
  assert bests['rdrop']['update'] < 4, 'the runs no longer tell the best from the final accuracy'
  assert '| rdrop.alpha | 0.0 | 1.0 |' in markdown  # the field that tells the pair apart


def test_unfinished_runs_are_marked_and_show_no_accuracy(runs, tmp_path):
  run_main('--mode', 'report', '--workdir', tmp_path, runs / 'base', runs / 'crashed', runs / 'config_only')
  markdown = (tmp_path / 'report.md').read_text()
  rows = {row['run']: row for row in _table(markdown)}
  for name in ('crashed', 'config_only'):
    assert rows[name]['status'] == 'unfinished: no checkpoint yet of 4'
    assert rows[name]['updates'] == '0 / 4'
    for column in ('best top1 (%)', 'best at update', 'final top1 (%)', 'wall time', 'samples/s'):
      assert rows[name][column] == '-', column
  assert 'metrics.jsonl ends in a cut-off line' in markdown
  assert rows['base']['status'] == 'finished'
  assert 'The configs of these runs are identical' in markdown


def test_plots_are_readable_pngs_linked_from_the_report(runs, tmp_path):
  import matplotlib.image
  report.write_report([str(runs / 'base'), str(runs / 'rdrop')], str(tmp_path))
  plots = glob.glob(str(tmp_path / '*.png'))
  assert [os.path.basename(p) for p in plots] == ['digits_vit.png']
  assert '](digits_vit.png)' in (tmp_path / 'report.md').read_text()
  with open(plots[0], 'rb') as f:
    assert f.read(8) == PNG_MAGIC
  assert os.path.getsize(plots[0]) > 20_000
  pixels = matplotlib.image.imread(plots[0])
  assert pixels.shape[0] > 400 and pixels.shape[1] > 600
  assert pixels.std() > 0.05  # not a blank canvas


def test_a_folder_that_is_not_a_run_is_an_error_naming_it(runs, tmp_path):
  stray = tmp_path / 'notes'
  stray.mkdir()
  proc = run_main('--mode', 'report', '--workdir', tmp_path / 'out', runs / 'base', stray, check=False)
  assert proc.returncode != 0
  assert f'{stray} is not a training run' in proc.stderr
  assert not (tmp_path / 'out' / 'report.md').exists()


def _edit_json(path, edit):
  with open(path) as f:
    content = json.load(f)
  edit(content)
  with open(path, 'w') as f:
    json.dump(content, f)


def test_total_updates_and_time_recorded_in_the_checkpoint_come_before_estimates(runs, tmp_path):
  """An epoch-based run (train.updates 0) can only be judged finished through the manifest's total_updates."""
  for name in ('epochs_recorded', 'epochs_unrecorded'):
    shutil.copytree(runs / 'base', tmp_path / name)
    _edit_json(tmp_path / name / 'config.json', lambda c: c['train'].update(updates=0))
  manifest = sorted(glob.glob(str(tmp_path / 'epochs_recorded' / 'checkpoints' / '*' / 'manifest.json')))[-1]
  _edit_json(manifest, lambda m: m.update(total_updates=4, train_seconds=80.0))
  for manifest in glob.glob(str(tmp_path / 'epochs_unrecorded' / 'checkpoints' / '*' / 'manifest.json')):
    _edit_json(manifest, lambda m: [m.pop(key, None) for key in ('total_updates', 'train_seconds')])
  report.write_report([str(tmp_path / 'epochs_recorded'), str(tmp_path / 'epochs_unrecorded')], str(tmp_path))
  rows = {row['run']: row for row in _table((tmp_path / 'report.md').read_text())}
  recorded, unrecorded = rows['epochs_recorded'], rows['epochs_unrecorded']
  assert recorded['status'] == 'finished' and recorded['updates'] == '4 / 4'
  assert recorded['wall time'] == '1m 20s' and recorded['samples/s'] == f'{4 * 4 / 80:.1f}'
  assert unrecorded['status'].startswith('length unknown') and unrecorded['updates'] == '4 / ?'
  assert unrecorded['best top1 (%)'] == '-'


def test_variant_names_what_sets_a_run_apart_within_its_group():
  def config(alpha, reduction='batchmean', lr=0.003, root='/data'):
    return {'experiment': f'x{alpha}', 'data': {'name': 'digits', 'root': root},
            'train': {'lr': lr}, 'rdrop': {'alpha': alpha, 'reduction': reduction}}
  configs = [config(0.0, reduction='sum'), config(0.3, reduction='sum'), config(0.3, lr=0.01, root='/mnt')]
  differing = report.differing_fields(configs)
  assert differing == ['data.root', 'experiment', 'rdrop.alpha', 'rdrop.reduction', 'train.lr']
  assert [report.variant(c, differing) for c in configs] == [
      'baseline, train.lr=0.003',  # without R-Drop its reduction changes nothing
      'R-Drop alpha=0.3, reduction=sum, train.lr=0.003',
      'R-Drop alpha=0.3, reduction=batchmean, train.lr=0.01']


def test_hyperparameters_reach_visualdl_as_flat_scalars(tmp_path):
  from visualdl import LogReader
  from configs import digits_vit_rdrop
  log = RunLog(str(tmp_path), True, 0, 1)
  log.hyperparameters(digits_vit_rdrop.get_config())
  log.close()
  record = LogReader(file_path=glob.glob(str(tmp_path / 'vdl' / '*'))[0]).get_data('hyper_parameters', 'hparam')
  logged = {info.name: getattr(info, info.WhichOneof('type')) for info in record[0].hparam.hparamInfos}
  assert logged['rdrop/alpha'] == 1.0 and logged['train/lr'] == 0.003 and logged['model/name'] == 'vit'
  assert logged['model/zero_head'] == 0 and 'data/mean' not in logged and 'data/num_workers' not in logged
  assert not [name for name in logged if '.' in name]  # VisualDL's table shows a dotted name's column blank
  assert list(logged)[:4] == ['run', 'experiment', 'seed', 'rdrop/alpha']
  assert logged['run'] == f'{tmp_path.parent.name}/{tmp_path.name}'
  assert [info.name for info in record[0].hparam.metricInfos] == HPARAM_METRICS
