"""Evaluation and prediction: top-1, top-5 and loss of a model on a split; `filename,label` CSVs. The eval
and predict modes of main.py (`run_eval`, `run_predict`) apply them to a run's checkpoint.

Under `paddle.distributed.launch` every rank evaluates its own shard without padding duplicates and
the sums are all-reduced, so accuracy is exact for any dataset size and any number of processes.
The model runs under the autocast of its precision (`autocast`: Precision.autocast), as in training:
an AMP O2 model holds half-precision weights and cannot run outside it; its logits are taken in float32.
"""
import collections
import contextlib
import csv
import io
import json
import math
import os
import sys

import numpy as np
import paddle
import paddle.nn.functional as F

import data
import models
from data import pipeline
from training import distributed, workdir as workdir_lib
from training.config_check import check_config
from training.precision import Precision
from utils.io import write_atomic
from utils.preemption import Interrupted


@paddle.no_grad()
def evaluate(model, dataset, config, rank=0, world_size=1, split='', autocast=contextlib.nullcontext,
             stop=None):
  """{'top1', 'top5', 'loss', 'count', 'majority_class', 'majority_fraction', 'prediction_information',
  'per_class_top1', 'per_class_count'}.

  Accuracies are in percent; per_class_top1 maps each class name to the top-1 of its samples (None when
  the split holds none of it), per_class_count to their number. Two measures of a collapsed model (see training/collapse.py):
  `majority_fraction`, the share of samples predicted as the most frequent predicted class (1.0 for a
  model that predicts one class for everything), and `prediction_information`, the mutual information
  between the image and the predicted distribution, H(mean p) - mean H(p), as a fraction of ln C: 0 when
  the model outputs the same distribution whatever the image, even if tiny differences still vary its argmax.
  Sums, the histogram of predictions and the summed probabilities stay on the device until the end.
  With `stop` (a StopRequest), a signal ends the evaluation at the next batch with `Interrupted`.
  """
  split = split or config.eval.split
  if len(dataset) == 0:
    raise ValueError(f'the {split!r} split of {config.data.name} is empty: nothing to evaluate')
  if not dataset.labelled:
    raise ValueError(f'the {split!r} split of {config.data.name} has no labels: use --mode predict')
  was_training = model.training
  model.eval()
  classes = dataset.num_classes
  # correct@1, correct@5, summed loss, count, summed entropy, then per class: predictions, summed probability,
  # samples, correct@1
  sums = paddle.zeros([5 + 4 * classes], dtype='float64')
  batches = pipeline.EvalBatches(len(dataset), config.eval.batch_size, rank, world_size)
  for images, labels in pipeline.loader(dataset, batches, config.data.num_workers):
    if stop:
      raise Interrupted(stop.signum)
    with stop.working() if stop is not None else contextlib.nullcontext(), autocast():
      logits = model(pipeline.to_model_input(images, config.data))
    logits = logits.astype('float32')
    k = min(5, logits.shape[1])
    top = paddle.topk(logits, k, axis=1)[1]
    hits = (top == labels.unsqueeze(1)).astype('float64')
    loss = F.cross_entropy(logits, labels, reduction='sum').astype('float64')
    log_p = F.log_softmax(logits.astype('float64'), axis=1)  # float64: the information of a collapse is ~1e-5
    p = log_p.exp()
    entropy = -(p * log_p).sum()
    predicted = F.one_hot(top[:, 0], classes).sum(axis=0).astype('float64')  # one_hot: no host sync, unlike bincount
    truth = F.one_hot(labels, classes).astype('float64')
    count = paddle.to_tensor(len(labels), dtype='float64')
    sums += paddle.concat([paddle.stack([hits[:, 0].sum(), hits.sum(), loss, count, entropy]), predicted,
                           p.sum(axis=0), truth.sum(axis=0), (truth * hits[:, :1]).sum(axis=0)])
  distributed.all_reduce_sum(sums, world_size)
  model.train(was_training)
  totals = sums.numpy()
  (correct1, correct5, loss, count, entropy), per_class = totals[:5].tolist(), totals[5:5 + classes]
  mean_p = totals[5 + classes:5 + 2 * classes] / count
  class_count, class_correct = totals[5 + 2 * classes:5 + 3 * classes], totals[5 + 3 * classes:]
  names = dataset.label_names()
  information = -(mean_p * np.log(np.maximum(mean_p, 1e-300))).sum() - entropy / count
  return {'top1': 100.0 * correct1 / count, 'top5': 100.0 * correct5 / count, 'loss': loss / count,
          'count': int(count), 'majority_class': int(per_class.argmax()),
          'majority_fraction': float(per_class.max() / count),
          'prediction_information': float(max(information, 0.0) / math.log(classes)),
          'per_class_top1': {name: 100.0 * correct / n if n else None
                             for name, correct, n in zip(names, class_correct.tolist(), class_count.tolist())},
          'per_class_count': dict(zip(names, map(int, class_count.tolist())))}


@paddle.no_grad()
def predict(model, dataset, config, autocast=contextlib.nullcontext):
  """(names, predicted labels) for every sample, in dataset order."""
  if len(dataset) == 0:
    raise ValueError(f'{config.data.name}: the split to predict holds no images')
  model.eval()
  labels = []
  batches = pipeline.EvalBatches(len(dataset), config.eval.batch_size)
  for images, _ in pipeline.loader(dataset, batches, config.data.num_workers):
    with autocast():
      logits = model(pipeline.to_model_input(images, config.data))
    labels.append(logits.astype('float32').argmax(axis=1))
  names = dataset.names or [str(i) for i in range(len(dataset))]
  return names, paddle.concat(labels).numpy()


def write_json(path, values):
  write_atomic(path, json.dumps(values, indent=1))


def write_predictions(path, names, classes):
  """One `filename,class` line per image, no header (the Cat-12 submission format, whose classes are numbers)."""
  rows = io.StringIO()
  csv.writer(rows, lineterminator='\n').writerows(zip(names, classes))
  write_atomic(path, rows.getvalue())


def run_eval(config, workdir, checkpoint_path='', split='', output=''):
  """The eval mode: top-1, top-5 and loss of the best checkpoint (or `checkpoint_path`) on `split` (default
  config.eval.split), printed, then written to `output` (default <workdir>/eval_<split>.json)."""
  split = split or config.eval.split
  if output:  # (the default, in the workdir, may be read-only: the metrics are printed first)
    _check_output_file(output)
  model, path, update, dataset, precision = _trained_model(config, workdir, checkpoint_path, split)
  print(f'eval: checkpoint {path} (update {update}) on {config.data.name} {split} ({len(dataset)} samples)')
  metrics = dict(evaluate(model, dataset, config, split=split, autocast=precision.autocast), checkpoint=path,
                 update=update, split=split, precision=precision.name)
  print(f'top1 {metrics["top1"]:.2f}%  top5 {metrics["top5"]:.2f}%  loss {metrics["loss"]:.4f}  '
        f'({metrics["count"]} samples)')
  print(per_class_lines(metrics))
  _write_after_printing(lambda p: write_json(p, metrics), output or os.path.join(workdir, f'eval_{split}.json'),
                        'metrics')


def per_class_lines(metrics, shown=30):
  """Top-1 per class, one class a line; of many classes, the `shown` lowest."""
  rows = [(name, top1, metrics['per_class_count'][name]) for name, top1 in metrics['per_class_top1'].items()
          if top1 is not None]
  title = 'top1 per class (samples)'
  if len(rows) > shown:
    rows, title = sorted(rows, key=lambda row: row[1])[:shown], f'top1 of the {shown} lowest classes (samples)'
  return '\n'.join([title + ':'] + [f'  {top1:6.2f}%  {name} ({n})' for name, top1, n in rows])


def run_predict(config, workdir, checkpoint_path='', split='', output=''):
  """The predict mode: one `filename,class name` line per image of `split` (default test) -> `output` (default
  <workdir>/result.csv). Class names are the checkpoint's (a dataset without names: the label numbers)."""
  split = split or 'test'
  output = output or os.path.join(workdir, 'result.csv')
  _check_output_file(output)  # the predictions are the result: make sure they can be written first
  model, path, update, dataset, precision = _trained_model(config, workdir, checkpoint_path, split)
  print(f'predict: checkpoint {path} (update {update}) on {config.data.name} {split} ({len(dataset)} images)')
  names, labels = predict(model, dataset, config, autocast=precision.autocast)
  classes = [dataset.label_names()[label] for label in labels.tolist()]
  counts = sorted(collections.Counter(labels.tolist()).items())
  print(f'{len(names)} predictions; images per predicted class: '
        + ', '.join(f'{dataset.label_names()[c]}: {n}' for c, n in counts))
  _write_after_printing(lambda p: write_predictions(p, names, classes), output, 'predictions')


def _trained_model(config, workdir, checkpoint_path, split):
  """(model in the run's precision, checkpoint path, its update, dataset of `split`, Precision)."""
  check_config(config, world_size=1)
  path = workdir_lib.checkpoint_to_read(workdir, checkpoint_path)
  precision = Precision(config.train)  # the run's precision, as its evaluations during training
  model, manifest = models.load_trained(config.model, path, precision)
  dataset = data.build(config.data, split, manifest.class_names)
  models.check_fits(manifest, config.model, path, dataset.num_classes)
  return model, path, manifest.update, dataset, precision


def _check_output_file(path):
  """Fail before the work when `path` could not be written (a folder, or under one that cannot be)."""
  if os.path.isdir(path):
    raise ValueError(f'--output {os.path.abspath(path)} is a folder: name a file')
  workdir_lib.check_writable(os.path.dirname(os.path.abspath(path)), what='the output folder')


def _write_after_printing(write, path, what):
  """The numbers are on the screen already: a failed write names the file and loses nothing else."""
  try:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write(path)
  except OSError as err:
    sys.exit(f'error: {what} not written to {os.path.abspath(path)}: {err.strerror or err}; the results above '
             f'are complete (--output writes them elsewhere)')
  print(f'{what} written to {path}')
