"""Evaluation's counts (evaluate.py) on a tiny in-memory split, through the real batches and loader."""
import numpy as np
import paddle
import pytest

from data.pipeline import SeededDataset
from evaluate import evaluate
from test_collapse import _config

CLASSES = 10


class _Blank(SeededDataset):
  """Blank 1x1 images with the given labels."""
  num_classes = CLASSES

  def __init__(self, labels):
    self.labels = labels

  def __len__(self):
    return len(self.labels)

  def sample(self, index):
    return np.zeros((1, 1, 1), np.uint8), self.labels[index]


class _Ranks(paddle.nn.Layer):
  """The same logits for every image, highest for class 0: class c is the model's (c+1)-th guess."""

  def forward(self, x):
    return paddle.arange(CLASSES, 0, -1, dtype='float32').expand([x.shape[0], CLASSES])


def test_top1_and_top5_count_a_label_among_the_first_one_and_first_five_guesses():
  """Guessed 1st, 5th, 6th, 10th, 4th, with an evaluation batch (2) that does not divide the split (5)."""
  labels = [0, 4, 5, 9, 3]
  metrics = evaluate(_Ranks(), _Blank(labels), _config())
  assert metrics['count'] == 5
  assert metrics['top1'] == pytest.approx(100.0 * 1 / 5) and metrics['top5'] == pytest.approx(100.0 * 3 / 5)
  log_p = np.arange(CLASSES, 0, -1) - np.log(np.exp(np.arange(CLASSES, 0, -1)).sum())
  assert metrics['loss'] == pytest.approx(-log_p[labels].mean(), rel=1e-6)
