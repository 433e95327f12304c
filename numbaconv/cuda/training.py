"""Device-resident training on the cuda backend: what the Solver and the models call
besides the layers, so that a training step stays on the GPU (``numbaconv.cuda.device_ops``).

* ``upload`` / ``to_host`` / ``copy``: the training split goes up once; parameters,
  optimizer state and BN statistics are copied device to device (rollback, best weights).
* ``gather``: the minibatch, by one kernel from the resident split, with crop/flip
  augmentation; its plan (indices, offsets, mirrors: drawn on the host by the Solver's
  generator, as on every backend) is the step's one host->device copy.
* model-level ops (global max pool, scaling, view averages, the label-smoothed softmax
  loss, L2): the loss stays a device scalar until ``loss_value`` copies it, the step's
  one device->host copy.
* ``update``: numbaconv.optim's rules as kernels (same arithmetic, same config keys;
  the NumPy rules are the spec), and ``lookahead``.
* ``argmax``: evaluation brings back predictions only.
"""
from __future__ import annotations

import numpy as np

from ..optim import DEFAULTS, _setup
from ._runtime import (THREADS_1D, THREADS_REDUCE, as_device, blocks, cuda, empty, flat, is_device, launch, to_device,
                       to_host)

__all__ = ["is_device", "to_host", "upload", "copy", "host", "gather", "shift_flip", "global_max_pool_forward",
           "global_max_pool_backward", "axpby", "smoothed_softmax_loss", "add_l2", "loss_value", "argmax", "update",
           "lookahead", "labels", "preds", "check_labels", "DEVICE_RULES"]


def upload(a, dtype=None):
    """A NumPy array copied to the device (counted), C-contiguous, in ``dtype`` if given."""
    return to_device(np.ascontiguousarray(a, dtype=dtype))


def copy(d):
    """A device-to-device copy (not a host transfer)."""
    out = cuda.device_array(d.shape, dtype=d.dtype)
    out.copy_to_device(d)
    return out


def host(a):
    """``a`` on the host: device arrays copied back (counted), anything else unchanged."""
    return to_host(a) if is_device(a) else a


def _launch1d(name, dtype, total, *args):
    launch(name, dtype, blocks(total, THREADS_1D), THREADS_1D, *args)


# ---------------------------------------------------------------- data
def gather(X, y, plan, pad: int):
    """(X[index] cropped/flipped, y[index]) on the device. ``X`` (N, C, H, W) and ``y`` (N,) int64
    are device arrays (``y`` None: no labels, None back); ``plan`` is a host int64 array of 4*B
    entries: image index, row offset, column offset (both in [0, 2*pad]) and mirror flag per
    image. One host->device copy."""
    B = plan.shape[0] // 4
    _, C, H, W = (int(s) for s in X.shape)
    dtype = np.dtype(X.dtype)
    pd = upload(plan, np.int64)
    out = empty((B, C, H, W), dtype)
    _launch1d("gather_crop_flip", dtype, B * C * H * W, flat(X), pd, flat(out), B, C, H, W, int(pad))
    if y is None:
        return out, None
    yb = empty((B,), np.int64)
    _launch1d("gather_labels", dtype, B, y, pd, yb, B)
    return out, yb


def shift_flip(X, dy: int, dx: int, mirror: bool):
    """X shifted by (dy, dx) (numbaconv.models.shift_images) and then mirrored, on the device."""
    N, C, H, W = (int(s) for s in X.shape)
    out = empty(X.shape, X.dtype)
    _launch1d("shift_flip", X.dtype, N * C * H * W, flat(X), flat(out), N, C, H, W, int(dy), int(dx), int(mirror))
    return out


# ---------------------------------------------------------------- model-level ops
def global_max_pool_forward(x):
    """(N, C, H, W) -> (N, C), as numbaconv.models.global_max_pool_forward."""
    N, C, H, W = (int(s) for s in x.shape)
    out, arg = empty((N, C), x.dtype), empty((N * C,), np.int32)
    _launch1d("global_max_pool_forward", x.dtype, N * C, flat(x), flat(out), arg, N * C, H * W)
    return out, (x.shape, arg)


def global_max_pool_backward(dout, cache):
    shape, arg = cache
    N, C = int(shape[0]), int(shape[1])
    L = int(shape[2]) * int(shape[3])
    dx = empty(shape, dout.dtype)
    _launch1d("global_max_pool_backward", dout.dtype, N * C * L, flat(dout), arg, flat(dx), N * C, L)
    return dx


def axpby(x, y, a: float, b: float):
    """a * x + b * y elementwise (b = 0: a * x alone, so an infinite y adds no NaN)."""
    y = as_device(y)   # a weight still on the host (a model called with device X outside the Solver)
    out = empty(x.shape, x.dtype)
    _launch1d("axpby", x.dtype, x.size, flat(x), flat(y), float(a), float(b), flat(out), x.size)
    return out


def smoothed_softmax_loss(scores, y, smoothing: float = 0.0, grad_scale: float = 1.0):
    """(loss as a device array of one element, dscores * grad_scale): numbaconv.losses'
    label-smoothed cross-entropy (smoothing 0: the plain softmax loss), labels ``y`` on the
    device (checked once, when the split was uploaded)."""
    N, C = (int(s) for s in scores.shape)
    dtype = np.dtype(scores.dtype)
    dx, rows, loss = empty((N, C), dtype), empty((N,), dtype), empty((1,), dtype)
    _launch1d("smoothed_softmax_rows", dtype, N, flat(scores), y, flat(dx), rows, N, C, float(smoothing),
              float(grad_scale))
    launch("mean_into", dtype, 1, THREADS_REDUCE, rows, loss, N)
    return loss, dx


def add_l2(loss, w, reg: float) -> None:
    """loss[0] += reg * sum(w ** 2), in place on the device."""
    w = as_device(w)
    launch("add_sum_squares", w.dtype, 1, THREADS_REDUCE, flat(w), loss, float(reg), w.size)


def labels(y, scores):
    """Labels on the device: a device array as it is (checked when its split was uploaded),
    NumPy labels checked against the scores and copied (counted)."""
    if is_device(y):
        return y
    from ..checks import softmax_inputs

    softmax_inputs(scores, y)
    return upload(y, np.int64)


def preds(N: int):
    """A device int64 vector for N predictions (filled by ``argmax``)."""
    return empty((int(N),), np.int64)


def loss_value(loss) -> float:
    """The loss as a Python float: the one device->host copy of a training step."""
    return float(to_host(loss)[0])


def argmax(scores, preds, offset: int) -> None:
    """preds[offset:offset + N] = the arg-max of each row of scores (N, C) (device int64 preds)."""
    N, C = (int(s) for s in scores.shape)
    _launch1d("row_argmax", scores.dtype, N, flat(scores), preds, N, C, int(offset))


# ---------------------------------------------------------------- update rules
def _state(config, key, w, rule):
    """The rule's state array on the device (zeros at the first step), shape-checked like optim._state."""
    value = config.get(key)
    if value is None:
        out = empty(w.shape, w.dtype)
        _launch1d("axpby", w.dtype, w.size, flat(w), flat(w), 0.0, 0.0, flat(out), w.size)   # zeros, no copy
        return out
    if not is_device(value):
        value = upload(value, w.dtype)   # a state loaded from a checkpoint, on the first step
    if tuple(value.shape) != tuple(w.shape):
        raise ValueError(f"{rule}: config[{key!r}] has shape {tuple(value.shape)} but w has shape {tuple(w.shape)}")
    return value


def _sgd(w, dw, config, h, new):
    out = new()
    _launch1d("sgd", w.dtype, w.size, flat(w), flat(dw), flat(out), h["learning_rate"], w.size)
    return out


def _sgd_momentum(w, dw, config, h, new):
    v, out, v_out = _state(config, "velocity", w, "sgd_momentum"), new(), new()
    _launch1d("sgd_momentum", w.dtype, w.size, flat(w), flat(dw), flat(v), flat(out), flat(v_out),
              h["learning_rate"], h["momentum"], w.size)
    config["velocity"] = v_out
    return out


def _rmsprop(w, dw, config, h, new):
    cache, out, c_out = _state(config, "cache", w, "rmsprop"), new(), new()
    _launch1d("rmsprop", w.dtype, w.size, flat(w), flat(dw), flat(cache), flat(out), flat(c_out), h["learning_rate"],
              h["decay_rate"], 1 - h["decay_rate"], h["epsilon"], w.size)
    config["cache"] = c_out
    return out


def _adam(w, dw, config, h, new):
    t = config.get("t", 0)
    if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or t < 0:
        raise ValueError(f"adam: config['t'] must be a non-negative integer, got {t!r}")
    t = int(t) + 1
    b1, b2 = h["beta1"], h["beta2"]
    m, v = _state(config, "m", w, "adam"), _state(config, "v", w, "adam")
    out, m_out, v_out = new(), new(), new()
    _launch1d("adam", w.dtype, w.size, flat(w), flat(dw), flat(m), flat(v), flat(out), flat(m_out), flat(v_out),
              h["learning_rate"], b1, 1 - b1, b2, 1 - b2, h["epsilon"], 1 - b1 ** t, 1 - b2 ** t, w.size)
    config.update(t=t, m=m_out, v=v_out)
    return out


def _sgd_nesterov(w, dw, config, h, new):
    v, out, v_out = _state(config, "velocity", w, "sgd_nesterov"), new(), new()
    _launch1d("sgd_nesterov", w.dtype, w.size, flat(w), flat(dw), flat(v), flat(out), flat(v_out),
              h["learning_rate"], h["momentum"], h["weight_decay"], w.size)
    config["velocity"] = v_out
    return out


DEVICE_RULES = {"sgd": _sgd, "sgd_momentum": _sgd_momentum, "rmsprop": _rmsprop, "adam": _adam,
                "sgd_nesterov": _sgd_nesterov}


def update(rule: str, w, dw, config: dict):
    """``numbaconv.optim``'s rule ``rule`` on device arrays: (next_w, config), new arrays, w, dw and
    the config's arrays untouched (so the Solver can roll a step back). Hyperparameters are
    validated by optim's own code. A rule without a kernel (one added by register_update_rule)
    runs on the host: correct, with its copies counted."""
    if rule not in DEVICE_RULES or rule not in DEFAULTS:
        from ..optim import get_update_rule

        hc = {k: host(v) for k, v in config.items()}
        new_w, new_cfg = get_update_rule(rule)(host(w), host(dw), hc)
        return upload(new_w), {k: upload(v) if isinstance(v, np.ndarray) else v for k, v in new_cfg.items()}
    if tuple(w.shape) != tuple(dw.shape):
        raise ValueError(f"{rule}: w has shape {tuple(w.shape)} but dw has shape {tuple(dw.shape)}")
    config, h = _setup(rule, w, dw, config, arrays=False)
    return DEVICE_RULES[rule](w, dw, config, h, lambda: empty(w.shape, w.dtype)), config


def lookahead(w, slow, decay: float):
    """decay * slow + (1 - decay) * w (the Solver's lookahead), a new device array."""
    out = empty(w.shape, w.dtype)
    _launch1d("lookahead", w.dtype, w.size, flat(w), flat(slow), flat(out), float(decay), 1.0 - float(decay), w.size)
    return out


def check_labels(y, num_classes: int):
    """Labels of a split about to be uploaded: integers in [0, num_classes) (the loss kernel
    indexes with them; on the host the loss checks every minibatch instead)."""
    y = np.asarray(y)
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        bad = y[(y < 0) | (y >= num_classes)][0]
        raise ValueError(f"labels must be in [0, {num_classes}) for this model, got {bad}")
    return y

