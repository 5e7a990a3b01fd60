"""ResNet50 + R-Drop on Cat-12, the source notebook's recipe (docs/SOURCES.md, "ResNet50 + R-Drop on Cat-12").

Data: `datasets/cat12/` holding `train_list.txt`, `cat_12_train/`, `cat_12_test/`; ImageNet weights:
`weights/resnet50.pdparams` (Paddle's, https://paddle-hapi.bj.bcebos.com/models/resnet50.pdparams), or
`--config.model.backbone_weights=download` to fetch them into ~/.cache/paddle/hapi/weights/.

  python main.py --config configs/resnet50_cat12_rdrop.py --workdir runs/resnet50_cat12_rdrop
  python main.py --mode predict --workdir runs/resnet50_cat12_rdrop      # -> runs/resnet50_cat12_rdrop/result.csv

The baseline is configs/resnet50_cat12.py. The source reports no accuracy on held-out data for this
recipe, so reference.top1 is 0: there is no number to reproduce, only the comparison with the baseline.
"""
from configs import base


def get_config(arg=''):
  c = base.get_base_config()
  c.experiment = 'resnet50_cat12_rdrop'
  c.data.name = 'cat12'
  c.data.root = 'datasets/cat12'
  c.data.list_file = 'train_list.txt'
  c.data.test_dir = 'cat_12_test'
  c.data.val_every = 10       # every 10th line of the list is the validation set, as in the source
  c.data.img_size = 224
  c.data.resize = 250         # train: resize to this square, then center-crop img_size
  c.data.mean = (0.5, 0.5, 0.5)  # (x - 127.5) / 127.5
  c.data.std = (0.5, 0.5, 0.5)

  c.model.name = 'resnet'
  c.model.depth = 50
  c.model.head_width = 128
  c.model.head_dropout = 0.3
  c.model.backbone_weights = 'weights/resnet50.pdparams'  # '' = random init, 'download' = Paddle's cache

  c.train.batch_size = 32
  c.train.updates = 0
  c.train.epochs = 30.0
  c.train.optimizer = 'momentum'
  c.train.momentum = 0.9
  c.train.lr = 3e-5
  # The source's PolynomialDecay(decay_steps=20, end_lr=lr/30), counted here in updates: the lr reaches
  # lr/30 after 20 of the 1800 updates (60 per epoch) and stays there. Had the source stepped it once
  # per epoch, the equivalent would be decay_updates=1200.
  c.train.schedule = 'polynomial'
  c.train.decay_updates = 20
  c.train.end_lr_ratio = 1 / 30
  c.train.weight_decay = 1e-2
  c.train.eval_every = 0       # once per epoch
  c.train.checkpoint_every = 0
  c.train.log_every = 10

  c.rdrop.alpha = 5.0
  # The source most plausibly used the R-Drop README's compute_kl_loss (as paddlenlp's RDropLoss does):
  # both KLs summed over batch and classes and halved, beside the mean of the two CEs. That loss is half
  # of this code's 'sum' reduction at the same alpha, and at batch 32 its alpha 5 weighs the KL as alpha
  # 5 * 32 = 160 would here with 'batchmean'. We keep 'batchmean' with alpha 5 (docs/SOURCES.md quotes
  # the notebook's own loss), so that the objective does not change with the batch split.
  c.rdrop.reduction = 'batchmean'

  c.eval.split = 'val'
  c.eval.batch_size = 64

  c.reference.top1 = 0.0
  c.reference.source = 'Cat-12 ResNet50 + R-Drop notebook (docs/SOURCES.md): no held-out accuracy reported'
  if base.smoke_only(arg):
    base.shrink_for_smoke(c)
    c.model.depth = 18
    c.model.backbone_weights = ''
    c.data.img_size = 32
    c.data.resize = 36
    c.data.val_every = 2
  return c
