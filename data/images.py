"""Image files as RGB, whatever their real format, and a start-up check that every file decodes.

Datasets scraped from the web name GIFs, RGBA PNGs and greyscale JPEGs `.jpg` (Cat-12 does): PIL reads
them all by content, whereas `cv2.imread` returns None on a GIF. A file that does not decode is found
when the dataset is built, named and left out, rather than failing in a worker in the middle of an epoch.
"""
import concurrent.futures
import os
import struct

import numpy as np
from PIL import Image

# What PIL raises on unreadable files: UnidentifiedImageError and truncation are OSErrors, a broken PNG
# chunk is a SyntaxError, damaged headers give ValueError, EOFError or struct.error.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError)


def open_rgb(path, min_size=None):
  """The image at `path` as an RGB PIL image (an alpha channel or palette is dropped).

  With `min_size` (width, height) a JPEG is decoded at the smallest DCT scale (1/1, 1/2, 1/4 or 1/8) that
  keeps it at least that large: a 3264 px photo resized to 250 px anyway decodes several times faster.
  """
  try:
    with Image.open(path) as image:
      if min_size:
        image.draft('RGB', tuple(min_size))
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
