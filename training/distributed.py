"""Paddle's collective engine, as started by `python -m paddle.distributed.launch`.

The same code runs as one process (world size 1) or as one process per device: the launcher sets the
environment that `get_world_size` / `get_rank` read and `init_parallel_env` connects (NCCL on GPUs,
gloo on CPUs).
"""
import os
import shlex

import paddle
import paddle.distributed as dist

from utils import preemption


def under_launcher():
  """True in a process started by `paddle.distributed.launch` (one rank of a job, even of one process)."""
  return 'PADDLE_TRAINER_ID' in os.environ


def command_line(args):
  """The command that runs `args` (e.g. ['main.py', ...]) as this process's job does: under the launcher
  on the same number of processes, since another number changes the run (docs/distributed.md)."""
  if not under_launcher():
    return shlex.join(['python', *args])
  nodes, per_node = os.environ.get('PADDLE_NNODES', '1'), os.environ.get('PADDLE_LOCAL_SIZE', '1')
  if nodes == '1':
    return shlex.join(['python', '-m', 'paddle.distributed.launch', '--nproc_per_node', per_node, *args])
  return (f'on each of the {nodes} nodes, its launcher command (python -m paddle.distributed.launch --master ... '
          f'--nnodes {nodes} --rank R, {per_node} process(es) a node) followed by: {shlex.join(args)}')


def rank_and_world_size():
  """This process's rank and the number of processes, as the launcher set them (no connection made)."""
  return dist.get_rank(), dist.get_world_size()


class JobIncomplete(RuntimeError):
  """The processes of a job did not all meet at start-up: one was lost, or never came."""


def setup():
  """(rank, world_size), the process group initialised when there is more than one process.

  At start-up Paddle waits for every process of the job for a fixed 900 s (the default timeout of its
  global TCPStore, which no flag changes), then raises a bare SystemError: this names the likely cause.
  """
  rank, world_size = rank_and_world_size()
  if world_size > 1:
    try:
      with preemption.connecting():
        dist.init_parallel_env()
    except (SystemError, RuntimeError) as err:
      if 'timeout' not in str(err).lower():
        raise  # e.g. a misconfigured device: repeating the command would not mend it
      first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
      raise JobIncomplete(f'the {world_size} processes of this job did not all start: a node or process was lost '
                          f'or never came ({first_line})') from err
  return rank, world_size


def on_rank0(decide, world_size):
  """`decide()` run by rank 0 alone; every rank returns its value, or raises the exception it raised.

  For what every rank must see the same way, as rank 0 sees it: e.g. where a run resumes, which a rank
  on another node could see otherwise (a network filesystem's cached listing, a workdir not shared).
  """
  if world_size == 1:
    return decide()
  answer = [None]
  if dist.get_rank() == 0:
    try:
      answer = [(True, decide())]
    except Exception as err:  # every rank raises it, so that all exit alike
      answer = [(False, err)]
  dist.broadcast_object_list(answer, src=0)
  ok, value = answer[0]
  if not ok:
    raise value
  return value


def all_reduce_sum(tensor, world_size):
  if world_size > 1:
    dist.all_reduce(tensor)
  return tensor


def agree(sums, flags, world_size):
  """(`sums` averaged over the ranks, as a NumPy array; [flag is true on any rank, for each flag]).

  One all-reduce, and one host sync that waits for the device's work: every rank gets the same answers.
  A NaN on any rank makes the average NaN.
  """
  if world_size == 1:
    return sums.numpy(), [bool(flag) for flag in flags]
  values = paddle.concat([sums, paddle.to_tensor([1.0 if flag else 0.0 for flag in flags], dtype=sums.dtype)])
  dist.all_reduce(values)
  values = values.numpy()
  return values[:len(sums)] / world_size, [bool(v > 0) for v in values[len(sums):]]


def average_running_statistics(model, world_size):
  """Make every rank's running statistics the average over the ranks: what the model holds but the
  optimizer does not train (batch norm's running mean and variance are parameters with stop_gradient).

  paddle.DataParallel makes them equal once, at construction; after that each rank updates its own from
  its own slice of the batch, so an evaluation would mix W sets and a checkpoint keep rank 0's. Those that
  are not floating point (counters) are rank 0's.
  """
  if world_size == 1:
    return
  for tensor in [*model.parameters(), *model.buffers()]:
    if not tensor.stop_gradient:
      continue
    if tensor.is_floating_point():
      dist.all_reduce(tensor)
      tensor.set_value(tensor / world_size)
    else:
      dist.broadcast(tensor, src=0)


def barrier(world_size):
  if world_size > 1:
    dist.barrier()
