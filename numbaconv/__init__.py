"""numbaconv: a hand-written CNN library with three interchangeable backends.

>>> import numpy as np
>>> from numbaconv import get_backend
>>> nb = get_backend("reference")
>>> x = np.random.default_rng(0).standard_normal((2, 3, 8, 8))
>>> w = np.random.default_rng(1).standard_normal((4, 3, 3, 3))
>>> out, cache = nb.Conv.forward(x, w, np.zeros(4), {"stride": 1, "pad": 1})
>>> out.shape
(2, 4, 8, 8)
"""
from .backends import BACKENDS, get_backend

__version__ = "0.1.0"

__all__ = ["BACKENDS", "get_backend", "__version__"]
