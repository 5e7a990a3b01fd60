"""DropBlock on a small CNN, CIFAR-10 (docs/SOURCES.md, DropBlock): DropBlock(5, 0.9) after conv3, or none.

  python main.py --config configs/dropblock_cnn_cifar10.py --workdir runs/cnn_dropblock \\
      --config.data.root=/path/to/cifar-10-python.tar.gz
  python main.py --config configs/dropblock_cnn_cifar10.py:none --workdir runs/cnn_plain \\
      --config.data.root=/path/to/cifar-10-python.tar.gz

Arguments (comma-separated): '' with DropBlock, 'none' without it, 'smoke' a few tiny updates.
Source article (one run each, 3 epochs): test accuracy about 65.6% with DropBlock, 64.4% without.
About 0.35 s per update on 2 busy CPU cores (DropBlock adds ~6%): 2343 updates, about 14 min.
Ours: not measured yet. `--config.rdrop.alpha=1.0` adds R-Drop; DropBlock is then its only randomness.
"""
import ml_collections

from configs import base

VARIANTS = ('none', 'smoke')


def get_config(arg=''):
  variants = [v for v in arg.split(',') if v]
  for variant in variants:
    if variant not in VARIANTS:
      raise ValueError(f'unknown argument {variant!r}; '
                       f'choose from {VARIANTS} (empty = with DropBlock)')
  with_dropblock = 'none' not in variants
  c = base.get_base_config()
  c.experiment = 'dropblock_cnn_cifar10' if with_dropblock else 'cnn_cifar10'

  # the article trains on the plain 32x32 images
  base.use_cifar(c, classes=10)
  c.data.mean = (0.0, 0.0, 0.0)  # the article's ToTensor() alone: pixels in [0, 1], no normalisation
  c.data.std = (1.0, 1.0, 1.0)

  c.model.name = 'cnn'
  c.model.in_channels = 3
  c.model.img_size = c.data.get_ref('img_size')
  c.model.dropblock = ml_collections.ConfigDict()
  c.model.dropblock.block_size = 5
  c.model.dropblock.keep_prob = 0.9 if with_dropblock else 1.0  # 1.0: no DropBlock layer at all
  # The article keeps keep_prob fixed; the paper ramps it from 1.0 (e.g. ramp_updates = all updates).
  c.model.dropblock.ramp_updates = 0

  c.train.batch_size = 64
  c.train.epochs = 3.0
  c.train.optimizer = 'adam'
  c.train.lr = 1e-3
  c.train.schedule = 'constant'
  c.train.log_every = 50
  c.train.eval_every = 0      # once per epoch
  c.eval.batch_size = 500

  c.reference.top1 = 65.6 if with_dropblock else 64.4
  c.reference.source = ('DropBlock source article, 4-conv CNN on CIFAR-10, 3 epochs, one run '
                        f'({"with DropBlock(5, 0.9)" if with_dropblock else "without DropBlock"})')
  if 'smoke' in variants:
    base.shrink_for_smoke(c)
  return c
