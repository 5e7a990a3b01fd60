"""R-Drop's cost: time per update with R-Drop over the same update without it (same model, same batch).

Two forward/backward passes per sample make 2.0 the compute floor. 'concat' runs one pass on [x; x],
'twice' calls the model twice (the authors' code); both are timed against plain training, interleaved,
each an update as training runs it (bench/common.update_step).
"""
from bench import common  # before Paddle: it sets the CPU threads as main.py does

import models
from configs import digits_vit_rdrop

FORMS = {'plain': {'rdrop.alpha': 0.0}, 'concat': {'rdrop.form': 'concat'}, 'twice': {'rdrop.form': 'twice'}}


def cases():
  """(name, config, classes) of the models timed."""
  demo = digits_vit_rdrop.get_config()
  yield 'demo: ViT-Ti_2, 8x8x1, batch 64', demo, 10
  small = common.small_recipe_config(root='')
  small.model.zero_head = False
  small.train.update({'batch_size': 8, 'accum_steps': 1, 'precision': 'fp32'})
  small.rdrop.update({'alpha': 1.0, 'reduction': 'batchmean'})
  yield 'ViT-Ti/16 x4 blocks, 224 px, batch 8', small, 100


def measure(config, classes, repeats, calls):
  """{form: seconds per update}, the forms sharing one model."""
  model = models.build(config.model, classes, config.seed, initial_weights=False)
  updates = {}
  for name, overrides in FORMS.items():
    form = config.copy_and_resolve_references()
    form.update_from_flattened_dict(overrides)
    updates[name] = common.per_call(common.update_step(form, classes, model)[0], calls)
  seconds = common.interleaved(updates, repeats)
  return {name: s / calls for name, s in seconds.items()}


def main():
  rows, results = [], {}
  for name, config, classes in cases():
    quick = config.data.img_size <= 32
    t = measure(config, classes, repeats=7 if quick else 4, calls=5 if quick else 2)
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
