"""The cpu backend: Numba ``@njit(parallel=True, cache=True)`` kernels, the default.

Same names and signatures as ``numbaconv.reference``. Kernels parallelise by
ownership (no two ``prange`` iterations write one element), so results are
identical from run to run for a fixed thread count. Thread count follows
``numba.set_num_threads`` / ``NUMBA_NUM_THREADS``; the BLAS GEMMs inside conv
and linear are limited to the same count for the duration of each call.

``Conv_BatchNorm_ReLU`` and ``Conv_BatchNorm_ReLU_Pool`` are fused versions of
the sandwiches in ``numbaconv.layers`` (same signatures and results); models
use a backend's fused layer when it has one.
"""
from . import _memory
from ._threads import configure_from_environment

configure_from_environment()   # before any kernel starts numba's threads: how idle threads wait (_threads.DEFAULT)
_memory.configure()            # freed buffers kept for the next step instead of faulted in afresh (_memory.SETTINGS)

from .batchnorm import BatchNorm, SpatialBatchNorm
from .conv import Conv
from .fused import Conv_BatchNorm_ReLU, Conv_BatchNorm_ReLU_Pool
from .linear import Linear
from .pool import GlobalMaxPool, MaxPool
from .relu import ReLU
from .softmax import softmax_loss

NAME = "cpu"

__all__ = ["Conv", "MaxPool", "GlobalMaxPool", "BatchNorm", "SpatialBatchNorm", "Linear", "ReLU", "softmax_loss", "NAME",
           "Conv_BatchNorm_ReLU", "Conv_BatchNorm_ReLU_Pool"]
