"""The demo's baseline: configs/digits_vit_rdrop.py without R-Drop (one forward pass per sample).

  python main.py --config configs/digits_vit.py --workdir runs/digits_vit
"""
from configs import digits_vit_rdrop


def get_config(arg=''):
  c = digits_vit_rdrop.get_config(arg)
  c.experiment = 'digits_vit'
  c.rdrop.alpha = 0.0
  return c
