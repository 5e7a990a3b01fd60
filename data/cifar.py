"""CIFAR-10 and CIFAR-100 read straight from the official python-pickle tarballs
(https://www.cs.toronto.edu/~kriz/cifar.html), kept compressed on disk and decoded once per process.

  config.data.root      the tarball (or a folder holding it under its official name)
  config.data.classes   100: cifar-100-python.tar.gz, `fine_labels`; 10: cifar-10-python.tar.gz, `labels`
  config.data.augment   'rrc': the ViT fine-tuning recipe of the R-Drop code (train RandomResizedCrop with
                        scale (0.05, 1), no flip; test Resize); 'none': both splits only resized
                        (LeNet / small CNNs that train on the 32x32 images as they are)
  config.data.download  True lets Paddle fetch a missing tarball into ~/.cache/paddle/dataset/cifar
"""
import os
import pickle
import tarfile

import numpy as np
import paddle.vision.transforms as T
from PIL import Image

from data.pipeline import SeededDataset
from utils import safe_pickle
from utils.rules import one_of

OFFICIAL_URL = 'https://www.cs.toronto.edu/~kriz/{}'
AUGMENTS = ('rrc', 'none')
SPLITS = ('train', 'test')
CHANNELS = 3
FIELD_RULES = {'classes': one_of((10, 100))}


class _Variant:
  def __init__(self, classes, archive, md5, label_key, train_members, test_members):
    self.classes, self.archive, self.md5, self.label_key = classes, archive, md5, label_key
    self.members = {'train': train_members, 'test': test_members}


VARIANTS = {  # the md5 sums are those the official page and Paddle's own reader check
    100: _Variant(100, 'cifar-100-python.tar.gz', 'eb9058c3a382ffc7106e4002c42a8d85', b'fine_labels', ('train',),
                  ('test',)),
    10: _Variant(10, 'cifar-10-python.tar.gz', 'c58f30108f718f92721af3b95e74349a', b'labels',
                 tuple(f'data_batch_{i}' for i in range(1, 6)), ('test_batch',)),
}

# Decoded splits per (file, size, mtime, classes): the train and test builds of one run share a single
# decompression of the 160 MB archive.
_DECODED = {}


def _decode(path, variant):
  """{'train': (uint8 (N, 3, 32, 32), int64 (N,), names), 'test': ...} from one pass over the tarball."""
  wanted = [name for split in ('train', 'test') for name in variant.members[split]]
  try:
    with tarfile.open(path, 'r:*') as archive:
      members = {os.path.basename(m.name): m for m in archive.getmembers() if m.isfile()}
      absent = [name for name in wanted if name not in members]
      if absent:
        other = 10 if variant.classes == 100 else 100
        raise ValueError(f'config.data.root: {path} has no member(s) {absent} of {variant.archive} '
                         f'(it holds {sorted(members)[:8]}); if it is the CIFAR-{other} archive, set '
                         f'config.data.classes={other}')
      batches = {name: safe_pickle.load(archive.extractfile(members[name]), f'{name} in {path}', encoding='bytes')
                 for name in wanted}
  except (tarfile.TarError, EOFError, OSError, pickle.UnpicklingError) as err:  # not a tarball, or damaged
    raise ValueError(f'config.data.root: {path} is not a readable CIFAR archive ({err}); expected the official '
                     f'{variant.archive} from {OFFICIAL_URL.format(variant.archive)}') from err
  decoded = {}
  for split in ('train', 'test'):
    images, labels, names = [], [], []
    for name in variant.members[split]:
      batch = batches[name]
      if not isinstance(batch, dict) or b'data' not in batch or variant.label_key not in batch:
        raise ValueError(f'config.data.root: {name} in {path} is not a dict with b"data" and {variant.label_key!r}'
                         f'; is config.data.classes={variant.classes} right?')
      images.append(np.asarray(batch[b'data'], dtype=np.uint8).reshape(-1, 3, 32, 32))
      labels.append(np.asarray(batch[variant.label_key], dtype=np.int64))
      names += [n.decode() for n in batch.get(b'filenames', [])]
    images, labels = np.concatenate(images), np.concatenate(labels)
    if len(names) != len(labels):
      names = [f'{split}_{i:05d}' for i in range(len(labels))]
    decoded[split] = (images, labels, names)
  return decoded


def locate(data_config, variant):
  """The tarball to read: config.data.root, or Paddle's download when allowed and the file is absent."""
  root = data_config.root
  if root and os.path.isdir(root):
    root = os.path.join(root, variant.archive)
  if root and os.path.isfile(root):
    return os.path.abspath(root)
  if data_config.get('download', False):
    from paddle.dataset.common import download
    from paddle.vision.datasets import cifar as paddle_cifar
    url, md5 = ((paddle_cifar.CIFAR100_URL, paddle_cifar.CIFAR100_MD5) if variant.classes == 100
                else (paddle_cifar.CIFAR10_URL, paddle_cifar.CIFAR10_MD5))
    return download(url, 'cifar', md5)
  where = os.path.abspath(root) if root else '(config.data.root is empty)'
  raise FileNotFoundError(
      f'CIFAR-{variant.classes} archive not found: {where}. Download {OFFICIAL_URL.format(variant.archive)} '
      f'(md5 {variant.md5}) and put it, still packed, at that path (or pass --config.data.root=/path/to/{variant.archive}); '
      f'or allow Paddle to fetch it into ~/.cache/paddle/dataset/cifar with --config.data.download=True')


def load_arrays(data_config, split):
  """(images uint8 (N, 3, 32, 32), labels int64 (N,), names) of a split, decoded once per process."""
  classes = data_config.get('classes', None)
  if classes not in VARIANTS:
    raise ValueError(f'config.data.classes={classes!r}: set it to 100 (CIFAR-100) or 10 (CIFAR-10)')
  if split not in SPLITS:
    raise ValueError(f'CIFAR has splits {SPLITS}, not {split!r}')
  variant = VARIANTS[classes]
  path = locate(data_config, variant)
  stat = os.stat(path)
  key = (path, stat.st_size, stat.st_mtime_ns, classes)
  if key not in _DECODED:
    _DECODED[key] = _decode(path, variant)
  return _DECODED[key][split]


class Cifar(SeededDataset):

  def __init__(self, images, labels, names, num_classes, transform):
    self.images, self.labels, self.names = images, labels, names
    self.num_classes = num_classes
    self.transform = transform

  def __len__(self):
    return len(self.labels)

  def sample(self, index):
    image = self.images[index]
    if self.transform is not None:
      image = np.asarray(self.transform(Image.fromarray(image.transpose(1, 2, 0)))).transpose(2, 0, 1)
    return np.ascontiguousarray(image), self.labels[index]


def _transform(augment, split, img_size):
  if augment not in AUGMENTS:
    raise ValueError(f'config.data.augment={augment!r}: choose one of {AUGMENTS}')
  if augment == 'rrc' and split == 'train':
    return T.RandomResizedCrop(img_size, scale=(0.05, 1.0))
  return None if img_size == 32 else T.Resize(img_size)


def build(data_config, split):
  if 'augment' not in data_config:
    raise ValueError("config.data.augment is not set: add c.data.augment = 'rrc' (ViT recipe) or 'none' "
                     'to the experiment config')
  images, labels, names = load_arrays(data_config, split)
  transform = _transform(data_config.augment, split, data_config.img_size)
  return Cifar(images, labels, names, data_config.classes, transform)
