"""scikit-learn's handwritten digits (1797 real 8x8 greyscale scans, 10 classes), shipped inside the
scikit-learn package: the offline demo's dataset. A fixed split keeps 20% of each class as the test set."""
import gzip
import importlib.util
import os

import numpy as np

from data.pipeline import SeededDataset

SPLITS = ('train', 'test')
CHANNELS = 1  # grey levels
SPLIT_SEED = 0  # independent of the training seed, so every run is tested on the same images


class Digits(SeededDataset):
  num_classes = 10

  def __init__(self, split):
    if split not in SPLITS:
      raise ValueError(f'digits has splits {SPLITS}, not {split!r}')
    images, target = _load()
    rng = np.random.default_rng(SPLIT_SEED)
    test = np.concatenate([rng.permutation(np.flatnonzero(target == c))[:round(0.2 * (target == c).sum())]
                           for c in range(self.num_classes)])
    keep = np.setdiff1d(np.arange(len(target)), test) if split == 'train' else np.sort(test)
    self.images, self.labels = images[keep], target[keep]
    self.names = [f'digit_{i:04d}' for i in keep]

  def __len__(self):
    return len(self.labels)

  def sample(self, index):
    return self.images[index], self.labels[index]


def _load():
  """(uint8 images [N, 1, 8, 8] in 0..255, int64 labels) read from scikit-learn's own data file.

  The file is read directly: importing sklearn.datasets takes about 1.4 s, in every process of a run.
  """
  package = importlib.util.find_spec('sklearn')  # found, not imported
  if package is None:
    raise ModuleNotFoundError('the digits data set ships inside scikit-learn: pip install scikit-learn')
  path = os.path.join(package.submodule_search_locations[0], 'datasets', 'data', 'digits.csv.gz')
  with gzip.open(path, 'rt') as f:
    table = np.loadtxt(f, delimiter=',')
  images = np.round(table[:, :-1].reshape(-1, 1, 8, 8) * (255.0 / 16.0)).astype(np.uint8)  # 0..16 -> 0..255
  return images, table[:, -1].astype(np.int64)


def build(data_config, split):
  if data_config.img_size != 8:
    raise ValueError(f'digits images are 8x8: set config.data.img_size=8, not {data_config.img_size}')
  return Digits(split)
