"""`--mode export`: the saved inference model computes what the checkpoint's eval-mode model computes."""
import pytest
import json
import os
import re
import sys

import numpy as np
import paddle

import train
from helpers import run_main
from configs import digits_vit, repconv_cifar10
from export import export
from utils import checkpoint
import models

# RepConv on the offline digits (1 channel, 8x8): the network pools globally, so any size works.
REPCONV_ON_DIGITS = {'data.name': 'digits', 'data.img_size': 8, 'data.mean': (0.5,), 'data.std': (0.5,),
                     'model.in_channels': 1, 'model.widths': (4, 8)}


def _latest(workdir):
  return checkpoint.latest_valid(os.path.join(workdir, 'checkpoints'))


def _random_images(channels, size, seed):
  return paddle.to_tensor(np.random.default_rng(seed).normal(size=(5, channels, size, size)).astype('float32'))


@pytest.mark.slow
def test_cli_export_of_a_trained_vit_matches_the_eval_model(tmp_path):
  workdir = tmp_path / 'run'
  run_main('--config', 'configs/digits_vit.py:smoke', '--workdir', workdir)
  prefix = str(workdir / 'export' / 'model')
  os.makedirs(os.path.dirname(prefix))
  with open(prefix + '.py', 'w') as f:  # a user's file that shares the prefix (e.g. --output main beside main.py)
    f.write('kept')
  proc = run_main('--mode', 'export', '--workdir', workdir)
  assert prefix in proc.stdout
  assert open(prefix + '.py').read() == 'kept'
  assert os.path.isfile(prefix + '.pdiparams')
  with open(prefix + '.preprocess.yml') as f:
    preprocess = {key: json.loads(value) for key, value in (line.split(': ', 1) for line in f)}
  assert ([preprocess[k] for k in ('channels', 'img_size', 'mean', 'std', 'num_classes')]
          == [1, 8, [0.5], [0.5], 10])

  exported = paddle.jit.load(prefix)
  model, _ = models.load_trained(digits_vit.get_config('smoke').model, _latest(str(workdir)))
  images = _random_images(1, 8, seed=0)
  np.testing.assert_allclose(exported(images).numpy(), model(images).numpy(), rtol=1e-5, atol=1e-5)


def test_export_fuses_repconv_blocks_and_keeps_the_function(tmp_path):
  config = repconv_cifar10.get_config('smoke')
  config.update_from_flattened_dict(REPCONV_ON_DIGITS)
  train.train(config, str(tmp_path))  # 2 updates: BatchNorm running statistics move off their defaults
  path = _latest(str(tmp_path))
  prefix = str(tmp_path / 'export' / 'model')
  written = export(config, path, prefix)
  assert prefix + '.pdiparams' in written and prefix + '.preprocess.yml' in written

  model, _ = models.load_trained(config.model, path)  # the unfused, multi-branch eval-mode network
  exported = paddle.jit.load(prefix)
  images = _random_images(1, 8, seed=1)
  np.testing.assert_allclose(exported(images).numpy(), model(images).numpy(), rtol=1e-5, atol=1e-5)
  # Fused: 4 blocks are 4 convs and no batch norm is left (unfused: 8 convs, 10 batch norms).
  with open(prefix + '.json') as f:  # Paddle 3's PIR program: ops appear as "#":"<dialect>.<op name>"
    ops = re.findall(r'"#":"\d+\.([a-z_0-9]+)"', f.read())
  assert ops.count('conv2d') == 4 and not any(op.startswith('batch_norm') for op in ops)


def test_export_hides_paddles_tracing_noise_and_nothing_else(capfd):
  from export import PADDLE_TRACING_NOISE, _stderr_without
  with _stderr_without(PADDLE_TRACING_NOISE):
    os.write(2, f'W1201 eager_utils.cc:3584] {PADDLE_TRACING_NOISE} for now!!!!!\n'.encode())
    os.write(2, b'W1201 some_op.cc:12] a real warning\n')
    print('a Python warning', file=sys.stderr)
  # (under pytest, Python's sys.stderr is not file descriptor 2, so the two lines may swap)
  assert sorted(capfd.readouterr().err.splitlines()) == ['W1201 some_op.cc:12] a real warning', 'a Python warning']
