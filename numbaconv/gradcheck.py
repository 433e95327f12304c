"""Numeric gradient checking: centered differences, sparse checks, relative error,
and a check of every layer of a backend (what ``numbaconv gradcheck`` runs).

>>> import numpy as np
>>> f = lambda x: float(np.sum(x ** 2))
>>> x = np.array([1.0, -2.0])
>>> eval_numerical_gradient(f, x, verbose=False)
array([ 2., -4.])
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .backends import get_backend

# The assignment's thresholds for float64 against centered differences (h = 1e-5).
THRESHOLDS_FLOAT64 = {
    "Conv": 1e-8,
    "MaxPool": 1e-10,
    "BatchNorm": 1e-9,
    "BatchNorm (alt)": 1e-9,
    "SpatialBatchNorm": 1e-6,
    "SpatialBatchNorm (alt)": 1e-6,
    "Linear": 1e-8,
    "ReLU": 1e-8,
    "softmax_loss": 1e-8,
    "sandwich": 1e-7,
}
# float32 analytic gradients are compared with a float64 numeric gradient of the
# same backend; single precision bounds the agreement to about 1e-4 relative.
THRESHOLD_FLOAT32 = 1e-3

# The numeric oracle per kind of function: (step h, stencil order). Linear maps
# (conv, linear) have no truncation error, so a large step only cuts rounding
# noise; smooth ones (batch norm, softmax) use the five-point stencil; anything
# with a kink (max, ReLU, the sandwiches) keeps h = 1e-5 so no step crosses one.
NUMERIC_STEP = {
    "Conv": (1e-3, 2),
    "Linear": (1e-3, 2),
    "BatchNorm": (1e-3, 4),
    "BatchNorm (alt)": (1e-3, 4),
    "SpatialBatchNorm": (1e-3, 4),
    "SpatialBatchNorm (alt)": (1e-3, 4),
    "softmax_loss": (1e-3, 4),
}
DEFAULT_STEP = (1e-5, 2)


def rel_error(x, y) -> float:
    """max |x - y| / max(1e-8, |x| + |y|), elementwise; the assignment's measure."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    return float(np.max(np.abs(x - y) / np.maximum(1e-8, np.abs(x) + np.abs(y)))) if x.size else 0.0


def _stencil(order: int) -> tuple[tuple[float, float], ...]:
    """(offset in units of h, weight) pairs of the centered difference of that order."""
    if order == 2:
        return ((1.0, 0.5), (-1.0, -0.5))
    if order == 4:  # five-point stencil: truncation error O(h^4) instead of O(h^2)
        return ((2.0, -1 / 12), (1.0, 8 / 12), (-1.0, -8 / 12), (-2.0, 1 / 12))
    raise ValueError(f"order must be 2 or 4, got {order}")


def eval_numerical_gradient(f: Callable, x: np.ndarray, verbose: bool = True, h: float = 1e-5,
                            order: int = 2) -> np.ndarray:
    """Centered-difference gradient of a scalar function f at x (x is restored)."""
    stencil = _stencil(order)
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"], op_flags=["readwrite"])
    while not it.finished:
        ix = it.multi_index
        old = x[ix]
        total = 0.0
        for offset, weight in stencil:
            x[ix] = old + offset * h
            total += weight * f(x)
        x[ix] = old
        grad[ix] = total / h
        if verbose:
            print(ix, grad[ix])
        it.iternext()
    return grad


def eval_numerical_gradient_array(f: Callable, x: np.ndarray, df: np.ndarray, h: float = 1e-5,
                                  order: int = 2) -> np.ndarray:
    """Centered-difference gradient of sum(f(x) * df) for an array-valued f."""
    stencil = _stencil(order)
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"], op_flags=["readwrite"])
    while not it.finished:
        ix = it.multi_index
        old = x[ix]
        # Combine the outputs before reducing: outputs that do not depend on x[ix]
        # cancel exactly instead of adding rounding noise.
        combined = 0.0
        for offset, weight in stencil:
            x[ix] = old + offset * h
            combined = combined + weight * np.array(f(x), dtype=np.float64, copy=True)
        x[ix] = old
        grad[ix] = np.sum(combined * df) / h
        it.iternext()
    return grad


def grad_check_sparse(f: Callable, x: np.ndarray, analytic_grad: np.ndarray, num_checks: int = 10,
                      h: float = 1e-5, seed: int | None = None) -> list[float]:
    """Compare ``analytic_grad`` with centered differences at ``num_checks`` random
    coordinates of x; returns the relative error at each."""
    rng = np.random.default_rng(seed)
    errors = []
    for _ in range(num_checks):
        ix = tuple(int(rng.integers(m)) for m in x.shape)
        old = x[ix]
        x[ix] = old + h
        fxph = f(x)
        x[ix] = old - h
        fxmh = f(x)
        x[ix] = old
        numeric = (fxph - fxmh) / (2 * h)
        errors.append(rel_error(numeric, analytic_grad[ix]))
    return errors


@dataclass(frozen=True)
class CheckResult:
    layer: str
    gradient: str
    error: float
    threshold: float

    @property
    def passed(self) -> bool:
        return bool(np.isfinite(self.error) and self.error < self.threshold)


@dataclass
class _Case:
    layer: str
    inputs: dict            # name -> float64 array
    forward: Callable       # (**inputs) -> (out, cache)
    backward: Callable      # (dout, cache) -> gradient or tuple of gradients
    kind: str = "sandwich"  # key into THRESHOLDS_FLOAT64
    scalar: bool = False    # forward returns (loss, dx): the gradient is dx
    # Inputs whose true gradient is identically zero (a bias right before batch
    # norm, which subtracts it again): relative error is meaningless for them, so
    # they are checked by the absolute difference, against the same threshold.
    zero_grad: tuple = ()


def _cases(backend_name: str, rng: np.random.Generator) -> list[_Case]:
    from .layers import fastest, sandwiches

    nb = get_backend(backend_name)
    L = sandwiches(backend_name)
    # conv-BN-ReLU(-pool) as the models run it: a backend's fused layer where it has one
    CBR, CBRP = (fastest(nb, n) for n in ("Conv_BatchNorm_ReLU", "Conv_BatchNorm_ReLU_Pool"))
    r = rng.standard_normal
    conv = {"stride": 1, "pad": 1}
    conv2 = {"stride": 2, "pad": 1}
    pool = {"pool_height": 2, "pool_width": 2, "stride": 2}

    labels = rng.integers(0, 10, size=6)
    # A fresh bn_param on every call: train mode ignores the running statistics,
    # and the float64 numeric passes must not share float32 running buffers.
    def bn():
        return {"mode": "train"}

    cases = [
        _Case("Conv 3x3 stride 1 pad 1", {"x": r((4, 3, 5, 5)), "w": r((2, 3, 3, 3)), "b": r(2)},
              lambda x, w, b: nb.Conv.forward(x, w, b, conv), nb.Conv.backward, "Conv"),
        _Case("Conv 3x3 stride 2 pad 1", {"x": r((2, 3, 7, 7)), "w": r((3, 3, 3, 3)), "b": r(3)},
              lambda x, w, b: nb.Conv.forward(x, w, b, conv2), nb.Conv.backward, "Conv"),
        _Case("MaxPool 2x2 stride 2", {"x": r((3, 2, 8, 8))},
              lambda x: nb.MaxPool.forward(x, pool), nb.MaxPool.backward, "MaxPool"),
        _Case("MaxPool 3x2 stride 1", {"x": r((2, 2, 5, 4))},
              lambda x: nb.MaxPool.forward(x, {"pool_height": 3, "pool_width": 2, "stride": 1}),
              nb.MaxPool.backward, "MaxPool"),
    ]
    bn_x = {"x": r((4, 5)), "gamma": 1 + 0.1 * r(5), "beta": r(5)}
    sbn_x = {"x": r((2, 3, 4, 5)), "gamma": 1 + 0.1 * r(3), "beta": r(3)}
    cases += [
        _Case("BatchNorm", dict(bn_x), lambda x, gamma, beta: nb.BatchNorm.forward(x, gamma, beta, bn()),
              nb.BatchNorm.backward, "BatchNorm"),
        _Case("BatchNorm backward_alt", dict(bn_x), lambda x, gamma, beta: nb.BatchNorm.forward(x, gamma, beta, bn()),
              nb.BatchNorm.backward_alt, "BatchNorm (alt)"),
        _Case("SpatialBatchNorm", dict(sbn_x),
              lambda x, gamma, beta: nb.SpatialBatchNorm.forward(x, gamma, beta, bn()),
              nb.SpatialBatchNorm.backward, "SpatialBatchNorm"),
        _Case("SpatialBatchNorm backward_alt", dict(sbn_x),
              lambda x, gamma, beta: nb.SpatialBatchNorm.forward(x, gamma, beta, bn()),
              nb.SpatialBatchNorm.backward_alt, "SpatialBatchNorm (alt)"),
        _Case("Linear", {"x": r((3, 2, 2, 3)), "w": r((12, 5)), "b": r(5)},
              nb.Linear.forward, nb.Linear.backward, "Linear"),
        _Case("ReLU", {"x": r((3, 4, 5))}, nb.ReLU.forward, nb.ReLU.backward, "ReLU"),
        _Case("softmax_loss", {"x": 0.1 * r((6, 10))},
              lambda x: nb.softmax_loss(x, labels), None, "softmax_loss", scalar=True),
    ]

    sx = {"x": r((2, 3, 4, 4)), "w": r((3, 3, 3, 3)), "b": r(3)}
    sg = {"gamma": 1 + 0.1 * r(3), "beta": r(3)}
    lx = {"x": r((8, 3, 4)), "w": r((12, 10)), "b": r(10)}
    lg = {"gamma": 1 + 0.1 * r(10), "beta": r(10)}
    cases += [
        _Case("Conv_ReLU", dict(sx), lambda x, w, b: L.Conv_ReLU.forward(x, w, b, conv), L.Conv_ReLU.backward),
        _Case("Conv_ReLU_Pool", dict(sx), lambda x, w, b: L.Conv_ReLU_Pool.forward(x, w, b, conv, pool),
              L.Conv_ReLU_Pool.backward),
        _Case("Linear_ReLU", dict(lx), L.Linear_ReLU.forward, L.Linear_ReLU.backward),
        _Case("Conv_BatchNorm_ReLU", {**sx, **sg},
              lambda x, w, b, gamma, beta: CBR.forward(x, w, b, gamma, beta, conv, bn()),
              CBR.backward, zero_grad=("b",)),
        _Case("Conv_BatchNorm_ReLU_Pool", {**sx, **sg},
              lambda x, w, b, gamma, beta: CBRP.forward(x, w, b, gamma, beta, conv, bn(), pool),
              CBRP.backward, zero_grad=("b",)),
        _Case("Linear_BatchNorm_ReLU", {**lx, **lg},
              lambda x, w, b, gamma, beta: L.Linear_BatchNorm_ReLU.forward(x, w, b, gamma, beta, bn()),
              L.Linear_BatchNorm_ReLU.backward, zero_grad=("b",)),
    ]
    return cases


def _run_case(case: _Case, spec: _Case, dtype: np.dtype, rng: np.random.Generator, h: float,
              order: int) -> list[CheckResult]:
    """Analytic gradients of ``case`` (the backend under test, in ``dtype``) against
    float64 numeric gradients through ``spec``, the same case on the reference backend."""
    threshold = THRESHOLDS_FLOAT64[case.kind] if dtype == np.float64 else THRESHOLD_FLOAT32
    inputs = {k: v.astype(dtype) for k, v in case.inputs.items()}
    names = list(inputs)

    def numeric_forward(name):
        return lambda v: spec.forward(**{**spec.inputs, name: v})[0]

    if case.scalar:
        _, analytic = case.forward(**inputs)
        numeric = eval_numerical_gradient(numeric_forward(names[0]), spec.inputs[names[0]].copy(),
                                          verbose=False, h=h, order=order)
        return [CheckResult(case.layer, "d" + names[0], rel_error(analytic, numeric), threshold)]

    out, cache = case.forward(**inputs)
    dout = rng.standard_normal(np.shape(out))
    grads = case.backward(dout.astype(dtype), cache)
    grads = grads if isinstance(grads, tuple) else (grads,)
    results = []
    for name, analytic in zip(names, grads):
        numeric = eval_numerical_gradient_array(numeric_forward(name), spec.inputs[name].copy(), dout,
                                                h=h, order=order)
        if name in case.zero_grad:
            error = float(np.max(np.abs(np.asarray(analytic, dtype=np.float64) - numeric)))
            results.append(CheckResult(case.layer, f"d{name} (=0, abs)", error, threshold))
        else:
            results.append(CheckResult(case.layer, "d" + name, rel_error(analytic, numeric), threshold))
    return results


def check_backend(backend: str = "reference", dtype: str | np.dtype = "float64", seed: int = 0) -> list[CheckResult]:
    """Check every layer and sandwich layer of ``backend`` against numeric gradients.

    The numeric gradients are always centered differences through the reference
    backend's forward pass in float64 (the spec, as DESIGN.md says: the reference
    is checked against numeric gradients, the others against the reference).
    That keeps the oracle independent of the kernels under test, makes the
    check cheap for slow forward passes (the CUDA simulator), and means a fast
    backend passes exactly when its analytic gradients match the spec's.
    float64: the assignment's thresholds. float32: THRESHOLD_FLOAT32.
    """
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    get_backend(backend)   # an unavailable backend fails here, before any case is built
    rng = np.random.default_rng(seed)
    # Both case lists draw the same inputs: build the spec's from a copy of the generator.
    spec_cases = _cases("reference", copy.deepcopy(rng))
    results = []
    for case, spec in zip(_cases(backend, rng), spec_cases):
        results += _run_case(case, spec, dtype, rng, *NUMERIC_STEP.get(case.kind, DEFAULT_STEP))
    return results
