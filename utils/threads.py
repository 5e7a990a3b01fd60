"""CPU threads, kernel choices and memory reuse for Paddle: the process-wide settings, made once at start
(`configure`) before anything else imports Paddle."""
import ctypes
import functools
import os
import warnings


def configure():
  """Use every core this process may run on (shared among the local processes of a distributed launch),
  and on the CPU no strided views (below) and freed memory kept for reuse (`_keep_freed_memory`).

  Paddle runs its CPU kernels on one thread unless OMP_NUM_THREADS says otherwise (and then prints a
  warning meant for old OpenBLAS builds); `set_num_threads` after import gives the same speed quietly.
  An OMP_NUM_THREADS set by the user wins. On AMD processors the MKL bundled with Paddle takes a slow
  generic path unless told it may use AVX2 (MKL_DEBUG_CPU_TYPE=5, read when MKL loads): measured on an
  AMD EPYC, matmul went from 74 to 149 GFLOP/s.
  """
  try:
    with open('/proc/cpuinfo') as f:
      if 'AuthenticAMD' in f.read(4096):
        os.environ.setdefault('MKL_DEBUG_CPU_TYPE', '5')
  except OSError:
    pass
  warnings.filterwarnings('ignore', message='No ccache found')  # Paddle's C++-extension builder, unused here
  users_choice = os.environ.get('OMP_NUM_THREADS')
  import paddle
  if users_choice is None:
    # Importing Paddle writes OMP_NUM_THREADS=1 into the environment, which every child process
    # (a launcher's workers, a test's subprocess) would take for the user's choice.
    os.environ.pop('OMP_NUM_THREADS', None)
    cores = cores_per_process()
    paddle.base.core.set_num_threads(cores)
    _set_gnu_openmp_threads(cores)
  if paddle.device.get_device() == 'cpu':
    # View ops (transpose, unbind, split) return strided views, which the next CPU kernel first copies
    # with a generic strided loop, ~7x slower than Paddle's transpose kernel (55 vs 8 ms for a ViT's q/k/v
    # here; a third of a tiny ViT's R-Drop update, bench/profile_update.py). Without stride kernels these
    # ops make their copy at once: the same values, bit for bit.
    paddle.set_flags({'FLAGS_use_stride_kernel': False})
    _keep_freed_memory()


@functools.cache
def cores_per_process():
  """This machine's cores (that this process may use), shared among the local processes of a launch;
  counted once (the thread settings, DataLoader workers and dropout's mask threads all take this share)."""
  local_processes = int(os.environ.get('PADDLE_LOCAL_SIZE', os.environ.get('PADDLE_TRAINERS_NUM', '1')))
  return max(1, len(os.sched_getaffinity(0)) // local_processes)


def _keep_freed_memory():
  """Have glibc's malloc keep freed blocks up to 32 MiB for reuse instead of returning them to the system.

  Paddle's CPU allocator takes every tensor from malloc, and glibc hands blocks above 128 KiB back to the
  system when freed, so each new activation faults in fresh zeroed pages: an elementwise product of two
  4160x768 matrices took 1.2 ms instead of 0.6, and a tiny ViT's R-Drop update 2.5-3.4 s instead of 2.1
  (interleaved processes). The process's memory then stays at its peak, as with a caching allocator.
  """
  try:
    libc = ctypes.CDLL('libc.so.6')
  except OSError:  # not glibc (musl, macOS, Windows)
    return
  m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
  libc.mallopt(m_mmap_threshold, 32 << 20)  # glibc's largest (HEAP_MAX_SIZE / 2)
  libc.mallopt(m_trim_threshold, 1 << 30)


def _set_gnu_openmp_threads(count):
  """The oneDNN in Paddle's wheel (kernels/onednn.py) runs on GNU OpenMP, whose thread count Paddle's
  set_num_threads (Intel's OpenMP and MKL) leaves at every core: under a launch its processes would
  each take all cores."""
  try:
    ctypes.CDLL('libgomp.so.1').omp_set_num_threads(count)
  except OSError:  # no GNU OpenMP here: nor a oneDNN built on it
    pass
