"""R-Drop's loss against a float64 NumPy reference, and the two forward forms against each other."""
import numpy as np
import paddle
import paddle.nn.functional as F
import pytest
from ml_collections import ConfigDict

from rdrop import compute_kl_loss, rdrop_loss


def _log_softmax(x):
  x = x - x.max(axis=1, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def _symmetric_kl_reference(a, b):
  """Per-sample KL(P||Q) + KL(Q||P) in float64."""
  log_p, log_q = _log_softmax(a.astype(np.float64)), _log_softmax(b.astype(np.float64))
  p, q = np.exp(log_p), np.exp(log_q)
  return (p * (log_p - log_q)).sum(axis=1) + (q * (log_q - log_p)).sum(axis=1)


@pytest.fixture
def logits():
  rng = np.random.default_rng(0)
  return rng.normal(size=(6, 10)).astype(np.float32) * 3, rng.normal(size=(6, 10)).astype(np.float32) * 3


def test_kl_sum_matches_float64_reference(logits):
  a, b = logits
  got = float(compute_kl_loss(paddle.to_tensor(a), paddle.to_tensor(b), 'sum'))
  assert got == pytest.approx(_symmetric_kl_reference(a, b).sum(), rel=1e-5)


def test_kl_batchmean_matches_float64_reference(logits):
  a, b = logits
  got = float(compute_kl_loss(paddle.to_tensor(a), paddle.to_tensor(b), 'batchmean'))
  assert got == pytest.approx(_symmetric_kl_reference(a, b).mean(), rel=1e-5)


def test_batchmean_does_not_depend_on_the_split_but_sum_does(logits):
  a, b = map(paddle.to_tensor, logits)
  whole = float(compute_kl_loss(a, b, 'batchmean'))
  halves = [float(compute_kl_loss(a[i:i + 3], b[i:i + 3], 'batchmean')) for i in (0, 3)]
  assert np.mean(halves) == pytest.approx(whole, rel=1e-5)
  sum_halves = [float(compute_kl_loss(a[i:i + 3], b[i:i + 3], 'sum')) for i in (0, 3)]
  assert np.mean(sum_halves) == pytest.approx(float(compute_kl_loss(a, b, 'sum')) / 2, rel=1e-5)


def test_the_common_wrong_form_gives_a_different_value(logits):
  """kl_div(softmax(a), softmax(b)) treats probabilities as log-probabilities."""
  a, b = map(paddle.to_tensor, logits)
  wrong = float(F.kl_div(F.softmax(a), F.softmax(b), reduction='sum') + F.kl_div(F.softmax(b), F.softmax(a),
                                                                                 reduction='sum'))
  right = float(compute_kl_loss(a, b, 'sum'))
  assert abs(wrong - right) > 0.1 * right


def test_kl_of_identical_logits_is_zero(logits):
  a = paddle.to_tensor(logits[0])
  assert float(compute_kl_loss(a, a, 'sum')) == pytest.approx(0.0, abs=1e-6)


def _paddle_kl_div_mean(log_input, label):
  """Paddle's F.kl_div(input, label) with its default reduction 'mean': over all N x C elements."""
  return np.mean(label * (np.log(label) - log_input))


def _cat12_source_kl(a, b):
  """The Cat-12 notebook's KL_loss, 0.5 * (kl_div(A, B) + kl_div(B, A)), with log-probabilities as input."""
  log_a, log_b = _log_softmax(a.astype(np.float64)), _log_softmax(b.astype(np.float64))
  return 0.5 * (_paddle_kl_div_mean(log_a, np.exp(log_b)) + _paddle_kl_div_mean(log_b, np.exp(log_a)))


def test_kl_mean_is_the_cat12_sources_term_with_the_log_fixed(logits):
  a, b = logits
  assert float(compute_kl_loss(paddle.to_tensor(a), paddle.to_tensor(b), 'mean')) == pytest.approx(
      _cat12_source_kl(a, b), rel=1e-5)
  assert _cat12_source_kl(a, b) == pytest.approx(_symmetric_kl_reference(a, b).sum() / (2 * a.size), rel=1e-12)
  # The transcription is what Paddle computes by default:
  a_, b_ = paddle.to_tensor(a), paddle.to_tensor(b)
  assert float(F.kl_div(F.log_softmax(a_), F.softmax(b_))) == pytest.approx(
      _paddle_kl_div_mean(_log_softmax(a.astype(np.float64)), np.exp(_log_softmax(b.astype(np.float64)))), rel=1e-5)


def test_unknown_reduction_is_named():
  a = paddle.zeros([2, 3])
  with pytest.raises(ValueError, match="reduction='average'"):
    compute_kl_loss(a, a, 'average')


class _CountingModel(paddle.nn.Layer):
  def __init__(self, dropout):
    super().__init__()
    self.fc = paddle.nn.Linear(4, 5)
    self.dropout = paddle.nn.Dropout(dropout)
    self.calls = 0

  def forward(self, x):
    self.calls += 1
    return self.fc(self.dropout(x))


def _config(alpha, form='concat', reduction='batchmean', ce_of_passes='sum'):
  return ConfigDict(dict(alpha=alpha, form=form, reduction=reduction, ce_of_passes=ce_of_passes))


def test_alpha_zero_is_one_plain_pass():
  paddle.seed(0)
  model, x, y = _CountingModel(0.0), paddle.randn([8, 4]), paddle.randint(0, 5, [8])
  loss, ce, kl = rdrop_loss(model, x, y, _config(0.0))
  assert model.calls == 1
  assert float(loss) == pytest.approx(float(F.cross_entropy(model.fc(x), y)), rel=1e-6)
  assert float(kl) == 0.0


@pytest.mark.parametrize('form,calls', [('concat', 1), ('twice', 2)])
def test_both_forms_compute_the_same_loss_without_dropout(form, calls):
  paddle.seed(0)
  model, x, y = _CountingModel(0.0), paddle.randn([8, 4]), paddle.randint(0, 5, [8])
  loss, ce, kl = rdrop_loss(model, x, y, _config(0.7, form))
  assert model.calls == calls
  assert float(kl) == pytest.approx(0.0, abs=1e-6)
  assert float(loss) == pytest.approx(2 * float(F.cross_entropy(model.fc(x), y)), rel=1e-6)


def test_dropout_makes_the_two_passes_differ_and_alpha_weights_the_kl():
  paddle.seed(0)
  model, x, y = _CountingModel(0.5), paddle.randn([8, 4]), paddle.randint(0, 5, [8])
  paddle.seed(1)
  loss, ce, kl = rdrop_loss(model, x, y, _config(2.0, reduction='sum'))
  assert float(kl) > 1e-3
  assert float(loss) == pytest.approx(2 * float(ce) + 2.0 * float(kl), rel=1e-5)


class _Scripted(paddle.nn.Layer):
  """Returns the given logits, one per call: the two passes of R-Drop's 'twice' form, chosen by the test."""

  def __init__(self, *outputs):
    super().__init__()
    self.outputs = list(outputs)

  def forward(self, x):
    return paddle.to_tensor(self.outputs.pop(0))


def _ce_reference(logits, labels):
  return -_log_softmax(logits.astype(np.float64))[np.arange(len(labels)), labels].mean()


@pytest.mark.parametrize('ce_of_passes, ce_weight', [('sum', 1.0), ('mean', 0.5)])
def test_cat12_source_loss_at_alpha_5_with_summed_or_averaged_cross_entropies(logits, ce_of_passes, ce_weight):
  """The notebook's loss = CE_A + CE_B + 5 * KL_loss; ce_of_passes='mean' halves the cross-entropy part."""
  a, b = logits
  labels = np.array([0, 3, 9, 1, 1, 7])
  loss, ce, kl = rdrop_loss(_Scripted(a, b), paddle.zeros([6, 1]), paddle.to_tensor(labels),
                            _config(5.0, 'twice', 'mean', ce_of_passes))
  both = _ce_reference(a, labels) + _ce_reference(b, labels)
  assert float(loss) == pytest.approx(ce_weight * both + 5.0 * _cat12_source_kl(a, b), rel=1e-5)
  assert float(ce) == pytest.approx(both / 2, rel=1e-5)  # reported as the mean of the passes either way


@pytest.mark.parametrize('ce_of_passes, ratio', [('sum', 2.0), ('mean', 1.0)])
def test_summed_cross_entropies_double_the_baselines_gradient_and_their_mean_matches_it(ce_of_passes, ratio):
  """Without dropout both passes agree (KL 0): R-Drop's step at the baseline's lr is 2x with 'sum', 1x with 'mean'."""
  x, y = paddle.randn([8, 4]), paddle.randint(0, 5, [8])
  gradients = []
  for config in (_config(0.0), _config(1.0, ce_of_passes=ce_of_passes)):
    paddle.seed(0)
    model = _CountingModel(0.0)
    rdrop_loss(model, x, y, config)[0].backward()
    gradients.append(model.fc.weight.grad.numpy())
  np.testing.assert_allclose(gradients[1], ratio * gradients[0], rtol=1e-5, atol=1e-7)


class _Leaves(paddle.nn.Layer):
  """Returns the logits `a` and `b` of the two passes as tensors that collect their gradients: stacked in one
  call for the 'concat' form, one per call for 'twice'."""

  def __init__(self, a, b, form):
    super().__init__()
    arrays = [np.concatenate([a, b])] if form == 'concat' else [a, b]
    self.passes = [paddle.to_tensor(array, stop_gradient=False) for array in arrays]
    self.outputs = list(self.passes)

  def forward(self, x):
    return self.outputs.pop(0)


def _symmetric_kl_gradient(a, b):
  """d/da of sum_n KL(P||Q) + KL(Q||P) in float64, for P = softmax(a), Q = softmax(b)."""
  log_p, log_q = _log_softmax(a.astype(np.float64)), _log_softmax(b.astype(np.float64))
  p, q = np.exp(log_p), np.exp(log_q)
  kl_pq = (p * (log_p - log_q)).sum(axis=1, keepdims=True)
  return p * (log_p - log_q) + p - q - p * kl_pq


@pytest.mark.parametrize('form', ['concat', 'twice'])
def test_the_kl_pulls_each_pass_toward_the_other_through_both(logits, form):
  """Each pass's gradient is its cross entropy's plus alpha times the KL's: neither pass is a fixed target."""
  a, b = logits
  labels = np.array([0, 3, 9, 1, 1, 7])
  model = _Leaves(a, b, form)
  loss, _, _ = rdrop_loss(model, paddle.zeros([6, 1]), paddle.to_tensor(labels), _config(0.7, form, 'sum'))
  loss.backward()
  gradients = np.concatenate([leaf.grad.numpy() for leaf in model.passes])
  for got, mine, other in ((gradients[:6], a, b), (gradients[6:], b, a)):
    cross_entropy = (np.exp(_log_softmax(mine.astype(np.float64))) - np.eye(10)[labels]) / len(labels)
    np.testing.assert_allclose(got, cross_entropy + 0.7 * _symmetric_kl_gradient(mine, other), rtol=1e-4, atol=1e-6)
