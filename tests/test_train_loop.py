"""The training loop in this process (train.train, the digits demo shrunk), with scripted evaluations: what its
checkpoints keep and hold across a stop and a resume."""
import json
import os
import signal

import numpy as np
import paddle
import pytest

import train
from configs import digits_vit_rdrop
from helpers import metric_rows
from training import workdir as workdir_lib
from utils.preemption import Interrupted
from utils import checkpoint


def _config(**train_settings):
  config = digits_vit_rdrop.get_config('smoke')
  config.model.variant = 'testing'
  config.train.update(updates=4, eval_every=1, checkpoint_every=1, keep_checkpoints=10)
  config.train.update(train_settings)
  return config


def _scripted_evaluations(monkeypatch, *results):
  """The loop's evaluations return the top-1 accuracies `results` in turn; an exception among them is raised."""
  script = iter(results)

  def evaluate(*args, **kwargs):
    result = next(script)
    if isinstance(result, Exception):
      raise result
    return {'top1': result, 'top5': 100.0, 'loss': 1.0, 'count': 359, 'majority_class': 0,
            'majority_fraction': 0.2, 'prediction_information': 0.5}
  monkeypatch.setattr(train, 'evaluate', evaluate)


def _train(config, workdir, resume_from=''):
  """train.train as in a process of its own: Paddle names parameters, and so the optimizer's state, by a counter
  of the process, which a second model in the same process would carry on."""
  with paddle.utils.unique_name.guard():
    return train.train(config, str(workdir), resume_from)


def _folder(workdir, update):
  return checkpoint.folder(workdir_lib.checkpoints_dir(str(workdir)), update)


def _manifest(workdir, update):
  return checkpoint.read_manifest(_folder(workdir, update), files=())


def _updates(workdir):
  return [checkpoint.update_of(path) for path in checkpoint.committed(workdir_lib.checkpoints_dir(str(workdir)))]


def test_a_run_resumed_from_a_checkpoint_ends_with_the_weights_of_the_uninterrupted_run(tmp_path, monkeypatch):
  """R-Drop and dropout on, 2 micro-batches per update: data position, dropout masks, optimizer and schedule all
  continue from update 2. (tests/test_training.py checks it across processes, through the command line.)"""
  _scripted_evaluations(monkeypatch, *[10.0] * 6)
  config = _config(accum_steps=2, batch_size=8)
  _train(config, tmp_path / 'straight')
  _train(config, tmp_path / 'resumed', _folder(tmp_path / 'straight', 2))
  (_, straight), (_, resumed) = (checkpoint.load(_folder(tmp_path / run, 4), ['model'])
                                 for run in ('straight', 'resumed'))
  straight, resumed = straight['model'], resumed['model']
  assert max(float(np.abs(straight[k].numpy() - resumed[k].numpy()).max()) for k in straight) < 1e-6


def test_retention_keeps_the_best_checkpoint_besides_the_newest(tmp_path, monkeypatch):
  """Evaluation, prediction and the Cat-12 submission read the best checkpoint."""
  _scripted_evaluations(monkeypatch, 10.0, 50.0, 20.0, 30.0)
  _train(_config(keep_checkpoints=1), tmp_path)
  assert _updates(tmp_path) == [2, 4]
  assert workdir_lib.best_checkpoint(str(tmp_path)) == _folder(tmp_path, 2)


def test_a_resumed_run_counts_the_training_time_of_the_runs_before_it(tmp_path, monkeypatch):
  """The earlier runs' time is made a million seconds in the checkpoint, so no machine's speed matters."""
  _scripted_evaluations(monkeypatch, *[10.0] * 6)
  _train(_config(), tmp_path)
  manifest_path = os.path.join(_folder(tmp_path, 2), checkpoint.MANIFEST)
  with open(manifest_path) as f:
    manifest = json.load(f)
  with open(manifest_path, 'w') as f:
    json.dump(dict(manifest, train_seconds=1e6), f)
  _train(_config(), tmp_path, _folder(tmp_path, 2))
  assert 1e6 < _manifest(tmp_path, 4).train_seconds < 1e6 + 3600


def test_an_evaluation_stopped_by_a_signal_is_saved_as_due_and_done_first_on_resume(tmp_path, monkeypatch):
  _scripted_evaluations(monkeypatch, 10.0, Interrupted(signal.SIGTERM))
  with pytest.raises(train.TrainingStopped, match='after update 2 before its evaluation was complete'):
    _train(_config(), tmp_path)
  assert _updates(tmp_path) == [1, 2] and _manifest(tmp_path, 2).evaluation_due
  _scripted_evaluations(monkeypatch, 20.0, 30.0, 40.0)
  _train(_config(), tmp_path, _folder(tmp_path, 2))
  assert [(row['update'], row['top1']) for row in metric_rows(tmp_path, 'eval')] == [
      (1, 10.0), (2, 20.0), (3, 30.0), (4, 40.0)]
  assert not _manifest(tmp_path, 2).evaluation_due


def test_under_o2_a_checkpoint_holds_the_float32_master_weights_not_their_half_precision_copy(
    amp_standin, tmp_path, monkeypatch):
  """On a GPU the masters, finer than bf16, are what the update keeps, and what must be saved. Paddle's CPU SGD
  kernel leaves them stale (see checkpoint.float32_weights); here they are finer because the bf16 run resumes a
  float32 checkpoint, and its update is too small to move any bf16 weight, so they stay valid."""
  _scripted_evaluations(monkeypatch, 10.0, 20.0)
  _train(_config(updates=1, optimizer='sgd', lr=1e-30), tmp_path)
  _train(_config(updates=2, optimizer='sgd', lr=1e-30, precision='bf16', amp_level='O2'), tmp_path,
         _folder(tmp_path, 1))
  (_, float32), (_, o2) = (checkpoint.load(_folder(tmp_path, update), ['model']) for update in (1, 2))
  float32, o2 = float32['model'], o2['model']
  assert o2.keys() == float32.keys()
  for key, value in float32.items():  # (zero-initialised biases move by about 1e-30)
    np.testing.assert_allclose(o2[key].numpy(), value.numpy(), rtol=0, atol=1e-20, err_msg=key)
  # Their half-precision copy differs: the test can tell the two apart.
  assert any(not np.array_equal(value.astype(paddle.bfloat16).astype('float32').numpy(), value.numpy())
             for value in float32.values())


def test_the_first_log_line_says_where_the_weights_start_from():
  from configs import folder, resnet50_cat12_rdrop
  vit, zoo, resnet = (digits_vit_rdrop.get_config().model, folder.get_config().model,
                      resnet50_cat12_rdrop.get_config().model)
  assert [train._origin(vit, 0), train._origin(vit, 40)] == ['from scratch', 'from update 40']
  zoo.pretrained = 'imagenet'
  assert train._origin(zoo, 0) == 'from the weights imagenet'
  assert train._origin(resnet, 0) == 'from the backbone weights weights/resnet50.pdparams'
