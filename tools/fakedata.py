"""Tiny datasets in the real on-disk formats, for the tests, the benchmarks and `bash run.sh smoke`.

  python -m tools.fakedata OUT_DIR   writes OUT_DIR/cifar-100-python.tar.gz, cifar-10-python.tar.gz, cat12/
"""
import io
import os
import pickle
import sys
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

ODD_FILES = {'gif': 'odd_gif.jpg', 'rgba': 'odd_rgba.jpg', 'grey': 'odd_grey.jpg'}
BROKEN = 'broken.jpg'


def _add_pickle(archive, name, obj):
  payload = pickle.dumps(obj, protocol=2)
  info = tarfile.TarInfo(name)
  info.size = len(payload)
  archive.addfile(info, io.BytesIO(payload))


def _batch(rng, count, label_key, classes, tag):
  """One batch in the official layout (the Python 2 pickles load with bytes keys under encoding='bytes')."""
  batch = {b'batch_label': tag.encode(), b'data': rng.integers(0, 256, (count, 3072), dtype=np.uint8),
           label_key: rng.integers(0, classes, count).tolist(),
           b'filenames': [f'{tag}_{i}.png'.encode() for i in range(count)]}
  if label_key == b'fine_labels':
    batch[b'coarse_labels'] = rng.integers(0, 20, count).tolist()
  return batch


def make_cifar100(path, train=24, test=12, seed=0):
  rng = np.random.default_rng(seed)
  with tarfile.open(path, 'w:gz') as archive:
    _add_pickle(archive, 'cifar-100-python/meta', {b'fine_label_names': [b'c%d' % i for i in range(100)],
                                                   b'coarse_label_names': [b'g%d' % i for i in range(20)]})
    _add_pickle(archive, 'cifar-100-python/train', _batch(rng, train, b'fine_labels', 100, 'training batch'))
    _add_pickle(archive, 'cifar-100-python/test', _batch(rng, test, b'fine_labels', 100, 'testing batch'))
  return path


def make_cifar10(path, per_batch=3, test=5, seed=1):
  rng = np.random.default_rng(seed)
  with tarfile.open(path, 'w:gz') as archive:
    _add_pickle(archive, 'cifar-10-batches-py/batches.meta',
                {b'label_names': [b'n%d' % i for i in range(10)], b'num_cases_per_batch': per_batch})
    for i in range(1, 6):
      _add_pickle(archive, f'cifar-10-batches-py/data_batch_{i}',
                  _batch(rng, per_batch, b'labels', 10, f'training batch {i} of 5'))
    _add_pickle(archive, 'cifar-10-batches-py/test_batch', _batch(rng, test, b'labels', 10, 'testing batch 1 of 1'))
  return path


def _photo(seed, size):
  rng = np.random.default_rng(seed)
  return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def make_cat12(root, n_plain=8, odd=True, broken=True, n_test=3):
  """A Cat-12 folder: plain JPEGs, optionally a GIF, an RGBA PNG and a greyscale JPEG named .jpg and a
  truncated JPEG; returns the list lines in order."""
  train_dir, test_dir = root / 'cat_12_train', root / 'cat_12_test'
  train_dir.mkdir(parents=True)
  test_dir.mkdir()
  names = []
  for i in range(n_plain):
    name = f'plain_{i:02d}.jpg'
    _photo(i, (40 + i, 30)).save(train_dir / name, format='JPEG')
    names.append(name)
  if odd:
    _photo(100, (20, 24)).convert('P').save(train_dir / ODD_FILES['gif'], format='GIF')
    rgba = np.dstack([np.asarray(_photo(101, (25, 20))), np.full((20, 25), 128, np.uint8)])
    Image.fromarray(rgba, 'RGBA').save(train_dir / ODD_FILES['rgba'], format='PNG')
    _photo(102, (30, 22)).convert('L').save(train_dir / ODD_FILES['grey'], format='JPEG')
    names += list(ODD_FILES.values())
  if broken:
    _photo(103, (64, 64)).save(train_dir / BROKEN, format='JPEG')
    data = (train_dir / BROKEN).read_bytes()
    (train_dir / BROKEN).write_bytes(data[:len(data) // 2])
    names.append(BROKEN)
  lines = [f'cat_12_train/{name}\t{i % 12}' for i, name in enumerate(names)]
  (root / 'train_list.txt').write_text('\n'.join(lines) + '\n')
  for i in range(n_test):
    image = _photo(200 + i, (36, 28))
    if i == 0:
      image.convert('P').save(test_dir / f'test_{i}.jpg', format='GIF')
    else:
      image.save(test_dir / f'test_{i}.jpg', format='JPEG')
  return lines


if __name__ == '__main__':
  out = Path(sys.argv[1])
  os.makedirs(out, exist_ok=True)
  make_cifar100(out / 'cifar-100-python.tar.gz', train=64, test=16)
  make_cifar10(out / 'cifar-10-python.tar.gz', per_batch=16, test=16)
  make_cat12(out / 'cat12', n_plain=24, n_test=4)
  print(f'tiny CIFAR-100, CIFAR-10 and Cat-12 written to {out}')
