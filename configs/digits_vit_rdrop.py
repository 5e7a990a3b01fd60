"""Offline demo: a tiny ViT with R-Drop on scikit-learn's digits (real 8x8 scans shipped with the package).

  python main.py --config configs/digits_vit_rdrop.py --workdir runs/digits_vit_rdrop

`bash run.sh demo` trains it beside the baseline (configs/digits_vit.py) and reports both test accuracies;
README.md gives the measured accuracies and wall times.
"""
from configs import base


def get_config(arg=''):
  c = base.get_base_config()
  c.experiment = 'digits_vit_rdrop'
  c.data.name = 'digits'
  c.data.img_size = 8
  c.data.mean = (0.5,)
  c.data.std = (0.5,)
  c.data.num_workers = 0  # the whole set is a 1 MB array in memory

  base.use_vit(c, 'ViT-Ti_2', in_channels=1)

  c.train.batch_size = 64
  c.train.updates = 600
  c.train.optimizer = 'adamw'
  c.train.lr = 3e-3
  c.train.weight_decay = 0.05
  c.train.clip_grad_norm = 1.0
  c.train.warmup_updates = 50
  c.train.schedule = 'cosine'
  c.train.log_every = 20
  c.train.eval_every = 100
  c.train.checkpoint_every = 100

  c.rdrop.alpha = 1.0
  c.rdrop.reduction = 'batchmean'
  c.eval.batch_size = 360
  if base.smoke_only(arg):
    base.shrink_for_smoke(c)
  return c
