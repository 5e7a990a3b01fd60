"""Your own images: a folder per class (as timm's and torchvision's ImageFolder read it) or PaddleClas list files.

Under config.data.root:
  train/<class>/**/<image>     the classes are the sorted names of train's subfolders that hold an image file
  val/<class>/**/<image>       or, without a val/ folder, a seeded share of train (data.val_fraction)
  test/<class>/**/<image>      labelled; with images at its top, test/**/<image> is unlabelled, for predict
With `data.train_list` (and `data.val_list`), lists of `<path> <label>` lines (paths relative to data.root,
labels 0..N-1) replace the train/ and val/ folders; the classes are then named by their numbers.

Real folders are messy; each case has one outcome (docs/your-data.md):
- decoded to RGB: upper-case extensions, greyscale, palette, CMYK, RGBA (alpha dropped) and 16-bit images
  (scaled to 8 bits), files in nested subfolders of a class, symbolic links (followed, each folder once),
  any Unicode name;
- left out, counted per reason in one summary line that names the first files: hidden files and folders
  (`.DS_Store`, `._x.jpg`, `.ipynb_checkpoints/`), files without an image extension, files outside any
  class folder, broken links, undecodable or truncated images; empty class folders are named in it too;
- an error naming the path: no class at all, a class of val/ or test/ that train/ does not have, a listed
  file that does not exist, a malformed list line.
The val split of train is the same on every resume and every rank: per class, `round(val_fraction * n)`
of its files (sorted by path) chosen by `data.split_seed`, which is not the training seed, so that runs
of several seeds are evaluated on the same images.

Transforms: train RandomResizedCrop(img_size, scale (min_crop, 1)) + horizontal flip ('crop_flip', timm's
and PaddleClas's default) or the eval transform ('none'); eval: resize the shorter side to
img_size / crop_fraction, then center-crop img_size.
"""
import os

import numpy as np
from paddle.vision import transforms

from data import images
from utils.rules import FRACTION, NON_NEGATIVE, RATE

SPLITS = ('train', 'val', 'test')
CHANNELS = 3
AUGMENTS = ('crop_flip', 'none')
FIELD_RULES = {'val_fraction': RATE, 'split_seed': NON_NEGATIVE, 'crop_fraction': FRACTION, 'min_crop': FRACTION}
# Its classes are found on disk: data.build passes a trained model's class names, so that evaluating and
# predicting label by the names the model learned, whatever the folder holds by then.
FINDS_CLASSES = True
EXTENSIONS = frozenset({'.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp', '.tif', '.tiff', '.ppm', '.pgm', '.pbm'})

OUTSIDE = 'outside any class folder'
NOT_AN_IMAGE = 'not an image (no image extension)'
HIDDEN = 'hidden'
BROKEN_LINK = 'broken link'


def _hidden(name):
  return name.startswith('.')


def _not_read(path):
  """Why the file at `path` is left out before decoding, or None when it is read as an image."""
  name = os.path.basename(path)
  if _hidden(name):
    return HIDDEN
  if os.path.splitext(name)[1].lower() not in EXTENSIONS:
    return NOT_AN_IMAGE
  return None if os.path.exists(path) else BROKEN_LINK


def _walk(folder, left_out):
  """Sorted image files under `folder` (links followed, each real folder once); the rest into `left_out`."""
  found, seen = [], set()
  for current, subfolders, files in os.walk(folder, followlinks=True):
    real = os.path.realpath(current)
    if real in seen:  # a link back up the tree, or a second link to one folder
      subfolders[:] = []
      continue
    seen.add(real)
    for name in [s for s in subfolders if _hidden(s)]:
      left_out[os.path.join(current, name)] = HIDDEN
    subfolders[:] = sorted(s for s in subfolders if not _hidden(s))
    for path in (os.path.join(current, name) for name in sorted(files)):
      reason = _not_read(path)
      if reason:
        left_out[path] = reason
      else:
        found.append(path)
  return found


def _by_class(folder, left_out):
  """({class folder name: its image files}, names of class folders without any) of a split folder."""
  files, empty = {}, []
  for entry in sorted(os.listdir(folder)):
    path = os.path.join(folder, entry)
    if _hidden(entry):
      left_out[path] = HIDDEN
    elif os.path.isdir(path):
      found = _walk(path, left_out)
      if found:
        files[entry] = found
      else:
        empty.append(entry)
    else:
      left_out[path] = OUTSIDE
  return files, empty


def _existing(path, what):
  if not os.path.exists(path):
    raise FileNotFoundError(f'folder: {what} {os.path.abspath(path)} does not exist (layout: docs/your-data.md)')
  return path


def _train_folder(dc):
  return _existing(os.path.join(dc.root, dc.train_dir), 'train folder (config.data.root + config.data.train_dir)')


def find_classes(data_config):
  """The classes of the training data: train's sorted class folders, or 0..N-1 of the train list."""
  dc = data_config
  if dc.train_list:
    labels = [label for _, label in images.read_list(_existing(os.path.join(dc.root, dc.train_list),
                                                               'list file (config.data.train_list)'))]
    classes = [str(label) for label in range(max(labels) + 1)] if labels else []
    where = os.path.abspath(os.path.join(dc.root, dc.train_list))
  else:
    files, _ = _by_class(_train_folder(dc), {})
    if not files:
      raise ValueError(f'folder: {os.path.abspath(_train_folder(dc))} holds no class folder with an image: expected '
                       f'{dc.train_dir}/<class>/<image> (docs/your-data.md)')
    classes, where = sorted(files), os.path.abspath(_train_folder(dc))
  if len(classes) == 1:  # every prediction would be right: nothing to learn or to measure
    raise ValueError(f'folder: {where} holds one class ({classes[0]}); a classifier needs two or more')
  return classes


def _labelled(folder, classes, left_out, empty_classes):
  """(paths, labels) of a folder of class folders, labelled by their index in `classes`."""
  files, empty = _by_class(folder, left_out)
  empty_classes.extend(empty)
  unknown = sorted(set(files) - set(classes))
  if unknown:
    raise ValueError(f'folder: {os.path.join(os.path.abspath(folder), unknown[0])} is a class the model does not '
                     f'know ({len(unknown)} such folder(s): {", ".join(unknown[:5])}); its classes: '
                     f'{", ".join(classes[:20])}{" ..." if len(classes) > 20 else ""}')
  pairs = [(path, classes.index(name)) for name in sorted(files) for path in files[name]]
  return [path for path, _ in pairs], [label for _, label in pairs]


def held_out(labels, fraction, seed):
  """Indices of the val share: per class, round(fraction * n) of its samples, chosen by `seed` alone."""
  labels = np.asarray(labels)
  chosen = []
  for label in np.unique(labels):
    members = np.flatnonzero(labels == label)
    count = int(round(fraction * len(members)))
    chosen.extend(np.random.default_rng([seed, int(label)]).choice(members, count, replace=False).tolist())
  return sorted(chosen)


def _train_files(dc, classes, left_out, empty_classes):
  """(paths, labels) of all training data: train/ or data.train_list."""
  if dc.train_list:
    return images.listed_files(os.path.join(dc.root, dc.train_list), dc.root, len(classes))
  return _labelled(_train_folder(dc), classes, left_out, empty_classes)


def _entries(dc, split, classes, left_out, empty_classes):
  """(paths, labels, labelled) of `split` before the decode check."""
  if split == 'test':
    folder = _existing(os.path.join(dc.root, dc.test_dir), 'test folder (config.data.test_dir)')
    if not any(os.path.isfile(path) and not _not_read(path) for path in
               (os.path.join(folder, entry) for entry in os.listdir(folder))):
      return (*_labelled(folder, classes, left_out, empty_classes), True)
    paths = _walk(folder, left_out)  # images at its top: an unlabelled folder, for predict
    return paths, [-1] * len(paths), False
  val_folder = os.path.join(dc.root, dc.val_dir)
  if split == 'val' and dc.val_list:
    list_path = _existing(os.path.join(dc.root, dc.val_list), 'list file (config.data.val_list)')
    return (*images.listed_files(list_path, dc.root, len(classes)), True)
  has_val_folder = not dc.train_list and os.path.isdir(val_folder)  # (list files replace the folders)
  if split == 'val' and has_val_folder:
    return (*_labelled(val_folder, classes, left_out, empty_classes), True)
  if split == 'val' and dc.val_fraction == 0:
    raise ValueError(f'folder: there is no {os.path.abspath(val_folder)} and config.data.val_fraction=0, so no val '
                     f'split: set data.val_fraction (e.g. 0.1) or data.val_list, or evaluate on another split')
  # Here a val split is the share of train: what train's walk leaves out is counted once, by the train split
  counted = split != 'val'
  paths, labels = _train_files(dc, classes, left_out if counted else {}, empty_classes if counted else [])
  if dc.val_list or has_val_folder or dc.val_fraction == 0:
    return paths, labels, True
  val = set(held_out(labels, dc.val_fraction, dc.split_seed))  # the val share of train
  chosen = [i for i in range(len(paths)) if (i in val) == (split == 'val')]
  return [paths[i] for i in chosen], [labels[i] for i in chosen], True


def train_transform(dc):
  if dc.augment == 'none':
    return eval_transform(dc)
  return transforms.Compose([transforms.RandomResizedCrop(dc.img_size, scale=(dc.min_crop, 1.0)),
                             transforms.RandomHorizontalFlip()])


def _resized(dc):
  return int(round(dc.img_size / dc.crop_fraction))


def eval_transform(dc):
  return transforms.Compose([transforms.Resize(_resized(dc)), transforms.CenterCrop(dc.img_size)])


def build(data_config, split, class_names=None):
  """The `split` of the folder or lists at data_config.root; `class_names` (a trained model's) fix the labels."""
  dc = data_config
  if split not in SPLITS:
    raise ValueError(f'folder has splits {SPLITS}, not {split!r}')
  if not dc.root:  # '' would be the current folder, which exists
    raise ValueError('folder: config.data.root is not set: give --config.data.root=PATH, the folder that holds '
                     'train/<class>/<image> or the list files (docs/your-data.md)')
  _existing(dc.root, 'dataset root (config.data.root)')
  classes = list(class_names) if class_names is not None else find_classes(dc)
  left_out, empty_classes = {}, []
  paths, labels, labelled = _entries(dc, split, classes, left_out, empty_classes)
  total = len(paths) + len(left_out)
  paths, labels, left_out = images.without_undecodable(paths, labels, left_out)
  images.report_left_out(f'folder {split}', total, left_out)
  if empty_classes:
    print(f'folder {split}: {len(empty_classes)} class folder(s) without images left out: '
          f'{", ".join(sorted(set(empty_classes))[:20])}')
  names = [os.path.relpath(path, dc.root) for path in paths]  # as a list file names them
  if split == 'train':
    transform, decode_size = train_transform(dc), None  # a random crop may take a small part: full resolution
  else:
    transform, decode_size = eval_transform(dc), (_resized(dc), _resized(dc))
  return images.ImageFiles(paths, labels, transform, decode_size, classes, names, labelled=labelled,
                           left_out=left_out)
