"""Weight initialisation.

>>> import numpy as np
>>> w = kaiming_initializer(3, 8, K=3, rng=np.random.default_rng(0))
>>> w.shape, w.dtype
((8, 3, 3, 3), dtype('float32'))
"""
from __future__ import annotations

import math

import numpy as np


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def kaiming_initializer(Din: int, Dout: int, K: int | None = None, relu: bool = True,
                        dtype=np.float32, rng: np.random.Generator | None = None) -> np.ndarray:
    """Kaiming (He) normal initialisation: std = sqrt(gain / fan_in).

    gain is 2 for a layer followed by a ReLU (half its inputs are zeroed, so the
    variance is doubled back), 1 otherwise. With ``K`` None this is a linear
    weight (Din, Dout) with fan_in = Din; with ``K`` a conv weight
    (Dout, Din, K, K) with fan_in = Din * K * K.
    """
    Din = _positive_int("Din", Din)
    Dout = _positive_int("Dout", Dout)
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    rng = np.random.default_rng() if rng is None else rng
    gain = 2.0 if relu else 1.0
    if K is None:
        shape, fan_in = (Din, Dout), Din
    else:
        K = _positive_int("K", K)
        shape, fan_in = (Dout, Din, K, K), Din * K * K
    return (rng.standard_normal(shape) * math.sqrt(gain / fan_in)).astype(dtype)
