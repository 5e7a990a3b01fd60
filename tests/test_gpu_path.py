"""What a desk check of the GPU path found (issue: the first GPU run works), each settled by a rule tested here."""
import itertools

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from configs import base, vit_b16_cifar100_rdrop
from data import pipeline
from training import optim
from training.precision import Precision
from utils import checkpoint

PRECISIONS = {'fp32': ('fp32', 'O1'), 'fp16 O2': ('fp16', 'O2'), 'bf16 O2': ('bf16', 'O2')}


@pytest.mark.parametrize('mean,std', [((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
                                      ((0.0,), (1.0,))])
def test_normalisation_uses_cudnns_smallest_epsilon_and_gives_the_same_values_as_without(monkeypatch, mean, std):
  """Paddle's GPU batch_norm raises an epsilon below cuDNN's 1e-5 to it and logs an error on every call."""
  epsilons = []
  real = F.batch_norm
  monkeypatch.setattr(F, 'batch_norm', lambda *args, **kw: epsilons.append(kw['epsilon']) or real(*args, **kw))
  images = paddle.to_tensor(np.random.default_rng(0).integers(0, 256, (2, len(mean), 5, 5), dtype=np.uint8))
  config = base.get_base_config().data
  config.update(mean=mean, std=std)
  normalised = pipeline.to_model_input(images, config).numpy()
  assert epsilons and min(epsilons) >= 1e-5
  exact = real(images.astype('float32'), paddle.to_tensor([255.0 * m for m in mean]),
               paddle.to_tensor([(255.0 * s) ** 2 for s in std]), training=False, epsilon=0.0).numpy()
  assert np.array_equal(normalised, exact)
  expected = (images.numpy() / 255.0 - np.reshape(mean, (1, -1, 1, 1))) / np.reshape(std, (1, -1, 1, 1))
  np.testing.assert_allclose(normalised, expected, rtol=1e-5, atol=1e-5)


def _trainer(precision, optimizer):
  """A layer norm and a linear layer with the recipe's optimizer in `precision`, as a fresh process builds them."""
  tc = vit_b16_cifar100_rdrop.get_config().train
  tc.precision, tc.amp_level = PRECISIONS[precision]
  tc.optimizer = optimizer
  amp = Precision(tc, log=pytest.fail)
  with paddle.utils.unique_name.guard():  # the parameter names of a fresh process
    paddle.seed(0)
    model = paddle.nn.Sequential(paddle.nn.Linear(3, 4), paddle.nn.LayerNorm(4))
    opt, _ = optim.build(tc, model.parameters(), tc.updates)
    model, opt = amp.decorate(model, opt)
  return model, opt, amp


def _first_update_accumulators(opt, model):
  """What the first update does before its kernels run: the optimizer creates (or, after set_state_dict,
  loads) its accumulators; here without a kernel, which the CPU lacks for half precision."""
  with paddle.utils.unique_name.guard():  # the accumulator names of a fresh process
    opt._create_accumulators(paddle.static.default_main_program().global_block(), model.parameters())


def _accumulators(opt, model):
  """{(parameter, accumulator): float32 values}, found through Paddle's own tables, not through names."""
  owner = {param.name: key for key, param in model.named_parameters()}
  owner.update({master.name: owner[name] for name, master in getattr(opt, '_master_weights', {}).items()})
  return {(owner[tensor], kind): value.astype('float32').numpy()
          for kind, table in opt._accumulators.items() for tensor, value in table.items()}


@pytest.mark.parametrize('optimizer', ['momentum', 'adamw'])
@pytest.mark.parametrize('saved,resumed', [pair for pair in itertools.permutations(PRECISIONS, 2)])
def test_the_optimizer_state_carries_over_to_a_resume_in_another_precision(amp_standin, optimizer, saved, resumed):
  """fp16 O2 -> bf16 O2 is what the fp16 overflow error advises: layer norms gain a master copy there."""
  model, opt, _ = _trainer(saved, optimizer)
  _first_update_accumulators(opt, model)
  rng = np.random.default_rng(0)
  for table in opt._accumulators.values():
    for value in table.values():
      value.set_value(paddle.to_tensor(rng.normal(size=value.shape)).astype(value.dtype))
  expected = _accumulators(opt, model)
  state = opt.state_dict()
  weights = checkpoint.float32_weights(model.state_dict(), state.get('master_weights'))

  model, opt, amp = _trainer(resumed, optimizer)
  opt.set_state_dict(amp.optimizer_state(state, model, weights))
  _first_update_accumulators(opt, model)  # Paddle's "Optimizer set error, ... should in state dict" before
  got = _accumulators(opt, model)
  assert got.keys() == expected.keys()
  for key, value in expected.items():
    assert np.array_equal(got[key], value), key
  masters = getattr(opt, '_master_weights', {})
  assert {p.name for p in model.parameters() if p.dtype != paddle.float32} == set(masters)
  for key, param in model.named_parameters():
    if param.name in masters:
      assert np.array_equal(masters[param.name].numpy(), weights[key].numpy()), key
