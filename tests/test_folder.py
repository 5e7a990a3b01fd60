"""Your own images: a folder per class or list files (data/folder.py), and Paddle's zoo backbones (models/zoo.py),
on small messy folders written here with Pillow in the real layout."""
import csv
import json
import os
import shutil
import subprocess
import sys

import ml_collections
import numpy as np
import paddle
import pytest
from PIL import Image

import data
import models
import rdrop
from helpers import ROOT, child_env, metric_rows, run_main
from configs import folder as folder_config
from data import folder
from models import zoo
from paddle.utils import download

SIZE = 32
CLASSES = ['cat', 'dog', 'été']
# What make_messy_folder leaves out of train/, by reason as the summary counts them.
LEFT_OUT = {'hidden': 4, 'not an image': 2, 'outside any class folder': 1, 'broken link': 1, 'cannot be decoded': 2}


def _solid(path, colour, mode='RGB', size=(SIZE, SIZE), **save):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.new(mode, size, colour).save(path, **save)
  return path


def make_messy_folder(root, val=True, test=True):
  """train/ (and val/, test/) with every messy case of data/folder.py's docstring; returns the files of
  train/ that must be kept, {path relative to train/: path}."""
  train = root / 'train'
  kept = {
      'cat/a.jpg': _solid(train / 'cat/a.jpg', (200, 40, 40), format='JPEG', quality=100),
      'cat/UPPER.JPG': _solid(train / 'cat/UPPER.JPG', (190, 50, 50), format='JPEG', quality=100),
      'cat/grey.png': _solid(train / 'cat/grey.png', 100, mode='L'),
      'cat/cmyk.jpg': _solid(train / 'cat/cmyk.jpg', (0, 255, 255, 0), mode='CMYK', format='JPEG', quality=100),
      'cat/rgba.png': _solid(train / 'cat/rgba.png', (10, 20, 30, 0), mode='RGBA'),
      'cat/sub/deeper/nested.jpeg': _solid(train / 'cat/sub/deeper/nested.jpeg', (210, 30, 30), format='JPEG'),
      'dog/d0.jpg': _solid(train / 'dog/d0.jpg', (40, 200, 40), format='JPEG'),
      'dog/PIC.PNG': _solid(train / 'dog/PIC.PNG', (50, 190, 50), format='PNG'),
      'dog/ünïcødé 猫.png': _solid(train / 'dog/ünïcødé 猫.png', (30, 210, 30)),
      'été/e0.jpg': _solid(train / 'été/e0.jpg', (40, 40, 200), format='JPEG'),
      'été/e1.png': _solid(train / 'été/e1.png', (50, 50, 190)),
  }
  wide = train / 'cat/wide.png'
  Image.fromarray(np.full((SIZE, SIZE), 40000, np.uint16)).save(wide)  # a 16-bit greyscale PNG
  kept['cat/wide.png'] = wide
  elsewhere = _solid(root / 'elsewhere/extra.jpg', (60, 180, 60), format='JPEG')
  os.symlink(elsewhere.parent, train / 'dog/more')               # a linked folder
  os.symlink(train / 'dog', train / 'dog/loop')                   # a link back up the tree: read once
  os.symlink(train / 'cat/a.jpg', train / 'dog/link_to_a.jpg')  # a linked file
  kept['dog/more/extra.jpg'] = train / 'dog/more/extra.jpg'
  kept['dog/link_to_a.jpg'] = train / 'dog/link_to_a.jpg'
  # Left out: hidden (4), not images (2), outside a class folder (1), a broken link (1), undecodable (2).
  (train / '.DS_Store').write_bytes(b'\0\0\0\1Bud1')
  (train / 'cat/.DS_Store').write_bytes(b'\0\0\0\1Bud1')
  (train / 'cat/._a.jpg').write_bytes(b'\0\5\26\7AppleDouble')
  _solid(train / '.hidden_class/x.jpg', 0, format='JPEG')
  (train / 'cat/notes.txt').write_text('not an image')
  (train / 'only_text').mkdir()
  (train / 'only_text/readme.md').write_text('a class folder without images')
  _solid(train / 'stray.jpg', 0, format='JPEG')
  os.symlink(train / 'nowhere.jpg', train / 'dog/gone.jpg')
  _solid(train / 'dog/truncated.jpg', (1, 2, 3), size=(64, 64), format='JPEG')
  (train / 'dog/truncated.jpg').write_bytes((train / 'dog/truncated.jpg').read_bytes()[:300])
  (train / 'dog/fake.png').write_text('<html>an error page saved as an image</html>')
  (train / 'empty').mkdir()
  if val:
    for name, colour in (('cat/v0.jpg', (200, 40, 40)), ('dog/v1.png', (40, 200, 40)), ('été/v2.jpg', (40, 40, 200))):
      _solid(root / 'val' / name, colour, format='PNG' if name.endswith('png') else 'JPEG')
    (root / 'val/empty_in_val').mkdir()
  if test:
    _solid(root / 'test/t0.jpg', (200, 40, 40), format='JPEG')
    _solid(root / 'test/T1.PNG', (40, 200, 40), format='PNG')
    _solid(root / 'test/sub/t2.jpg', (40, 40, 200), format='JPEG')
    (root / 'test/.DS_Store').write_bytes(b'\0')
  return kept


def data_config(root, **changes):
  c = folder_config.get_config('smoke').data
  c.root = str(root)
  c.crop_fraction = 1.0  # eval: the 32 px images as they are
  c.update(changes)
  return c


def test_a_messy_train_folder_decodes_every_image_to_rgb_and_counts_what_it_leaves_out(tmp_path, capsys):
  kept = make_messy_folder(tmp_path)
  dataset = folder.build(data_config(tmp_path, val_dir='train'), 'val')  # train/ read with the eval transform

  report = capsys.readouterr().out
  summary = report.splitlines()[0]
  assert summary.startswith(f'folder val: {sum(LEFT_OUT.values())} of {len(kept) + sum(LEFT_OUT.values())} files '
                            f'left out (')
  for reason, count in LEFT_OUT.items():
    assert f'{count} {reason}' in summary
  assert 'class folder(s) without images left out: empty, only_text' in report
  assert dataset.class_names == CLASSES
  assert sorted(dataset.names) == sorted(os.path.join('train', name) for name in kept)
  by_name = dict(zip(dataset.names, dataset.labels))
  assert {name: by_name[os.path.join('train', name)] for name in kept} == {
      name: CLASSES.index(name.split('/')[0]) for name in kept}
  pixel = {name: dataset[(i, 0)][0] for i, name in enumerate(dataset.names)}
  assert all(image.shape == (3, SIZE, SIZE) and image.dtype == np.uint8 for image in pixel.values())
  assert (pixel['train/cat/grey.png'] == 100).all()
  assert (pixel['train/cat/wide.png'] == round(40000 * 255 / 65535)).all()  # not clipped to white
  assert pixel['train/cat/rgba.png'][:, 0, 0].tolist() == [10, 20, 30]
  assert pixel['train/cat/cmyk.jpg'][0].min() > 225 and pixel['train/cat/cmyk.jpg'][1:].max() < 30  # magenta + yellow
  assert np.abs(pixel['train/dog/link_to_a.jpg'].astype(int) - pixel['train/cat/a.jpg']).max() == 0


def test_the_val_folder_is_labelled_by_train_classes_and_an_unknown_class_is_named(tmp_path, capsys):
  make_messy_folder(tmp_path)
  val = folder.build(data_config(tmp_path), 'val')
  assert val.names == ['val/cat/v0.jpg', 'val/dog/v1.png', 'val/été/v2.jpg'] and val.labels == [0, 1, 2]
  assert 'empty_in_val' in capsys.readouterr().out
  _solid(tmp_path / 'val/zebra/z.jpg', 0, format='JPEG')
  with pytest.raises(ValueError, match=r'val/zebra is a class the model does not know .*its classes: cat, dog, été'):
    folder.build(data_config(tmp_path), 'val')


def test_a_trained_models_classes_label_the_data_whatever_the_folder_holds_later(tmp_path):
  make_messy_folder(tmp_path)
  shutil.rmtree(tmp_path / 'train')
  val = data.build(data_config(tmp_path), 'val', class_names=['été', 'dog', 'cat', 'zebra'])
  assert val.labels == [2, 1, 0] and val.num_classes == 4


def test_no_class_folder_or_no_root_is_an_error_naming_the_folder(tmp_path):
  with pytest.raises(ValueError, match=r'config.data.root is not set: give --config.data.root=PATH'):
    folder.build(data_config(''), 'train')
  with pytest.raises(FileNotFoundError, match=str(tmp_path / 'nowhere')):
    folder.build(data_config(tmp_path / 'nowhere'), 'train')
  _solid(tmp_path / 'train/loose.jpg', 0, format='JPEG')
  with pytest.raises(ValueError, match=f'{tmp_path / "train"} holds no class folder with an image'):
    folder.build(data_config(tmp_path), 'train')


def test_the_val_share_of_train_is_seeded_per_class_and_disjoint_from_train(tmp_path):
  for c in range(3):
    for i in range(10):
      _solid(tmp_path / f'train/c{c}/{i}.png', (c, i, 0))
  config = data_config(tmp_path, val_fraction=0.2)
  train, val = folder.build(config, 'train'), folder.build(config, 'val')
  assert sorted(train.names + val.names) == sorted(f'train/c{c}/{i}.png' for c in range(3) for i in range(10))
  assert [val.labels.count(c) for c in range(3)] == [2, 2, 2]
  assert folder.build(config, 'val').names == val.names
  assert folder.build(data_config(tmp_path, val_fraction=0.2, split_seed=1), 'val').names != val.names
  with pytest.raises(ValueError, match='config.data.val_fraction=0, so no val split'):
    folder.build(data_config(tmp_path, val_fraction=0.0), 'val')


def test_without_a_val_folder_what_train_leaves_out_is_counted_by_train_alone(tmp_path, capsys):
  make_messy_folder(tmp_path, val=False)
  train, val = folder.build(data_config(tmp_path), 'train'), folder.build(data_config(tmp_path), 'val')
  undecodable = {str(tmp_path / 'train/dog/fake.png'), str(tmp_path / 'train/dog/truncated.jpg')}
  assert set(val.left_out) <= undecodable and len(train.left_out) + len(val.left_out) == 10
  assert 'folder val: 1 class folder(s) without images' not in capsys.readouterr().out


def test_a_single_class_is_an_error_naming_the_folder_or_list(tmp_path):
  _solid(tmp_path / 'train/cat/a.png', 0)
  with pytest.raises(ValueError, match=f'{tmp_path / "train"} holds one class \\(cat\\); a classifier needs two'):
    folder.build(data_config(tmp_path), 'train')
  (tmp_path / 'train.txt').write_text('train/cat/a.png 0\n')
  with pytest.raises(ValueError, match=f'{tmp_path / "train.txt"} holds one class \\(0\\)'):
    folder.build(data_config(tmp_path, train_list='train.txt'), 'train')


def test_list_files_with_spaces_in_paths_name_classes_by_number_and_a_bad_label_is_named(tmp_path):
  kept = make_messy_folder(tmp_path, val=False)
  lines = [f'train/{name} {CLASSES.index(name.split("/")[0])}' for name in sorted(kept)]
  (tmp_path / 'train.txt').write_text('\n'.join(lines) + '\n')
  (tmp_path / 'val.txt').write_text('train/cat/a.jpg 0\r\ntrain/dog/ünïcødé 猫.png\t1\n\ntrain/dog/fake.png 1\n')
  config = data_config(tmp_path, train_list='train.txt', val_list='val.txt')
  train, val = folder.build(config, 'train'), folder.build(config, 'val')
  assert train.class_names == ['0', '1', '2'] and len(train) == len(kept)
  assert val.names == ['train/cat/a.jpg', 'train/dog/ünïcødé 猫.png'] and val.labels == [0, 1]
  assert val.left_out == (str(tmp_path / 'train/dog/fake.png'),)
  (tmp_path / 'val.txt').write_text('train/cat/a.jpg 0\ntrain/dog/d0.jpg 3\n')
  with pytest.raises(ValueError, match=r'val.txt, line 2: label 3 is outside 0..2'):
    folder.build(config, 'val')


def test_an_unlabelled_test_folder_is_read_for_prediction(tmp_path):
  make_messy_folder(tmp_path)
  test = folder.build(data_config(tmp_path), 'test', class_names=CLASSES)
  assert test.names == ['test/T1.PNG', 'test/t0.jpg', 'test/sub/t2.jpg'] and not test.labelled
  assert test.labels == [-1, -1, -1]


def _zoo_config(variant='resnet18', dropout=0.2, pretrained=''):
  return ml_collections.ConfigDict({'name': 'zoo', 'variant': variant, 'dropout': dropout, 'pretrained': pretrained})


@pytest.mark.parametrize('variant', ['resnet18', 'mobilenet_v3_small', 'shufflenet_v2_x0_25'])
def test_a_zoo_backbone_ends_in_dropout_and_a_new_head_of_the_classes(variant):
  model = models.build(_zoo_config(variant), 3)
  model.eval()
  assert model(paddle.rand([2, 3, SIZE, SIZE])).shape == [2, 3]
  assert model.head.weight.shape[1] == 3 and model.dropout.p == 0.2
  assert not [layer for layer in model.backbone.sublayers() if isinstance(layer, paddle.nn.Linear)
              and layer.weight.shape[1] == zoo.IMAGENET_CLASSES]


def test_r_drop_is_told_when_the_model_holds_no_dropout():
  assert rdrop.drops_anything(models.build(_zoo_config(dropout=0.2), 3))
  assert not rdrop.drops_anything(models.build(_zoo_config(dropout=0.0), 3))


def test_imagenet_weights_are_fetched_with_their_md5_and_loaded_into_the_backbone(tmp_path, monkeypatch):
  reference = paddle.vision.models.resnet18()
  published = tmp_path / 'resnet18.pdparams'
  paddle.save(reference.state_dict(), str(published))
  asked = []
  monkeypatch.setattr(download, 'get_weights_path_from_url', lambda url, md5: asked.append((url, md5)) or str(published))
  model = models.build(_zoo_config(pretrained='imagenet'), 3)
  assert asked == [tuple(paddle.vision.models.resnet.model_urls['resnet18'])]
  np.testing.assert_array_equal(model.backbone.conv1.weight.numpy(), reference.conv1.weight.numpy())
  assert model.head.weight.shape == [512, 3]


def test_imagenet_weights_offline_is_an_error_naming_the_address_and_the_cache(monkeypatch):
  def offline(url, md5):
    raise RuntimeError(f'Download from {url} failed. Retry limit reached')
  monkeypatch.setattr(download, 'get_weights_path_from_url', offline)
  url, md5 = paddle.vision.models.mobilenetv3.model_urls['mobilenet_v3_small_x1.0']
  with pytest.raises(OSError, match=f'could not download {url} \\(md5 {md5}\\).*{download.WEIGHTS_HOME}'):
    models.build(_zoo_config('mobilenet_v3_small', pretrained='imagenet'), 3)
  with pytest.raises(ValueError, match='Paddle publishes no ImageNet weights for vgg11'):
    models.build(_zoo_config('vgg11', pretrained='imagenet'), 3)


def _weights(workdir, update):
  from utils import checkpoint
  _, pieces = checkpoint.load(checkpoint.folder(os.path.join(workdir, 'checkpoints'), update), pieces=('model',))
  return {key: value.numpy() for key, value in pieces['model'].items()}


def _same_weights(a, b, tolerance):
  assert a.keys() == b.keys()
  assert max(float(np.abs(a[k] - b[k]).max()) for k in a) <= tolerance


SMOKE = ['--config.train.updates=4', '--config.train.checkpoint_every=2', '--config.train.eval_every=2']


def _write_lists(root, kept):
  """train.txt listing the kept files and an undecodable one, val.txt every third of them; their lines."""
  lines = [f'train/{name} {CLASSES.index(name.split("/")[0])}' for name in sorted(kept)]
  (root / 'train.txt').write_text('\n'.join(lines + ['train/dog/fake.png 1']) + '\n', encoding='utf-8')
  (root / 'val.txt').write_text('\n'.join(lines[::3]) + '\n', encoding='utf-8')
  return lines


@pytest.mark.slow
@pytest.mark.parametrize('layout', ['folders', 'lists'])
def test_a_messy_dataset_trains_resumes_exactly_and_eval_predict_export_use_the_checkpoints_classes(tmp_path, layout):
  root = tmp_path / 'data'
  kept = make_messy_folder(root)
  common = ['--config', 'configs/folder.py:smoke', f'--config.data.root={root}', *SMOKE]
  if layout == 'lists':
    lines = _write_lists(root, kept)
    common += ['--config.data.train_list=train.txt', '--config.data.val_list=val.txt']
    classes, left_out, val_count = ['0', '1', '2'], 1, len(lines[::3])
  else:
    classes, left_out, val_count = CLASSES, sum(LEFT_OUT.values()), 3
  straight = run_main(*common, '--workdir', tmp_path / 'straight')
  assert (f'data: folder, 3 classes; train {len(kept)} samples (left out: {left_out} file{"s" if left_out > 1 else ""}),'
          f' val {val_count} samples') in straight.stdout
  run_main(*common, '--workdir', tmp_path / 'resumed', '--config.train.updates=2')
  run_main('--mode', 'resume', '--workdir', tmp_path / 'resumed', '--config.train.updates=4')
  _same_weights(_weights(tmp_path / 'straight', 4), _weights(tmp_path / 'resumed', 4), 1e-6)
  assert [r['loss'] for r in metric_rows(tmp_path / 'resumed', 'eval')] == pytest.approx(
      [r['loss'] for r in metric_rows(tmp_path / 'straight', 'eval')], rel=1e-5)
  run = tmp_path / 'straight'
  assert (run / 'class_names.txt').read_text(encoding='utf-8') == ''.join(f'{name}\n' for name in classes)

  if layout == 'folders':
    shutil.move(root / 'train', tmp_path / 'train_moved_away')  # nothing below reads it
  evaluated = run_main('--mode', 'eval', '--workdir', run)
  metrics = json.loads((run / 'eval_val.json').read_text(encoding='utf-8'))
  assert list(metrics['per_class_top1']) == classes and sum(metrics['per_class_count'].values()) == val_count
  assert 'top1 per class (samples):' in evaluated.stdout and f'{classes[2]} (' in evaluated.stdout
  run_main('--mode', 'predict', '--workdir', run)
  with open(run / 'result.csv', newline='', encoding='utf-8') as f:
    rows = list(csv.reader(f))
  assert [name for name, _ in rows] == ['test/T1.PNG', 'test/t0.jpg', 'test/sub/t2.jpg']
  assert all(label in classes for _, label in rows)
  run_main('--mode', 'export', '--workdir', run)
  with open(run / 'export/model.preprocess.yml', encoding='utf-8') as f:
    preprocess = {key: json.loads(value) for key, value in (line.split(': ', 1) for line in f)}
  assert preprocess['class_names'] == classes


LAUNCH_COMMON = ['--config', 'configs/folder.py:digits,smoke', '--config.data.img_size=8', '--config.data.val_fraction=0.5',
                 '--config.model.dropout_rate=0.0', '--config.train.optimizer=momentum', '--config.train.lr=0.05',
                 '--config.train.schedule=constant', '--config.train.warmup_updates=0',  # the same lr for 2 or 4 updates
                 '--config.train.checkpoint_every=2', '--config.train.eval_every=2']


@pytest.mark.slow
def test_the_val_share_of_train_is_the_same_on_two_ranks_and_after_resuming(tmp_path):
  """2 processes under the launcher, resumed after 2 updates, evaluate as one process straight: every rank
  and every restart drew the same val share (one that differed would evaluate other images)."""
  root = tmp_path / 'data'
  make_messy_folder(root, val=False)
  common = [*LAUNCH_COMMON, f'--config.data.root={root}']
  run_main(*common, '--workdir', tmp_path / 'one', '--config.train.updates=4')

  def launch(*args):
    subprocess.run([sys.executable, '-m', 'paddle.distributed.launch', '--nproc_per_node', '2', '--log_dir',
                    str(tmp_path / 'logs'), 'main.py', *map(str, args)], cwd=ROOT, check=True, capture_output=True,
                   timeout=300, env=child_env())
  launch(*common, '--workdir', tmp_path / 'two', '--config.train.updates=2')
  launch('--mode', 'resume', '--workdir', tmp_path / 'two', '--config.train.updates=4')
  one, two = metric_rows(tmp_path / 'one', 'eval'), metric_rows(tmp_path / 'two', 'eval')
  assert [r['update'] for r in two] == [2, 4]
  np.testing.assert_allclose([r['loss'] for r in two], [r['loss'] for r in one], rtol=1e-5)
  assert [r['top1'] for r in two] == [r['top1'] for r in one]
