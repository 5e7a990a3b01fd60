"""Cat-12, the 12 cat breeds of the PaddlePaddle AI Studio challenge: 2160 labelled images listed in
`train_list.txt` (lines `cat_12_train/<name>.jpg<TAB><label>`) and 240 unlabelled ones in `cat_12_test/`.

Splits: 'train' and 'val' divide the list as the source notebook did (docs/SOURCES.md): lines 1,
1 + val_every, 1 + 2 val_every, ... are held out, so with the list sorted by label every class gives up a
tenth; 'test' is the sorted test folder, for `--mode predict`. Every file is test-decoded once when a split is built
(see data.images.decode_problem); the ones that fail are named, counted and left out.
Transforms are the source's: train Resize(resize) -> ColorJitter(0.2, 0.2, 0.2, 0.2) -> CenterCrop(img_size)
-> RandomHorizontalFlip(0.3) -> RandomRotation(15); eval Resize(img_size). Normalisation (config.data.mean,
std = 0.5, i.e. (x - 127.5) / 127.5) runs on the device.
"""
import os

from paddle.vision import transforms

from data import images
from utils.rules import NON_NEGATIVE, POSITIVE

NUM_CLASSES = 12
CLASS_NAMES = [str(label) for label in range(NUM_CLASSES)]  # the challenge's submissions use the numbers
SPLITS = ('train', 'val', 'test')
CHANNELS = 3
ADDRESS = ('the data/ folder of https://github.com/nolank128/Cat-Twelve-Classification-Challenge, 2160 + 240 '
           'images; train_list.txt md5 61cd1dda9400b0a4e3ead24340d5380f')
FIELD_RULES = {'resize': POSITIVE, 'val_every': NON_NEGATIVE}


def train_transform(data_config):
  return transforms.Compose([
      transforms.Resize((data_config.resize, data_config.resize)),
      transforms.ColorJitter(0.2, 0.2, 0.2, 0.2),
      transforms.CenterCrop(data_config.img_size),
      transforms.RandomHorizontalFlip(0.3),
      transforms.RandomRotation(15),
  ])


def eval_transform(data_config):
  return transforms.Resize((data_config.img_size, data_config.img_size))


def _existing(path, what):
  if not os.path.exists(path):
    raise FileNotFoundError(f'cat12: {what} {os.path.abspath(path)} does not exist; set config.data.root to the '
                            f'folder holding train_list.txt, cat_12_train/ and cat_12_test/ ({ADDRESS})')
  return path


def _split_entries(data_config, split):
  """(paths, labels) of `split` before the decode check."""
  dc = data_config
  if split == 'test':
    folder = _existing(os.path.join(dc.root, dc.test_dir), 'test folder (config.data.test_dir)')
    names = sorted(n for n in os.listdir(folder) if not n.startswith('.'))
    if not names:
      raise FileNotFoundError(f'cat12: the test folder {os.path.abspath(folder)} (config.data.test_dir) holds no images')
    return [os.path.join(folder, n) for n in names], [-1] * len(names)
  list_path = _existing(os.path.join(dc.root, dc.list_file), 'list file (config.data.list_file)')
  paths, labels = images.listed_files(list_path, dc.root, NUM_CLASSES, delimiter='\t')
  if split == 'val' and dc.val_every <= 0:
    raise ValueError(f'config.data.val_every={dc.val_every} holds no lines out, so there is no val split: '
                     f'set it to e.g. 10 (the source) or evaluate on another split')
  held_out = set(range(0, len(paths), dc.val_every)) if dc.val_every > 0 else set()
  chosen = [i for i in range(len(paths)) if (i in held_out) == (split == 'val')]
  return [paths[i] for i in chosen], [labels[i] for i in chosen]


def build(data_config, split):
  dc = data_config
  if split not in SPLITS:
    raise ValueError(f'cat12 has splits {SPLITS}, not {split!r}')
  if dc.resize < dc.img_size:
    raise ValueError(f'config.data.resize={dc.resize} is smaller than config.data.img_size={dc.img_size}: '
                     f'the train transform resizes to `resize`, then center-crops `img_size`')
  _existing(dc.root, 'dataset root (config.data.root)')
  paths, labels = _split_entries(dc, split)
  total = len(paths)
  paths, labels, left_out = images.without_undecodable(paths, labels)
  images.report_left_out(f'cat12 {split}', total, left_out)
  names = [os.path.basename(p) for p in paths]
  if split == 'train':
    return images.ImageFiles(paths, labels, train_transform(dc), (dc.resize, dc.resize), CLASS_NAMES, names,
                             left_out=left_out)
  return images.ImageFiles(paths, labels, eval_transform(dc), (dc.img_size, dc.img_size), CLASS_NAMES, names,
                           labelled=split != 'test', left_out=left_out)
