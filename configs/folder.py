"""Your own images, a folder per class or PaddleClas list files (data/folder.py), with or without R-Drop.

  python main.py --config configs/folder.py --workdir runs/pets --config.data.root=PATH [--config.rdrop.alpha=1]

PATH holds train/<class>/<image> and val/<class>/<image> (without val/, a seeded tenth of train is the val
split), or list files: --config.data.train_list=train.txt [--config.data.val_list=val.txt]. The model is a
backbone of Paddle's zoo with dropout before a new head: --config.model.variant=resnet50 (any of
models/zoo.py), --config.model.pretrained=imagenet (Paddle's published weights, downloaded only then) or a
local .pdparams, --config.model.dropout=0.2 (what R-Drop acts on). docs/your-data.md has the rest.

Arguments (comma-separated): 'vit' (our ViT, models/vit.py) or 'resnet' (the Cat-12 ResNet with its
dropout head, models/resnet.py) instead of the zoo; 'digits' for the recipe measured in
docs/your-data.md on scikit-learn's digits written as PNG files (tools/digits_folder.py): 8 px, a tiny ViT
and the offline demo's optimiser; 'smoke' for a few tiny updates.
"""
from configs import base, digits_vit_rdrop, resnet50_cat12_rdrop

OPTIONS = ('vit', 'resnet', 'digits', 'smoke')


def get_config(arg=''):
  options = base.arguments(arg, OPTIONS)
  c = base.get_base_config()
  c.experiment = 'folder'
  c.data.name = 'folder'
  c.data.root = ''            # required: the folder holding train/ (and val/, test/) or the list files
  c.data.train_dir = 'train'
  c.data.val_dir = 'val'
  c.data.test_dir = 'test'
  c.data.train_list = ''      # `<path> <label>` lines, paths relative to data.root: replace train/ and val/
  c.data.val_list = ''
  c.data.val_fraction = 0.1   # without val/ or val_list: this share of each class of train is held out
  c.data.split_seed = 0       # chooses that share; not the training seed, so every seed is tested alike
  c.data.img_size = 224
  c.data.augment = 'crop_flip'  # RandomResizedCrop + horizontal flip for training | 'none'
  c.data.min_crop = 0.08      # RandomResizedCrop's smallest area share
  c.data.crop_fraction = 0.875  # eval: resize the shorter side to img_size / crop_fraction, center-crop img_size
  c.data.mean = (0.485, 0.456, 0.406)  # ImageNet's, as Paddle's zoo weights were trained with
  c.data.std = (0.229, 0.224, 0.225)

  c.train.batch_size = 64
  c.train.epochs = 10.0
  c.train.optimizer = 'momentum'
  c.train.lr = 0.01
  c.train.weight_decay = 1e-4
  c.train.schedule = 'cosine'
  c.train.warmup_epochs = 1.0
  c.train.eval_every = 0      # once per epoch
  c.train.checkpoint_every = 0

  c.rdrop.alpha = 0.0         # 1.0 (e.g.): R-Drop
  c.eval.split = 'val'
  c.eval.batch_size = 64
  if 'vit' in options:
    base.use_vit(c, 'ViT-B_16')
  elif 'resnet' in options:
    c.model = resnet50_cat12_rdrop.get_config().model
    c.model.backbone_weights = ''  # random weights; Paddle's ImageNet file: 'download' or its path
  elif 'digits' in options:
    use_digits(c)
  else:
    use_zoo(c)
  if 'smoke' in options:
    base.shrink_for_smoke(c)
    c.data.img_size = min(c.data.img_size, 32)
  return c


def use_zoo(c, variant='resnet18'):
  c.model.name = 'zoo'
  c.model.variant = variant
  c.model.dropout = 0.2       # before the new head: without it R-Drop's KL term is 0
  c.model.pretrained = ''     # '' random weights | 'imagenet' | a local .pdparams of the zoo network
  return c


def use_digits(c):
  """The offline demo's tiny ViT and optimiser (configs/digits_vit_rdrop.py) on its digits written as files."""
  demo = digits_vit_rdrop.get_config()
  c.experiment = 'digits_folder'
  c.data.img_size = 8
  c.data.augment = 'none'
  c.data.crop_fraction = 1.0
  c.data.mean, c.data.std = (0.5,) * 3, (0.5,) * 3
  base.use_vit(c, demo.model.variant)
  c.train, c.eval = demo.train, demo.eval
  c.eval.split = 'val'
  c.rdrop = demo.rdrop
  c.rdrop.alpha = 0.0
  return c
