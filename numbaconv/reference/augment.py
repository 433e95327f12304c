"""Random translation + horizontal flip, in NumPy (the reference backend's ``crop_flip``;
numbaconv.cpu.augment does the same in one parallel kernel)."""
import numpy as np


def crop_flip(X, oy, ox, mirror, pad):
    """X (N, C, H, W) shifted by (oy - pad, ox - pad) per image (oy, ox in [0, 2*pad]), mirrored where
    ``mirror``: out[n, :, i, j] = X[n, :, i + oy[n] - pad, c(j)], c(j) = (W-1-j if mirror[n] else j)
    + ox[n] - pad, and 0 outside the image."""
    X = np.asarray(X)
    N, C, H, W = X.shape
    padded = np.zeros((N, C, H + 2 * pad, W + 2 * pad), dtype=X.dtype)
    padded[:, :, pad:pad + H, pad:pad + W] = X
    out = np.empty_like(X)
    for n in range(N):
        src = padded[n, :, oy[n]:oy[n] + H, ox[n]:ox[n] + W]
        out[n] = src[..., ::-1] if mirror[n] else src
    return out
