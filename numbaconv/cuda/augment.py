"""Random translation + horizontal flip of a minibatch on the GPU (the cuda backend's
``crop_flip``; numbaconv.cpu.augment's rule, one kernel: train_kernels.gather_crop_flip).
Device-resident training gathers and augments in the same launch (training.gather); this
is the hook's form for a batch already in hand."""
import numpy as np

from ._runtime import as_device, is_device, result
from .training import gather


def crop_flip(X, oy, ox, mirror, pad):
    """X (N, C, H, W) shifted by (oy - pad, ox - pad) per image (oy, ox in [0, 2*pad]), mirrored where
    ``mirror``; NumPy X -> NumPy out, device X -> device out."""
    N = int(X.shape[0])
    plan = np.concatenate([np.arange(N), np.asarray(oy), np.asarray(ox), np.asarray(mirror)]).astype(np.int64)
    out, _ = gather(as_device(np.ascontiguousarray(X) if not is_device(X) else X), None, plan, int(pad))
    return result(out, not is_device(X))
