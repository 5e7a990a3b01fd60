"""`--mode report` and `SEEDS=N bash run.sh`: real runs in, a table whose numbers are those of metrics.jsonl
grouped over seeds, readable plots out; the statistics checked on synthetic runs with known answers."""
import glob
import json
import os
import shutil
import statistics
import subprocess

import pytest

from helpers import ROOT, child_env, run_main
import report
from report import runs as report_runs
from report import statistics as report_statistics
from training.runlog import HPARAM_METRICS, RunLog

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
# The demo shrunk to 4 updates, evaluated after each (so a best can differ from the final accuracy); the
# checkpoints kept before the last one let a run be set back and resumed.
TINY_DEMO = ['--config.train.updates=4', '--config.train.eval_every=1', '--config.train.checkpoint_every=2',
             '--config.train.warmup_updates=1', '--config.train.log_every=1', '--config.train.batch_size=32']


def run_sh(runs_dir, *args, seeds=2):
  proc = subprocess.run(['bash', 'run.sh', *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
                        env=child_env(RUNS_DIR=str(runs_dir), SEEDS=str(seeds)))
  assert proc.returncode == 0, (f'run.sh {" ".join(args)} exited {proc.returncode}:\n'
                                f'{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}')
  return proc


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
  """`SEEDS=2 bash run.sh demo` on the tiny demo: runs/demo/{baseline,rdrop}/seed_{0,1} and the report."""
  runs = tmp_path_factory.mktemp('runs')
  run_sh(runs, 'demo', *TINY_DEMO)
  return runs / 'demo'


def _table(markdown, first_column):
  """The markdown table whose header starts with `first_column`, as a list of {column: cell}."""
  lines = markdown.splitlines()
  start = next(i for i, line in enumerate(lines) if line.startswith(f'| {first_column} |'))
  header = [cell.strip() for cell in lines[start].strip('|').split('|')]
  rows = []
  for line in lines[start + 2:]:
    if not line.startswith('|'):
      break
    rows.append(dict(zip(header, (cell.strip() for cell in line.strip('|').split('|')))))
  return rows


def _rows(markdown, first_column, key):
  return {row[key]: row for row in _table(markdown, first_column)}


def _evals(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [row for row in map(json.loads, f) if row['group'] == 'eval']


def _mean_std(values):
  return f'{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}'


@pytest.mark.slow
def test_seeds_train_into_their_own_workdirs_with_their_own_seed(demo):
  for variant in ('baseline', 'rdrop'):
    assert sorted(os.listdir(demo / variant)) == ['seed_0', 'seed_1']
    for seed in (0, 1):
      with open(demo / variant / f'seed_{seed}' / 'config.json') as f:
        assert json.load(f)['seed'] == seed
    assert _evals(demo / variant / 'seed_0') != _evals(demo / variant / 'seed_1')
  assert {'report.md', 'summary.md', 'digits_vit.png'} <= set(os.listdir(demo))


def _run_sh_calls(tmp_path, extra_env, *args):
  """The `python` command lines that `bash run.sh ARGS` would run, recorded by a stand-in on PATH."""
  bin_dir, calls = tmp_path / 'bin', tmp_path / 'calls'
  bin_dir.mkdir()
  (bin_dir / 'python').write_text('#!/bin/sh\necho "$@" >> "$CALLS"\n')
  (bin_dir / 'python').chmod(0o755)
  env = {key: value for key, value in child_env().items() if key not in ('SEEDS', 'GPUS')}
  env.update(PATH=f'{bin_dir}:{env["PATH"]}', CALLS=str(calls), RUNS_DIR=str(tmp_path / 'runs'), **extra_env)
  subprocess.run(['bash', 'run.sh', *args], cwd=ROOT, env=env, check=True, capture_output=True, text=True,
                 timeout=60)
  return [line.split() for line in calls.read_text().splitlines()]


def _workdir_and_seed(call):
  workdir = call[call.index('--workdir') + 1]
  return workdir, next((arg.split('=')[1] for arg in call if arg.startswith('--config.seed=')), None)


def test_without_seeds_run_sh_keeps_one_run_per_variant(tmp_path):
  calls = _run_sh_calls(tmp_path, {}, 'demo')
  runs = tmp_path / 'runs' / 'demo'
  assert [_workdir_and_seed(call) for call in calls[:-1]] == [(f'{runs}/baseline', None), (f'{runs}/rdrop', None)]
  assert calls[-1] == ['main.py', '--mode', 'report', '--workdir', str(runs), '--command', 'bash', 'run.sh', 'demo',
                       f'{runs}/baseline', f'{runs}/rdrop']


def test_seeds_give_each_variant_one_workdir_per_seed(tmp_path):
  calls = _run_sh_calls(tmp_path, {'SEEDS': '2'}, 'demo', '--config.train.lr=0.01')
  runs = tmp_path / 'runs' / 'demo'
  seeded = [f'{runs}/{variant}/seed_{seed}' for variant in ('baseline', 'rdrop') for seed in (0, 1)]
  assert [_workdir_and_seed(call) for call in calls[:-1]] == [(path, path[-1]) for path in seeded]
  assert all('--config.train.lr=0.01' in call for call in calls[:-1])
  assert calls[-1] == ['main.py', '--mode', 'report', '--workdir', str(runs), '--command', 'SEEDS=2', 'bash',
                       'run.sh', 'demo', '--config.train.lr=0.01', *seeded]


@pytest.mark.parametrize('seeds, args, message', [
    ('0', [], 'SEEDS=0: give the number of seeds, e.g. SEEDS=3'),
    ('two', [], 'SEEDS=two: give the number of seeds'),
    ('3', ['--config.seed=7'], '--config.seed=7: SEEDS=3 sets the seeds (0..2)')])
def test_bad_seeds_are_refused_before_any_run(tmp_path, seeds, args, message):
  with pytest.raises(subprocess.CalledProcessError) as failure:
    _run_sh_calls(tmp_path, {'SEEDS': seeds}, 'demo', *args)
  assert message in failure.value.stderr
  assert not (tmp_path / 'calls').exists()


@pytest.mark.slow
def test_report_shows_each_variant_as_mean_and_std_over_seeds_with_the_paired_difference(demo):
  markdown = (demo / 'report.md').read_text()
  variants = _rows(markdown, 'group', 'variant')
  assert variants.keys() == {'baseline', 'R-Drop alpha=1'}
  finals = {}
  for label, folder in (('baseline', 'baseline'), ('R-Drop alpha=1', 'rdrop')):
    evals = [_evals(demo / folder / f'seed_{seed}') for seed in (0, 1)]
    finals[label] = [e[-1]['top1'] for e in evals]
    row = variants[label]
    assert row['seeds'] == '2 of 2'
    assert row['final top1 (%)'] == _mean_std(finals[label])
    assert row['best top1 (%)'] == _mean_std([max(r['top1'] for r in e) for e in evals])
    assert row['split'] == 'test'
  pair = _table(markdown.split('### Paired differences')[1], 'group')[0]
  assert pair['comparison'] == 'R-Drop alpha=1 minus baseline' and pair['fields that differ'] == 'rdrop.alpha'
  differences = [r - b for r, b in zip(finals['R-Drop alpha=1'], finals['baseline'])]
  assert pair['seeds paired'] == '2 (0, 1)'
  assert pair['final: difference'] == f'{statistics.mean(differences):+.2f} ± {statistics.stdev(differences):.2f}'
  assert pair['final: seeds favouring'] == (f'R-Drop alpha=1: {sum(d > 0 for d in differences)}, '
                                            f'baseline: {sum(d < 0 for d in differences)}, '
                                            f'tie: {sum(d == 0 for d in differences)}')
  runs = _rows(markdown, 'run', 'run')
  assert runs.keys() == {'baseline/seed_0', 'baseline/seed_1', 'rdrop/seed_0', 'rdrop/seed_1'}
  assert all(row['status'] == 'finished' and row['updates'] == '4 / 4' for row in runs.values())
  assert 'best is selected on the test set itself' in markdown


def test_summary_states_the_command_date_and_machine_beside_the_numbers(demo):
  summary = (demo / 'summary.md').read_text()
  first = summary.splitlines()[0]
  assert first.startswith(f'Produced by `SEEDS=2 bash run.sh demo {" ".join(TINY_DEMO)}` on 20')
  assert ' cores, cpu x1, Paddle ' in first
  report_rows = _rows((demo / 'report.md').read_text(), 'group', 'variant')
  for label, row in _rows(summary, 'group', 'variant').items():
    assert row['final top1 (%)'] == report_rows[label]['final top1 (%)']
  assert 'R-Drop alpha=1 minus baseline, paired by seed: final top-1 ' in summary


@pytest.mark.slow
def test_rerun_resumes_the_interrupted_seed_and_leaves_the_finished_ones_alone(demo, tmp_path):
  shutil.copytree(demo, tmp_path / 'demo')
  interrupted = tmp_path / 'demo' / 'rdrop' / 'seed_1'
  shutil.rmtree(interrupted / 'checkpoints' / 'update_00000004')  # as if preempted before its last save
  older = sorted(os.listdir(interrupted / 'checkpoints'))[-1]  # the newest left: resume starts there
  before = {path: open(path).read() for path in glob.glob(str(tmp_path / 'demo' / '*' / 'seed_*' / 'metrics.jsonl'))}
  proc = run_sh(tmp_path, 'demo', *TINY_DEMO)
  assert f'resume: from {interrupted}/checkpoints/{older}' in proc.stdout
  assert proc.stdout.count('finished at update 4') == 3 and proc.stdout.count('nothing to do') == 3
  after = {path: open(path).read() for path in before}
  assert after == before  # the resumed seed ends exactly as it had; the others were not touched
  variants = _rows((tmp_path / 'demo' / 'report.md').read_text(), 'group', 'variant')
  assert variants['R-Drop alpha=1']['seeds'] == '2 of 2'


def test_plots_are_readable_pngs_linked_from_the_report(demo):
  import matplotlib.image
  assert '](digits_vit.png)' in (demo / 'report.md').read_text()
  plot = demo / 'digits_vit.png'
  with open(plot, 'rb') as f:
    assert f.read(8) == PNG_MAGIC
  assert os.path.getsize(plot) > 20_000
  pixels = matplotlib.image.imread(plot)
  assert pixels.shape[0] > 400 and pixels.shape[1] > 600
  assert pixels.std() > 0.05  # not a blank canvas


@pytest.mark.slow
def test_unfinished_runs_are_shown_and_not_counted(demo, tmp_path):
  crashed, config_only = tmp_path / 'crashed', tmp_path / 'config_only'
  shutil.copytree(demo / 'baseline' / 'seed_0', crashed)
  shutil.rmtree(crashed / 'checkpoints')
  _edit_json(crashed / 'config.json', lambda c: c.update(seed=2))
  with open(crashed / 'metrics.jsonl', 'a') as f:
    f.write('{"update": 3, "group": "tr')
  os.makedirs(config_only)
  shutil.copy(crashed / 'config.json', config_only)
  baseline = [demo / 'baseline' / f'seed_{seed}' for seed in (0, 1)]
  run_main('--mode', 'report', '--workdir', tmp_path / 'out', *baseline, crashed, config_only)
  markdown = (tmp_path / 'out' / 'report.md').read_text()
  runs = _rows(markdown, 'run', 'run')
  for name in ('crashed', 'config_only'):
    assert runs[name]['status'] == 'unfinished: no checkpoint yet of 4'
    assert runs[name]['updates'] == '0 / 4'
    for column in ('best top1 (%)', 'best at update', 'final top1 (%)', 'wall time', 'samples/s'):
      assert runs[name][column] == '-', column
  row = _table(markdown, 'group')[0]
  assert row['seeds'] == '2 of 4 (not counted: seed 2 unfinished, seed 2 unfinished)'
  assert row['final top1 (%)'] == _mean_std([_evals(path)[-1]['top1'] for path in baseline])
  assert 'metrics.jsonl ends in a cut-off line' in markdown
  assert 'One variant in this group: nothing to compare.' in markdown


@pytest.mark.slow
def test_a_folder_that_is_not_a_run_is_an_error_naming_it(demo, tmp_path):
  stray = tmp_path / 'notes'
  stray.mkdir()
  proc = run_main('--mode', 'report', '--workdir', tmp_path / 'out', demo / 'baseline' / 'seed_0', stray, check=False)
  assert proc.returncode != 0
  assert f'{stray} is not a training run' in proc.stderr
  assert not (tmp_path / 'out' / 'report.md').exists()


def _edit_json(path, edit):
  with open(path) as f:
    content = json.load(f)
  edit(content)
  with open(path, 'w') as f:
    json.dump(content, f)


def test_total_updates_and_time_recorded_in_the_checkpoint_come_before_estimates(demo, tmp_path):
  """An epoch-based run (train.updates 0) can only be judged finished through the manifest's total_updates."""
  for name in ('epochs_recorded', 'epochs_unrecorded'):
    shutil.copytree(demo / 'baseline' / 'seed_0', tmp_path / name)
    _edit_json(tmp_path / name / 'config.json', lambda c: c['train'].update(updates=0))
  manifest = sorted(glob.glob(str(tmp_path / 'epochs_recorded' / 'checkpoints' / '*' / 'manifest.json')))[-1]
  _edit_json(manifest, lambda m: m.update(total_updates=4, train_seconds=80.0))
  for manifest in glob.glob(str(tmp_path / 'epochs_unrecorded' / 'checkpoints' / '*' / 'manifest.json')):
    _edit_json(manifest, lambda m: [m.pop(key, None) for key in ('total_updates', 'train_seconds')])
  report.write_report([str(tmp_path / 'epochs_recorded'), str(tmp_path / 'epochs_unrecorded')], str(tmp_path))
  runs = _rows((tmp_path / 'report.md').read_text(), 'run', 'run')
  recorded, unrecorded = runs['epochs_recorded'], runs['epochs_unrecorded']
  assert recorded['status'] == 'finished' and recorded['updates'] == '4 / 4'
  assert recorded['wall time'] == '1m 20s' and recorded['samples/s'] == f'{4 * 32 / 80:.1f}'
  assert unrecorded['status'].startswith('length unknown') and unrecorded['updates'] == '4 / ?'
  assert unrecorded['best top1 (%)'] == '-'


# Synthetic runs with known answers: the digits demo's final test top-1 over seeds 0-3 as measured in
# issue 15 (baseline 95.00 +- 1.13, R-Drop 97.36 +- 0.53, R-Drop better on every seed).
BASELINE_FINALS = [95.00, 96.39, 93.61, 95.00]
RDROP_FINALS = [97.78, 97.78, 96.67, 97.22]


def fake_run(path, seed, finals_by_update, alpha=0.0, lr=0.003, total=None, split='test', collapsed=(),
             objective_name='objective'):
  """A workdir as training leaves it: config.json, metrics.jsonl, and a checkpoint manifest at its last update."""
  total = total or max(finals_by_update)
  config = {'experiment': 'digits_vit_rdrop' if alpha else 'digits_vit', 'seed': seed,
            'model': {'name': 'vit', 'depth': 2}, 'data': {'name': 'digits', 'root': f'/data/{seed}'},
            'train': {'updates': total, 'batch_size': 64, 'lr': lr, 'eval_every': 100},
            'rdrop': {'alpha': alpha, 'reduction': 'batchmean'}, 'eval': {'split': split}}
  os.makedirs(path)
  with open(os.path.join(path, 'config.json'), 'w') as f:
    json.dump(config, f)
  rows = []
  for update, top1 in sorted(finals_by_update.items()):
    rows.append({'update': update, 'group': 'train', objective_name: 2.0 - update / 1000 + seed, 'ce': 1.0, 'kl': 0.0})
    rows.append({'update': update, 'group': 'eval', 'top1': top1, 'top5': 100.0, 'loss': 0.1,
                 **({'majority_fraction': 0.97, 'prediction_information': 2e-5, 'collapsed': True}
                    if update in collapsed else {})})
  with open(os.path.join(path, 'metrics.jsonl'), 'w') as f:
    f.writelines(json.dumps(row) + '\n' for row in rows)
  last = max(finals_by_update)
  folder = os.path.join(path, 'checkpoints', f'update_{last:08d}')
  os.makedirs(folder)
  with open(os.path.join(folder, 'manifest.json'), 'w') as f:
    json.dump({'update': last, 'files': {}, 'total_updates': total, 'train_seconds': 60.0}, f)
  return path


@pytest.fixture
def issue_table(tmp_path):
  """The issue's 4 seeds per variant (best 0.5 above final, at update 500), plus an unfinished R-Drop seed 4
  and a baseline seed 5 that R-Drop lacks: neither may enter the statistics or the pairs."""
  paths = []
  for seed, final in enumerate(BASELINE_FINALS):
    paths.append(fake_run(tmp_path / 'baseline' / f'seed_{seed}', seed, {500: final + 0.5, 600: final}))
  paths.append(fake_run(tmp_path / 'baseline' / 'seed_5', 5, {500: 90.0, 600: 90.0}))
  for seed, final in enumerate(RDROP_FINALS):
    paths.append(fake_run(tmp_path / 'rdrop' / f'seed_{seed}', seed, {500: final + 0.5, 600: final}, alpha=1.0))
  paths.append(fake_run(tmp_path / 'rdrop' / 'seed_4', 4, {500: 99.0}, alpha=1.0, total=600))
  return list(map(str, paths))


def test_grouped_statistics_match_the_known_answers(issue_table, tmp_path):
  report.write_report(issue_table, str(tmp_path / 'out'), command='SEEDS=4 bash run.sh demo')
  markdown = (tmp_path / 'out' / 'report.md').read_text()
  variants = _rows(markdown, 'group', 'variant')
  assert variants['baseline']['seeds'] == '5 of 5'
  assert variants['baseline']['final top1 (%)'] == _mean_std(BASELINE_FINALS + [90.0])
  assert variants['R-Drop alpha=1']['seeds'] == '4 of 5 (not counted: seed 4 unfinished)'
  assert variants['R-Drop alpha=1']['final top1 (%)'] == '97.36 ± 0.53'
  assert variants['R-Drop alpha=1']['best top1 (%)'] == '97.86 ± 0.53'
  assert variants['R-Drop alpha=1']['best at update'] == '500'
  pair = _table(markdown.split('### Paired differences')[1], 'group')[0]
  assert pair['seeds paired'] == '4 (0, 1, 2, 3)'
  assert pair['final: difference'] == '+2.36 ± 0.74'
  assert pair['final: min, max'] == '+1.39, +3.06'
  assert pair['final: seeds favouring'] == 'R-Drop alpha=1: 4, baseline: 0, tie: 0'
  assert pair['best: difference'] == '+2.36 ± 0.74'
  summary = (tmp_path / 'out' / 'summary.md').read_text()
  assert summary.startswith('Produced by `SEEDS=4 bash run.sh demo` on ')
  assert ('R-Drop alpha=1 minus baseline, paired by seed: final top-1 +2.36 ± 0.74 points (min +1.39, max '
          '+3.06); R-Drop alpha=1 better on 4 of 4 seeds, baseline on 0.') in summary


def test_spread_and_paired_difference_of_known_numbers():
  spread = report_statistics.Spread.of(BASELINE_FINALS)
  assert (spread.n, round(spread.mean, 2), round(spread.std, 2)) == (4, 95.0, 1.13)
  assert (spread.low, spread.high) == (93.61, 96.39)
  single = report_statistics.Spread.of([95.0])
  assert single.std is None and single.format() == '95.00'


def test_variants_are_configs_identical_but_for_the_seed_and_pairs_differ_in_one_field(tmp_path):
  runs = [report_runs.load_run(fake_run(tmp_path / name, seed, {10: 50.0}, alpha=alpha, lr=lr))
          for name, seed, alpha, lr in [('b0', 0, 0.0, 0.003), ('b1', 1, 0.0, 0.003), ('r0', 0, 1.0, 0.003),
                                        ('r1', 1, 1.0, 0.003), ('fast', 0, 0.0, 0.01), ('fast_r', 0, 1.0, 0.01)]]
  variants = report_runs.group_variants(runs)[('vit', 'digits')]
  assert [v.label for v in variants] == ['baseline, train.lr=0.003', 'R-Drop alpha=1, train.lr=0.003',
                                         'baseline, train.lr=0.01', 'R-Drop alpha=1, train.lr=0.01']
  assert [[os.path.basename(r.path) for r in v.runs] for v in variants] == [['b0', 'b1'], ['r0', 'r1'], ['fast'],
                                                                            ['fast_r']]
  pairs = [(a.label, b.label, fields) for a, b, fields in report_statistics.comparisons(variants)]
  assert pairs == [('baseline, train.lr=0.003', 'R-Drop alpha=1, train.lr=0.003', ['rdrop.alpha']),
                   ('baseline, train.lr=0.003', 'baseline, train.lr=0.01', ['train.lr']),
                   ('R-Drop alpha=1, train.lr=0.003', 'R-Drop alpha=1, train.lr=0.01', ['train.lr']),
                   ('baseline, train.lr=0.01', 'R-Drop alpha=1, train.lr=0.01', ['rdrop.alpha'])]
  # The only two variants of a group are compared whatever differs (e.g. R-Drop at the lr tuned for it).
  two = report_runs.group_variants([runs[0], runs[5]])[('vit', 'digits')]
  assert [fields for _, _, fields in report_statistics.comparisons(two)] == [['rdrop.alpha', 'train.lr']]


def test_variant_names_every_field_that_sets_it_apart():
  def config(alpha, reduction='batchmean', lr=0.003, root='/data', depth=12):
    return {'experiment': f'x{alpha}', 'seed': 0, 'model': {'name': 'resnet', 'depth': depth},
            'data': {'name': 'cat12', 'root': root}, 'train': {'lr': lr, 'eval_every': 10},
            'rdrop': {'alpha': alpha, 'reduction': reduction}}
  configs = [config(0.0, reduction='sum'), config(0.3, reduction='sum'), config(0.3, lr=0.01, root='/mnt'),
             config(0.0, depth=18)]
  differing = report_runs.differing_fields(configs)
  assert differing == ['model.depth', 'rdrop.alpha', 'rdrop.reduction', 'train.lr']  # not paths or names
  assert [report_runs.variant_label(c, differing) for c in configs] == [
      'baseline, model.depth=12, train.lr=0.003',  # without R-Drop its reduction changes nothing
      'R-Drop alpha=0.3, model.depth=12, reduction=sum, train.lr=0.003',
      'R-Drop alpha=0.3, model.depth=12, reduction=batchmean, train.lr=0.01',
      'baseline, model.depth=18, train.lr=0.003']


def test_mean_curve_and_band_over_seeds_at_the_updates_all_logged(tmp_path):
  evals = [{100: 10.0, 200: 30.0, 300: 50.0}, {100: 20.0, 200: 60.0}, {100: 60.0, 200: 90.0}]
  runs = [report_runs.load_run(fake_run(tmp_path / f's{seed}', seed, e)) for seed, e in enumerate(evals)]
  assert report_statistics.mean_curve(runs, 'eval', 'top1') == ([100, 200], [30.0, 60.0], [10.0, 30.0], [60.0, 90.0])
  # Rows written before the objective had its own name carry it as `loss`.
  old = report_runs.load_run(fake_run(tmp_path / 'old', 0, {100: 10.0}, objective_name='loss'))
  assert report_statistics.mean_curve([old], 'train', 'objective') == ([100], [1.9], [1.9], [1.9])


def test_a_collapsed_evaluation_is_a_visible_warning(tmp_path):
  paths = [fake_run(tmp_path / 'baseline', 0, {100: 40.0, 200: 60.0}, split='val'),
           fake_run(tmp_path / 'rdrop', 0, {100: 8.33, 200: 8.33}, alpha=5.0, split='val', collapsed=(100, 200))]
  report.write_report(list(map(str, paths)), str(tmp_path / 'out'))
  markdown = (tmp_path / 'out' / 'report.md').read_text()
  assert ('**Warning**: 1 run(s) collapsed to one output for every sample: rdrop (COLLAPSED at update 100, 200: '
          'up to 97% of samples in one class, as little as 2e-05 x ln C of information about the image)') in markdown
  assert _rows(markdown, 'group', 'variant')['R-Drop alpha=5']['warnings'] == 'COLLAPSED: 1 of 1 runs (seed 0)'
  assert _rows(markdown, 'run', 'run')['baseline']['warnings'] == '-'
  assert '**Warning**: vit on digits, R-Drop alpha=5: COLLAPSED' in (tmp_path / 'out' / 'summary.md').read_text()
  assert 'evaluated on the `val` split (`eval.split`), not on a test split' in markdown


def test_visualdls_table_shows_each_run_with_its_learning_fields_and_results_as_numbers(tmp_path):
  from visualdl import LogReader
  from configs import digits_vit_rdrop

  def reader():
    files = glob.glob(str(tmp_path / 'vdl' / '*'))
    assert len(files) == 1  # VisualDL shows only the newest record file of a folder
    return LogReader(file_path=files[0])

  config = digits_vit_rdrop.get_config()
  config.train.lr, config.seed = 0.002, 7
  log = RunLog(str(tmp_path), True, 0, 20)
  log.open(config)
  for update, top1, best in ((10, 93.87186431884766, 93.87186431884766), (20, 93.5, 93.87186431884766)):
    log.scalars(update, 'eval', {'top1': top1, 'best_top1': best, 'collapsed': False})
  log.close()
  record = reader().get_data('hyper_parameters', 'hparam')[0].hparam
  assert {info.name: getattr(info, info.WhichOneof('type')) for info in record.hparamInfos} == {
      'run': f'{tmp_path.parent.name}/{tmp_path.name}', 'alpha': 1.0, 'lr': 0.002, 'seed': 7}
  assert [info.name for info in record.metricInfos] == HPARAM_METRICS == ['2 eval/top1', '2 eval/best_top1']
  # VisualDL's metric cells are the newest values of these curves, to float32 precision.
  newest = {tag: reader().get_data('scalar', tag)[-1].value for tag in HPARAM_METRICS}
  assert newest == pytest.approx({'2 eval/top1': 93.5, '2 eval/best_top1': 93.87}, abs=1e-5)


def test_single_runs_are_said_to_show_no_spread_and_their_difference_no_evidence(tmp_path):
  paths = [fake_run(tmp_path / 'baseline', 0, {100: 90.0}), fake_run(tmp_path / 'rdrop', 0, {100: 93.06}, alpha=1.0)]
  report.write_report(list(map(str, paths)), str(tmp_path / 'out'))
  markdown = (tmp_path / 'out' / 'report.md').read_text()
  pair = _table(markdown.split('### Paired differences')[1], 'group')[0]
  assert pair['final: difference'] == '+3.06 (one seed: one draw, no evidence either way)'
  assert pair['final: seeds favouring'] == '-'
  summary = (tmp_path / 'out' / 'summary.md').read_text()
  assert 'One run per variant: no spread' in summary and '±' not in summary and 'paired by seed' not in summary


def test_the_curves_name_the_evaluation_split_and_draw_no_kl_for_a_baseline(tmp_path, monkeypatch):
  """Each panel's title is set once its lines are drawn: the lines between two titles are one panel's."""
  import matplotlib.axes
  from report import render
  events = []
  plot, set_title = matplotlib.axes.Axes.plot, matplotlib.axes.Axes.set_title
  monkeypatch.setattr(matplotlib.axes.Axes, 'plot', lambda ax, *args, **kwargs: (
      events.append(('line', kwargs.get('label'))), plot(ax, *args, **kwargs))[1])
  monkeypatch.setattr(matplotlib.axes.Axes, 'set_title', lambda ax, title, *args, **kwargs: (
      events.append(('title', title)), set_title(ax, title, *args, **kwargs))[1])
  runs = [report_runs.load_run(str(fake_run(tmp_path / name, 0, {100: 50.0}, alpha=alpha, split='val')))
          for name, alpha in (('baseline', 0.0), ('rdrop', 1.0))]
  render.plot_group(report_runs.group_variants(runs)[('vit', 'digits')], 'vit on digits', str(tmp_path / 'c.png'))
  panels, lines = {}, []
  for kind, text in events:
    if kind == 'line':
      lines.append(text)
    else:
      panels[text], lines = lines, []
  assert panels['R-Drop KL term (before alpha)'] == ['R-Drop alpha=1 (1 run)']
  assert panels['val top-1 accuracy (%)'] == ['baseline (1 run)', 'R-Drop alpha=1 (1 run)']


def test_a_folder_of_runs_stands_for_every_run_inside(tmp_path):
  fake_run(tmp_path / 'demo' / 'baseline', 0, {100: 90.0})
  for seed in (0, 1):
    fake_run(tmp_path / 'demo' / 'rdrop' / f'seed_{seed}', seed, {100: 93.0}, alpha=1.0)
  (tmp_path / 'demo' / 'visualdl_check').mkdir()  # no run: left out
  report.write_report([str(tmp_path / 'demo')], str(tmp_path / 'out'))
  markdown = (tmp_path / 'out' / 'report.md').read_text()
  assert markdown.startswith('# Report on 3 run(s), 2 variant(s)')
  assert [line for line in markdown.splitlines() if line.startswith('- `')] == [
      f'- `{tmp_path}/demo/{run}`' for run in ('baseline', 'rdrop/seed_0', 'rdrop/seed_1')]
