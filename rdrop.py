"""R-Drop (Liang et al. 2021, arXiv 2106.14448) as a loss around any classification model.

Each sample goes through the model twice with dropout on; besides the cross entropy of both passes,
the symmetric KL divergence between the two predicted distributions is penalised:
    loss = CE(p1, y) + CE(p2, y) + alpha * (KL(P1||P2) + KL(P2||P1))
with the authors' code's conventions (no 1/2 on either term, so code alpha 0.3 is paper alpha 0.6).

The two cross entropies add up, so at the same learning rate R-Drop's cross-entropy step is twice a
baseline's; `ce_of_passes='mean'` halves it for comparisons at equal lr (then the KL weighs twice as much
against the cross entropy at the same alpha).
"""
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

REDUCTIONS = ('sum', 'batchmean', 'mean')
CE_OF_PASSES = ('sum', 'mean')
FORMS = ('concat', 'twice')


def compute_kl_loss(p, q, reduction='sum'):
  """KL(P||Q) + KL(Q||P) for logits p, q of shape (N, C), reduced over samples and classes.

  'sum' adds over samples and classes, as the authors' code does (its weight then grows with the
  micro-batch size); 'batchmean' divides that by N and does not depend on how a batch is split; 'mean'
  averages over the 2 N C terms of both directions, i.e. 0.5 * (kl_div(A, B) + kl_div(B, A)) with Paddle's
  default reduction 'mean' (over samples and classes), as in the Cat-12 source notebook.
  Both directions use log-probabilities: the common `kl_div(softmax(a), softmax(b))` is wrong.
  """
  if reduction not in REDUCTIONS:
    raise ValueError(f'config.rdrop.reduction={reduction!r}: choose one of {REDUCTIONS}')
  log_p = F.log_softmax(p.astype('float32'), axis=-1)
  log_q = F.log_softmax(q.astype('float32'), axis=-1)
  # KL(P||Q) + KL(Q||P) = sum_c (P - Q)(log P - log Q): one pass over the logits instead of two.
  total = ((log_p.exp() - log_q.exp()) * (log_p - log_q)).sum()
  samples, classes = p.shape
  return total / {'sum': 1, 'batchmean': samples, 'mean': 2 * samples * classes}[reduction]


def rdrop_loss(model, images, labels, rdrop_config):
  """(loss, cross entropy, kl) of one micro-batch; alpha = 0 is plain training with one pass.

  The reported cross entropy is the mean of the two passes, comparable with a baseline's whatever
  `ce_of_passes` the loss uses.
  """
  rc = rdrop_config
  if rc.alpha == 0:
    ce = F.cross_entropy(model(images).astype('float32'), labels)
    return ce, ce, paddle.zeros([], dtype='float32')
  if rc.form == 'concat':  # the paper's form: one forward pass on [x; x]
    logits1, logits2 = model(paddle.concat([images, images])).astype('float32').split(2)
  elif rc.form == 'twice':  # the authors' code: two model calls
    logits1, logits2 = model(images).astype('float32'), model(images).astype('float32')
  else:
    raise ValueError(f'config.rdrop.form={rc.form!r}: choose one of {FORMS}')
  ce = F.cross_entropy(logits1, labels) + F.cross_entropy(logits2, labels)
  kl = compute_kl_loss(logits1, logits2, rc.reduction)
  return (ce if rc.ce_of_passes == 'sum' else ce / 2) + rc.alpha * kl, ce / 2, kl


def drops_anything(model):
  """Whether `model` holds a dropout (or DropBlock) layer that drops: without one both passes agree, the KL is 0."""
  return any((isinstance(layer, (nn.Dropout, nn.Dropout2D, nn.Dropout3D, nn.AlphaDropout)) and layer.p > 0)
             or getattr(layer, 'target_keep_prob', 1.0) < 1.0 for layer in model.sublayers())
