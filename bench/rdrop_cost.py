"""R-Drop's cost: time per update with R-Drop over the same update without it (same model, same batch).

Two forward/backward passes per sample make 2.0 the compute floor. 'concat' runs one pass on [x; x],
'twice' calls the model twice (the authors' code); both are timed against plain training, interleaved.
"""
import common  # before Paddle: it sets the CPU threads as main.py does

import ml_collections
import numpy as np
import paddle

from configs import digits_vit_rdrop
from models import vit
from training import optim
from rdrop import rdrop_loss


def update_fn(model, optimizer, images, labels, rdrop):
  def update():
    loss, _, _ = rdrop_loss(model, images, labels, rdrop)
    loss.backward()
    optimizer.step()
    optimizer.clear_grad()
  return update


def cases():
  """(name, model, train config, batch size, image shape, classes) of the models timed."""
  demo = digits_vit_rdrop.get_config()
  yield ('demo: ViT-Ti_2, 8x8x1, batch 64', vit.build(demo.model, 10), demo.train, demo.train.batch_size,
         (1, 8, 8), 10)
  small = vit.VisionTransformer(common.small_vit_config(), 224, 100, zero_head=False)
  yield ('ViT-Ti/16 x4 blocks, 224 px, batch 8', small, demo.train, 8, (3, 224, 224), 100)


def measure(model, train_config, batch, shape, classes, repeats, calls):
  optimizer, _ = optim.build(train_config, model.parameters(), 10_000)
  rng = np.random.default_rng(0)
  images = paddle.to_tensor(rng.standard_normal((batch, *shape)).astype('float32'))
  labels = paddle.to_tensor(rng.integers(0, classes, batch))
  model.train()
  forms = {'plain': ml_collections.ConfigDict({'alpha': 0.0, 'reduction': 'batchmean', 'form': 'concat'})}
  for form in ('concat', 'twice'):
    forms[form] = ml_collections.ConfigDict({'alpha': 1.0, 'reduction': 'batchmean', 'ce_of_passes': 'sum',
                                             'form': form})
  updates = {name: common.per_call(update_fn(model, optimizer, images, labels, rdrop), calls)
             for name, rdrop in forms.items()}
  seconds = common.interleaved(updates, repeats)
  return {name: s / calls for name, s in seconds.items()}


def main():
  rows, results = [], {}
  for name, model, train_config, batch, shape, classes in cases():
    quick = shape[-1] <= 32
    t = measure(model, train_config, batch, shape, classes, repeats=7 if quick else 4, calls=5 if quick else 2)
    results['demo' if quick else 'vit224'] = {'concat': t['concat'] / t['plain'], 'twice': t['twice'] / t['plain']}
    faster = 'concat' if t['concat'] <= t['twice'] else 'twice'
    rows.append((name, f'{1000 * t["plain"]:.1f}', f'{t["concat"] / t["plain"]:.2f}',
                 f'{t["twice"] / t["plain"]:.2f}', f'{faster}, by {abs(t["concat"] / t["twice"] - 1):.0%}'))
  print('### 1. R-Drop cost (time per update with R-Drop / without; compute floor 2.0)\n')
  print(common.table(['model, batch', 'plain ms/update', 'concat / plain', 'twice / plain', 'faster form'], rows))
  print('\nInterleaved in one process (plain, concat, twice, plain, ...), median of repeats; fp32 on the CPU.')
  common.save_results(results)


if __name__ == '__main__':
  main()
