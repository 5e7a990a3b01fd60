"""Baseline of configs/resnet50_cat12_rdrop.py: the same ResNet50 recipe on Cat-12 without R-Drop.

  python main.py --config configs/resnet50_cat12.py --workdir runs/resnet50_cat12
  python main.py --mode predict --workdir runs/resnet50_cat12      # -> runs/resnet50_cat12/result.csv

Takes the same arguments: 'scratch' (ResNet18 at 64 px from random weights) and 'smoke'.
"""
from configs import resnet50_cat12_rdrop


def get_config(arg=''):
  c = resnet50_cat12_rdrop.get_config(arg)
  c.experiment = c.experiment.removesuffix('_rdrop')
  c.rdrop.alpha = 0.0
  return c
