"""The LeNet-5 dropout ablation on CIFAR-10 (docs/SOURCES.md, Dropout on LeNet-5): networks A, B, C, D.

  python main.py --config configs/lenet5_cifar10.py:B --workdir runs/lenet5_B \\
      --config.data.root=/path/to/cifar-10-python.tar.gz

Arguments (comma-separated): one network, A (no dropout, the default), B (Dropout on the FC layers), C (Dropout2D on
the convs) or D (both), all p = 0.5; 'smoke' for a few tiny updates.
Source article, best test accuracy over 1000 epochs: A 60.45%, B 61.47%; C and D did not train well
(train accuracy 57.04% and 50.93%, no test number). 195,000 updates: about 0.15 s each on 2 busy CPU
cores, so about 8 h plus an evaluation per epoch. Ours: not measured yet.
`--config.rdrop.alpha=1.0` adds R-Drop (network A has no dropout, so its KL term stays 0).
"""
from configs import base

NETWORKS = {  # network: (fc_dropout, conv_dropout, reference test top-1 or 0, source's words)
    'A': (0.0, 0.0, 60.45, 'best test acc 60.45%'),
    'B': (0.5, 0.0, 61.47, 'best test acc 61.47%'),
    'C': (0.0, 0.5, 0.0, 'did not train well: train acc 57.04%'),
    'D': (0.5, 0.5, 0.0, 'did not train well: train acc 50.93%'),
}


def get_config(arg=''):
  variants = [v for v in arg.split(',') if v]
  networks = [v for v in variants if v in NETWORKS] or ['A']
  unknown = [v for v in variants if v not in NETWORKS and v != 'smoke']
  if unknown or len(networks) > 1:
    raise ValueError(f'argument {arg!r}: give one network of {sorted(NETWORKS)} (default A), '
                     f'optionally with ",smoke"{"; unknown " + repr(unknown) if unknown else ""}')
  network = networks[0]
  fc_dropout, conv_dropout, top1, said = NETWORKS[network]
  c = base.get_base_config()
  c.experiment = f'lenet5_cifar10_{network}'

  base.use_cifar(c, classes=10)

  c.model.name = 'lenet'
  c.model.in_channels = 3
  c.model.img_size = c.data.get_ref('img_size')
  c.model.fc_dropout = fc_dropout
  c.model.conv_dropout = conv_dropout

  c.train.batch_size = 256
  c.train.epochs = 1000.0
  c.train.optimizer = 'momentum'
  c.train.lr = 1e-2
  c.train.momentum = 0.9
  # The article's StepLR halves the lr every 150 epochs; the loop counts updates (last partial batch dropped).
  c.train.schedule = 'step'
  c.train.step_gamma = 0.5
  c.train.decay_epochs = 150.0
  c.train.log_every = 100
  c.train.eval_every = 0      # once per epoch: the article reports the best epoch's test accuracy
  c.train.checkpoint_every = 0
  c.eval.batch_size = 1000

  c.reference.top1 = top1
  c.reference.source = f'LeNet-5 dropout article, CIFAR-10, network {network}: {said}'
  if 'smoke' in variants:
    base.shrink_for_smoke(c)
  return c
