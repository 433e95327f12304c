"""Batch normalisation, written as the staged computation graph.

Conventions (kept identical in every backend):
  * biased batch variance, eps added inside the square root;
  * running = momentum * running + (1 - momentum) * batch, stats created as
    zeros in bn_param on first use;
  * test mode normalises with the running statistics.
"""
import numpy as np

from ..checks import batchnorm_params, check_dout


def _running_stats(bn_param, D, dtype):
    """The running statistics in x's dtype (created as zeros on first use)."""
    for key in ("running_mean", "running_var"):
        if bn_param.get(key) is None:
            bn_param[key] = np.zeros(D, dtype=dtype)
    return (np.asarray(bn_param["running_mean"], dtype=dtype), np.asarray(bn_param["running_var"], dtype=dtype))


class BatchNorm:
    @staticmethod
    def forward(x, gamma, beta, bn_param):
        """x (N, D); gamma, beta (D,); bn_param {"mode", "eps", "momentum", running stats}."""
        mode, eps, momentum = batchnorm_params(x, gamma, beta, bn_param, spatial=False)
        running_mean, running_var = _running_stats(bn_param, x.shape[1], x.dtype)
        if mode == "train":
            mu = x.mean(axis=0)
            xc = x - mu
            var = (xc ** 2).mean(axis=0)
            std = np.sqrt(var + eps)
            inv_std = 1.0 / std
            xhat = xc * inv_std
            bn_param["running_mean"] = (momentum * running_mean + (1 - momentum) * mu).astype(x.dtype)
            bn_param["running_var"] = (momentum * running_var + (1 - momentum) * var).astype(x.dtype)
        else:
            xc = x - running_mean
            std = np.sqrt(running_var + eps)
            inv_std = 1.0 / std
            xhat = xc * inv_std
        out = gamma * xhat + beta
        return out, (mode, xhat, xc, std, inv_std, gamma)

    @staticmethod
    def backward(dout, cache):
        """Backprop node by node through the graph of forward. Returns (dx, dgamma, dbeta)."""
        mode, xhat, xc, std, inv_std, gamma = cache
        check_dout(dout, xhat.shape, xhat.dtype, "BatchNorm")
        N = xhat.shape[0]
        dbeta = dout.sum(axis=0)                 # out = gamma * xhat + beta
        dgamma = (dout * xhat).sum(axis=0)
        dxhat = dout * gamma
        if mode == "test":                       # the statistics are constants
            return dxhat * inv_std, dgamma, dbeta
        dinv_std = (dxhat * xc).sum(axis=0)      # xhat = xc * inv_std
        dxc = dxhat * inv_std
        dstd = -dinv_std / std ** 2              # inv_std = 1 / std
        dvar = 0.5 * dstd / std                  # std = sqrt(var + eps)
        dxc = dxc + 2.0 * xc * dvar / N          # var = mean(xc ** 2)
        dmu = -dxc.sum(axis=0)                   # xc = x - mu
        dx = dxc + dmu / N                       # mu = mean(x)
        return dx, dgamma, dbeta

    @staticmethod
    def backward_alt(dout, cache):
        """The same gradient in simplified closed form:

        dx = inv_std / N * (N * dxhat - sum(dxhat) - xhat * sum(dxhat * xhat))
        """
        mode, xhat, xc, std, inv_std, gamma = cache
        check_dout(dout, xhat.shape, xhat.dtype, "BatchNorm")
        N = xhat.shape[0]
        dbeta = dout.sum(axis=0)
        dgamma = (dout * xhat).sum(axis=0)
        dxhat = dout * gamma
        if mode == "test":
            return dxhat * inv_std, dgamma, dbeta
        dx = inv_std / N * (N * dxhat - dxhat.sum(axis=0) - xhat * (dxhat * xhat).sum(axis=0))
        return dx, dgamma, dbeta


def _channels_last(x):
    """(N, C, H, W) -> (N*H*W, C): spatial batch norm is batch norm per channel."""
    C = x.shape[1]
    return x.transpose(0, 2, 3, 1).reshape(-1, C)


def _channels_first(x2, shape):
    N, C, H, W = shape
    return x2.reshape(N, H, W, C).transpose(0, 3, 1, 2).copy()


class SpatialBatchNorm:
    @staticmethod
    def forward(x, gamma, beta, bn_param):
        """x (N, C, H, W); gamma, beta (C,); statistics over (N, H, W) per channel."""
        batchnorm_params(x, gamma, beta, bn_param, spatial=True)
        out2, cache = BatchNorm.forward(_channels_last(x), gamma, beta, bn_param)
        return _channels_first(out2, x.shape), (cache, x.shape)

    @staticmethod
    def backward(dout, cache):
        bn_cache, shape = cache
        check_dout(dout, shape, bn_cache[1].dtype, "SpatialBatchNorm")
        dx2, dgamma, dbeta = BatchNorm.backward(_channels_last(dout), bn_cache)
        return _channels_first(dx2, shape), dgamma, dbeta

    @staticmethod
    def backward_alt(dout, cache):
        bn_cache, shape = cache
        check_dout(dout, shape, bn_cache[1].dtype, "SpatialBatchNorm")
        dx2, dgamma, dbeta = BatchNorm.backward_alt(_channels_last(dout), bn_cache)
        return _channels_first(dx2, shape), dgamma, dbeta
