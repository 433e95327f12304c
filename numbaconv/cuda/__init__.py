"""The cuda backend: the layer API of ``numbaconv.reference`` computed by
``numba.cuda`` kernels (package ``numba-cuda``, the optional ``cuda`` extra).

NumPy arrays in -> NumPy arrays out; device arrays in (``numba.cuda.to_device``)
-> device arrays out, with no host round trip, so a model can keep its tensors
on the GPU. Without a GPU the kernels run under the Numba CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1`` set before numba is imported): slow, but the same code.

>>> import numpy as np
>>> from numbaconv import get_backend
>>> nb = get_backend("cuda")
>>> out, cache = nb.Conv.forward(np.ones((1, 1, 3, 3)), np.ones((1, 1, 2, 2)), np.zeros(1), {"stride": 1, "pad": 0})
>>> out[0, 0]
array([[4., 4.],
       [4., 4.]])
"""
from ._runtime import NO_GPU_HINT, SIMULATOR, cuda
from .batchnorm import BatchNorm, SpatialBatchNorm
from .conv import Conv
from .linear import Linear
from .pool import MaxPool
from .relu import ReLU
from .softmax import softmax_loss

NAME = "cuda"


def is_available() -> bool:
    """True only with a real CUDA GPU (the simulator does not count)."""
    if SIMULATOR:
        return False
    try:
        return bool(cuda.is_available())
    except Exception:  # a broken driver install must read as "no GPU", not crash the caller
        return False


def synchronize() -> None:
    """Wait for all launched kernels (call before reading a timer)."""
    cuda.synchronize()


__all__ = ["Conv", "MaxPool", "BatchNorm", "SpatialBatchNorm", "Linear", "ReLU", "softmax_loss", "NAME",
           "is_available", "synchronize", "SIMULATOR", "NO_GPU_HINT"]
