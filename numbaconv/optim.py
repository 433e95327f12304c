"""First-order update rules, the assignment's contract:

    next_w, config = rule(w, dw, config)

``config`` holds the hyperparameters and the rule's state (velocity, moments);
missing keys get the usual defaults. Rules never modify ``w``, ``dw`` or the
arrays in ``config`` in place: they return new arrays, so a caller can roll a
step back by keeping the old config (the Solver does, for Ctrl-C). State
arrays keep the dtype of ``w``.

Rules are looked up by name in ``UPDATE_RULES``; ``register_update_rule`` adds one.

>>> import numpy as np
>>> w, config = sgd(np.ones(2), np.full(2, 0.5), {"learning_rate": 0.1})
>>> w
array([0.95, 0.95])
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
from numba import njit

# The assignment's defaults.
DEFAULTS = {
    "sgd": {"learning_rate": 1e-2},
    "sgd_momentum": {"learning_rate": 1e-2, "momentum": 0.9},
    "rmsprop": {"learning_rate": 1e-2, "decay_rate": 0.99, "epsilon": 1e-8},
    "adam": {"learning_rate": 1e-3, "beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8},
    "sgd_nesterov": {"learning_rate": 1e-2, "momentum": 0.9},
}
# Optional hyperparameters (not in DEFAULTS, so 0 = off is allowed): coupled L2 weight decay.
_OPTIONAL = {"sgd_nesterov": {"weight_decay": 0.0}}
# Hyperparameters that are decay factors must lie in [0, 1); the others must be > 0.
_FACTORS = ("momentum", "decay_rate", "beta1", "beta2")


def _setup(rule: str, w, dw, config, arrays: bool = True) -> tuple[dict, dict]:
    """Validate arguments; returns (a new config with defaults, the hyperparameters as floats).
    ``arrays=False``: w and dw are device arrays (numbaconv.cuda.training runs the rules as
    kernels with these hyperparameters; the caller checks their shapes)."""
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise ValueError(f"{rule}: config must be a dict, got {type(config).__name__}")
    if arrays:
        if not isinstance(w, np.ndarray) or not isinstance(dw, np.ndarray):
            raise ValueError(f"{rule}: w and dw must be NumPy arrays, got {type(w).__name__} and {type(dw).__name__}")
        if w.shape != dw.shape:
            raise ValueError(f"{rule}: w has shape {w.shape} but dw has shape {dw.shape}")
    config = {**DEFAULTS[rule], **_OPTIONAL.get(rule, {}), **config}
    hyper = {}
    for key in _OPTIONAL.get(rule, {}):
        try:
            value = float(config[key])
        except (TypeError, ValueError):
            raise ValueError(f"{rule}: config[{key!r}] must be a number, got {config[key]!r}") from None
        if not (math.isfinite(value) and value >= 0.0):
            raise ValueError(f"{rule}: config[{key!r}] must be finite and >= 0, got {config[key]!r}")
        hyper[key] = value
    for key in DEFAULTS[rule]:
        try:
            value = float(config[key])
        except (TypeError, ValueError):
            raise ValueError(f"{rule}: config[{key!r}] must be a number, got {config[key]!r}") from None
        if key in _FACTORS:
            ok, bound = math.isfinite(value) and 0.0 <= value < 1.0, "in [0, 1)"
        else:
            ok, bound = math.isfinite(value) and value > 0.0, "finite and > 0"
        if not ok:
            raise ValueError(f"{rule}: config[{key!r}] must be {bound}, got {config[key]!r}")
        # Python floats, so a float32 w stays float32 (NumPy scalars would promote).
        hyper[key] = value
    return config, hyper


def _state(config: dict, key: str, w: np.ndarray, rule: str) -> np.ndarray:
    value = config.get(key)
    if value is None:
        return np.zeros_like(w)
    if not isinstance(value, np.ndarray) or value.shape != w.shape:
        shape = getattr(value, "shape", type(value).__name__)
        raise ValueError(f"{rule}: config[{key!r}] has shape {shape} but w has shape {w.shape}")
    return value


def sgd(w, dw, config=None):
    """Vanilla stochastic gradient descent: w -= learning_rate * dw."""
    config, h = _setup("sgd", w, dw, config)
    return w - h["learning_rate"] * dw, config


def sgd_momentum(w, dw, config=None):
    """SGD with momentum: v = momentum * v - learning_rate * dw; w += v."""
    config, h = _setup("sgd_momentum", w, dw, config)
    v = h["momentum"] * _state(config, "velocity", w, "sgd_momentum") - h["learning_rate"] * dw
    config["velocity"] = v
    return w + v, config


def rmsprop(w, dw, config=None):
    """RMSProp: a moving average of squared gradients scales the step per weight."""
    config, h = _setup("rmsprop", w, dw, config)
    cache = h["decay_rate"] * _state(config, "cache", w, "rmsprop") + (1 - h["decay_rate"]) * dw * dw
    config["cache"] = cache
    return w - h["learning_rate"] * dw / (np.sqrt(cache) + h["epsilon"]), config


def adam(w, dw, config=None):
    """Adam with bias correction; ``t`` counts the steps taken (incremented first)."""
    config, h = _setup("adam", w, dw, config)
    t = config.get("t", 0)
    if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or t < 0:
        raise ValueError(f"adam: config['t'] must be a non-negative integer, got {t!r}")
    t = int(t) + 1
    b1, b2 = h["beta1"], h["beta2"]
    m = b1 * _state(config, "m", w, "adam") + (1 - b1) * dw
    v = b2 * _state(config, "v", w, "adam") + (1 - b2) * dw * dw
    m_hat = m / (1 - b1 ** t)
    v_hat = v / (1 - b2 ** t)
    config.update(t=t, m=m, v=v)
    return w - h["learning_rate"] * m_hat / (np.sqrt(v_hat) + h["epsilon"]), config


def sgd_nesterov(w, dw, config=None):
    """SGD with Nesterov momentum (PyTorch's form) and optional L2 weight decay:
    g = dw + weight_decay * w; v = momentum * v + g; w -= learning_rate * (g + momentum * v).
    Give ``weight_decay`` 0 in the configs of parameters that must not decay (BN, biases)."""
    config, h = _setup("sgd_nesterov", w, dw, config)
    vel = _state(config, "velocity", w, "sgd_nesterov")
    if w.dtype == dw.dtype == vel.dtype and w.dtype in (np.float32, np.float64):
        # the same expressions in one compiled pass (bit for bit NumPy's: same dtype, same order, no
        # fused multiply-add); NumPy's five temporaries per parameter cost ~3x more on these small arrays
        t = w.dtype.type
        new_w, v = np.empty_like(w), np.empty_like(w)
        _nesterov(np.ascontiguousarray(w).reshape(-1), np.ascontiguousarray(dw).reshape(-1),
                  np.ascontiguousarray(vel).reshape(-1), t(h["learning_rate"]), t(h["momentum"]),
                  t(h["weight_decay"]), new_w.reshape(-1), v.reshape(-1))
        config["velocity"] = v
        return new_w, config
    g = dw + h["weight_decay"] * w if h["weight_decay"] else dw
    v = h["momentum"] * vel + g
    config["velocity"] = v
    return w - h["learning_rate"] * (g + h["momentum"] * v), config


@njit(cache=True)
def _nesterov(w, dw, vel, lr, momentum, weight_decay, new_w, new_v):
    # sgd_nesterov's NumPy expressions, element by element, in w's dtype (the scalars come in it)
    decay = weight_decay != 0
    for i in range(w.size):
        g = dw[i] + weight_decay * w[i] if decay else dw[i]
        v = momentum * vel[i] + g
        new_v[i] = v
        new_w[i] = w[i] - lr * (g + momentum * v)


UPDATE_RULES: dict[str, Callable] = {
    "sgd": sgd,
    "sgd_momentum": sgd_momentum,
    "rmsprop": rmsprop,
    "adam": adam,
    "sgd_nesterov": sgd_nesterov,
}


def register_update_rule(name: str, rule: Callable, defaults: dict | None = None) -> None:
    """Make ``rule`` available to the Solver (and checkpoints) under ``name``."""
    if not callable(rule):
        raise ValueError(f"update rule {name!r} must be callable, got {type(rule).__name__}")
    UPDATE_RULES[name] = rule
    if defaults is not None:
        DEFAULTS[name] = dict(defaults)


def get_update_rule(name: str) -> Callable:
    if name not in UPDATE_RULES:
        raise ValueError(f"unknown update rule {name!r}; choose one of {', '.join(UPDATE_RULES)}")
    return UPDATE_RULES[name]
