"""From a dataset to device batches, resumable to the exact sample.

Why our own batch samplers rather than DataLoader(shuffle=True) or DistributedBatchSampler: those shuffle
with the global NumPy RNG or with `RandomState(epoch)` (ignoring the seed), and neither can start in the
middle of an epoch. Here the order of epoch e is a pure function of (seed, e), the position in the data is
a pure function of the number of micro-steps done, and every sample's augmentation is seeded by
(seed, epoch, index), so a resumed run sees exactly the batches, crops and flips of an uninterrupted
one, with any number of workers and any number of devices.
"""
import contextlib
import functools
import os
import random
import re
import shutil

import numpy as np
import paddle
import paddle.nn.functional as F

from utils import preemption, threads


class SeededDataset(paddle.io.Dataset):
  """Base of every dataset: `__getitem__((index, seed))` seeds the random transforms of one sample.

  Subclasses implement `__len__` and `sample(index) -> (uint8 CHW image, label)`.
  """
  num_classes = 0
  names = None      # one file name per sample, for predictions
  labelled = True   # False for an unlabelled test folder (labels are -1)
  left_out = ()     # files of the split that were left out (undecodable, not images, ...)
  class_names = None  # one name per label, when the dataset has names

  def label_names(self):
    """One name per label: the class names, or the labels' numbers for a dataset without names."""
    return list(self.class_names) if self.class_names else [str(i) for i in range(self.num_classes)]

  def __getitem__(self, key):
    index, seed = key
    # paddle.vision.transforms draw from Python's and NumPy's global RNGs.
    random.seed(seed)
    np.random.seed(seed)
    image, label = self.sample(index)
    return image, np.int64(label)

  def sample(self, index):
    raise NotImplementedError


def derived_seed(*keys):
  """A well-mixed 32-bit seed from integers, e.g. (seed, rank, update)."""
  return int(np.random.SeedSequence(list(keys)).generate_state(1)[0])


class TrainBatches(paddle.io.BatchSampler):
  """Endless shuffled micro-batches of one rank, starting after `start_micro_step` global micro-batches.

  A global micro-batch is `global_micro_batch` consecutive indices of the epoch's permutation; rank r
  takes its r-th slice, so the union over ranks is the single-device micro-batch. The last incomplete
  global micro-batch of an epoch is dropped.
  """

  def __init__(self, num_samples, global_micro_batch, seed, rank=0, world_size=1, start_micro_step=0):
    if num_samples < global_micro_batch:
      raise ValueError(f'the training set has {num_samples} samples, fewer than one micro-batch '
                       f'of {global_micro_batch} (train.batch_size / train.accum_steps)')
    self.num_samples = num_samples
    self.global_micro_batch = global_micro_batch
    self.batch_size = global_micro_batch // world_size  # this rank's share of each micro-batch
    self.seed, self.rank = seed, rank
    self.steps_per_epoch = num_samples // global_micro_batch
    self.start_micro_step = start_micro_step

  def __iter__(self):
    epoch, step = divmod(self.start_micro_step, self.steps_per_epoch)
    while True:
      order = np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
      seeds = np.random.SeedSequence([self.seed, epoch]).generate_state(self.num_samples)  # one per sample
      for s in range(step, self.steps_per_epoch):
        start = s * self.global_micro_batch + self.rank * self.batch_size
        yield [(int(i), int(seeds[i])) for i in order[start:start + self.batch_size]]
      epoch, step = epoch + 1, 0

  def __len__(self):
    raise TypeError('TrainBatches is endless; count micro-steps instead')


class EvalBatches(paddle.io.BatchSampler):
  """Rank r evaluates samples r, r+W, r+2W, ...: every sample exactly once, no padding duplicates."""

  def __init__(self, num_samples, batch_size, rank=0, world_size=1):
    self.indices = list(range(rank, num_samples, world_size))
    self.batch_size = batch_size

  def __iter__(self):
    for start in range(0, len(self.indices), self.batch_size):
      yield [(i, 0) for i in self.indices[start:start + self.batch_size]]

  def __len__(self):
    return (len(self.indices) + self.batch_size - 1) // self.batch_size


class _Loader(paddle.io.DataLoader):
  """Paddle's DataLoader, its workers started as utils/preemption.py needs them (signals, lifetime)."""

  def __iter__(self):
    with preemption.starting_data_workers():
      return super().__iter__()


def loader(dataset, batch_sampler, num_workers):
  """A DataLoader over `batch_sampler`; num_workers -1 means one worker per core of this process's share."""
  if num_workers < 0:
    num_workers = threads.cores_per_process()
  prefetch = 4 if num_workers else 2
  if num_workers:
    _remove_stale_shared_memory_once()
    check_shared_memory(dataset, batch_sampler, num_workers * prefetch)
  return _Loader(dataset, batch_sampler=batch_sampler, num_workers=num_workers, use_shared_memory=num_workers > 0,
                 prefetch_factor=prefetch, worker_init_fn=preemption.in_data_worker)


@functools.cache  # at the first loader with workers: every later one (each evaluation's) would find nothing
def _remove_stale_shared_memory_once():
  remove_stale_shared_memory()


def remove_stale_shared_memory(folder='/dev/shm'):
  """Delete the batches that DataLoader workers of dead processes left in shared memory (RAM).

  Paddle's workers hand batches over in files `paddle_<worker pid>_...`, which a worker deletes when it
  ends; one killed with its trainer (kill -9, the OOM killer) leaves them behind. Only files of process ids
  that no longer exist are deleted: a live run's are its own.
  """
  try:
    names = os.listdir(folder)
  except OSError:  # no such folder here
    return
  for name in names:
    maker = re.match(r'paddle_(\d+)_', name)
    if maker and not _process_exists(int(maker.group(1))):
      with contextlib.suppress(OSError):  # another user's, or removed meanwhile
        os.unlink(os.path.join(folder, name))


def _process_exists(pid):
  """Whether process `pid` is alive; a zombie (dead, its parent not yet told) will never delete its files."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's
    pass
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().rpartition(')')[2].split()[0] != 'Z'
  except OSError:  # gone meanwhile, or no /proc
    return os.path.exists(f'/proc/{pid}') or not os.path.isdir('/proc')


def check_shared_memory(dataset, batch_sampler, batches_in_flight, shm='/dev/shm'):
  """Refuse, in one line, to start workers whose batches would not fit in `shm`.

  DataLoader workers hand over their batches in shared memory, `prefetch_factor` batches per worker in
  flight (paddle/io/dataloader/dataloader_iter.py), per process on this machine; when /dev/shm is full the
  next write is a bus error that kills the run without a word. Docker gives a container 64 MB by default.
  """
  if not len(dataset):
    return
  batch = batch_sampler.batch_size  # the largest batch it yields
  image, _ = dataset[(0, 0)]
  processes = int(os.environ.get('PADDLE_LOCAL_SIZE', '1'))  # the launcher's processes on this machine
  need = batches_in_flight * processes * batch * (image.nbytes + 8)
  free = shutil.disk_usage(shm).free
  if need > free:
    raise OSError(f'{shm} has {free / 2**20:.0f} MB free, and the data loading needs about {need / 2**20:.0f} MB '
                  f'there ({batches_in_flight} batches of {batch} images in flight per process, '
                  f'{processes} process(es)): in Docker, start the container with --shm-size=8g or --ipc=host, '
                  f'or set --config.data.num_workers=0 (no worker processes)')


# cuDNN's smallest epsilon: Paddle's GPU kernel raises a smaller one to it and logs an error on every call.
EPSILON = 1e-5


@functools.lru_cache(maxsize=8)
def _normalisation(mean, std):
  """Running statistics for which batch_norm computes (x / 255 - mean) / std, built once per device: the
  variance is EPSILON smaller than (255 std)^2, which batch_norm adds back."""
  return (paddle.to_tensor([255.0 * m for m in mean], dtype='float32'),
          paddle.to_tensor([(255.0 * s) ** 2 - EPSILON for s in std], dtype='float32'))


def to_model_input(images, data_config):
  """uint8 (N, C, H, W) on the device -> normalised float32.

  One fused batch_norm kernel instead of a broadcast subtract and divide: measured 232 -> 44 ms on a
  uint8 64x3x224x224 batch on the CPU (bench/evaluation.py before this change).
  """
  channels = images.shape[1]
  mean, var = _normalisation(tuple(data_config.mean[:channels]), tuple(data_config.std[:channels]))
  return F.batch_norm(images.astype('float32'), mean, var, training=False, epsilon=EPSILON)
