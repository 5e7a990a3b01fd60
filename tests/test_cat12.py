"""Cat-12 loader, ResNet model and the ResNet50 + R-Drop config, on tiny generated data in the real layout."""
import csv
import json
import os
import subprocess

import ml_collections
import numpy as np
import paddle
import pytest
from PIL import Image

from paddle.utils import download

import models
from configs import resnet50_cat12, resnet50_cat12_rdrop
from helpers import ROOT, child_env, run_main
from tools.fakedata import BROKEN, ODD_FILES, make_cat12
from data import cat12, images
from models import resnet

IMG = 32


def data_config(root, **changes):
  c = resnet50_cat12_rdrop.get_config('smoke').data
  c.root = str(root)
  c.update(changes)
  return c


def test_odd_formats_load_as_rgb_and_the_broken_file_is_reported_and_left_out(tmp_path, capsys):
  make_cat12(tmp_path)
  dataset = cat12.build(data_config(tmp_path, val_every=1), 'val')  # every line: the eval transform only

  report = capsys.readouterr().out
  assert 'cat12 val: 1 of 12 files left out (1 cannot be decoded)' in report
  assert BROKEN in report and 'truncated' in report
  assert len(dataset) == 11 and BROKEN not in dataset.names
  for kind, name in ODD_FILES.items():
    image, _ = dataset[(dataset.names.index(name), 0)]
    assert image.dtype == np.uint8 and image.shape == (3, IMG, IMG), (kind, image.dtype, image.shape)
    with Image.open(tmp_path / 'cat_12_train' / name) as original:
      expected = np.asarray(original.convert('RGB').resize((IMG, IMG), Image.BILINEAR)).transpose(2, 0, 1)
    assert np.abs(image.astype(int) - expected).max() <= 1, kind
  grey, _ = dataset[(dataset.names.index(ODD_FILES['grey']), 0)]
  assert (grey[0] == grey[1]).all() and (grey[1] == grey[2]).all()


def test_train_transform_is_seeded_per_sample(tmp_path):
  make_cat12(tmp_path, odd=False, broken=False)
  dataset = cat12.build(data_config(tmp_path), 'train')
  first, again, other = dataset[(0, 7)][0], dataset[(0, 7)][0], dataset[(0, 8)][0]
  assert first.shape == (3, IMG, IMG) and first.dtype == np.uint8
  assert np.array_equal(first, again) and not np.array_equal(first, other)


def test_val_split_takes_every_tenth_line_and_train_the_rest(tmp_path):
  lines = make_cat12(tmp_path, n_plain=25, odd=False, broken=False)
  names = [line.split('\t')[0].split('/')[1] for line in lines]
  config = data_config(tmp_path, val_every=10)
  val, train = cat12.build(config, 'val'), cat12.build(config, 'train')
  assert val.names == [names[0], names[10], names[20]]
  assert val.labels == [0, 10, 8]
  assert train.names == [n for i, n in enumerate(names) if i % 10]
  test = cat12.build(config, 'test')
  assert test.names == ['test_0.jpg', 'test_1.jpg', 'test_2.jpg'] and not test.labelled
  assert test[(0, 0)][1] == -1


@pytest.mark.parametrize('bad_line, message', [
    ('cat_12_train/plain_01.jpg 3', 'line 2: '),
    ('cat_12_train/plain_01.jpg\tthree', 'line 2: '),
    ('cat_12_train/plain_01.jpg\t12', 'line 2: label 12 is outside 0..11'),
    ('cat_12_train/plain_01.jpg\t-1', 'line 2: label -1 is outside 0..11'),
])
def test_malformed_line_or_label_out_of_range_names_the_line(tmp_path, bad_line, message):
  lines = make_cat12(tmp_path, n_plain=3, odd=False, broken=False)
  lines[1] = bad_line
  (tmp_path / 'train_list.txt').write_text('\n'.join(lines) + '\n')
  with pytest.raises(ValueError) as error:
    cat12.build(data_config(tmp_path), 'train')
  assert str(tmp_path / 'train_list.txt') in str(error.value) and message in str(error.value)


def test_list_files_as_editors_write_them_are_read_like_the_plain_one(tmp_path):
  """Blank lines (inside and trailing), Windows line ends and a UTF-8 byte-order mark change nothing."""
  lines = make_cat12(tmp_path, n_plain=4, odd=False, broken=False)
  plain = images.read_list(tmp_path / 'train_list.txt', cat12.NUM_CLASSES, '\t')
  messy = '\ufeff' + '\r\n'.join(lines[:2] + ['', '  '] + lines[2:]) + '\r\n\r\n\n'
  (tmp_path / 'train_list.txt').write_bytes(messy.encode('utf-8'))
  assert images.read_list(tmp_path / 'train_list.txt', cat12.NUM_CLASSES, '\t') == plain == [
      (line.split('\t')[0], i % 12) for i, line in enumerate(lines)]


def test_a_malformed_line_after_blank_lines_is_named_by_its_line_in_the_file(tmp_path):
  lines = make_cat12(tmp_path, n_plain=3, odd=False, broken=False)
  (tmp_path / 'train_list.txt').write_text('\n'.join([lines[0], '', lines[1] + ' 7', lines[2]]) + '\n')
  with pytest.raises(ValueError, match='line 3: '):
    images.read_list(tmp_path / 'train_list.txt', cat12.NUM_CLASSES, '\t')


def test_missing_root_or_listed_file_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match=str(tmp_path / 'nowhere')):
    cat12.build(data_config(tmp_path / 'nowhere'), 'train')
  make_cat12(tmp_path, n_plain=3, odd=False, broken=False)
  os.remove(tmp_path / 'cat_12_train' / 'plain_01.jpg')
  with pytest.raises(FileNotFoundError, match='lists 1 file.* cat_12_train/plain_01.jpg'):
    cat12.build(data_config(tmp_path), 'val')  # plain_01 is a train line: every listed file is checked


def _model_config(**changes):
  c = ml_collections.ConfigDict(resnet50_cat12_rdrop.get_config('smoke').model.to_dict())
  c.update(changes)
  return c


def test_head_dropout_makes_two_training_passes_differ_and_eval_deterministic():
  paddle.seed(0)
  model = models.build(_model_config(), 12)
  x = paddle.randn([2, 3, IMG, IMG])
  model.train()
  first, second = model(x), model(x)
  assert first.shape == [2, 12]
  assert float((first - second).abs().max()) > 1e-3  # R-Drop's KL term acts on this difference
  model.eval()
  np.testing.assert_array_equal(model(x).numpy(), model(x).numpy())


def test_backbone_weights_missing_path_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match=f'config.model.backbone_weights: {tmp_path}/none.pdparams does not'):
    models.build(_model_config(backbone_weights=str(tmp_path / 'none.pdparams')), 12)


def test_backbone_weights_from_a_local_file_load_into_the_backbone(tmp_path):
  paddle.seed(1)
  source = models.build(_model_config(), 12)
  paddle.save(source.backbone.state_dict(), str(tmp_path / 'resnet18.pdparams'))
  paddle.seed(2)
  loaded = models.build(_model_config(backbone_weights=str(tmp_path / 'resnet18.pdparams')), 12)
  for key, value in source.backbone.state_dict().items():
    np.testing.assert_array_equal(loaded.backbone.state_dict()[key].numpy(), value.numpy(), err_msg=key)


def _no_network(url, path, md5sum=None, method='get'):
  raise RuntimeError(f'Download from {url} failed. Retry limit reached')  # what Paddle raises offline


def test_download_without_network_names_the_cache_path(tmp_path, monkeypatch):
  monkeypatch.setattr(download, 'WEIGHTS_HOME', str(tmp_path / 'weights'))
  monkeypatch.setattr(download, '_download', _no_network)
  with pytest.raises(OSError) as error:
    models.build(_model_config(backbone_weights='download'), 12)
  assert f'copy resnet18.pdparams to {tmp_path}/weights/resnet18.pdparams' in str(error.value)


def test_download_uses_a_file_already_in_the_cache_without_network(tmp_path, monkeypatch):
  monkeypatch.setattr(download, 'WEIGHTS_HOME', str(tmp_path))
  monkeypatch.setattr(download, '_download', _no_network)
  paddle.seed(3)
  source = models.build(_model_config(), 12)
  paddle.save(source.backbone.state_dict(), resnet.cached_weights_path(18))
  loaded = models.build(_model_config(backbone_weights='download'), 12)
  np.testing.assert_array_equal(loaded.backbone.conv1.weight.numpy(), source.backbone.conv1.weight.numpy())


def test_the_recipe_is_the_notebook_as_it_ran():
  """Constant lr 3e-5 (its decay is never stepped); its loss CE_A + CE_B + 5 * 0.5 * (kl_div + kl_div)."""
  c = resnet50_cat12_rdrop.get_config()
  assert (c.train.lr, c.train.schedule, c.train.warmup_updates, c.train.clip_grad_norm) == (3e-5, 'constant', 0, 0.0)
  assert (c.rdrop.alpha, c.rdrop.reduction, c.rdrop.ce_of_passes, c.rdrop.form) == (5.0, 'mean', 'sum', 'twice')


@pytest.mark.parametrize('arg', ['', 'scratch'])
def test_baseline_is_the_rdrop_recipe_without_rdrop(arg):
  rdrop, baseline = resnet50_cat12_rdrop.get_config(arg).to_dict(), resnet50_cat12.get_config(arg).to_dict()
  assert (rdrop['rdrop']['alpha'], baseline['rdrop']['alpha']) == (5.0, 0.0)
  assert rdrop['experiment'] == baseline['experiment'] + '_rdrop'
  for config in (rdrop, baseline):
    config.pop('experiment')
    config['rdrop'].pop('alpha')
  assert rdrop == baseline


@pytest.mark.slow
def test_smoke_train_then_predict_writes_one_result_line_per_test_image(tmp_path):
  root = tmp_path / 'cat12'
  make_cat12(root, n_test=5)
  workdir = tmp_path / 'run'
  trained = run_main('--config', 'configs/resnet50_cat12_rdrop.py:smoke', '--workdir', workdir,
                     '--config.data.root=' + str(root))
  output = trained.stdout + trained.stderr
  assert 'cat12 train: 1 of 6 files left out (1 cannot be decoded)' in output and BROKEN in output
  assert 'train: resnet50_cat12_rdrop for 2 updates' in output and 'done: best val top1' in output
  assert ('data: cat12, 12 classes; train 5 samples (left out: 1 file), val 6 samples (left out: 0 files); '
          'updates per epoch: 1 (of 4 samples)') in output

  run_main('--mode', 'predict', '--workdir', workdir)
  with open(workdir / 'result.csv', newline='') as f:
    rows = list(csv.reader(f))
  assert sorted(name for name, _ in rows) == [f'test_{i}.jpg' for i in range(5)]
  assert all(label.isdigit() and 0 <= int(label) < 12 for _, label in rows), rows


@pytest.mark.slow
def test_a_wrong_config_argument_names_the_file_given(tmp_path):
  proc = run_main('--config', 'configs/resnet50_cat12.py:scrach', '--workdir', tmp_path, check=False)
  assert proc.returncode != 0 and "--config configs/resnet50_cat12.py:scrach: unknown argument(s) ['scrach']" in proc.stderr


def _run_sh(tmp_path, *args, **env):
  return subprocess.run(['bash', 'run.sh', *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
                        env=child_env(RUNS_DIR=str(tmp_path / 'runs'), **env))


@pytest.mark.parametrize('env, missing, variable', [
    ({'CAT12_DIR': '/nowhere/cat12'}, '/nowhere/cat12/train_list.txt', 'CAT12_DIR'),
    ({'RESNET50_WEIGHTS': '/nowhere/resnet50.pdparams'}, '/nowhere/resnet50.pdparams', 'RESNET50_WEIGHTS'),
])
def test_run_sh_names_the_variable_to_set_for_missing_data_or_weights(tmp_path, env, missing, variable):
  make_cat12(tmp_path / 'cat12', n_plain=2, odd=False, broken=False)
  proc = _run_sh(tmp_path, 'resnet50_cat12', **{'CAT12_DIR': str(tmp_path / 'cat12'), **env})
  assert proc.returncode == 1 and f'run.sh: {missing} does not exist: set {variable} to' in proc.stderr
  assert 'https://' in proc.stderr and ' md5 ' in proc.stderr  # where to get it, and how to check it
  assert not (tmp_path / 'runs').exists()


@pytest.mark.slow
def test_run_sh_resnet18_cat12_trains_both_variants_from_random_weights(tmp_path):
  make_cat12(tmp_path / 'cat12', n_plain=8, odd=False, broken=False, n_test=2)
  tiny = ['--config.train.updates=1', '--config.train.batch_size=4', '--config.eval.batch_size=8',
          '--config.data.val_every=2', '--config.data.num_workers=0', '--config.data.img_size=32',
          '--config.data.resize=36']
  proc = _run_sh(tmp_path, 'resnet18_cat12', *tiny, CAT12_DIR=str(tmp_path / 'cat12'))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'ResNet18 at 64 px from random weights' in proc.stdout
  out = tmp_path / 'runs' / 'resnet18_cat12_scratch'
  for variant, alpha in (('baseline', 0.0), ('rdrop', 5.0)):
    saved = json.loads(next((out / variant / 'checkpoints').glob('update_*/manifest.json')).read_text())['config']
    assert (saved['model']['depth'], saved['model']['backbone_weights'], saved['rdrop']['alpha']) == (18, '', alpha)
  assert len((out / 'result.csv').read_text().splitlines()) == 2 and (out / 'report.md').exists()
