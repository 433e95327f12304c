"""Sandwich layers, written once over any backend.

>>> from numbaconv.layers import sandwiches
>>> L = sandwiches("reference")
>>> # out, cache = L.Conv_ReLU_Pool.forward(x, w, b, conv_param, pool_param)
>>> # dx, dw, db = L.Conv_ReLU_Pool.backward(dout, cache)
"""
from __future__ import annotations

import functools
from types import SimpleNamespace

from .backends import get_backend


class _Sandwich:
    def __init__(self, backend):
        self.nb = backend


class Conv_ReLU(_Sandwich):
    def forward(self, x, w, b, conv_param):
        a, conv_cache = self.nb.Conv.forward(x, w, b, conv_param)
        out, relu_cache = self.nb.ReLU.forward(a)
        return out, (conv_cache, relu_cache)

    def backward(self, dout, cache):
        conv_cache, relu_cache = cache
        return self.nb.Conv.backward(self.nb.ReLU.backward(dout, relu_cache), conv_cache)


class Conv_ReLU_Pool(_Sandwich):
    def forward(self, x, w, b, conv_param, pool_param):
        a, conv_cache = self.nb.Conv.forward(x, w, b, conv_param)
        s, relu_cache = self.nb.ReLU.forward(a)
        out, pool_cache = self.nb.MaxPool.forward(s, pool_param)
        return out, (conv_cache, relu_cache, pool_cache)

    def backward(self, dout, cache):
        conv_cache, relu_cache, pool_cache = cache
        ds = self.nb.MaxPool.backward(dout, pool_cache)
        return self.nb.Conv.backward(self.nb.ReLU.backward(ds, relu_cache), conv_cache)


class Linear_ReLU(_Sandwich):
    def forward(self, x, w, b):
        a, fc_cache = self.nb.Linear.forward(x, w, b)
        out, relu_cache = self.nb.ReLU.forward(a)
        return out, (fc_cache, relu_cache)

    def backward(self, dout, cache):
        fc_cache, relu_cache = cache
        return self.nb.Linear.backward(self.nb.ReLU.backward(dout, relu_cache), fc_cache)


class Conv_BatchNorm_ReLU(_Sandwich):
    def forward(self, x, w, b, gamma, beta, conv_param, bn_param):
        a, conv_cache = self.nb.Conv.forward(x, w, b, conv_param)
        an, bn_cache = self.nb.SpatialBatchNorm.forward(a, gamma, beta, bn_param)
        out, relu_cache = self.nb.ReLU.forward(an)
        return out, (conv_cache, bn_cache, relu_cache)

    def backward(self, dout, cache):
        """Returns (dx, dw, db, dgamma, dbeta)."""
        conv_cache, bn_cache, relu_cache = cache
        dan = self.nb.ReLU.backward(dout, relu_cache)
        da, dgamma, dbeta = self.nb.SpatialBatchNorm.backward(dan, bn_cache)
        dx, dw, db = self.nb.Conv.backward(da, conv_cache)
        return dx, dw, db, dgamma, dbeta


class Conv_BatchNorm_ReLU_Pool(_Sandwich):
    def forward(self, x, w, b, gamma, beta, conv_param, bn_param, pool_param):
        a, conv_cache = self.nb.Conv.forward(x, w, b, conv_param)
        an, bn_cache = self.nb.SpatialBatchNorm.forward(a, gamma, beta, bn_param)
        s, relu_cache = self.nb.ReLU.forward(an)
        out, pool_cache = self.nb.MaxPool.forward(s, pool_param)
        return out, (conv_cache, bn_cache, relu_cache, pool_cache)

    def backward(self, dout, cache):
        """Returns (dx, dw, db, dgamma, dbeta)."""
        conv_cache, bn_cache, relu_cache, pool_cache = cache
        ds = self.nb.MaxPool.backward(dout, pool_cache)
        dan = self.nb.ReLU.backward(ds, relu_cache)
        da, dgamma, dbeta = self.nb.SpatialBatchNorm.backward(dan, bn_cache)
        dx, dw, db = self.nb.Conv.backward(da, conv_cache)
        return dx, dw, db, dgamma, dbeta


class Linear_BatchNorm_ReLU(_Sandwich):
    def forward(self, x, w, b, gamma, beta, bn_param):
        a, fc_cache = self.nb.Linear.forward(x, w, b)
        an, bn_cache = self.nb.BatchNorm.forward(a, gamma, beta, bn_param)
        out, relu_cache = self.nb.ReLU.forward(an)
        return out, (fc_cache, bn_cache, relu_cache)

    def backward(self, dout, cache):
        """Returns (dx, dw, db, dgamma, dbeta)."""
        fc_cache, bn_cache, relu_cache = cache
        dan = self.nb.ReLU.backward(dout, relu_cache)
        da, dgamma, dbeta = self.nb.BatchNorm.backward(dan, bn_cache)
        dx, dw, db = self.nb.Linear.backward(da, fc_cache)
        return dx, dw, db, dgamma, dbeta


SANDWICHES = (Conv_ReLU, Conv_ReLU_Pool, Linear_ReLU, Conv_BatchNorm_ReLU, Conv_BatchNorm_ReLU_Pool, Linear_BatchNorm_ReLU)


@functools.lru_cache(maxsize=None)
def _sandwiches_for(name: str) -> SimpleNamespace:
    nb = get_backend(name)
    return SimpleNamespace(**{cls.__name__: cls(nb) for cls in SANDWICHES})


def sandwiches(backend) -> SimpleNamespace:
    """All sandwich layers bound to one backend (a name or a backend module)."""
    name = backend if isinstance(backend, str) else backend.NAME
    return _sandwiches_for(name)


def fastest(backend, name: str):
    """Sandwich ``name`` on ``backend``: the backend's own fused implementation when it
    exports one under that name (cpu: Conv_BatchNorm_ReLU[_Pool]), else the composition
    above. Models train with it and gradcheck checks it, so both see the same code."""
    nb = get_backend(backend) if isinstance(backend, str) else backend
    return getattr(nb, name, None) or getattr(sandwiches(nb), name)
