"""The collapse guard: every evaluation measures how much one class dominates the predictions, flags a
(near) single-class model in metrics.jsonl, VisualDL and the log, and can stop the run."""
import glob
import importlib
import json
import os

import numpy as np
import paddle
import pytest

from configs import base
from helpers import ROOT, run_main
from data.pipeline import SeededDataset
from evaluate import evaluate
from training.collapse import CollapseGuard, TrainingCollapsed, collapse_warning, collapsed

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
  """Logits `scale` x one-hot of `constant` for every input, or (constant None) of the class its pixel encodes."""

  def __init__(self, constant=None, scale=10.0):
    super().__init__()
    self.constant, self.scale = constant, scale

  def forward(self, x):
    # to_model_input maps pixel v to (v / 255 - 0.5) / 0.5: undo it to read the label back.
    label = paddle.round(((x.flatten(1)[:, 0] * 0.5 + 0.5) * 255)).astype('int64')
    if self.constant is not None:
      label = paddle.full_like(label, self.constant)
    return paddle.nn.functional.one_hot(label, 4) * self.scale


def _config():
  c = base.get_base_config()
  c.data.update({'name': 'pixels', 'mean': (0.5,), 'std': (0.5,), 'num_workers': 0})
  c.eval.update({'split': 'val', 'batch_size': 2})
  return c


def _information(probabilities):
  """H(mean p) - mean H(p), over ln C: the reference for evaluate's prediction_information."""
  p = np.asarray(probabilities, np.float64)

  def entropy(q):
    return -(q * np.log(q)).sum(axis=-1)
  return (entropy(p.mean(axis=0)) - entropy(p).mean()) / np.log(p.shape[1])


def test_majority_fraction_and_information_tell_a_faithful_model_from_a_collapsed_one():
  dataset, c = _LabelledPixels([0, 0, 1, 2, 3]), _config()
  confident = np.exp(10.0) / (np.exp(10.0) + 3)  # softmax of 10 x one-hot over 4 classes
  rest = (1 - confident) / 3
  faithful = evaluate(_Predicts(), dataset, c)
  assert faithful['top1'] == 100.0
  assert (faithful['majority_class'], faithful['majority_fraction']) == (0, pytest.approx(0.4))
  rows = [[confident if j == label else rest for j in range(4)] for label in (0, 0, 1, 2, 3)]
  assert faithful['prediction_information'] == pytest.approx(_information(rows), rel=1e-6)
  assert not collapsed(faithful, c.eval)

  constant = evaluate(_Predicts(constant=2), dataset, c)  # one class for everything
  assert constant['top1'] == pytest.approx(20.0)
  assert (constant['majority_class'], constant['majority_fraction']) == (2, 1.0)
  assert constant['prediction_information'] == pytest.approx(0.0, abs=1e-9) and collapsed(constant, c.eval)

  # Nearly the same output for every image: the argmax still follows the label (100% top-1, no majority),
  # but the predictions say almost nothing about the image, as after R-Drop drove the logits to zero.
  whisper = evaluate(_Predicts(scale=1e-3), dataset, c)
  assert whisper['top1'] == 100.0 and whisper['majority_fraction'] == pytest.approx(0.4)
  assert whisper['prediction_information'] < 1e-6 and collapsed(whisper, c.eval)


def test_the_warning_names_the_measure_that_fired_the_training_state_and_what_to_change():
  c = _config()
  c.eval.split = 'val'
  c.rdrop.update({'alpha': 50.0, 'reduction': 'mean', 'ce_of_passes': 'sum'})
  uniform = {'count': 216, 'majority_class': 5, 'majority_fraction': 0.449, 'prediction_information': 1.8e-5}
  warning = collapse_warning(60, uniform, c, 12, {'ce': 2.4849, 'kl': 2.3e-5})
  assert warning.startswith('WARNING: collapse at update 60: the predictions carry 1.8e-05 x ln 12 of information '
                            'about the image, nearly one output for all (eval.collapse_information=0.0003); '
                            'training CE 2.4849 (ln 12 = 2.4849), KL 2.3e-05.')
  assert 'the R-Drop KL term (rdrop.alpha=50, reduction mean)' in warning
  assert warning.endswith('lower rdrop.alpha or train.lr, or average the two cross entropies (rdrop.ce_of_passes=mean)')
  c.rdrop.alpha = 0.0
  one_class = {'count': 216, 'majority_class': 3, 'majority_fraction': 1.0, 'prediction_information': 0.01}
  warning = collapse_warning(60, one_class, c, 12, None)
  assert warning.startswith('WARNING: collapse at update 60: 100.0% of the 216 val samples are predicted as class 3 '
                            '(eval.collapse_majority=0.9). If it persists, the likely cause is a step too large')


def _eval_rows(workdir):
  with open(workdir / 'metrics.jsonl') as f:
    return [row for row in map(json.loads, f) if row['group'] == 'eval']


@pytest.fixture(scope='module')
def flagged_run(tmp_path_factory):
  """A demo smoke run whose every evaluation is flagged (some class always has at least 1% of the
  predictions), told to stop after 2 collapsed evaluations in a row, out of 4 planned."""
  workdir = tmp_path_factory.mktemp('flagged')
  proc = run_main('--config', SMOKE, '--workdir', workdir, '--config.eval.collapse_majority=0.01',
                  '--config.eval.collapse_information=0',
                  '--config.eval.stop_after_collapses=2', '--config.train.updates=8', check=False)
  return workdir, proc


@pytest.mark.slow
def test_a_flagged_evaluation_is_in_the_metrics_the_visualdl_scalars_and_a_warning_naming_the_kl_weight(flagged_run):
  workdir, proc = flagged_run
  rows = _eval_rows(workdir)
  assert rows and all(row['collapsed'] is True and 0.1 <= row['majority_fraction'] <= 1.0
                      and 0.0 <= row['prediction_information'] <= 1.0 for row in rows)
  warning = next(line for line in proc.stdout.splitlines() if line.startswith('WARNING: collapse at update 2'))
  assert 'of the 359 test samples are predicted as class' in warning and 'training CE' in warning
  assert 'information about the image' not in warning  # only the measure that fired is named
  assert 'the likely cause is the R-Drop KL term (rdrop.alpha=1' in warning and 'lower rdrop.alpha' in warning
  record = next((workdir / 'vdl').glob('vdlrecords*')).read_bytes()
  assert all(tag in record for tag in (b'2 eval/collapsed', b'2 eval/majority_fraction', b'2 eval/prediction_information'))


@pytest.mark.slow
def test_the_guard_stops_at_the_limit_of_collapses_in_a_row_and_its_count_survives_a_checkpoint():
  guard = CollapseGuard(limit=2)
  for update, collapse in ((1, True), (2, False), (3, True)):
    guard.count(collapse, update)
  guard.recent_train = {'ce': 2.3}
  resumed = CollapseGuard(limit=2)
  resumed.load_state_dict(guard.state_dict())
  assert (resumed.in_a_row, resumed.recent_train) == (1, {'ce': 2.3})
  with pytest.raises(TrainingCollapsed, match=r'^stopped after 2 collapsed evaluation\(s\) in a row, the last at update 4'):
    resumed.count(True, 4)
  unlimited = CollapseGuard(limit=0)
  for update in range(1, 10):
    unlimited.count(True, update)
  assert unlimited.in_a_row == 9


def test_the_run_stops_after_the_configured_number_of_collapsed_evaluations_in_a_row(flagged_run):
  workdir, proc = flagged_run
  assert proc.returncode == 1
  assert ('error: stopped after 2 collapsed evaluation(s) in a row, the last at update 4 '
          '(config.eval.stop_after_collapses=2); checkpoint saved') in proc.stderr
  assert [row['update'] for row in _eval_rows(workdir)] == [2, 4]
  assert (workdir / 'checkpoints' / 'update_00000004').is_dir()


@pytest.mark.parametrize('name', sorted(os.path.basename(path)[:-3] for path in glob.glob(os.path.join(ROOT, 'configs', '*.py'))
                                        if not path.endswith(('__init__.py', 'base.py'))))
def test_a_smoke_config_never_flags_a_collapse(name):
  """Two updates from random weights predict one class as a rule: a warning there would mean nothing."""
  config = importlib.import_module(f'configs.{name}').get_config('smoke')
  assert not collapsed({'majority_fraction': 1.0, 'prediction_information': 0.0}, config.eval)
