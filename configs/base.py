"""Shared defaults of every experiment; an experiment config changes only what differs.

Every field has a concrete type (no None) so that `--config.x=v` overrides are type-checked.
Durations: `train.updates` counts optimizer updates; when it is 0, `train.epochs` is converted
once into updates (see train.py). Batch sizes are global: all devices and accumulation steps together.
"""
import ml_collections

# Config fields that name, locate, pace or watch a run without changing what it learns. `--autoresume`
# continues a run whose command differs from its saved config only in these and in the weights files'
# paths (e.g. data on another machine); the report and VisualDL do not tell runs apart by them.
NOT_LEARNING = frozenset({
    'reference.top1', 'reference.source', 'data.root', 'data.num_workers', 'eval.batch_size', 'train.log_every',
    'train.eval_every', 'train.checkpoint_every', 'train.checkpoint_every_minutes', 'train.keep_checkpoints',
    'train.max_skipped_updates', 'eval.collapse_majority', 'eval.collapse_information', 'eval.stop_after_collapses'})


def get_base_config():
  c = ml_collections.ConfigDict()
  c.experiment = ''           # name used in logs and reports
  c.seed = 0

  c.model = ml_collections.ConfigDict()
  c.model.name = ''           # module in models/
  c.model.pretrained = ''     # local weights file; '' trains from scratch

  c.data = ml_collections.ConfigDict()
  c.data.name = ''            # module in data/
  c.data.root = ''            # where the dataset lives on disk
  c.data.img_size = 32
  # Normalisation runs on the device, on uint8 batches: 1/4 of the bytes of float32 to move.
  c.data.mean = (0.5, 0.5, 0.5)
  c.data.std = (0.5, 0.5, 0.5)
  c.data.num_workers = -1     # DataLoader processes per device: -1 one per core (shared among devices), 0 none

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 64     # global batch per optimizer update
  c.train.accum_steps = 1     # micro-batches per update; micro-batch = batch_size / (accum_steps * devices)
  c.train.keep_micro_batch = False  # True: devices share the accum_steps micro-batches of batch_size / accum_steps
  c.train.updates = 0
  c.train.epochs = 1.0
  c.train.optimizer = 'momentum'   # sgd | momentum | adam | adamw
  c.train.lr = 0.01
  c.train.momentum = 0.9
  c.train.weight_decay = 0.0
  c.train.clip_grad_norm = 0.0     # global-norm clipping; 0 disables
  c.train.schedule = 'cosine'      # constant | cosine | linear | polynomial | step
  c.train.warmup_updates = 0
  c.train.warmup_epochs = 0.0      # > 0: the warmup in epochs instead (converted once into updates)
  c.train.end_lr_ratio = 0.0       # final lr / lr for linear and polynomial
  c.train.decay_updates = 0        # update where the decay ends (step: the period); 0 = the whole run
  c.train.decay_epochs = 0.0       # > 0: the same in epochs
  c.train.poly_power = 1.0
  c.train.step_gamma = 0.5
  c.train.precision = 'fp32'       # fp32 | fp16 | bf16 (GPU only; a CPU runs fp32 and says so)
  c.train.amp_level = 'O1'         # O1: per-op casts; O2: half weights with fp32 master copies
  c.train.init_loss_scale = 2.0**15
  c.train.max_skipped_updates = 50  # consecutive fp16 overflow skips before the run stops
  c.train.log_every = 10
  c.train.eval_every = 100         # updates; 0 evaluates once per epoch
  c.train.checkpoint_every = 100   # updates; 0 checkpoints only at evaluations and at the end
  c.train.checkpoint_every_minutes = 30.0  # and once this long has passed since the last one (0: never):
                                          # a preemption loses at most this much work, whatever the model
  c.train.keep_checkpoints = 2     # newest N, plus the best

  c.rdrop = ml_collections.ConfigDict()
  c.rdrop.alpha = 0.0          # 0 = plain training with one forward pass
  c.rdrop.reduction = 'batchmean'  # of the KL: sum (the authors' code), batchmean (invariant to the batch
  #   split) or mean (over samples, classes and both directions: Paddle's kl_div default, the Cat-12 source)
  c.rdrop.ce_of_passes = 'sum'  # sum: CE(p1) + CE(p2) (authors; twice a baseline's step at the same lr) | mean
  c.rdrop.form = 'concat'      # concat: one pass on [x; x]; twice: two model calls (authors' code)

  c.eval = ml_collections.ConfigDict()
  c.eval.split = 'test'
  c.eval.batch_size = 128
  # An evaluation is flagged as collapsed (a warning, `collapsed` in metrics.jsonl) when one class takes at
  # least collapse_majority of the predictions, or when the predictions tell less than collapse_information
  # (mutual information with the image, as a fraction of ln C) about the image: the same output for every
  # image (0 turns either check off). After stop_after_collapses such evaluations in a row the run stops (0:
  # never); a model from random weights can start that way and recover. Cat-12 measurements behind 3e-4:
  # configs/resnet50_cat12_rdrop.py.
  c.eval.collapse_majority = 0.9
  c.eval.collapse_information = 3e-4
  c.eval.stop_after_collapses = 0

  c.reference = ml_collections.ConfigDict()
  c.reference.top1 = 0.0       # the source's reported test accuracy (%), 0 if none
  c.reference.source = ''
  return c


def smoke_only(arg):
  """True for 'smoke', False for ''; any other `get_config` argument is an error naming it."""
  if arg not in ('', 'smoke'):
    raise ValueError(f"unknown argument {arg!r}: the only one is 'smoke' (a few tiny updates)")
  return arg == 'smoke'


def arguments(arg, allowed):
  """The comma-separated arguments in `arg`, each one of `allowed`; unknown ones are an error naming them."""
  options = [option for option in arg.split(',') if option]
  unknown = [option for option in options if option not in allowed]
  if unknown:
    raise ValueError(f'unknown argument(s) {unknown}; the arguments are {allowed}, comma-separated')
  return options


def use_vit(c, variant, in_channels=3, zero_head=False, pretrained=''):
  """A Vision Transformer of models/vit.py (`variant`: 'ViT-B_16', ...) at config.data.img_size."""
  c.model.name = 'vit'
  c.model.variant = variant
  c.model.img_size = c.data.get_ref('img_size')
  c.model.in_channels = in_channels
  c.model.dropout_rate = 0.1           # the official ViT's, after the position embedding, GELU and fc2
  c.model.attention_dropout_rate = 0.0
  c.model.recompute = False   # True: recompute block activations in backward (less memory, ~1/3 more compute)
  c.model.zero_head = zero_head
  c.model.pretrained = pretrained
  return c


def use_cifar(c, classes, augment='none', img_size=32):
  """CIFAR-10 or CIFAR-100 from the official python tarball (data/cifar.py), by default under datasets/."""
  c.data.name = 'cifar'
  c.data.classes = classes
  c.data.root = f'datasets/cifar-{classes}-python.tar.gz'  # run.sh: $CIFAR10 / $CIFAR100
  c.data.download = False     # True lets Paddle fetch a missing tarball into its cache
  c.data.augment = augment    # 'rrc': RandomResizedCrop(scale 0.05..1) for training, Resize for test; 'none'
  c.data.img_size = img_size
  return c


def shrink_for_smoke(c):
  """A few tiny updates of the same experiment: for tests and `run.sh smoke`, never for results."""
  c.train.accum_steps = min(c.train.accum_steps, 2)
  c.train.batch_size = 4 * c.train.accum_steps
  c.train.updates = 2
  c.train.warmup_updates = min(c.train.warmup_updates, 1)
  c.train.log_every = 1
  c.train.eval_every = 2
  c.train.checkpoint_every = 2
  c.eval.batch_size = 8
  # Two updates from random weights tell nothing about collapse: predictions of one class are the rule there.
  c.eval.collapse_majority = 0.0
  c.eval.collapse_information = 0.0
  c.data.num_workers = 0
  c.model.pretrained = ''
  return c
