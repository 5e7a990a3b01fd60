"""`bash run.sh sweep`: a grid x seeds trained once each however often it is interrupted and repeated; the same
runs from PLAN=1's command lines and from its Slurm array; bad grids refused before any run; the ablation
report's numbers checked on runs with known answers."""
import json
import os
import random
import shlex
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from helpers import ROOT, child_env
from report import ablation
from report.runs import final_top1, load_run
from test_report import fake_run
from utils import sweep_plan

CONFIG = 'configs/digits_vit_rdrop.py:smoke'
GRID = ('rdrop.alpha=0,1', 'model.dropout_rate=0.1,0.2')
SWEEP_NAME = 'sweep_digits_vit_rdrop-smoke_rdrop.alpha,model.dropout_rate'
POINTS = ['rdrop.alpha=0,model.dropout_rate=0.1', 'rdrop.alpha=0,model.dropout_rate=0.2',
          'rdrop.alpha=1,model.dropout_rate=0.1', 'rdrop.alpha=1,model.dropout_rate=0.2']
SEEDS = 2


def _sh(runs_dir, args, plan, seeds):
  env = child_env(RUNS_DIR=str(runs_dir), SEEDS=str(seeds), **({'PLAN': '1'} if plan else {}))
  return ['bash', 'run.sh', *args], env


def run_sh(runs_dir, *args, plan=False, seeds=SEEDS):
  """`bash run.sh ARGS` with RUNS_DIR and SEEDS (and PLAN=1), to its end."""
  command, env = _sh(runs_dir, args, plan, seeds)
  return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def start_sh(runs_dir, *args, log):
  """`bash run.sh ARGS` started in a session of its own (so that a kill reaches it all), writing to `log`."""
  command, env = _sh(runs_dir, args, False, SEEDS)
  return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def finals(sweep_dir):
  """{(point, seed): final top-1} of the finished runs of a sweep folder, and the folders that hold runs."""
  results, folders = {}, set()
  for point in os.listdir(sweep_dir):
    for seed in range(SEEDS):
      path = os.path.join(sweep_dir, point, f'seed_{seed}')
      if os.path.isfile(os.path.join(path, 'config.json')):
        folders.add(point)
        run = load_run(path)
        if run.finished():
          results[point, seed] = final_top1(run)
  return results, folders


def invocations(path):
  with open(os.path.join(path, 'run.jsonl')) as f:
    return f.read()


@pytest.fixture(scope='module')
def interrupted_sweep(tmp_path_factory):
  """The 2 x 2 grid x 2 seeds killed with SIGKILL (the sweep and its training) as its third run starts, then
  repeated to the end: (sweep folder, run.jsonl of the runs finished at the kill, the repeat's output)."""
  runs_dir = tmp_path_factory.mktemp('runs')
  log = open(runs_dir / 'first.log', 'w+')
  first = start_sh(runs_dir, 'sweep', CONFIG, *GRID, log=log)
  deadline = time.monotonic() + 600
  while '== sweep 3/8' not in open(log.name).read():
    assert first.poll() is None and time.monotonic() < deadline, open(log.name).read()[-3000:]
    time.sleep(0.05)
  os.killpg(first.pid, signal.SIGKILL)  # the third run just started: Paddle's import alone takes longer than this
  first.wait()
  sweep_dir = runs_dir / SWEEP_NAME
  done, _ = finals(sweep_dir)
  assert len(done) == 2, f'the kill came during the third run: {done}'
  before = {key: invocations(sweep_dir / key[0] / f'seed_{key[1]}') for key in done}
  repeat = run_sh(runs_dir, 'sweep', CONFIG, *GRID)
  assert repeat.returncode == 0, repeat.stdout[-3000:] + repeat.stderr[-3000:]
  return sweep_dir, before, repeat.stdout


@pytest.mark.slow
def test_an_interrupted_sweep_repeated_trains_every_point_once(interrupted_sweep):
  sweep_dir, before, _ = interrupted_sweep
  done, folders = finals(sweep_dir)
  assert sorted(folders) == POINTS
  assert sorted(done) == sorted((point, seed) for point in POINTS for seed in range(SEEDS))
  for (point, seed), text in before.items():  # finished before the kill: left alone, not trained again
    assert invocations(sweep_dir / point / f'seed_{seed}') == text
  for point in POINTS:
    for seed in range(SEEDS):
      run = load_run(str(sweep_dir / point / f'seed_{seed}'))
      config = json.loads((sweep_dir / point / f'seed_{seed}' / 'config.json').read_text())
      assert config['seed'] == seed and point == f'rdrop.alpha={config["rdrop"]["alpha"]:g},' \
                                                 f'model.dropout_rate={config["model"]["dropout_rate"]:g}'
      assert [row['update'] for row in run.evals()] == [2]  # exactly its updates, each evaluation once
  report = (sweep_dir / 'ablation.md').read_text()
  assert 'All 8 runs finished.' in report
  assert (sweep_dir / 'ablation.png').read_bytes().startswith(b'\x89PNG')


@pytest.mark.slow
def test_plan_lines_run_in_any_order_two_at_a_time_give_the_same_runs(interrupted_sweep, tmp_path):
  sweep_dir, _, _ = interrupted_sweep
  proc = run_sh(tmp_path, 'sweep', CONFIG, *GRID, plan=True)
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.splitlines()
  assert len(lines) == 8 and not list(tmp_path.glob(f'{SWEEP_NAME}/*/seed_*')), 'PLAN=1 trains nothing'
  random.Random(0).shuffle(lines)
  with ThreadPoolExecutor(2) as pool:
    codes = list(pool.map(lambda line: subprocess.run(['bash', '-c', line], cwd=tmp_path, env=child_env(),
                                                      capture_output=True).returncode, lines))
  assert codes == [0] * 8
  assert finals(tmp_path / SWEEP_NAME) == finals(sweep_dir)


def _recorded_calls(tmp_path, script, env):
  """Run `script` with `python` and `sbatch` replaced by recorders; the commands they were given."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir(exist_ok=True)
  calls = tmp_path / 'calls'
  for name, output in (('python', ''), ('sbatch', 'echo 4242')):
    (bin_dir / name).write_text(f'#!/bin/sh\nprintf "%s\\n" "$(pwd) {name} $*" >> {calls}\n{output}\n')
    (bin_dir / name).chmod(0o755)
  calls.write_text('')
  proc = subprocess.run(['bash', str(script)], env=child_env(PATH=f'{bin_dir}:{os.environ["PATH"]}', **env),
                        capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr
  return calls.read_text().splitlines()


@pytest.mark.slow
def test_the_slurm_array_runs_the_plan_line_of_each_task_and_queues_the_report_after_it(tmp_path):
  proc = run_sh(tmp_path, 'sweep', CONFIG, *GRID, plan=True)
  lines = proc.stdout.splitlines()
  script = tmp_path / SWEEP_NAME / 'sweep.slurm'
  assert subprocess.run(['bash', '-n', str(script)]).returncode == 0
  assert f'#SBATCH --array=0-{len(lines) - 1}' in script.read_text()
  for index, line in enumerate(lines):
    (call,) = _recorded_calls(tmp_path, script, {'SLURM_ARRAY_TASK_ID': str(index)})
    folder, program, args = call.split(' ', 2)
    cd, _, command = line.partition(' && ')
    assert folder == ROOT and cd == f'cd {shlex.quote(ROOT)}'
    assert [program, *shlex.split(args)] == shlex.split(command)
  array, report = _recorded_calls(tmp_path, script, {})
  assert array.split()[1:] == ['sbatch', '--parsable', str(script)]
  assert '--dependency=afterany:4242' in report and f'--mode report --workdir {tmp_path / SWEEP_NAME}' in report


@pytest.mark.parametrize('grid, message', [
    (['rdrop.alpah=0,1'], "rdrop.alpah=0,1: the config has no field 'rdrop.alpah'; did you mean rdrop.alpha?"),
    (['alpha=0,1'], "alpha=0,1: the config has no field 'alpha'; did you mean rdrop.alpha?"),
    (['rdrop.alpha=0,big'], "rdrop.alpha=big: 'big' is not a float, the type of rdrop.alpha (default 1.0)"),
    (['train.updates=10,2.5'], "train.updates=2.5: '2.5' is not an int, the type of train.updates"),
    (['rdrop.alpha='], 'rdrop.alpha=: no values'),
    (['rdrop.alpha=,'], 'rdrop.alpha=,: no values'),
    (['train.log_every=1,2'], 'train.log_every: not a field to sweep: it names, locates, paces or watches a run'),
    (['seed=0,1'], 'seed: not a field to sweep: SEEDS=N sets the seeds'),
    (['rdrop.alpha=1,1.0'], 'rdrop.alpha=1,1.0: 1 listed more than once'),
    (['rdrop.alpha=0,1', '--config.rdrop.alpha=2'], '--config.rdrop.alpha=2: rdrop.alpha is swept by the grid'),
    (['rdrop.alpha=0,1', '--config.train.lrr=2'], "the config has no field 'train.lrr'; did you mean train.lr "),
    ([], 'no grid: give at least one FIELD=V1,V2,...'),
    # the report's reference point, which would otherwise fail only after every run
    (['rdrop.alpha=0,1', '--reference', 'rdrop.alpha=2'], '--reference rdrop.alpha=2: rdrop.alpha takes 0, 1 in this '
                                                          'sweep, not 2'),
    (['rdrop.alpha=0,1', '--reference', 'rdrop.alfa=0'], "--reference rdrop.alfa=0: 'rdrop.alfa' is not swept here"),
    # the trainer's own checks, which import Paddle
    pytest.param(['rdrop.alpha=-1,1'], 'rdrop.alpha=-1: config.rdrop.alpha=-1.0: must be >= 0', marks=pytest.mark.slow),
    pytest.param(['rdrop.reduction=sum,foo'], "rdrop.reduction=foo: config.rdrop.reduction='foo': choose one of sum",
                 marks=pytest.mark.slow),
])
def test_bad_grids_are_refused_in_one_line_before_any_run(tmp_path, grid, message):
  for plan in (False, True):
    proc = run_sh(tmp_path, 'sweep', 'configs/digits_vit_rdrop.py', *grid, plan=plan)
    assert proc.returncode == 1 and proc.stdout == ''
    assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr, proc.stderr
    assert os.listdir(tmp_path) == []


def test_a_misspelt_config_is_refused_naming_the_configs_that_exist(tmp_path):
  proc = run_sh(tmp_path, 'sweep', 'configs/digits_vit_rdorp.py', 'rdrop.alpha=0,1', plan=True)
  assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1
  assert f'config file {ROOT}/configs/digits_vit_rdorp.py does not exist; did you mean configs/digits_vit_rdrop.py? ' \
         'the configs: configs/digits_vit.py' in proc.stderr
  assert os.listdir(tmp_path) == []


def known_sweep(tmp_path, seeds=3):
  """A sweep folder of alpha 0, 1, 3 as training leaves it: seeds 0-2 finished at alpha 0 and 1; at alpha 3
  seed 0 finished, seed 1 stopped halfway, seed 2 never started."""
  sweep = sweep_plan.Sweep(CONFIG, [('rdrop.alpha', [0.0, 1.0, 3.0])], [], seeds)
  folder = tmp_path / sweep.name
  folder.mkdir()
  (folder / sweep_plan.PLAN_FILE).write_text(json.dumps(sweep.to_json()))
  finals_by_alpha = {0.0: [95.0, 96.0, 94.0], 1.0: [97.0, 96.5, 96.0], 3.0: [93.0]}
  for alpha, values in finals_by_alpha.items():
    for seed, final in enumerate(values):
      fake_run(sweep_plan.run_dir(str(folder), sweep_plan.Run((('rdrop.alpha', alpha),), seed)), seed,
               {500: final + 0.5, 600: final}, alpha=alpha)
  fake_run(sweep_plan.run_dir(str(folder), sweep_plan.Run((('rdrop.alpha', 3.0),), 1)), 1, {500: 99.0}, alpha=3.0,
           total=600)
  return folder


def _row(text, first_cell):
  return next(line for line in text.splitlines() if line.startswith(f'| {first_cell} |')).split(' | ')


def test_ablation_report_gives_each_point_its_spread_and_paired_difference_to_the_reference(tmp_path):
  folder = known_sweep(tmp_path)
  ablation.write_ablation(str(folder))
  text = (folder / 'ablation.md').read_text()
  assert _row(text, '0')[1:4] == ['3 of 3', '95.00 ± 1.00', '95.50 ± 1.00']
  # paired by seed: +2.0, +0.5, +2.0
  assert _row(text, '1')[4].startswith('+1.50 ± 0.87 (min +0.50, max +2.00; better on 3 of 3 seeds)')
  assert _row(text, '3')[1:5] == ['1 of 3', '93.00 (one draw)', '93.50 (one draw)', '-2.00 (one seed: one draw)']
  assert '- rdrop.alpha=3, seed 1: unfinished: last checkpoint at update 500 of 600' in text
  assert '- rdrop.alpha=3, seed 2: not started, or its start failed (its output says why)' in text
  assert '7 of 9 planned runs finished' in text
  assert (folder / 'ablation.png').read_bytes().startswith(b'\x89PNG')


def test_the_reference_point_is_chosen_by_flag_and_a_wrong_one_is_named(tmp_path):
  folder = known_sweep(tmp_path)
  ablation.write_ablation(str(folder), reference='rdrop.alpha=1')
  text = (folder / 'ablation.md').read_text()
  assert 'final - reference (rdrop.alpha=1), paired by seed' in text
  assert _row(text, '1')[4] == 'reference'
  with pytest.raises(ValueError, match=r'rdrop.alpha takes 0, 1, 3 in this sweep, not 2'):
    ablation.write_ablation(str(folder), reference='rdrop.alpha=2')
  with pytest.raises(ValueError, match=r"'lr' is not swept here"):
    ablation.write_ablation(str(folder), reference='lr=1')


def test_with_two_fields_each_point_is_compared_with_the_reference_at_its_other_values(tmp_path):
  sweep = sweep_plan.Sweep(CONFIG, [('rdrop.alpha', [0.0, 1.0]), ('model.dropout_rate', [0.1, 0.2])], [], 2)
  folder = tmp_path / sweep.name
  folder.mkdir()
  (folder / sweep_plan.PLAN_FILE).write_text(json.dumps(sweep.to_json()))
  finals_by_point = {(0.0, 0.1): [90.0, 91.0], (0.0, 0.2): [80.0, 81.0], (1.0, 0.1): [92.0, 94.0],
                     (1.0, 0.2): [85.0, 85.0]}
  for (alpha, rate), values in finals_by_point.items():
    for seed, final in enumerate(values):
      point = (('rdrop.alpha', alpha), ('model.dropout_rate', rate))
      fake_run(sweep_plan.run_dir(str(folder), sweep_plan.Run(point, seed)), seed, {600: final}, alpha=alpha)
  ablation.write_ablation(str(folder))
  text = (folder / 'ablation.md').read_text()
  assert '| final - reference (rdrop.alpha=0 at the same other values), paired by seed |' in text
  rows = [line.split(' | ') for line in text.splitlines() if line.startswith('| 1 | 0.')]
  assert [row[1] + ' ' + row[5].split(' (')[0] for row in rows] == ['0.1 +2.50 ± 0.71', '0.2 +4.50 ± 0.71']
  assert (folder / 'ablation.png').read_bytes().startswith(b'\x89PNG')


@pytest.mark.slow
def test_a_sweep_folder_is_not_reused_with_other_overrides(tmp_path):
  assert run_sh(tmp_path, 'sweep', CONFIG, 'rdrop.alpha=0,1', plan=True).returncode == 0
  proc = run_sh(tmp_path, 'sweep', CONFIG, 'rdrop.alpha=0,1', '--config.train.lr=0.01', plan=True)
  assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1
  assert "holds a sweep of configs/digits_vit_rdrop.py:smoke with overrides none, not configs/digits_vit_rdrop.py" \
         ":smoke with ['--config.train.lr=0.01']: repeat that command, or set RUNS_DIR to another folder" in proc.stderr
  more_values = run_sh(tmp_path, 'sweep', CONFIG, 'rdrop.alpha=0,1,3', plan=True)  # extending the grid is fine
  assert more_values.returncode == 0 and len(more_values.stdout.splitlines()) == 3 * SEEDS


def _processes_using(folder):
  """Pids of the processes whose command line names `folder`."""
  pids = []
  for pid in filter(str.isdigit, os.listdir('/proc')):
    try:
      with open(f'/proc/{pid}/cmdline', 'rb') as f:
        if str(folder).encode() in f.read():
          pids.append(int(pid))
    except OSError:
      continue
  return pids


@pytest.mark.slow
def test_sigterm_to_the_sweep_stops_its_training_too_and_the_repeat_continues(tmp_path):
  log = open(tmp_path / 'sweep.log', 'w+')
  command = ['python', '-m', 'tools.sweep', '--runs-dir', str(tmp_path), CONFIG, 'rdrop.alpha=0,1']
  sweep = subprocess.Popen(command, cwd=ROOT, env=child_env(), stdout=log, stderr=subprocess.STDOUT)
  deadline = time.monotonic() + 300
  while 'update 1/2' not in open(log.name).read():  # the first run is training
    assert sweep.poll() is None and time.monotonic() < deadline, open(log.name).read()[-3000:]
    time.sleep(0.2)
  sweep.send_signal(signal.SIGTERM)  # to the sweep alone, as `kill PID` sends it
  assert sweep.wait(timeout=120) == 128 + signal.SIGTERM, open(log.name).read()[-3000:]
  assert 'sweep: stopped during run 1 of 2: repeat the same command to continue' in open(log.name).read()
  assert _processes_using(tmp_path / 'sweep_digits_vit_rdrop-smoke_rdrop.alpha') == []
  repeat = subprocess.run(command, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=600)
  assert repeat.returncode == 0, repeat.stdout[-3000:] + repeat.stderr[-3000:]
  assert sorted(finals(tmp_path / 'sweep_digits_vit_rdrop-smoke_rdrop.alpha')[0]) == [('rdrop.alpha=0', 0),
                                                                                        ('rdrop.alpha=1', 0)]
