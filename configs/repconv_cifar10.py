"""A small RepVGG-style network of RepConv blocks on CIFAR-10 (docs/SOURCES.md, RepConv fusion).

  python main.py --config configs/repconv_cifar10.py --workdir runs/repconv \\
      --config.data.root=/path/to/cifar-10-python.tar.gz
  python main.py --mode export --workdir runs/repconv    # fuses every block into one 3x3 conv first

Trains the multi-branch form (3x3 + 1x1 + identity, BatchNorm on each branch); evaluation and export may
use the fused form, which computes the same function. The source article shows the fusion identity, not
an accuracy, so there is no reference number; the recipe below is ours (SGD, cosine, 15 epochs), sized
for a CPU: about 0.9 s per update on 2 busy CPU cores, so about 1.5 h. Ours: not measured yet.
Argument 'smoke': a few tiny updates.
"""
from configs import base


def get_config(arg=''):
  variants = [v for v in arg.split(',') if v]
  if any(v != 'smoke' for v in variants):
    raise ValueError(f'unknown argument {arg!r}: the only one is "smoke" (a few tiny updates)')
  c = base.get_base_config()
  c.experiment = 'repconv_cifar10'

  base.use_cifar(c, classes=10)

  c.model.name = 'repconv'
  c.model.in_channels = 3
  c.model.widths = (16, 32, 64)
  c.model.blocks_per_stage = 2
  c.model.batch_norm = True

  c.train.batch_size = 128
  c.train.epochs = 15.0
  c.train.optimizer = 'momentum'
  c.train.lr = 0.1
  c.train.momentum = 0.9
  c.train.weight_decay = 5e-4
  c.train.schedule = 'cosine'
  c.train.warmup_epochs = 1.0   # BatchNorm statistics settle before the full lr
  c.train.log_every = 50
  c.train.eval_every = 0
  c.eval.batch_size = 500

  c.reference.source = 'none: the RepConv article demonstrates the fusion, not an accuracy'
  if 'smoke' in variants:
    base.shrink_for_smoke(c)
  return c
