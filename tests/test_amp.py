"""Mixed precision, run through Paddle's own AMP code on this CPU by the stand-in of tests/amp_standin.py.

What runs here and what does not (Paddle 3.3.1 CPU build): O1 autocast and the fp16 GradScaler run for
real, with float32 kernels; O2 really casts the weights, but only plain SGD has a bf16 update kernel, and
nothing in an fp16 update has a CPU kernel. So: bf16 O2 trains with SGD (the demo's clipping included),
fp16 O1 exercises the loss scaler, bf16 O1 trains, and an fp16 O2 model is evaluated (not trained).
"""
import json
import os
import shutil
import signal
import subprocess
import time

import numpy as np
import paddle
import pytest

import data
from helpers import ROOT, child_env, main_command, metric_rows, run_main
from configs import digits_vit_rdrop
from evaluate import evaluate, predict
from test_training import DEMO, TINY, _max_difference, _weights
import models
from utils import checkpoint
from training import optim
from export import export
from training.precision import Precision

UPDATES = 6
BF16_O2 = [*TINY, '--config.train.precision=bf16', '--config.train.amp_level=O2', '--config.train.optimizer=sgd',
           '--config.train.lr=0.05', '--config.train.warmup_updates=0', f'--config.train.updates={UPDATES}',
           '--config.train.eval_every=3', '--config.train.checkpoint_every=2', '--config.train.keep_checkpoints=10']
# Evaluations of the same weights in another precision may differ by rounding: at most 2 of the 359 test digits.
ROUNDING = 100.0 * 2 / 359



def _state(workdir, update, name):
  return checkpoint.load(checkpoint.folder(os.path.join(workdir, 'checkpoints'), update), (name,))[1][name]


def _numpy(state):
  return {k: v.numpy() for k, v in state.items() if isinstance(v, paddle.Tensor)}


def _train_config(precision='fp32', amp_level='O1'):
  config = digits_vit_rdrop.get_config().train
  config.update(precision=precision, amp_level=amp_level)
  return config


@pytest.fixture(scope='module')
def bf16_o2_run(tmp_path_factory):
  """6 updates in bf16 O2 under the stand-in, evaluated at 3 and 6, checkpoints every 2 (read-only)."""
  workdir = tmp_path_factory.mktemp('bf16_o2') / 'run'
  proc = run_main('--config', DEMO, '--workdir', workdir, *BF16_O2, amp_standin=True)
  return workdir, proc


def test_on_this_cpu_paddle_declines_amp_and_the_run_is_fp32_saying_why():
  logged = []
  precision = Precision(_train_config('bf16', 'O2'), log=logged.append)
  assert not precision.enabled and precision.name == 'fp32' and not precision.scaling
  assert logged == ['precision: Paddle declines bf16 here (amp_guard can only be enabled on CUDAPlace, XPUPlace, '
                    'and CustomPlace, current place is Place(cpu), so it makes no effect.); this run is fp32']


@pytest.mark.parametrize('precision,dtype', [('bf16', paddle.bfloat16), ('fp16', paddle.float16)])
def test_under_the_standin_o2_casts_the_weights_and_keeps_float32_master_copies(amp_standin, precision, dtype):
  amp = Precision(_train_config(precision, 'O2'), log=pytest.fail)
  assert amp.enabled and amp.name == f'{precision} O2' and amp.scaling == (precision == 'fp16')
  layer = paddle.nn.Linear(3, 2)
  optimizer = paddle.optimizer.SGD(0.1, parameters=layer.parameters(), multi_precision=True)
  layer, optimizer = amp.decorate(layer, optimizer)
  assert layer.weight.dtype == dtype and layer.bias.dtype == dtype
  with amp.autocast():
    assert paddle.is_autocast_enabled()
    out = layer(paddle.ones([1, 3]))
  if precision == 'bf16':  # the CPU has a bf16 SGD kernel, no fp16 one
    out.astype('float32').sum().backward()
    optimizer.step()
    assert {p.name for p in layer.parameters()} == set(optimizer.state_dict()['master_weights'])


def test_clipping_of_half_precision_gradients_matches_float32_clipping():
  """Squares of 300 and 1200 overflow fp16 and those of 1e-4 underflow it; bf16 keeps 8 significant bits.

  bf16 only: the CPU has no fp16 kernel for the final multiplication of the gradients.
  """
  gradients = [np.array([300.0, -400.0, 0.0], np.float32), np.array([1e-4, 2e-4, 1200.0], np.float32)]
  params = [paddle.create_parameter([3], 'float32') for _ in gradients]
  reference = paddle.nn.ClipGradByGlobalNorm(1.0)([(p, paddle.to_tensor(g)) for p, g in zip(params, gradients)])
  clipped = optim.ClipGradByGlobalNorm(1.0)(
      [(p.astype('bfloat16'), paddle.to_tensor(g).astype('bfloat16')) for p, g in zip(params, gradients)])
  for (_, expected), (_, got) in zip(reference, clipped):
    assert got.dtype == paddle.bfloat16
    np.testing.assert_allclose(got.astype('float32').numpy(), expected.numpy(), rtol=2 ** -7)
  assert paddle.nn.clip._clip_by_global_norm_using_mp_type() is False  # switched on for our clip only


def test_weights_are_saved_from_the_master_copies_and_load_into_any_dtype(amp_standin):
  amp = Precision(_train_config('bf16', 'O2'), log=pytest.fail)
  paddle.seed(0)
  layer = paddle.nn.Linear(3, 2)
  masters = {p.name: p.detach().clone() for p in layer.parameters()}  # finer than bf16 can hold
  layer, _ = amp.decorate(layer)
  saved = checkpoint.float32_weights(layer.state_dict(), masters)
  assert all(v.dtype == paddle.float32 for v in saved.values())
  assert _max_difference(_numpy(saved), {k: masters[v.name].numpy() for k, v in layer.state_dict().items()}) == 0
  # A master copy the update kernel did not keep (Paddle's CPU SGD) no longer rounds to the weight: not taken.
  masters[layer.bias.name] += 1.0
  assert np.array_equal(checkpoint.float32_weights(layer.state_dict(), masters)['bias'].numpy(),
                        layer.bias.astype('float32').numpy())
  checkpoint.load_state_strict(layer, saved, source='test')  # float32 into a bf16 model
  assert layer.weight.dtype == paddle.bfloat16
  plain = paddle.nn.Linear(3, 2)
  checkpoint.load_state_strict(plain, layer.state_dict(), source='test')  # bf16 into a float32 model
  np.testing.assert_allclose(plain.weight.numpy(), saved['weight'].numpy(), rtol=2 ** -8)


def test_master_weights_are_rebuilt_from_the_float32_weights_or_dropped_to_fit_the_run(amp_standin):
  paddle.seed(0)
  weights = {'weight': paddle.randn([3, 2]), 'bias': paddle.randn([2])}
  state = {'LR_Scheduler': {'last_epoch': 4}}
  amp = Precision(_train_config('bf16', 'O2'), log=pytest.fail)
  layer, _ = amp.decorate(paddle.nn.Linear(3, 2))
  fitted = amp.optimizer_state(state, layer, weights)
  assert fitted['LR_Scheduler'] == {'last_epoch': 4}
  assert _max_difference(_numpy(fitted['master_weights']), {layer.weight.name: weights['weight'].numpy(),
                                                            layer.bias.name: weights['bias'].numpy()}) == 0
  plain = Precision(_train_config(), log=pytest.fail)
  assert 'master_weights' not in plain.optimizer_state(fitted, paddle.nn.Linear(3, 2), weights)


@pytest.mark.slow
def test_a_bf16_o2_run_trains_through_every_evaluation_and_saves_float32_weights(bf16_o2_run):
  workdir, proc = bf16_o2_run
  assert 'declines' not in proc.stdout
  assert [r['update'] for r in metric_rows(workdir, 'eval')] == [3, UPDATES]
  assert [r['update'] for r in metric_rows(workdir, 'train')] == list(range(1, UPDATES + 1))
  assert _state(workdir, UPDATES, 'trainer')['precision']['precision'] == 'bf16 O2'
  weights = _state(workdir, UPDATES, 'model')
  assert {v.dtype for v in weights.values()} == {paddle.float32}
  assert _state(workdir, UPDATES, 'optimizer')['master_weights']


@pytest.mark.slow
def test_kill_9_mid_run_and_resume_match_the_uninterrupted_bf16_o2_run(bf16_o2_run, tmp_path):
  reference, _ = bf16_o2_run
  workdir = tmp_path / 'run'
  with open(tmp_path / 'killed.err', 'w') as err:
    proc = subprocess.Popen(main_command('--config', DEMO, '--workdir', workdir, *BF16_O2, amp_standin=True),
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err, env=child_env())
  second = checkpoint.folder(str(workdir / 'checkpoints'), 2)
  deadline = time.time() + 120
  while not os.path.isdir(second) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=60)
  assert proc.returncode == -signal.SIGKILL, (tmp_path / 'killed.err').read_text()
  resumed = run_main('--mode', 'resume', '--workdir', workdir, amp_standin=True)
  assert 'from update ' in resumed.stdout and f'from update {UPDATES}' not in resumed.stdout
  assert 'precision:' not in resumed.stdout  # the same precision: nothing to say
  assert _max_difference(_weights(reference, UPDATES), _weights(workdir, UPDATES)) == 0
  masters = [_numpy(_state(run, UPDATES, 'optimizer')['master_weights']) for run in (reference, workdir)]
  assert _max_difference(*masters) == 0
  assert [(r['update'], r['top1']) for r in metric_rows(workdir, 'eval')] == \
         [(r['update'], r['top1']) for r in metric_rows(reference, 'eval')]


@pytest.mark.slow
def test_a_bf16_o2_checkpoint_serves_a_plain_fp32_process_and_back(bf16_o2_run, tmp_path):
  """eval (command line), predict and export (this test's process) without the stand-in: Paddle declines
  AMP, so fp32; then resume in fp32, and from that checkpoint in bf16 O2 again."""
  workdir = shutil.copytree(bf16_o2_run[0], tmp_path / 'run')
  trained = {r['update']: r['top1'] for r in metric_rows(workdir, 'eval')}

  proc = run_main('--mode', 'eval', '--workdir', workdir)
  evaluated = json.loads((workdir / 'eval_test.json').read_text())
  assert 'Paddle declines bf16 here' in proc.stdout and evaluated['precision'] == 'fp32'
  assert abs(evaluated['top1'] - trained[evaluated['update']]) <= ROUNDING

  config = digits_vit_rdrop.get_config()
  model, _ = models.load_trained(config.model, evaluated['checkpoint'])
  test_set = data.build(config.data, 'test')
  _, predicted = predict(model, test_set, config)
  assert 100.0 * np.mean(predicted == test_set.labels) == pytest.approx(evaluated['top1'])

  prefix = str(workdir / 'export' / 'model')
  export(config, evaluated['checkpoint'], prefix)
  images = paddle.to_tensor(np.random.default_rng(0).normal(size=(5, 1, 8, 8)).astype('float32'))
  np.testing.assert_allclose(paddle.jit.load(prefix)(images).numpy(), model(images).numpy(), rtol=1e-5, atol=1e-5)

  proc = run_main('--mode', 'resume', '--workdir', workdir, f'--config.train.updates={UPDATES + 2}')
  assert ('precision: the checkpoint was written in bf16 O2, this run is fp32: the model trains on its '
          'float32 weights, without master copies') in proc.stdout
  assert 'master_weights' not in _state(workdir, UPDATES + 2, 'optimizer')

  proc = run_main('--mode', 'resume', '--workdir', workdir, f'--config.train.updates={UPDATES + 4}', amp_standin=True)
  assert ('precision: the checkpoint was written in fp32, this run is bf16 O2: float32 master weights rebuilt from '
          'its float32 weights') in proc.stdout
  assert len(_state(workdir, UPDATES + 4, 'optimizer')['master_weights']) == len(_weights(workdir, UPDATES))
  assert metric_rows(workdir, 'eval')[-1]['update'] == UPDATES + 4


@pytest.mark.slow
def test_an_fp16_o2_model_evaluates_a_checkpoint_under_autocast(bf16_o2_run, amp_standin):
  """The GPU's fp16 O2 evaluation (half-precision weights, run only inside auto_cast), as --mode eval does it."""
  workdir = bf16_o2_run[0]
  config = digits_vit_rdrop.get_config()
  config.train.update(precision='fp16', amp_level='O2')
  precision = Precision(config.train, log=pytest.fail)
  path = checkpoint.folder(str(workdir / 'checkpoints'), UPDATES)
  model, _ = models.load_trained(config.model, path, precision)
  assert {p.dtype for p in model.parameters()} >= {paddle.float16}
  evaluated = evaluate(model, data.build(config.data, 'test'), config, autocast=precision.autocast)
  assert abs(evaluated['top1'] - metric_rows(workdir, 'eval')[-1]['top1']) <= ROUNDING


@pytest.mark.slow
def test_fp16_overflows_with_accumulation_skip_whole_updates_halve_the_scale_and_step_the_schedule(tmp_path):
  """A loss scale of 1.7e38 overflows float32 until the scaler has halved it a few times."""
  workdir = tmp_path / 'run'
  run_main('--config', DEMO, '--workdir', workdir, *TINY, '--config.train.precision=fp16',
           '--config.train.updates=6', '--config.train.accum_steps=2', '--config.train.init_loss_scale=1.7e38',
           '--config.train.checkpoint_every=1', '--config.train.keep_checkpoints=10', '--config.train.log_every=3',
           '--config.train.eval_every=3', amp_standin=True)
  scale = {u: float(_state(workdir, u, 'trainer')['precision']['scaler']['scale'][0]) for u in range(1, 7)}
  skipped = {u: scale[u] < scale[u - 1] for u in range(2, 7)}
  for u in range(2, 7):  # skipped: the weights stay, the scale halves once for both micro-batches
    unchanged = _max_difference(_weights(workdir, u - 1), _weights(workdir, u)) == 0
    assert unchanged == skipped[u] and scale[u] == (scale[u - 1] / 2 if skipped[u] else scale[u - 1]), u
    assert _state(workdir, u, 'optimizer')['LR_Scheduler']['last_epoch'] == u  # the schedule still steps
  assert scale[1] == pytest.approx(1.7e38 / 2, rel=1e-6) and any(skipped.values()) and not all(skipped.values())
  rows = metric_rows(workdir, 'train')
  assert [r['skipped_in_window'] for r in rows] == [1 + skipped[2] + skipped[3], skipped[4] + skipped[5] + skipped[6]]
  for row in rows:  # averages of the applied updates only: finite, or absent when all were skipped
    assert ('ce' in row) == (row['skipped_in_window'] < 3) and all(np.isfinite(row.get(k, 0)) for k in ('ce', 'kl'))
  assert [r['update'] for r in metric_rows(workdir, 'eval')] == [3, 6]


@pytest.mark.slow
def test_the_skip_limit_names_the_last_good_checkpoint_and_its_resume_command_works(bf16_o2_run, tmp_path):
  """bf16 O2 checkpoint -> fp16 O1 with an infinite loss scale, so every update overflows -> the advised bf16
  (O1) resume trains on."""
  workdir = shutil.copytree(bf16_o2_run[0], tmp_path / 'run')
  proc = run_main('--mode', 'resume', '--workdir', workdir, f'--config.train.updates={UPDATES + 4}',
                  '--config.train.precision=fp16', '--config.train.amp_level=O1',
                  '--config.train.init_loss_scale=inf', '--config.train.max_skipped_updates=1',
                  check=False, amp_standin=True)
  last_good = checkpoint.folder(str(workdir / 'checkpoints'), UPDATES)
  assert proc.returncode == 1
  assert ('precision: the checkpoint was written in bf16 O2, this run is fp16 O1: the model trains on its '
          'float32 weights, without master copies; the loss scale starts at inf from the config') in proc.stdout
  assert (f'error: 2 updates in a row overflowed in fp16 (updates {UPDATES + 1} to {UPDATES + 2}; loss scale now '
          f'inf), more than train.max_skipped_updates=1. Last good checkpoint: {last_good}; continue from it in '
          f'bf16 (or with a lower train.lr):\n  python main.py --mode resume --workdir {workdir} '
          f'--config.train.precision=bf16') in proc.stderr
  command = proc.stderr.strip().splitlines()[-1].split()[2:]  # run as the error says (under the stand-in)
  proc = run_main(*command, amp_standin=True)
  assert ('precision: the checkpoint was written in bf16 O2, this run is bf16 O1: the model trains on its '
          'float32 weights, without master copies') in proc.stdout
  assert f'from update {UPDATES}' in proc.stdout and metric_rows(workdir, 'eval')[-1]['update'] == UPDATES + 4
  assert _state(workdir, UPDATES + 4, 'trainer')['precision']['precision'] == 'bf16 O1'
