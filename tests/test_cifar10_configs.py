"""Every CIFAR-10 config of the DropBlock, LeNet-5 and RepConv experiments: the source's recipe, and one real
training run of its smoke shrink on a generated tiny `cifar-10-python.tar.gz` in the official layout."""
import json
import math

import numpy as np
import paddle
import pytest

import models
import train
from configs import dropblock_cnn_cifar10, lenet5_cifar10, repconv_cifar10
from tools.fakedata import make_cifar10
from models.dropblock import DropBlock
from utils import checkpoint
from training import optim


RUNS = [(dropblock_cnn_cifar10, ''), (dropblock_cnn_cifar10, 'none'), (lenet5_cifar10, 'A'), (lenet5_cifar10, 'B'),
        (lenet5_cifar10, 'C'), (lenet5_cifar10, 'D'), (repconv_cifar10, '')]


@pytest.fixture(scope='module')
def cifar10_tarball(tmp_path_factory):
  return str(make_cifar10(tmp_path_factory.mktemp('cifar') / 'cifar-10-python.tar.gz', per_batch=8, test=16))


def _config(module, variant, root=''):
  config = module.get_config(','.join(v for v in (variant, 'smoke') if v))
  config.data.root = root
  return config


@pytest.mark.parametrize('module,variant', RUNS, ids=[f'{m.__name__.split(".")[-1]}:{v}' for m, v in RUNS])
def test_one_smoke_run_of_every_config_trains_and_checkpoints(module, variant, cifar10_tarball, tmp_path):
  config = _config(module, variant, cifar10_tarball)
  result = train.train(config, str(tmp_path))
  assert result['updates'] == 2
  with open(tmp_path / 'metrics.jsonl') as f:
    losses = [r['objective'] for r in map(json.loads, f) if r['group'] == 'train']
  assert len(losses) == 2 and all(math.isfinite(loss) and loss > 0 for loss in losses)
  manifest, state = checkpoint.load(checkpoint.latest_valid(str(tmp_path / 'checkpoints')))
  assert (manifest.model, manifest.num_classes, manifest.update) == (config.model.name, 10, 2)


def test_rdrop_on_the_dropblock_cnn_has_a_positive_kl_term(cifar10_tarball, tmp_path):
  config = _config(dropblock_cnn_cifar10, '', cifar10_tarball)
  config.rdrop.alpha = 1.0
  train.train(config, str(tmp_path))
  with open(tmp_path / 'metrics.jsonl') as f:
    kls = [r['kl'] for r in map(json.loads, f) if r['group'] == 'train']
  assert len(kls) == 2 and all(kl > 1e-6 for kl in kls)


def _layers(config, kind):
  return sum(isinstance(layer, kind) for layer in models.build(config.model, 10).sublayers())


@pytest.mark.parametrize('variant,dropout,dropout2d', [('A', 0, 0), ('B', 2, 0), ('C', 0, 2), ('D', 2, 2)])
def test_lenet5_networks_differ_only_in_their_dropout(variant, dropout, dropout2d):
  config = lenet5_cifar10.get_config(variant)
  assert _layers(config, paddle.nn.Dropout) == dropout and _layers(config, paddle.nn.Dropout2D) == dropout2d
  assert config.model.fc_dropout in (0.0, 0.5) and config.model.conv_dropout in (0.0, 0.5)
  params = sum(int(np.prod(p.shape)) for p in models.build(config.model, 10).parameters())
  assert params == 62006  # LeNet-5 for 3x32x32 inputs: 456 + 2416 + 48120 + 10164 + 850


def test_lenet5_recipe_halves_the_lr_every_150_epochs():
  config = lenet5_cifar10.get_config('B')
  tc = config.train
  assert (tc.batch_size, tc.optimizer, tc.lr, tc.momentum, tc.epochs) == (256, 'momentum', 1e-2, 0.9, 1000.0)
  updates_per_epoch = 50000 // 256
  tc = optim.in_updates(tc, 50000)
  assert tc.updates == 1000 * updates_per_epoch and tc.eval_every == updates_per_epoch
  factors = [optim.lr_factor(epochs * updates_per_epoch + 1, tc, tc.updates) for epochs in (0, 149, 150, 299, 300, 999)]
  assert factors == [1.0, 1.0, 0.5, 0.5, 0.25, 0.5**6]
  assert (lenet5_cifar10.get_config('A').reference.top1, config.reference.top1) == (60.45, 61.47)
  assert lenet5_cifar10.get_config('C').reference.top1 == 0.0
  assert 'train acc 57.04%' in lenet5_cifar10.get_config('C').reference.source
  assert 'train acc 50.93%' in lenet5_cifar10.get_config('D').reference.source


def test_dropblock_cnn_recipe_and_the_7x7_map_after_conv3():
  with_block, without = dropblock_cnn_cifar10.get_config(''), dropblock_cnn_cifar10.get_config('none')
  tc = with_block.train
  assert (tc.batch_size, tc.optimizer, tc.lr, tc.epochs, tc.schedule) == (64, 'adam', 1e-3, 3.0, 'constant')
  assert (with_block.reference.top1, without.reference.top1) == (65.6, 64.4)
  model = models.build(with_block.model, 10)
  blocks = [layer for layer in model.sublayers() if isinstance(layer, DropBlock)]
  assert [(b.block_size, b.target_keep_prob) for b in blocks] == [(5, 0.9)]
  index = list(model.features).index(blocks[0])
  assert model.features[:index](paddle.zeros([1, 3, 32, 32])).shape == [1, 64, 7, 7]
  assert _layers(without, DropBlock) == 0


@pytest.mark.parametrize('module,arg', [(dropblock_cnn_cifar10, 'B'), (lenet5_cifar10, 'E'), (lenet5_cifar10, 'A,B'),
                                        (repconv_cifar10, 'fast')])
def test_unknown_config_arguments_are_errors_naming_them(module, arg):
  with pytest.raises(ValueError, match=f"'{arg}'"):
    module.get_config(arg)


def test_every_config_reads_plain_32px_cifar10_without_downloading():
  for module, variant in RUNS:
    data = module.get_config(variant).data
    assert (data.name, data.classes, data.augment, data.img_size, data.download) == ('cifar', 10, 'none', 32, False)
