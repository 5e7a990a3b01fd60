"""What a desk check of the GPU path found (issue: the first GPU run works), each settled by a rule tested here."""
import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from configs import base
from data import pipeline


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
