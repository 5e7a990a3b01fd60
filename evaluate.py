"""Evaluation and prediction: top-1, top-5 and loss of a model on a split; `filename,label` CSVs.

Under `paddle.distributed.launch` every rank evaluates its own shard without padding duplicates and
the sums are all-reduced, so accuracy is exact for any dataset size and any number of processes.
The model runs under the autocast of its precision (`autocast`: Precision.autocast), as in training:
an AMP O2 model holds half-precision weights and cannot run outside it; its logits are taken in float32.
"""
import contextlib
import csv
import io
import json
import math

import numpy as np
import paddle
import paddle.nn.functional as F

from data import pipeline
from utils import distributed
from utils.preemption import Interrupted
from utils.workdir import write_atomic


@paddle.no_grad()
def evaluate(model, dataset, config, rank=0, world_size=1, split='', autocast=contextlib.nullcontext,
             stop=None):
  """{'top1', 'top5', 'loss', 'count', 'majority_class', 'majority_fraction', 'prediction_information'}.

  Accuracies are in percent. Two measures of a collapsed model (see utils/collapse.py):
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
  # correct@1, correct@5, summed loss, count, summed entropy, then per class: predictions, summed probability
  sums = paddle.zeros([5 + 2 * classes], dtype='float64')
  batches = pipeline.EvalBatches(len(dataset), config.eval.batch_size, rank, world_size)
  for images, labels in pipeline.loader(dataset, batches, config.data.num_workers):
    if stop:
      raise Interrupted(stop.signum)
    with stop.working() if stop else contextlib.nullcontext(), autocast():
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
    count = paddle.to_tensor(len(labels), dtype='float64')
    sums += paddle.concat([paddle.stack([hits[:, 0].sum(), hits.sum(), loss, count, entropy]), predicted,
                           p.sum(axis=0)])
  distributed.all_reduce_sum(sums, world_size)
  model.train(was_training)
  totals = sums.numpy()
  (correct1, correct5, loss, count, entropy), per_class = totals[:5].tolist(), totals[5:5 + classes]
  mean_p = totals[5 + classes:] / count
  information = -(mean_p * np.log(np.maximum(mean_p, 1e-300))).sum() - entropy / count
  return {'top1': 100.0 * correct1 / count, 'top5': 100.0 * correct5 / count, 'loss': loss / count,
          'count': int(count), 'majority_class': int(per_class.argmax()),
          'majority_fraction': float(per_class.max() / count),
          'prediction_information': float(max(information, 0.0) / math.log(classes))}


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


def write_predictions(path, names, labels):
  """One `filename,label` line per image, no header (the Cat-12 submission format)."""
  rows = io.StringIO()
  csv.writer(rows, lineterminator='\n').writerows(zip(names, labels.tolist()))
  write_atomic(path, rows.getvalue())
