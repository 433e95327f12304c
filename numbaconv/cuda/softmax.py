import numpy as np

from ..checks import softmax_inputs
from ._runtime import THREADS_1D, as_device, blocks, empty, flat, is_device, launch, result, to_device, to_host


def softmax_loss(x, y):
    """Mean cross-entropy of softmax(x) against integer labels y.

    x (N, C) scores, y (N,) labels in [0, C). Returns (loss as a Python float, dx);
    dx stays on the device when x is a device array (the loss is always a float).
    """
    if is_device(y):   # labels are validated on the host (they are small)
        y = to_host(y)
    N, C = softmax_inputs(x, y)
    dtype = np.dtype(x.dtype)
    xd = as_device(x)
    yd = to_device(np.ascontiguousarray(y, dtype=np.int64))
    dx, rows = empty((N, C), dtype), empty((N,), dtype)
    launch("softmax_loss_rows", dtype, blocks(N, THREADS_1D), THREADS_1D, flat(xd), yd, flat(dx), rows, N, C)
    loss = float(to_host(rows).sum() / dtype.type(N))
    return loss, result(dx, not is_device(x))
