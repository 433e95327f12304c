import numpy as np

from ..checks import softmax_inputs


def softmax_loss(x, y):
    """Mean cross-entropy of softmax(x) against integer labels y.

    x (N, C) scores, y (N,) labels in [0, C). Returns (loss as a Python float, dx).
    """
    N, _ = softmax_inputs(x, y)
    shifted = x - x.max(axis=1, keepdims=True)  # stable: exp never overflows
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    y = np.asarray(y)
    loss = -log_probs[np.arange(N), y].sum() / N
    dx = np.exp(log_probs)
    dx[np.arange(N), y] -= 1
    dx /= N
    return float(loss), dx.astype(x.dtype, copy=False)
