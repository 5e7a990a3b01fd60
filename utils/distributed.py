"""Paddle's collective engine, as started by `python -m paddle.distributed.launch`.

The same code runs as one process (world size 1) or as one process per device: the launcher sets the
environment that `get_world_size` / `get_rank` read and `init_parallel_env` connects (NCCL on GPUs,
gloo on CPUs).
"""
import paddle
import paddle.distributed as dist


def rank_and_world_size():
  """This process's rank and the number of processes, as the launcher set them (no connection made)."""
  return dist.get_rank(), dist.get_world_size()


def setup():
  """(rank, world_size), the process group initialised when there is more than one process."""
  rank, world_size = rank_and_world_size()
  if world_size > 1:
    dist.init_parallel_env()
  return rank, world_size


def all_reduce_sum(tensor, world_size):
  if world_size > 1:
    dist.all_reduce(tensor)
  return tensor


def any_rank(flags, world_size):
  """[flag is true on any rank, for each flag]: every rank gets the same answers, in one all-reduce."""
  if world_size == 1:
    return [bool(flag) for flag in flags]
  values = paddle.to_tensor([1 if flag else 0 for flag in flags], dtype='int32')
  dist.all_reduce(values, op=dist.ReduceOp.MAX)
  return [bool(v) for v in values.numpy()]


def barrier(world_size):
  if world_size > 1:
    dist.barrier()
