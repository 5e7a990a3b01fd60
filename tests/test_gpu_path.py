"""What a desk check of the GPU path found (issue: the first GPU run works), each settled by a rule tested here."""
import collections
import itertools
import os
import subprocess
import sys

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from helpers import ROOT, child_env
from configs import base, vit_b16_cifar100_rdrop
from data import pipeline
from tools.fakedata import make_cifar10
from test_training import DEMO, TINY, _max_difference, _weights
from training import optim
from training.precision import Precision
from utils import checkpoint

PRECISIONS = {'fp32': ('fp32', 'O1'), 'fp16 O2': ('fp16', 'O2'), 'bf16 O2': ('bf16', 'O2')}


@pytest.mark.parametrize('mean,std', [((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
                                      ((0.0,), (1.0,))])
def test_normalisation_uses_cudnns_smallest_epsilon_and_gives_the_same_values_as_without(monkeypatch, mean, std):
  """Paddle's GPU batch_norm raises an epsilon below cuDNN's 1e-5 to it and logs an error on every call."""
  epsilons = []
  real = F.batch_norm
  monkeypatch.setattr(F, 'batch_norm', lambda *args, **kw: epsilons.append(kw['epsilon']) or real(*args, **kw))
  images = paddle.to_tensor(np.random.default_rng(0).integers(0, 256, (2, len(mean), 5, 5), dtype=np.uint8))
  config = base.get_base_config().data
  config.update(mean=mean, std=std)
  normalised = pipeline.to_model_input(images, config).numpy()
  assert epsilons and min(epsilons) >= 1e-5
  exact = real(images.astype('float32'), paddle.to_tensor([255.0 * m for m in mean]),
               paddle.to_tensor([(255.0 * s) ** 2 for s in std]), training=False, epsilon=0.0).numpy()
  assert np.array_equal(normalised, exact)
  expected = (images.numpy() / 255.0 - np.reshape(mean, (1, -1, 1, 1))) / np.reshape(std, (1, -1, 1, 1))
  np.testing.assert_allclose(normalised, expected, rtol=1e-5, atol=1e-5)


def _trainer(precision, optimizer):
  """A layer norm and a linear layer with the recipe's optimizer in `precision`, as a fresh process builds them."""
  tc = vit_b16_cifar100_rdrop.get_config().train
  tc.precision, tc.amp_level = PRECISIONS[precision]
  tc.optimizer = optimizer
  amp = Precision(tc, log=pytest.fail)
  with paddle.utils.unique_name.guard():  # the parameter names of a fresh process
    paddle.seed(0)
    model = paddle.nn.Sequential(paddle.nn.Linear(3, 4), paddle.nn.LayerNorm(4))
    opt, _ = optim.build(tc, model.parameters(), tc.updates)
    model, opt = amp.decorate(model, opt)
  return model, opt, amp


def _first_update_accumulators(opt, model):
  """What the first update does before its kernels run: the optimizer creates (or, after set_state_dict,
  loads) its accumulators; here without a kernel, which the CPU lacks for half precision."""
  with paddle.utils.unique_name.guard():  # the accumulator names of a fresh process
    opt._create_accumulators(paddle.static.default_main_program().global_block(), model.parameters())


def _accumulators(opt, model):
  """{(parameter, accumulator): float32 values}, found through Paddle's own tables, not through names."""
  owner = {param.name: key for key, param in model.named_parameters()}
  owner.update({master.name: owner[name] for name, master in getattr(opt, '_master_weights', {}).items()})
  return {(owner[tensor], kind): value.astype('float32').numpy()
          for kind, table in opt._accumulators.items() for tensor, value in table.items()}


@pytest.mark.parametrize('optimizer', ['momentum', 'adamw'])
@pytest.mark.parametrize('saved,resumed', [pair for pair in itertools.permutations(PRECISIONS, 2)])
def test_the_optimizer_state_carries_over_to_a_resume_in_another_precision(amp_standin, optimizer, saved, resumed):
  """fp16 O2 -> bf16 O2 is what the fp16 overflow error advises: layer norms gain a master copy there."""
  model, opt, _ = _trainer(saved, optimizer)
  _first_update_accumulators(opt, model)
  rng = np.random.default_rng(0)
  for table in opt._accumulators.values():
    for value in table.values():
      value.set_value(paddle.to_tensor(rng.normal(size=value.shape)).astype(value.dtype))
  expected = _accumulators(opt, model)
  state = opt.state_dict()
  weights = checkpoint.float32_weights(model.state_dict(), state.get('master_weights'))

  model, opt, amp = _trainer(resumed, optimizer)
  opt.set_state_dict(amp.optimizer_state(state, model, weights))
  _first_update_accumulators(opt, model)  # Paddle's "Optimizer set error, ... should in state dict" before
  got = _accumulators(opt, model)
  assert got.keys() == expected.keys()
  for key, value in expected.items():
    assert np.array_equal(got[key], value), key
  masters = getattr(opt, '_master_weights', {})
  assert {p.name for p in model.parameters() if p.dtype != paddle.float32} == set(masters)
  for key, param in model.named_parameters():
    if param.name in masters:
      assert np.array_equal(masters[param.name].numpy(), weights[key].numpy()), key


@pytest.mark.parametrize('devices', [1, 2, 4, 8, 16])
def test_the_vit_recipe_keeps_the_authors_micro_batch_of_32_on_any_number_of_devices_that_divides_16(devices):
  """R-Drop's KL is summed over the micro-batch: at 4 per device (8 devices, 16 steps) it would weigh 8x less."""
  tc = vit_b16_cifar100_rdrop.get_config().train
  accum, micro = optim.batch_split(tc, devices)
  assert micro == 32 and accum * micro * devices == tc.batch_size == 512


def test_a_device_count_that_cannot_keep_the_micro_batch_is_refused_naming_the_fields():
  tc = vit_b16_cifar100_rdrop.get_config().train
  with pytest.raises(ValueError, match=r'config.train.accum_steps=16 with config.train.keep_micro_batch=True: 16 '
                                       r'micro-batches of 32 samples cannot be shared by 3 devices'):
    optim.batch_split(tc, 3)


def _launch(tmp_path, nproc, *args, script='main.py'):
  log_dir = tmp_path / f'logs_{nproc}'
  proc = subprocess.run([sys.executable, '-m', 'paddle.distributed.launch', '--nproc_per_node', str(nproc),
                         '--log_dir', str(log_dir), str(script), *map(str, args)],
                        cwd=ROOT, capture_output=True, text=True, timeout=600, env=child_env())
  logs = ''.join((log_dir / f).read_text() for f in sorted(os.listdir(log_dir)) if f.startswith('workerlog'))
  assert proc.returncode == 0, f'{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}\n{logs[-4000:]}'
  return proc.stdout + proc.stderr + logs


@pytest.mark.slow
def test_two_processes_keeping_the_micro_batch_train_the_objective_of_one_with_a_summed_kl(tmp_path):
  """KL reduction sum, as the ViT recipe: 2 micro-batches of 8 on one process, one of 8 on each of two."""
  common = ['--config', DEMO, *TINY, '--config.model.dropout_rate=0.0', '--config.train.optimizer=momentum',
            '--config.train.updates=3', '--config.train.accum_steps=2', '--config.rdrop.reduction=sum',
            '--config.rdrop.alpha=0.5', '--config.train.keep_micro_batch=True']
  subprocess.run([sys.executable, 'main.py', '--workdir', tmp_path / 'one', *common], cwd=ROOT, check=True,
                 capture_output=True, env=child_env())
  logs = _launch(tmp_path, 2, '--workdir', tmp_path / 'two', *common)
  assert ('1 x 8 per device on 2 device(s) sharing the 2 micro-batches of one device (train.keep_micro_batch)'
          in logs)
  assert _max_difference(_weights(tmp_path / 'one', 3), _weights(tmp_path / 'two', 3)) < 1e-5


@pytest.mark.slow
def test_batch_norm_statistics_agree_on_every_rank_and_in_the_checkpoint_after_training(tmp_path):
  """Each rank normalises its own slice of the batch: its running statistics drift from the others'."""
  cifar = make_cifar10(tmp_path / 'cifar-10-python.tar.gz', per_batch=8, test=8)
  script = tmp_path / 'record_buffers.py'
  script.write_text(f'''
import runpy, sys
import numpy as np
sys.path.insert(0, {ROOT!r})
import train
from training import distributed

evaluate = train.evaluate
def recording(net, *args, **kwargs):  # the statistics each rank evaluates with, then saves
  rank = distributed.rank_and_world_size()[0]
  statistics = {{k: v.numpy() for k, v in net.state_dict().items() if k.endswith(('_mean', '_variance'))}}
  np.savez({str(tmp_path)!r} + f'/buffers_{{rank}}.npz', **statistics)
  return evaluate(net, *args, **kwargs)
train.evaluate = recording
sys.argv = ['main.py', *sys.argv[1:]]
runpy.run_path({os.path.join(ROOT, 'main.py')!r}, run_name='__main__')
''')
  workdir = tmp_path / 'run'
  _launch(tmp_path, 2, '--config', 'configs/repconv_cifar10.py:smoke', '--workdir', workdir,
          f'--config.data.root={cifar}', script=script)
  ranks = [dict(np.load(tmp_path / f'buffers_{rank}.npz')) for rank in (0, 1)]
  saved = _weights(workdir, 2)
  assert ranks[0] and ranks[0].keys() <= saved.keys()
  for name in ranks[0]:
    assert np.array_equal(ranks[0][name], ranks[1][name]), name
    assert np.array_equal(ranks[0][name], saved[name]), name


class _Photos(pipeline.SeededDataset):
  """64 ImageNet-sized images (150 KB each as uint8)."""

  def __len__(self):
    return 64

  def sample(self, index):
    return np.zeros((3, 224, 224), np.uint8), 0


def test_data_workers_refuse_to_start_in_a_dockers_default_64_mb_of_shared_memory(monkeypatch):
  """A full /dev/shm is a bus error without a word; the default of Docker is 64 MB."""
  usage = collections.namedtuple('usage', 'total used free')
  monkeypatch.setattr(pipeline.shutil, 'disk_usage', lambda path: usage(2**26, 0, 2**26))
  with pytest.raises(OSError, match=r'^/dev/shm has 64 MB free, and the data loading needs about 74 MB there '
                                    r'\(8 batches of 64 images in flight per process, 1 process\(es\)\): in Docker, '
                                    r'start the container with --shm-size=8g or --ipc=host, or set '
                                    r'--config.data.num_workers=0'):
    pipeline.loader(_Photos(), pipeline.TrainBatches(64, 64, seed=0), num_workers=2)
  pipeline.loader(_Photos(), pipeline.TrainBatches(64, 16, seed=0), num_workers=2)  # 18 MB fit


def test_run_sh_refuses_gpu_ids_that_cuda_visible_devices_hides_before_any_run(tmp_path):
  """Paddle's launcher looks GPUS up among CUDA_VISIBLE_DEVICES' ids and fails with "'0' is not in list"."""
  proc = subprocess.run(['bash', 'run.sh', 'demo'], cwd=ROOT, capture_output=True, text=True, timeout=60,
                        env=child_env(CUDA_VISIBLE_DEVICES='4,5,6,7', GPUS='0,1', RUNS_DIR=str(tmp_path / 'runs')))
  assert proc.returncode == 1 and proc.stdout == ''
  assert proc.stderr == ('run.sh: GPUS=0,1 names GPU 0, which CUDA_VISIBLE_DEVICES=4,5,6,7 hides: GPUS takes ids '
                         'from that list (e.g. GPUS=4,5,6,7), or unset CUDA_VISIBLE_DEVICES\n')
  assert not (tmp_path / 'runs').exists()


@pytest.mark.slow
def test_the_gpu_preflight_says_there_is_no_gpu_and_passes_what_a_cpu_can_run():
  proc = subprocess.run(['bash', 'run.sh', 'gpu-check'], cwd=ROOT, capture_output=True, text=True, timeout=900,
                        env=child_env())
  assert proc.returncode == 0, proc.stdout + proc.stderr
  lines = proc.stdout.splitlines()
  assert lines[1] == ("no GPU here: running what a CPU can (the recipe's tiny smoke variant in fp32); "
                      "GPU checks skipped")
  results = {line[8:46].strip(): line[:8].strip() for line in lines[3:-1]}
  assert results == {'paddle.utils.run_check': 'ok', 'train fp32': 'ok', 'resume fp32': 'ok',
                     'train fp16 O2': 'skipped', 'train bf16 O2': 'skipped', 'resume fp32 -> fp16 O2': 'skipped',
                     'resume fp16 O2 -> bf16 O2': 'skipped', 'resume bf16 O2 -> fp32': 'skipped',
                     'peak GPU memory': 'skipped', 'paper-run time': 'skipped', 'FLAGS_cudnn_deterministic=1': 'ok',
                     'paddle.distributed.launch, 2 GPUs': 'skipped'}
  assert lines[-1] == 'every check passed that a CPU can run'


def test_a_summed_kl_that_does_not_keep_its_micro_batch_is_warned_about_on_several_devices():
  import train
  config = vit_b16_cifar100_rdrop.get_config()
  assert train._objective_warning(config, config.train, 8) == ''  # the recipe keeps it
  config.train.keep_micro_batch = False
  assert train._objective_warning(config, config.train, 1) == ''
  assert train._objective_warning(config, config.train, 8) == (
      "WARNING: R-Drop's KL (reduction sum) is summed over the micro-batch, 4 samples per device here and 32 on "
      "one device: its weight is 8x smaller than this config gives on one device. Set "
      "--config.train.keep_micro_batch=True to keep 32 per device, or use rdrop.reduction=batchmean with alpha x 32 "
      "(docs/distributed.md: the global batch)")
  config.rdrop.reduction = 'batchmean'
  assert train._objective_warning(config, config.train, 8) == ''
