"""Datasets of image files: files as RGB whatever their real format, list files, and a start-up check
that every file decodes.

Datasets scraped from the web name GIFs, RGBA PNGs and greyscale JPEGs `.jpg` (Cat-12 does): PIL reads
them all by content, whereas `cv2.imread` returns None on a GIF. A file that does not decode is found
when the dataset is built, named and left out, rather than failing in a worker in the middle of an epoch.
"""
import collections
import concurrent.futures
import os
import struct

import numpy as np
from PIL import Image

from data.pipeline import SeededDataset

# What PIL raises on unreadable files: UnidentifiedImageError and truncation are OSErrors, a broken PNG
# chunk is a SyntaxError, damaged headers give ValueError, EOFError or struct.error.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError)


# Modes of one channel wider than 8 bits (16-bit PNGs and TIFFs open as 'I;16' or 'I'; 'F' is float):
# PIL's convert('RGB') clips them at 255, which turns most of a 16-bit image white.
WIDE_MODES = {'I', 'I;16', 'I;16B', 'I;16L', 'I;16N', 'F'}
WIDE_MAX = 65535.0  # their values are taken as 16-bit, the only wide format cameras and scanners write


def _wide_to_grey(image):
  values = np.asarray(image, dtype=np.float64)
  return Image.fromarray(np.clip(np.round(values * (255.0 / WIDE_MAX)), 0, 255).astype(np.uint8), 'L')


def open_rgb(path, min_size=None):
  """The image at `path` as an RGB PIL image (an alpha channel or palette is dropped).

  With `min_size` (width, height) a JPEG is decoded at the smallest DCT scale (1/1, 1/2, 1/4 or 1/8) that
  keeps it at least that large: a 3264 px photo resized to 250 px anyway decodes several times faster.
  """
  try:
    with Image.open(path) as image:
      if min_size:
        image.draft('RGB', tuple(min_size))
      if image.mode in WIDE_MODES:
        return _wide_to_grey(image).convert('RGB')
      return image.convert('RGB')
  except DECODE_ERRORS as error:
    raise OSError(f'{path}: cannot decode the image ({type(error).__name__}: {error})') from error


def decode_problem(path):
  """Why the file at `path` cannot be decoded, or None when it can.

  Cheap but real: PIL parses the header (recognises the format, rejects empty or non-image files), then
  decodes the whole compressed stream, so truncated or corrupt data fails as it would in training. JPEGs,
  the large files, are decoded as greyscale at 1/8 scale (`draft`): the entropy decoding that finds damage
  still covers every byte, but the inverse DCT and colour conversion, most of the cost, shrink ~64x.
  """
  try:
    with Image.open(path) as image:
      image.draft('L', (1, 1))
      image.load()
  except DECODE_ERRORS as error:
    return f'{type(error).__name__}: {error}'
  return None


def decode_problems(paths, threads=4):
  """{path: reason} for every file of `paths` that cannot be decoded (PIL decodes outside the GIL)."""
  with concurrent.futures.ThreadPoolExecutor(max(1, min(threads, os.cpu_count() or 1))) as pool:
    reasons = pool.map(decode_problem, paths)
    return {path: reason for path, reason in zip(paths, reasons) if reason is not None}


def to_chw(image):
  """A PIL RGB image as a uint8 (3, H, W) array."""
  return np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))


def read_list(list_path, num_classes=None, delimiter=None):
  """[(relative path, label)] of a list file (PaddleClas's format: one `<image path> <label>` line per image),
  checked line by line.

  `delimiter` None splits each line at its last run of spaces or tabs, so paths may hold spaces; '\t'
  only at a tab (Cat-12's lists). Blank lines (anywhere), Windows line ends and a UTF-8 byte-order mark, as
  editors leave them, are accepted; any other malformed line, or a label outside 0..num_classes - 1
  (when given), is refused with its line number.
  """
  layout = '"<image path><TAB><label>"' if delimiter == '\t' else '"<image path> <label>"'
  entries = []
  with open(list_path, encoding='utf-8-sig') as f:  # text mode reads \r\n as \n
    for number, line in enumerate(f.read().splitlines(), start=1):
      if not line.strip():
        continue
      path, label_text = (line.rsplit(None, 1) + [''])[:2] if delimiter is None else line.partition(delimiter)[::2]
      try:
        label = int(label_text)
      except ValueError:
        label = None
      if not path or label is None:
        raise ValueError(f'{list_path}, line {number}: {line!r} is not {layout}')
      if label < 0 or (num_classes is not None and label >= num_classes):
        allowed = f'0..{num_classes - 1}' if num_classes is not None else 'the labels 0, 1, ...'
        raise ValueError(f'{list_path}, line {number}: label {label} is outside {allowed}')
      entries.append((path, label))
  return entries


def listed_files(list_path, root, num_classes=None, delimiter=None):
  """(paths under `root`, labels) of the list file `list_path`; a listed file that does not exist is an error."""
  entries = read_list(list_path, num_classes, delimiter)
  missing = [rel for rel, _ in entries if not os.path.isfile(os.path.join(root, rel))]
  if missing:
    raise FileNotFoundError(f'{list_path} lists {len(missing)} file(s) that do not exist under '
                            f'{os.path.abspath(root)}: {", ".join(missing[:5])}{" ..." if len(missing) > 5 else ""}')
  return [os.path.join(root, rel) for rel, _ in entries], [label for _, label in entries]


def without_undecodable(paths, labels, left_out=None):
  """(paths, labels, left_out): the files that cannot be decoded moved to `left_out` ({path: reason})."""
  left_out = dict(left_out or {})
  broken = decode_problems(paths)
  left_out.update((path, f'cannot be decoded ({reason})') for path, reason in broken.items())
  kept = [i for i, path in enumerate(paths) if path not in broken]
  return [paths[i] for i in kept], [labels[i] for i in kept], left_out


def report_left_out(what, total, left_out, listed=20):
  """Print what was left out of a split: one summary line with a count per reason, then the first files."""
  if not left_out:
    return
  counts = collections.Counter(reason.split(' (')[0] for reason in left_out.values())
  lines = [f'  {path}: {reason}' for path, reason in list(left_out.items())[:listed]]
  if len(left_out) > listed:
    lines.append(f'  ... and {len(left_out) - listed} more')
  print(f'{what}: {len(left_out)} of {total} files left out ('
        + ', '.join(f'{n} {reason}' for reason, n in counts.most_common()) + '):\n' + '\n'.join(lines))


class ImageFiles(SeededDataset):
  """Image files with labels (-1 when unlabelled), each decoded to RGB, transformed and returned as CHW uint8.

  `decode_size` (width, height): the smallest size the transform needs, for open_rgb's fast JPEG decoding.
  """

  def __init__(self, paths, labels, transform, decode_size, class_names, names, labelled=True, left_out=()):
    self.paths, self.labels, self.names, self.class_names = paths, labels, names, list(class_names)
    self.transform, self.decode_size, self.labelled, self.left_out = transform, decode_size, labelled, tuple(left_out)
    self.num_classes = len(self.class_names)

  def __len__(self):
    return len(self.paths)

  def sample(self, index):
    image = open_rgb(self.paths[index], min_size=self.decode_size)
    return to_chw(self.transform(image)), self.labels[index]
