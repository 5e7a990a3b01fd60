"""CIFAR from the official python-pickle tarballs: same images and labels as Paddle's own reader,
the ViT transforms, clear errors for a missing or wrong file, and one update of both ViT configs."""
import json
import math
import os

import ml_collections
import numpy as np
import paddle
import pytest
from PIL import Image

from helpers import run_main
from tools.fakedata import make_cifar10, make_cifar100
from data import cifar


def data_config(root, classes=100, augment='none', img_size=32, download=False):
  return ml_collections.ConfigDict(dict(name='cifar', root=str(root), classes=classes, augment=augment,
                                        img_size=img_size, download=download))


@pytest.fixture(scope='module')
def cifar100_tarball(tmp_path_factory):
  return make_cifar100(tmp_path_factory.mktemp('c100') / 'cifar-100-python.tar.gz')


@pytest.mark.parametrize('classes', [100, 10])
@pytest.mark.parametrize('split', ['train', 'test'])
def test_images_and_labels_equal_paddles_own_reader(tmp_path, classes, split):
  make = make_cifar100 if classes == 100 else make_cifar10
  tarball = make(tmp_path / cifar.VARIANTS[classes].archive)
  ours = cifar.build(data_config(tarball, classes), split)
  reader = paddle.vision.datasets.Cifar100 if classes == 100 else paddle.vision.datasets.Cifar10
  theirs = reader(data_file=str(tarball), mode=split, download=False, backend='pil')
  assert len(ours) == len(theirs) == {(100, 'train'): 24, (100, 'test'): 12, (10, 'train'): 15, (10, 'test'): 5}[
      (classes, split)]
  assert ours.num_classes == classes
  for i in range(len(ours)):
    image, label = ours[(i, 0)]
    their_image, their_label = theirs[i]
    assert image.dtype == np.uint8 and image.shape == (3, 32, 32)
    np.testing.assert_array_equal(image, np.asarray(their_image).transpose(2, 0, 1))
    assert int(label) == int(their_label)
  first_name = {(100, 'train'): 'training batch_0.png', (100, 'test'): 'testing batch_0.png',
                (10, 'train'): 'training batch 1 of 5_0.png', (10, 'test'): 'testing batch 1 of 1_0.png'}
  assert ours.names[0] == first_name[(classes, split)]


def test_rrc_train_crops_are_seeded_and_test_images_are_resized(cifar100_tarball):
  train = cifar.build(data_config(cifar100_tarball, augment='rrc', img_size=24), 'train')
  first, again, other = train[(3, 11)][0], train[(3, 11)][0], train[(3, 12)][0]
  assert first.dtype == np.uint8 and first.shape == (3, 24, 24)
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, other)

  test = cifar.build(data_config(cifar100_tarball, augment='rrc', img_size=24), 'test')
  image, label = test[(2, 5)]
  raw = test.images[2].transpose(1, 2, 0)
  expected = np.asarray(Image.fromarray(raw).resize((24, 24), Image.BILINEAR)).transpose(2, 0, 1)
  np.testing.assert_array_equal(image, expected)
  assert label == test.labels[2]


def test_archive_is_decoded_once_for_both_splits(cifar100_tarball):
  config = data_config(cifar100_tarball)
  train, test, train_again = (cifar.build(config, s) for s in ('train', 'test', 'train'))
  assert train_again.images is train.images
  assert len([k for k in cifar._DECODED if k[0] == str(cifar100_tarball)]) == 1
  assert len(train) + len(test) == 36


def test_a_folder_root_finds_the_official_file_name(cifar100_tarball):
  dataset = cifar.build(data_config(cifar100_tarball.parent), 'test')
  assert len(dataset) == 12


def test_missing_tarball_names_the_absolute_path_and_the_download(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(FileNotFoundError) as err:
    cifar.build(data_config('datasets/cifar-100-python.tar.gz'), 'train')
  message = str(err.value)
  assert str(tmp_path / 'datasets' / 'cifar-100-python.tar.gz') in message
  assert 'https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz' in message
  assert 'config.data.download=True' in message


@pytest.mark.parametrize('content', [b'not an archive at all\n', b''])
def test_a_file_that_is_not_the_archive_is_named(tmp_path, content):
  bogus = tmp_path / 'cifar-100-python.tar.gz'
  bogus.write_bytes(content)
  with pytest.raises(ValueError, match=f'{bogus}.* is not a readable CIFAR archive'):
    cifar.build(data_config(bogus), 'train')


def test_a_cifar10_archive_read_as_cifar100_says_which_setting_to_change(tmp_path):
  tarball = make_cifar10(tmp_path / 'cifar-10-python.tar.gz')
  with pytest.raises(ValueError, match=r"no member\(s\) \['train', 'test'\].*config.data.classes=10"):
    cifar.build(data_config(tarball, classes=100), 'train')


def test_unknown_augment_and_classes_are_rejected(cifar100_tarball):
  with pytest.raises(ValueError, match="config.data.augment='flip'"):
    cifar.build(data_config(cifar100_tarball, augment='flip'), 'train')
  with pytest.raises(ValueError, match='config.data.classes=20'):
    cifar.build(data_config(cifar100_tarball, classes=20), 'train')


def _first_train_row(workdir):
  with open(workdir / 'metrics.jsonl') as f:
    return next(row for row in map(json.loads, f) if row['group'] == 'train')


@pytest.mark.slow
def test_rdrop_smoke_update_starts_at_twice_ln_100_and_baseline_at_ln_100(cifar100_tarball, tmp_path):
  rdrop = tmp_path / 'rdrop'
  run_main('--config', 'configs/vit_b16_cifar100_rdrop.py:smoke', '--workdir', rdrop,
           f'--config.data.root={cifar100_tarball}', '--config.train.updates=1')
  row = _first_train_row(rdrop)
  assert row['update'] == 1
  assert row['objective'] == pytest.approx(2 * math.log(100), abs=1e-4)
  assert row['kl'] == pytest.approx(0.0, abs=1e-6)

  baseline = tmp_path / 'baseline'
  run_main('--config', 'configs/vit_b16_cifar100.py:smoke', '--workdir', baseline,
           f'--config.data.root={cifar100_tarball}', '--config.train.updates=1')
  assert _first_train_row(baseline)['objective'] == pytest.approx(math.log(100), abs=1e-4)
  assert os.path.isdir(baseline / 'checkpoints')
