"""Evaluation and prediction: top-1, top-5 and loss of a model on a split; `filename,label` CSVs.

Under `paddle.distributed.launch` every rank evaluates its own shard without padding duplicates and
the sums are all-reduced, so accuracy is exact for any dataset size and any number of processes.
"""
import csv
import io
import json

import paddle
import paddle.nn.functional as F

from data import pipeline
from utils import distributed
from utils.workdir import write_atomic


@paddle.no_grad()
def evaluate(model, dataset, config, rank=0, world_size=1, split=''):
  """{'top1', 'top5', 'loss', 'count', 'majority_class', 'majority_fraction'}, accuracies in percent.

  `majority_fraction` is the share of samples predicted as the most frequent predicted class (1/C for a
  balanced classifier, 1.0 for one that predicts one class for everything: see train.collapse_warning).
  Sums and the histogram of predictions stay on the device until the end.
  """
  split = split or config.eval.split
  if len(dataset) == 0:
    raise ValueError(f'the {split!r} split of {config.data.name} is empty: nothing to evaluate')
  if not dataset.labelled:
    raise ValueError(f'the {split!r} split of {config.data.name} has no labels: use --mode predict')
  was_training = model.training
  model.eval()
  classes = dataset.num_classes
  # correct@1, correct@5, summed loss, count, then the number of predictions of each class
  sums = paddle.zeros([4 + classes], dtype='float64')
  batches = pipeline.EvalBatches(len(dataset), config.eval.batch_size, rank, world_size)
  for images, labels in pipeline.loader(dataset, batches, config.data.num_workers):
    logits = model(pipeline.to_model_input(images, config.data)).astype('float32')
    k = min(5, logits.shape[1])
    top = paddle.topk(logits, k, axis=1)[1]
    hits = (top == labels.unsqueeze(1)).astype('float64')
    loss = F.cross_entropy(logits, labels, reduction='sum').astype('float64')
    predicted = F.one_hot(top[:, 0], classes).sum(axis=0).astype('float64')  # one_hot: no host sync, unlike bincount
    sums += paddle.concat([paddle.stack([hits[:, 0].sum(), hits.sum(), loss,
                                         paddle.to_tensor(len(labels), dtype='float64')]), predicted])
  distributed.all_reduce_sum(sums, world_size)
  model.train(was_training)
  totals = sums.numpy()
  (correct1, correct5, loss, count), per_class = totals[:4].tolist(), totals[4:]
  return {'top1': 100.0 * correct1 / count, 'top5': 100.0 * correct5 / count, 'loss': loss / count,
          'count': int(count), 'majority_class': int(per_class.argmax()),
          'majority_fraction': float(per_class.max() / count)}


@paddle.no_grad()
def predict(model, dataset, config):
  """(names, predicted labels) for every sample, in dataset order."""
  if len(dataset) == 0:
    raise ValueError(f'{config.data.name}: the split to predict holds no images')
  model.eval()
  labels = []
  batches = pipeline.EvalBatches(len(dataset), config.eval.batch_size)
  for images, _ in pipeline.loader(dataset, batches, config.data.num_workers):
    labels.append(model(pipeline.to_model_input(images, config.data)).argmax(axis=1))
  names = dataset.names or [str(i) for i in range(len(dataset))]
  return names, paddle.concat(labels).numpy()


def write_json(path, values):
  write_atomic(path, json.dumps(values, indent=1))


def write_predictions(path, names, labels):
  """One `filename,label` line per image, no header (the Cat-12 submission format)."""
  rows = io.StringIO()
  csv.writer(rows, lineterminator='\n').writerows(zip(names, labels.tolist()))
  write_atomic(path, rows.getvalue())
