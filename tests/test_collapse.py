"""The collapse guard: every evaluation measures how much one class dominates the predictions, flags a
(near) single-class model in metrics.jsonl, VisualDL and the log, and can stop the run."""
import json

import ml_collections
import numpy as np
import paddle
import pytest

from conftest import run_main
from data.pipeline import SeededDataset
from evaluate import evaluate

SMOKE = 'configs/digits_vit_rdrop.py:smoke'


class _LabelledPixels(SeededDataset):
  """1x1 'images' whose pixel value is the label, so a model can predict from them exactly."""
  num_classes = 4

  def __init__(self, labels):
    self.labels = labels

  def __len__(self):
    return len(self.labels)

  def sample(self, index):
    return np.full((1, 1, 1), self.labels[index], np.uint8), self.labels[index]


class _Predicts(paddle.nn.Layer):
  """Logits peaking at `constant` for every input, or (constant None) at the class its pixel encodes."""

  def __init__(self, constant=None):
    super().__init__()
    self.constant = constant

  def forward(self, x):
    # to_model_input maps pixel v to (v / 255 - 0.5) / 0.5: undo it to read the label back.
    label = paddle.round(((x.flatten(1)[:, 0] * 0.5 + 0.5) * 255)).astype('int64')
    if self.constant is not None:
      label = paddle.full_like(label, self.constant)
    return paddle.nn.functional.one_hot(label, 4) * 10.0


def _config():
  return ml_collections.ConfigDict({'data': {'name': 'pixels', 'mean': (0.5,), 'std': (0.5,), 'num_workers': 0},
                                    'eval': {'split': 'val', 'batch_size': 2}})


def test_majority_fraction_is_the_share_of_the_most_predicted_class():
  dataset = _LabelledPixels([0, 0, 1, 2, 3])
  faithful = evaluate(_Predicts(), dataset, _config())
  assert faithful['top1'] == 100.0
  assert (faithful['majority_class'], faithful['majority_fraction']) == (0, pytest.approx(0.4))
  constant = evaluate(_Predicts(constant=2), dataset, _config())
  assert constant['top1'] == pytest.approx(20.0)
  assert (constant['majority_class'], constant['majority_fraction']) == (2, 1.0)


def _eval_rows(workdir):
  with open(workdir / 'metrics.jsonl') as f:
    return [row for row in map(json.loads, f) if row['group'] == 'eval']


@pytest.fixture(scope='module')
def flagged_run(tmp_path_factory):
  """A demo smoke run whose every evaluation is flagged (some class always has at least 1% of the
  predictions), told to stop after 2 collapsed evaluations in a row, out of 4 planned."""
  workdir = tmp_path_factory.mktemp('flagged')
  proc = run_main('--config', SMOKE, '--workdir', workdir, '--config.eval.collapse_fraction=0.01',
                  '--config.eval.stop_after_collapses=2', '--config.train.updates=8', check=False)
  return workdir, proc


def test_a_flagged_evaluation_is_in_the_metrics_the_visualdl_scalars_and_a_warning_naming_the_kl_weight(flagged_run):
  workdir, proc = flagged_run
  rows = _eval_rows(workdir)
  assert rows and all(row['collapsed'] is True and 0.1 <= row['majority_fraction'] <= 1.0 for row in rows)
  warning = next(line for line in proc.stdout.splitlines() if line.startswith('WARNING: collapse at update 2'))
  assert 'of the 360 test samples are predicted as class' in warning and 'training CE' in warning
  assert 'the likely cause is the R-Drop KL term (rdrop.alpha=1' in warning and 'lower rdrop.alpha' in warning
  record = next((workdir / 'vdl').glob('vdlrecords*')).read_bytes()
  assert b'eval/collapsed' in record and b'eval/majority_fraction' in record


def test_the_run_stops_after_the_configured_number_of_collapsed_evaluations_in_a_row(flagged_run):
  workdir, proc = flagged_run
  assert proc.returncode == 1
  assert ('error: stopped after 2 collapsed evaluation(s) in a row, the last at update 4 '
          '(config.eval.stop_after_collapses=2); checkpoint saved') in proc.stderr
  assert [row['update'] for row in _eval_rows(workdir)] == [2, 4]
  assert (workdir / 'checkpoints' / 'update_00000004').is_dir()
