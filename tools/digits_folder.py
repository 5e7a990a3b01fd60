"""scikit-learn's handwritten digits written out as a folder of PNG files per class, offline.

  python -m tools.digits_folder datasets/digits_folder

writes train/<digit>/digit_<index>.png and val/<digit>/digit_<index>.png (8x8 greyscale), the split of
the offline demo (data/digits.py: 20% of each class held out), so that configs/folder.py reads the same
images the demo trains on, through the folder loader (docs/your-data.md).
"""
import os
import sys

from PIL import Image

from utils import threads

threads.configure()  # as main.py does first: Paddle, which data/ imports, then starts without a warning

from data.digits import Digits  # noqa: E402


def write_digits_folder(out):
  """Write the folder; returns the number of files per split."""
  counts = {}
  for split, folder in (('train', 'train'), ('test', 'val')):
    digits = Digits(split)
    for image, label, name in zip(digits.images, digits.labels, digits.names):
      directory = os.path.join(out, folder, str(label))
      os.makedirs(directory, exist_ok=True)
      Image.fromarray(image[0], 'L').save(os.path.join(directory, f'{name}.png'))
    counts[folder] = len(digits)
  return counts


if __name__ == '__main__':
  if len(sys.argv) != 2:
    sys.exit('usage: python -m tools.digits_folder OUT_DIR')
  counts = write_digits_folder(sys.argv[1])
  print(f'{sys.argv[1]}: ' + ', '.join(f'{split}/ {n} PNG files' for split, n in counts.items()) + ' in 10 class folders')
