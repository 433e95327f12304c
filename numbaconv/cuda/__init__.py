"""The cuda backend: the layer API of ``numbaconv.reference`` computed by
``numba.cuda`` kernels (package ``numba-cuda``, the optional ``cuda`` extra).

NumPy arrays in -> NumPy arrays out; device arrays in (``numba.cuda.to_device``)
-> device arrays out, with no host round trip, so a model can keep its tensors
on the GPU. Other libraries' GPU arrays (anything with ``__cuda_array_interface__``
or a CUDA ``__dlpack__``: PyTorch, CuPy) are taken without a copy and give numba
device arrays out. ``count_transfers()`` counts the host<->device copies; ``device_ops``
(numbaconv.cuda.training) is what device-resident training calls besides the layers. Without a GPU the kernels run under the Numba CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1`` set before numba is imported): slow, but the same code.

>>> import numpy as np
>>> from numbaconv import get_backend
>>> nb = get_backend("cuda")
>>> out, cache = nb.Conv.forward(np.ones((1, 1, 3, 3)), np.ones((1, 1, 2, 2)), np.zeros(1), {"stride": 1, "pad": 0})
>>> out[0, 0]
array([[4., 4.],
       [4., 4.]])
"""
from ._runtime import NO_GPU_HINT, SIMULATOR, TransferStats, adopting, count_transfers, cuda, transfer_stats
from .batchnorm import BatchNorm, SpatialBatchNorm
from .conv import Conv
from .fused import Conv_BatchNorm_ReLU, Conv_BatchNorm_ReLU_Pool
from .linear import Linear
from .pool import MaxPool
from .relu import ReLU
from .softmax import softmax_loss
from . import training as device_ops   # what device-resident training calls besides the layers

NAME = "cuda"

# Interop at the API boundary, once for every layer: each public method adopts
# foreign GPU arrays among its arguments (a zero-copy view) before validation,
# which reads numba/NumPy shapes and dtypes.
LAYERS = (Conv, MaxPool, BatchNorm, SpatialBatchNorm, Linear, ReLU, Conv_BatchNorm_ReLU, Conv_BatchNorm_ReLU_Pool)
for _layer in LAYERS:
    for _name in ("forward", "backward", "backward_alt"):
        if _name in vars(_layer):
            setattr(_layer, _name, staticmethod(adopting(vars(_layer)[_name].__func__)))
softmax_loss = adopting(softmax_loss)


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


__all__ = ["Conv", "Conv_BatchNorm_ReLU", "Conv_BatchNorm_ReLU_Pool", "MaxPool", "BatchNorm", "SpatialBatchNorm", "Linear", "ReLU", "softmax_loss", "NAME",
           "is_available", "synchronize", "SIMULATOR", "NO_GPU_HINT", "count_transfers", "transfer_stats",
           "TransferStats", "device_ops"]
