"""scikit-learn's handwritten digits (1797 real 8x8 greyscale scans, 10 classes), shipped inside the
scikit-learn package: the offline demo's dataset. A fixed stratified split keeps 20% as the test set."""
import numpy as np

from data.pipeline import SeededDataset

SPLIT_SEED = 0  # independent of the training seed, so every run is tested on the same images


class Digits(SeededDataset):
  num_classes = 10

  def __init__(self, split):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # 0..16 -> 0..255
    train_idx, test_idx = train_test_split(np.arange(len(images)), test_size=0.2,
                                           stratify=digits.target, random_state=SPLIT_SEED)
    if split not in ('train', 'test'):
      raise ValueError(f"digits has splits 'train' and 'test', not {split!r}")
    keep = train_idx if split == 'train' else test_idx
    self.images, self.labels = images[keep], digits.target[keep]
    self.names = [f'digit_{i:04d}' for i in keep]

  def __len__(self):
    return len(self.labels)

  def sample(self, index):
    return self.images[index], self.labels[index]


def build(data_config, split):
  if data_config.img_size != 8:
    raise ValueError(f'digits images are 8x8: set config.data.img_size=8, not {data_config.img_size}')
  return Digits(split)
