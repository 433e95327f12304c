"""Argument validation shared by every backend.

Each layer's Python wrapper calls one of these before any kernel runs, so a bad
input is reported as a ``ValueError`` that names the shapes and parameters the
user passed, never as an ``IndexError`` from deep inside a loop or a kernel.

The functions only read ``.shape``, ``.ndim`` and ``.dtype``, so they work on
NumPy arrays and on CUDA device arrays alike.  They also compute the output
geometry (the one place where the output-size convention lives):

    out = 1 + (H + 2*pad - HH) // stride,   and the stride must tile exactly.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class ConvGeometry(NamedTuple):
    N: int
    C: int
    H: int
    W: int
    F: int
    HH: int
    WW: int
    stride: int
    pad: int
    H_out: int
    W_out: int


class PoolGeometry(NamedTuple):
    N: int
    C: int
    H: int
    W: int
    pool_height: int
    pool_width: int
    stride: int
    H_out: int
    W_out: int


class BatchNormParams(NamedTuple):
    mode: str
    eps: float
    momentum: float


def _shape(a: Any) -> tuple:
    return tuple(int(s) for s in a.shape)


def check_array(name: str, a: Any, ndim: int | tuple[int, ...] | None = None) -> None:
    """``a`` must be an array of float32/float64 with the given rank (any rank >= 1
    when ``ndim`` is None: every layer's arrays have a batch axis, so a 0-d array is
    refused here, the same in every backend)."""
    if not hasattr(a, "shape") or not hasattr(a, "dtype"):
        raise ValueError(f"{name} must be an array, got {type(a).__name__} (convert it with numpy.asarray)")
    if np.dtype(a.dtype) not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be float32 or float64, got dtype {a.dtype} with shape {_shape(a)}")
    if ndim is None and a.ndim == 0:
        raise ValueError(f"{name} must have at least one dimension, got a 0-d array (reshape it to shape (1,))")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else ndim
        if a.ndim not in allowed:
            want = " or ".join(str(d) for d in allowed)
            raise ValueError(f"{name} must have {want} dimensions, got shape {_shape(a)}")


def common_dtype(**arrays: Any) -> np.dtype:
    """All arrays share one float dtype (no silent float32/float64 mixes)."""
    dtypes = {name: np.dtype(a.dtype) for name, a in arrays.items()}
    if len(set(dtypes.values())) > 1:
        listing = ", ".join(f"{n}={d}" for n, d in dtypes.items())
        raise ValueError(f"arrays must share one dtype, got {listing}")
    return next(iter(dtypes.values()))


def _int_param(params: Any, owner: str, key: str, minimum: int) -> int:
    if not isinstance(params, dict):
        raise ValueError(f"{owner} must be a dict, got {type(params).__name__}")
    if key not in params:
        raise ValueError(f"{owner} is missing {key!r} (got keys {sorted(params)})")
    value = params[key]
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
            value = int(value)
        else:
            raise ValueError(f"{owner}[{key!r}] must be an integer, got {value!r}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{owner}[{key!r}] must be >= {minimum}, got {value}")
    return value


def _float_param(params: dict, owner: str, key: str, default: float, lo: float, hi: float) -> float:
    value = params.get(key, default)
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{owner}[{key!r}] must be a number, got {value!r}") from None
    if not math.isfinite(value) or not lo <= value <= hi:
        raise ValueError(f"{owner}[{key!r}] must be finite and in [{lo}, {hi}], got {value!r}")
    return value


def _tiled_size(axis: str, size: int, pad: int, window: int, stride: int, what: str) -> int:
    span = size + 2 * pad - window
    if span < 0:
        raise ValueError(
            f"{what} {axis} {window} is larger than the {'padded ' if pad else ''}input {axis} "
            f"{size + 2 * pad} (input {size}, pad {pad})"
        )
    if span % stride:
        raise ValueError(
            f"stride {stride} does not tile the input along {axis}: "
            f"({axis} {size} + 2*pad {pad} - {what} {window}) = {span} is not a multiple of {stride}"
        )
    return 1 + span // stride


def conv_geometry(x: Any, w: Any, b: Any, conv_param: Any) -> ConvGeometry:
    """Validate a convolution call and return its geometry."""
    check_array("x", x, 4)
    check_array("w", w, 4)
    check_array("b", b, 1)
    common_dtype(x=x, w=w, b=b)
    N, C, H, W = _shape(x)
    F, Cw, HH, WW = _shape(w)
    if Cw != C:
        raise ValueError(f"channel mismatch: x has shape {_shape(x)} (C={C}) but w has shape {_shape(w)} (C={Cw})")
    if _shape(b) != (F,):
        raise ValueError(f"b must have shape ({F},) to match w {_shape(w)}, got {_shape(b)}")
    if min(N, C, H, W, F, HH, WW) < 1:
        raise ValueError(f"empty input: x {_shape(x)}, w {_shape(w)}")
    stride = _int_param(conv_param, "conv_param", "stride", 1)
    pad = _int_param(conv_param, "conv_param", "pad", 0)
    H_out = _tiled_size("height", H, pad, HH, stride, "filter")
    W_out = _tiled_size("width", W, pad, WW, stride, "filter")
    return ConvGeometry(N, C, H, W, F, HH, WW, stride, pad, H_out, W_out)


def pool_geometry(x: Any, pool_param: Any) -> PoolGeometry:
    """Validate a max-pool call and return its geometry."""
    check_array("x", x, 4)
    N, C, H, W = _shape(x)
    if min(N, C, H, W) < 1:
        raise ValueError(f"empty input: x {_shape(x)}")
    ph = _int_param(pool_param, "pool_param", "pool_height", 1)
    pw = _int_param(pool_param, "pool_param", "pool_width", 1)
    stride = _int_param(pool_param, "pool_param", "stride", 1)
    H_out = _tiled_size("height", H, 0, ph, stride, "pool")
    W_out = _tiled_size("width", W, 0, pw, stride, "pool")
    return PoolGeometry(N, C, H, W, ph, pw, stride, H_out, W_out)


def batchnorm_params(x: Any, gamma: Any, beta: Any, bn_param: Any, spatial: bool) -> BatchNormParams:
    """Validate a (spatial) batch-norm call; returns mode, eps and momentum.

    x must hold at least one sample and one feature, in either mode (as conv and
    pool, batch norm refuses an empty batch rather than return an empty one). The
    running statistics, when present in ``bn_param``, must be float arrays (NumPy,
    or device arrays on cuda; a list is refused, naming the key) of one value per
    feature; they are created by the backend on first use and used in x's dtype.
    """
    check_array("x", x, 4 if spatial else 2)
    check_array("gamma", gamma, 1)
    check_array("beta", beta, 1)
    common_dtype(x=x, gamma=gamma, beta=beta)
    features = int(x.shape[1])
    what = "channels C" if spatial else "features D"
    for name, a in (("gamma", gamma), ("beta", beta)):
        if _shape(a) != (features,):
            raise ValueError(f"{name} must have shape ({features},) for x of shape {_shape(x)} ({what}), got {_shape(a)}")
    if not isinstance(bn_param, dict):
        raise ValueError(f"bn_param must be a dict, got {type(bn_param).__name__}")
    mode = bn_param.get("mode", "train")
    if mode not in ("train", "test"):
        raise ValueError(f"bn_param['mode'] must be 'train' or 'test', got {mode!r}")
    eps = _float_param(bn_param, "bn_param", "eps", 1e-5, 0.0, math.inf)
    if eps <= 0:
        raise ValueError(f"bn_param['eps'] must be > 0, got {eps!r}")
    momentum = _float_param(bn_param, "bn_param", "momentum", 0.9, 0.0, 1.0)
    if math.prod(_shape(x)) == 0:
        raise ValueError(f"batch norm needs a non-empty x (at least one sample and one of the {what}), "
                         f"got shape {_shape(x)}")
    for key in ("running_mean", "running_var"):
        r = bn_param.get(key)
        if r is None:
            continue
        check_array(f"bn_param[{key!r}]", r)
        if _shape(r) != (features,):
            raise ValueError(f"bn_param[{key!r}] has shape {_shape(r)} but x {_shape(x)} has {features} {what}")
    if mode == "test" and (bn_param.get("running_mean") is None or bn_param.get("running_var") is None):
        raise ValueError("batch norm in test mode needs bn_param['running_mean'] and ['running_var'] (run train mode first)")
    return BatchNormParams(mode, eps, momentum)


def linear_shapes(x: Any, w: Any, b: Any) -> tuple[int, int, int]:
    """Validate a linear layer call; x is flattened to (N, D). Returns (N, D, M)."""
    check_array("x", x)
    check_array("w", w, 2)
    check_array("b", b, 1)
    common_dtype(x=x, w=w, b=b)
    N = int(x.shape[0])
    D = int(np.prod(x.shape[1:], dtype=np.int64)) if x.ndim > 1 else 1
    Dw, M = _shape(w)
    if Dw != D:
        raise ValueError(f"x of shape {_shape(x)} flattens to (N={N}, D={D}) but w has shape {_shape(w)} (D={Dw})")
    if _shape(b) != (M,):
        raise ValueError(f"b must have shape ({M},) to match w {_shape(w)}, got {_shape(b)}")
    return N, D, M


def softmax_inputs(x: Any, y: Any) -> tuple[int, int]:
    """Validate scores (N, C) and integer labels (N,) in [0, C). Returns (N, C)."""
    check_array("x", x, 2)
    N, C = _shape(x)
    y_arr = np.asarray(y)
    if y_arr.ndim != 1 or y_arr.shape[0] != N:
        raise ValueError(f"y must have shape ({N},) to match scores {_shape(x)}, got {tuple(y_arr.shape)}")
    if not np.issubdtype(y_arr.dtype, np.integer):
        raise ValueError(f"y must hold integer class labels, got dtype {y_arr.dtype}")
    if N and (y_arr.min() < 0 or y_arr.max() >= C):
        raise ValueError(f"labels must be in [0, {C}), got min {y_arr.min()} and max {y_arr.max()}")
    if N < 1:
        raise ValueError(f"softmax loss needs at least one sample, got scores of shape {_shape(x)}")
    return N, C


def check_dout(dout: Any, shape: tuple, dtype: np.dtype, layer: str) -> None:
    """The upstream gradient must match the forward output."""
    check_array("dout", dout)
    if _shape(dout) != tuple(shape):
        raise ValueError(f"{layer}.backward: dout has shape {_shape(dout)} but the forward output had shape {tuple(shape)}")
    if np.dtype(dout.dtype) != np.dtype(dtype):
        raise ValueError(f"{layer}.backward: dout has dtype {dout.dtype} but the forward pass ran in {np.dtype(dtype)}")
