"""Losses beyond the backends' plain softmax: label smoothing.

``smoothed_softmax_loss(x, y, smoothing)`` is the cross-entropy of softmax(x)
against the target ``(1 - smoothing) * onehot(y) + smoothing / C``. With
``smoothing=0`` it is the backends' ``softmax_loss``. Scores are (N, C), a
tiny array, so NumPy (not a kernel) is the right tool here; float64 inside for
the log-sum-exp, dx in the dtype of x.
"""
from __future__ import annotations

import math

import numpy as np

from .checks import softmax_inputs


def smoothed_softmax_loss(x, y, smoothing: float = 0.0):
    """Mean label-smoothed cross-entropy; returns (loss as a Python float, dx)."""
    N, C = softmax_inputs(x, y)
    try:
        eps = float(smoothing)
    except (TypeError, ValueError):
        raise ValueError(f"smoothing must be a number in [0, 1), got {smoothing!r}") from None
    if not (math.isfinite(eps) and 0.0 <= eps < 1.0):
        raise ValueError(f"smoothing must be a number in [0, 1), got {smoothing!r}")
    z = np.asarray(x, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    target = np.full((N, C), eps / C)
    target[np.arange(N), y] += 1.0 - eps
    loss = float(-(target * logp).sum() / N)
    dx = (np.exp(logp) - target) / N
    return loss, dx.astype(x.dtype)
