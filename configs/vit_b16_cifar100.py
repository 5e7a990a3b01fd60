"""The baseline of configs/vit_b16_cifar100_rdrop.py: the same fine-tuning without R-Drop (one pass).

  python main.py --config configs/vit_b16_cifar100.py --workdir runs/vit_b16_cifar100 \\
      --config.model.pretrained=/path/to/ViT-B_16.npz \\
      --config.data.root=/path/to/cifar-100-python.tar.gz

Paper (arXiv 2106.14448): 92.64% CIFAR-100 test top-1. Ours: not measured yet. Wall time: not measured yet
(one forward pass per sample instead of two, so roughly half of the R-Drop run's).
"""
from configs import vit_b16_cifar100_rdrop


def get_config(arg=''):
  c = vit_b16_cifar100_rdrop.get_config(arg)
  c.experiment = 'vit_b16_cifar100'
  c.rdrop.alpha = 0.0
  c.reference.top1 = 92.64
  c.reference.source = 'R-Drop paper (arXiv 2106.14448), ViT-B/16 on CIFAR-100 without R-Drop: 92.64'
  return c
