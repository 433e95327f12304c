"""Convolutional networks with the assignment's contract.

``model.params`` maps names (W1, b1, ..., gamma1, beta1, ...) to arrays;
``model.loss(X)`` returns class scores (N, C) in test mode and
``model.loss(X, y)`` returns ``(loss, grads)`` in train mode, with grads keyed
like params. L2 regularisation adds ``reg * sum(W**2)`` over weights only (its
gradient ``2 * reg * W``). Layers come from any backend (``backend="cpu"`` by
default, ``"reference"`` for the loop-based spec, ``"cuda"``).

>>> import numpy as np
>>> net = DeepConvNet(input_dims=(3, 8, 8), num_filters=[4], max_pools=[0],
...                   weight_scale="kaiming", dtype=np.float64, backend="reference", seed=0)
>>> sorted(net.params)
['W1', 'W2', 'b1', 'b2']
>>> net.loss(np.zeros((2, 3, 8, 8))).shape
(2, 10)

``model.config()`` is a JSON-able dict that ``build_model`` turns back into
an equal (freshly initialised) model; checkpoints store it.
"""
from __future__ import annotations

import math

import numpy as np

from .backends import get_backend
from .init import kaiming_initializer
from .layers import fastest, sandwiches

POOL = {"pool_height": 2, "pool_width": 2, "stride": 2}


def _pos_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _float_dtype(dtype) -> np.dtype:
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    return dtype


def _input_dims(input_dims) -> tuple[int, int, int]:
    try:
        dims = tuple(input_dims)
    except TypeError:
        raise ValueError(f"input_dims must be (C, H, W), got {input_dims!r}") from None
    if len(dims) != 3:
        raise ValueError(f"input_dims must be (C, H, W), got {input_dims!r}")
    return tuple(_pos_int(f"input_dims[{i}]", d) for i, d in enumerate(dims))


def _reg(reg) -> float:
    try:
        value = float(reg)
    except (TypeError, ValueError):
        raise ValueError(f"reg must be a number >= 0, got {reg!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"reg must be a finite number >= 0, got {reg!r}")
    return value


def _weight_scale(weight_scale):
    if isinstance(weight_scale, str):
        if weight_scale != "kaiming":
            raise ValueError(f"weight_scale must be a positive number or 'kaiming', got {weight_scale!r}")
        return weight_scale
    try:
        value = float(weight_scale)
    except (TypeError, ValueError):
        raise ValueError(f"weight_scale must be a positive number or 'kaiming', got {weight_scale!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"weight_scale must be a positive number or 'kaiming', got {weight_scale!r}")
    return value


class _ConvNet:
    """What both models share: input checks, L2, batched prediction, config."""

    kind = ""

    def _setup(self, input_dims, num_classes, reg, dtype, backend, seed):
        self.input_dims = _input_dims(input_dims)
        self.num_classes = _pos_int("num_classes", num_classes)
        self.reg = _reg(reg)
        self.dtype = _float_dtype(dtype)
        self.nb = get_backend(backend)
        self.backend = self.nb.NAME
        self.L = sandwiches(self.backend)
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.params: dict[str, np.ndarray] = {}
        self.bn_params: list[dict] = []

    def _bn_layer(self, pool: bool):
        """Conv-BN-ReLU[-pool]: the backend's fused layer if it has one, else the sandwich."""
        return fastest(self.nb, "Conv_BatchNorm_ReLU_Pool" if pool else "Conv_BatchNorm_ReLU")

    def _device_ops(self, X):
        """The cuda backend's model-level ops (numbaconv.cuda.training) when X is a device array:
        the model then keeps every tensor on the device (scores, gradients; the loss is copied
        back once, as a float). None for NumPy X: the NumPy code below, as on every backend."""
        ops = getattr(self.nb, "device_ops", None)
        return ops if ops is not None and ops.is_device(X) else None

    def _device_l2(self, ops, loss, grads) -> None:
        """L2 on the device: loss (a one-element device array) += reg * sum(W**2), dW += 2 reg W."""
        if self.reg:
            for name, w in self.params.items():
                if name.startswith("W"):
                    ops.add_l2(loss, w, self.reg)
                    grads[name] = ops.axpby(grads[name], w, 1.0, 2.0 * self.reg)

    def _host_l2(self, loss: float, grads) -> float:
        """L2 on the host: returns loss + reg * sum(W**2); dW += 2 reg W. Nothing at reg 0 (the
        recipes' case: a pass over every weight and a new gradient array each step, for nothing)."""
        if self.reg:
            for name, w in self.params.items():
                if name.startswith("W"):
                    loss += self.reg * float(np.sum(w.astype(np.float64) ** 2))
                    grads[name] = grads[name] + (2.0 * self.reg) * w
        return loss

    @staticmethod
    def _backward(layer, dh, cache, first: bool):
        """layer.backward; for the first layer, a layer that can skips dx (the images' gradient: unused)."""
        if first and getattr(layer, "can_skip_dx", False):
            return layer.backward(dh, cache, need_dx=False)
        return layer.backward(dh, cache)

    def _check_inputs(self, X, y):
        """X (N, C, H, W) matching input_dims, cast to the model's dtype."""
        if not hasattr(X, "shape") or not hasattr(X, "dtype"):
            raise ValueError(f"X must be an array of shape (N, {', '.join(map(str, self.input_dims))}), "
                             f"got {type(X).__name__}")
        if X.ndim != 4 or tuple(X.shape[1:]) != self.input_dims:
            raise ValueError(f"X must have shape (N, {', '.join(map(str, self.input_dims))}) for this model, "
                             f"got {tuple(X.shape)}")
        if X.shape[0] < 1:
            raise ValueError(f"X holds no images: shape {tuple(X.shape)}")
        if not np.issubdtype(X.dtype, np.number):
            raise ValueError(f"X must hold numbers, got dtype {X.dtype}")
        if self._device_ops(X) is not None:   # stays on the device: no cast (it would be a copy)
            if np.dtype(X.dtype) != self.dtype:
                raise ValueError(f"X on the device must have the model's dtype {self.dtype}, got {X.dtype}")
            return X
        return np.asarray(X, dtype=self.dtype)

    def _set_bn_mode(self, mode: str) -> None:
        for bn_param in self.bn_params:
            bn_param["mode"] = mode

    def _data_loss(self, scores, y, grads_from_scores):
        """softmax loss + L2 over weights; ``grads_from_scores`` backprops dscores."""
        ops = self._device_ops(scores)
        if ops is not None:
            loss, dscores = ops.smoothed_softmax_loss(scores, ops.labels(y, scores))
            grads = grads_from_scores(dscores)
            self._device_l2(ops, loss, grads)
            return ops.loss_value(loss), grads
        loss, dscores = self.nb.softmax_loss(scores, y)
        grads = grads_from_scores(dscores)
        return self._host_l2(loss, grads), grads

    def predict(self, X, batch_size: int = 100) -> np.ndarray:
        """Predicted labels (N,), computed in batches in test mode."""
        batch_size = _pos_int("batch_size", batch_size)
        N = X.shape[0]
        ops = self._device_ops(X)
        if ops is not None:   # device batches; only the predictions come back
            preds = ops.preds(N)
            for start in range(0, N, batch_size):
                ops.argmax(self.loss(X[start:start + batch_size]), preds, start)
            return ops.to_host(preds)
        preds = np.empty(N, dtype=np.int64)
        for start in range(0, N, batch_size):
            scores = self.loss(X[start:start + batch_size])
            preds[start:start + batch_size] = np.argmax(scores, axis=1)
        return preds

    def param_shapes(self) -> dict[str, tuple]:
        return {k: tuple(v.shape) for k, v in self.params.items()}


class ThreeLayerConvNet(_ConvNet):
    """conv - relu - 2x2 max pool - linear - relu - linear - softmax.

    The conv keeps the spatial size (stride 1, pad (filter_size - 1) // 2, so
    filter_size must be odd); H and W must be even for the pool.
    """

    kind = "three-layer"

    def __init__(self, input_dims=(3, 32, 32), num_filters=32, filter_size=7, hidden_dim=100,
                 num_classes=10, weight_scale=1e-3, reg=0.0, dtype=np.float32, backend="cpu", seed=None):
        self._setup(input_dims, num_classes, reg, dtype, backend, seed)
        self.num_filters = _pos_int("num_filters", num_filters)
        self.filter_size = _pos_int("filter_size", filter_size)
        self.hidden_dim = _pos_int("hidden_dim", hidden_dim)
        self.weight_scale = _weight_scale(weight_scale)
        C, H, W = self.input_dims
        if self.filter_size % 2 == 0:
            raise ValueError(f"filter_size must be odd so pad (K-1)//2 keeps the size, got {self.filter_size}")
        if H % 2 or W % 2:
            raise ValueError(f"input height and width must be even for the 2x2 pool, got input_dims {self.input_dims}")
        F, K, Hd = self.num_filters, self.filter_size, self.hidden_dim
        D = F * (H // 2) * (W // 2)
        shapes = [("W1", (F, C, K, K), C * K * K, True), ("W2", (D, Hd), D, True),
                  ("W3", (Hd, self.num_classes), Hd, False)]
        for name, shape, fan_in, relu in shapes:
            if self.weight_scale == "kaiming":
                std = math.sqrt((2.0 if relu else 1.0) / fan_in)
            else:
                std = self.weight_scale
            self.params[name] = (self.rng.standard_normal(shape) * std).astype(self.dtype)
        self.params["b1"] = np.zeros(F, dtype=self.dtype)
        self.params["b2"] = np.zeros(Hd, dtype=self.dtype)
        self.params["b3"] = np.zeros(self.num_classes, dtype=self.dtype)
        self.conv_param = {"stride": 1, "pad": (K - 1) // 2}

    @staticmethod
    def _count_params(c, n, C, H, W, classes) -> int:
        """The constructor's weight count from config ``c`` (defaults filled; ``n`` checks a size)."""
        F, K, hidden = n(c["num_filters"]), n(c["filter_size"]), n(c["hidden_dim"])
        return F * C * K * K + F + F * (H // 2) * (W // 2) * hidden + hidden + hidden * classes + classes

    def config(self) -> dict:
        return {"kind": self.kind, "input_dims": list(self.input_dims), "num_filters": self.num_filters,
                "filter_size": self.filter_size, "hidden_dim": self.hidden_dim, "num_classes": self.num_classes,
                "weight_scale": self.weight_scale, "reg": self.reg, "dtype": self.dtype.name,
                "backend": self.backend}

    def loss(self, X, y=None):
        X = self._check_inputs(X, y)
        p = self.params
        h1, c1 = self.L.Conv_ReLU_Pool.forward(X, p["W1"], p["b1"], self.conv_param, POOL)
        h2, c2 = self.L.Linear_ReLU.forward(h1, p["W2"], p["b2"])
        scores, c3 = self.nb.Linear.forward(h2, p["W3"], p["b3"])
        if y is None:
            return scores

        def backward(dscores):
            grads = {}
            dh2, grads["W3"], grads["b3"] = self.nb.Linear.backward(dscores, c3)
            dh1, grads["W2"], grads["b2"] = self.L.Linear_ReLU.backward(dh2, c2)
            _, grads["W1"], grads["b1"] = self.L.Conv_ReLU_Pool.backward(dh1, c1)
            return grads

        return self._data_loss(scores, y, backward)


class DeepConvNet(_ConvNet):
    """{conv 3x3 pad 1 - [spatial batchnorm] - relu - [2x2 pool]} x (L-1) - linear - softmax.

    ``num_filters`` lists the filters of the L-1 conv layers; a 2x2 stride-2
    pool follows each conv layer whose index is in ``max_pools``.
    ``weight_scale`` is a std or "kaiming" (gain 2 for conv layers, 1 for the
    final linear layer).
    """

    kind = "deep"

    def __init__(self, input_dims=(3, 32, 32), num_filters=(8, 8, 8, 8, 8), max_pools=(0, 1, 2, 3, 4),
                 batchnorm=False, num_classes=10, weight_scale=1e-3, reg=0.0, dtype=np.float32,
                 backend="cpu", seed=None):
        self._setup(input_dims, num_classes, reg, dtype, backend, seed)
        try:
            self.num_filters = [_pos_int(f"num_filters[{i}]", f) for i, f in enumerate(num_filters)]
            pools = list(max_pools)
        except TypeError:
            raise ValueError(f"num_filters and max_pools must be lists, got {num_filters!r} and {max_pools!r}") from None
        if not self.num_filters:
            raise ValueError("num_filters must list at least one conv layer")
        n_conv = len(self.num_filters)
        for i in pools:
            if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < n_conv:
                raise ValueError(f"max_pools entries must be conv layer indices in [0, {n_conv}), got {max_pools!r}")
        if len(set(pools)) != len(pools):
            raise ValueError(f"max_pools lists a layer twice: {max_pools!r}")
        self.max_pools = sorted(int(i) for i in pools)
        self.batchnorm = bool(batchnorm)
        self.weight_scale = _weight_scale(weight_scale)
        self.num_layers = n_conv + 1
        C, H, W = self.input_dims
        for i in self.max_pools:  # each pool halves the size; it must tile exactly
            if H % 2 or W % 2:
                raise ValueError(f"input_dims {self.input_dims} cannot be pooled {len(self.max_pools)} times: "
                                 f"the size before the pool after layer {i} is {H}x{W}, not even")
            H, W = H // 2, W // 2
        c_in = C
        for i, F in enumerate(self.num_filters, start=1):
            self.params[f"W{i}"] = self._init((F, c_in, 3, 3), c_in, 3, relu=True)
            self.params[f"b{i}"] = np.zeros(F, dtype=self.dtype)
            if self.batchnorm:
                self.params[f"gamma{i}"] = np.ones(F, dtype=self.dtype)
                self.params[f"beta{i}"] = np.zeros(F, dtype=self.dtype)
            c_in = F
        D = c_in * H * W
        self.params[f"W{self.num_layers}"] = self._init((D, self.num_classes), D, None, relu=False)
        self.params[f"b{self.num_layers}"] = np.zeros(self.num_classes, dtype=self.dtype)
        if self.batchnorm:
            # Running statistics exist from the start (zeros, as the layers would create
            # them on first use), so a fresh model predicts and checkpoints like a trained one.
            self.bn_params = [{"mode": "train", "running_mean": np.zeros(F, dtype=self.dtype),
                               "running_var": np.zeros(F, dtype=self.dtype)} for F in self.num_filters]
        self.conv_param = {"stride": 1, "pad": 1}

    def _init(self, shape, c_in, K, relu):
        if self.weight_scale == "kaiming":
            Dout = shape[0] if K is not None else shape[1]
            return kaiming_initializer(c_in, Dout, K=K, relu=relu, dtype=self.dtype, rng=self.rng)
        return (self.rng.standard_normal(shape) * self.weight_scale).astype(self.dtype)

    @staticmethod
    def _count_params(c, n, C, H, W, classes) -> int:
        """The constructor's weight count from config ``c`` (defaults filled; ``n`` checks a size)."""
        per_filter = 3 if c["batchnorm"] else 1        # b (and gamma, beta)
        total, c_in = 0, C
        for F in map(n, c["num_filters"]):
            total, c_in = total + F * c_in * 9 + per_filter * F, F
        pools = len(list(c["max_pools"]))
        return total + c_in * (H >> pools) * (W >> pools) * classes + classes

    def config(self) -> dict:
        return {"kind": self.kind, "input_dims": list(self.input_dims), "num_filters": list(self.num_filters),
                "max_pools": list(self.max_pools), "batchnorm": self.batchnorm, "num_classes": self.num_classes,
                "weight_scale": self.weight_scale, "reg": self.reg, "dtype": self.dtype.name,
                "backend": self.backend}

    def loss(self, X, y=None):
        X = self._check_inputs(X, y)
        self._set_bn_mode("test" if y is None else "train")
        p, L = self.params, self.L
        caches = []
        h = X
        for i in range(1, self.num_layers):
            w, b = p[f"W{i}"], p[f"b{i}"]
            pool = (i - 1) in self.max_pools
            if self.batchnorm:
                args = (h, w, b, p[f"gamma{i}"], p[f"beta{i}"], self.conv_param, self.bn_params[i - 1])
                layer = self._bn_layer(pool)
            else:
                args = (h, w, b, self.conv_param)
                layer = L.Conv_ReLU_Pool if pool else L.Conv_ReLU
            h, cache = layer.forward(*args, *((POOL,) if pool else ()))
            caches.append((layer, cache))
        last = self.num_layers
        scores, last_cache = self.nb.Linear.forward(h, p[f"W{last}"], p[f"b{last}"])
        if y is None:
            return scores

        def backward(dscores):
            grads = {}
            dh, grads[f"W{last}"], grads[f"b{last}"] = self.nb.Linear.backward(dscores, last_cache)
            for i in range(self.num_layers - 1, 0, -1):
                layer, cache = caches[i - 1]
                g = self._backward(layer, dh, cache, first=i == 1)
                dh, grads[f"W{i}"], grads[f"b{i}"] = g[:3]
                if self.batchnorm:
                    grads[f"gamma{i}"], grads[f"beta{i}"] = g[3], g[4]
            return grads

        return self._data_loss(scores, y, backward)


def global_max_pool_forward(x):
    """(N, C, H, W) -> (N, C), the max over each map; ties go to the first in row-major order
    (NumPy's argmax), as in MaxPool. A model-level op: a few KiB of work, no kernel needed."""
    N, C = x.shape[:2]
    flat = x.reshape(N, C, -1)
    idx = flat.argmax(axis=2)
    return np.take_along_axis(flat, idx[:, :, None], axis=2)[:, :, 0], (x.shape, idx)


def global_max_pool_backward(dout, cache):
    shape, idx = cache
    N, C = shape[:2]
    dx = np.zeros((N, C, shape[2] * shape[3]), dtype=dout.dtype)
    np.put_along_axis(dx, idx[:, :, None], dout[:, :, None], axis=2)
    return dx.reshape(shape)


def shift_images(X, dy: int, dx: int):
    """X (N, C, H, W) translated by (dy, dx) pixels: out[..., i, j] = X[..., i - dy, j - dx], and 0
    (the mean image, after mean subtraction) where that falls outside, as training's translation pads."""
    out = np.zeros_like(X)
    H, W = X.shape[2:]
    out[..., max(dy, 0):H + min(dy, 0), max(dx, 0):W + min(dx, 0)] = X[..., max(-dy, 0):H - max(dy, 0),
                                                                        max(-dx, 0):W - max(dx, 0)]
    return out


class _HostOps:
    """The NumPy model-level ops, under the names of numbaconv.cuda.training's device ones."""
    global_max_pool_forward = staticmethod(global_max_pool_forward)
    global_max_pool_backward = staticmethod(global_max_pool_backward)


class _BackendHostOps:
    """_HostOps with a backend's own GlobalMaxPool (the cpu backend's kernel: the same results)."""

    def __init__(self, layer):
        self.global_max_pool_forward = layer.forward
        self.global_max_pool_backward = layer.backward


def _host_ops(nb):
    """The model-level ops for NumPy arrays on backend ``nb``."""
    layer = getattr(nb, "GlobalMaxPool", None)
    return _HostOps if layer is None else _BackendHostOps(layer)


class FastNet(_ConvNet):
    """The "fast CIFAR" recipe's net (residual-free):
    stem conv 3x3 - BN - ReLU (``stem=0``: none), then per width in ``widths`` a group
    {conv 3x3 - BN - ReLU - 2x2 pool, (conv 3x3 - BN - ReLU) x (convs_per_group - 1)},
    global max pool, linear, scores times ``logit_scale``; label-smoothed softmax loss.
    Every conv is followed by batch norm. ``tta_flip`` makes ``predict`` average the
    scores of each image and its horizontal mirror.

    ``whiten=k`` puts a fixed whitening conv first: the top ``k`` principal components
    of the images' 2x2 patches, each scaled to unit variance (``fit_whitening``), with
    ``whiten_stride`` 1 (2x2 windows at every pixel: a 3x3 kernel with pad 1 whose
    top-left 2x2 block is the filter, so the map keeps its size) or 2 (non-overlapping
    2x2 windows: the map halves). Its weights ``whiten_W``/``whiten_b`` are parameters
    that training leaves alone (``frozen``), so checkpoints keep them. Whitened inputs
    make the first trained layer's gradient steps well conditioned.

    Recipe options (each off by default, so older configs build the same net; airbench's
    ablations, arXiv 2404.00498, give the reasons):
    ``whiten_neg``: the stem outputs its ``whiten`` components and their negations, then a
    ReLU (2k channels; the ReLU keeps both signs of each component instead of half).
    ``dirac``: each conv's first min(F, C_in) filters start as the identity (the rest as
    ``weight_scale`` says): an implicit residual path, so a deep plain net trains like a short one.
    ``freeze_bn_scale``: BN's gamma stays 1 (listed in ``frozen``): with BN after every conv the
    scale is redundant with the next conv's weights and only adds noise to the steps.
    ``bn_momentum``: the running statistics' factor (0.9 by default; the long recipe's 0.6 lets
    them follow the weights that lookahead moves every few steps).
    ``tta_shift``: ``predict`` also averages the views translated by +-``tta_shift`` pixels
    (zero = mean padding, as in training), weighted 0.5 for the image and 0.25 per shift;
    each view is mirror-averaged too when ``tta_flip``.
    """

    kind = "fast"

    def __init__(self, input_dims=(3, 32, 32), stem=16, widths=(16, 32, 64), convs_per_group=1,
                 num_classes=10, smoothing=0.2, logit_scale=1.0, tta_flip=False, weight_scale="kaiming",
                 reg=0.0, dtype=np.float32, backend="cpu", seed=None, whiten=0, whiten_stride=1,
                 whiten_neg=False, dirac=False, freeze_bn_scale=False, bn_momentum=0.9, tta_shift=0):
        self._setup(input_dims, num_classes, reg, dtype, backend, seed)
        self.whiten_neg, self.dirac, self.freeze_bn_scale = bool(whiten_neg), bool(dirac), bool(freeze_bn_scale)
        try:
            self.bn_momentum = float("nan") if isinstance(bn_momentum, bool) else float(bn_momentum)
        except (TypeError, ValueError):
            self.bn_momentum = float("nan")
        if not 0.0 <= self.bn_momentum < 1.0:
            raise ValueError(f"bn_momentum must be a number in [0, 1), got {bn_momentum!r}")
        if isinstance(tta_shift, bool) or not isinstance(tta_shift, (int, np.integer)) or not 0 <= tta_shift <= 2:
            raise ValueError(f"tta_shift must be 0 (off), 1 or 2 pixels, got {tta_shift!r}")
        self.tta_shift = int(tta_shift)
        C = self.input_dims[0]
        self.whiten = 0 if whiten in (0, None) else _pos_int("whiten", whiten)
        if self.whiten > 4 * C:
            raise ValueError(f"whiten must be at most {4 * C} (the size of a 2x2 patch of {C} channels), got {whiten!r}")
        if whiten_stride not in (1, 2):
            raise ValueError(f"whiten_stride must be 1 or 2, got {whiten_stride!r}")
        self.whiten_stride = int(whiten_stride)
        self.stem = 0 if stem in (0, None) else _pos_int("stem", stem)   # 0: no stem conv
        try:
            self.widths = [_pos_int(f"widths[{i}]", w) for i, w in enumerate(widths)]
        except TypeError:
            raise ValueError(f"widths must be a list of positive integers, got {widths!r}") from None
        self.convs_per_group = _pos_int("convs_per_group", convs_per_group)
        self.smoothing = float(smoothing)
        if not (math.isfinite(self.smoothing) and 0.0 <= self.smoothing < 1.0):
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing!r}")
        self.logit_scale = float(logit_scale)
        if not (math.isfinite(self.logit_scale) and self.logit_scale > 0):
            raise ValueError(f"logit_scale must be a finite number > 0, got {logit_scale!r}")
        self.tta_flip = bool(tta_flip)
        self.weight_scale = _weight_scale(weight_scale)
        C, H, W = self.input_dims
        if self.whiten and self.whiten_stride == 2:
            if H % 2 or W % 2:
                raise ValueError(f"input_dims {self.input_dims}: a stride-2 whitening stem needs an even height and width")
            H, W = H // 2, W // 2
        for _ in self.widths:
            if H % 2 or W % 2:
                raise ValueError(f"input_dims {self.input_dims} cannot be pooled {len(self.widths)} times "
                                 f"(a 2x2 pool meets a {H}x{W} map)")
            H, W = H // 2, W // 2
        # (filters, pool after it) per conv layer, numbered from 1
        self.layers = [(self.stem, False)] if self.stem else []
        for w in self.widths:
            self.layers += [(w, True)] + [(w, False)] * (self.convs_per_group - 1)
        c_in = C
        self.frozen: tuple[str, ...] = ()
        if self.whiten:
            # until fit_whitening: the first k coordinates of each 2x2 patch, unscaled
            self._set_whitening(np.eye(4 * C)[:self.whiten], np.zeros(self.whiten))
            self.frozen = ("whiten_W", "whiten_b")
            c_in = self.stem_channels
        if self.whiten_neg and not self.whiten:
            raise ValueError("whiten_neg needs a whitening stem (whiten > 0)")
        for i, (F, _) in enumerate(self.layers, start=1):
            if self.weight_scale == "kaiming":
                self.params[f"W{i}"] = kaiming_initializer(c_in, F, K=3, relu=True, dtype=self.dtype, rng=self.rng)
            else:
                self.params[f"W{i}"] = (self.rng.standard_normal((F, c_in, 3, 3)) * self.weight_scale).astype(self.dtype)
            if self.dirac:   # drawn first all the same, so the random stream (and every other weight) is unchanged
                n = min(F, c_in)
                self.params[f"W{i}"][:n] = 0
                self.params[f"W{i}"][np.arange(n), np.arange(n), 1, 1] = 1
            self.params[f"b{i}"] = np.zeros(F, dtype=self.dtype)
            self.params[f"gamma{i}"] = np.ones(F, dtype=self.dtype)
            self.params[f"beta{i}"] = np.zeros(F, dtype=self.dtype)
            c_in = F
        last = len(self.layers) + 1
        self.params[f"W{last}"] = kaiming_initializer(c_in, self.num_classes, relu=False, dtype=self.dtype, rng=self.rng)
        self.params[f"b{last}"] = np.zeros(self.num_classes, dtype=self.dtype)
        self.bn_params = [{"mode": "train", "momentum": self.bn_momentum, "running_mean": np.zeros(F, dtype=self.dtype),
                           "running_var": np.zeros(F, dtype=self.dtype)} for F, _ in self.layers]
        if self.freeze_bn_scale:
            self.frozen += tuple(f"gamma{i}" for i in range(1, len(self.layers) + 1))
        self.conv_param = {"stride": 1, "pad": 1}

    @property
    def stem_channels(self) -> int:
        """Channels out of the whitening stem: its components, twice with their negations."""
        return self.whiten * (2 if self.whiten_neg else 1)

    @property
    def whiten_conv_param(self) -> dict:
        return {"stride": 1, "pad": 1} if self.whiten_stride == 1 else {"stride": 2, "pad": 0}

    def _set_whitening(self, filters, bias) -> None:
        """filters (k, C*4) over 2x2 patches flattened as (channel, row, column)."""
        C = self.input_dims[0]
        w2 = np.asarray(filters, dtype=np.float64).reshape(self.whiten, C, 2, 2)
        if self.whiten_stride == 1:   # output (i, j) sees rows i-1, i and columns j-1, j
            w = np.zeros((self.whiten, C, 3, 3))
            w[:, :, :2, :2] = w2
        else:
            w = w2
        bias = np.asarray(bias, dtype=np.float64)
        if self.whiten_neg:
            w, bias = np.concatenate([w, -w]), np.concatenate([bias, -bias])
        self.params["whiten_W"] = w.astype(self.dtype)
        self.params["whiten_b"] = bias.astype(self.dtype)

    def fit_whitening(self, X, eps: float = 5e-4) -> np.ndarray:
        """Set the whitening stem from images X (N, C, H, W): the top ``whiten`` eigenvectors
        of the covariance of all 2x2 patches, divided by sqrt(eigenvalue + eps), and a bias
        that centres the patches. Returns the eigenvalues (descending)."""
        if not self.whiten:
            raise ValueError("this model has no whitening stem (whiten=0)")
        X = self._check_inputs(X, None)   # the model's dtype: float32 patches keep a 2,000-image fit small
        N, C, H, W = X.shape
        patches = np.stack([X[:, :, dy:H - 1 + dy, dx:W - 1 + dx] for dy in (0, 1) for dx in (0, 1)], axis=2)
        patches = patches.transpose(1, 2, 0, 3, 4).reshape(4 * C, -1)   # rows: (channel, row, column)
        mean = patches.mean(axis=1, dtype=np.float64)
        cov = (patches @ patches.T).astype(np.float64) / patches.shape[1] - np.outer(mean, mean)
        evals, evecs = np.linalg.eigh(cov)
        order = np.argsort(evals)[::-1][:self.whiten]
        filters = evecs[:, order].T / np.sqrt(evals[order] + eps)[:, None]
        self._set_whitening(filters, -filters @ mean)
        return evals[np.argsort(evals)[::-1]]

    def prepare(self, X_train, num_images: int = 2000) -> None:
        """Data-dependent initialisation (the Solver calls it): fit the whitening stem, if
        any, to the first ``num_images`` training images (a deterministic choice, so a
        rebuilt run fits the same stem)."""
        if self.whiten:
            self.fit_whitening(X_train[:num_images])

    @staticmethod
    def _count_params(c, n, C, H, W, classes) -> int:
        """The constructor's weight count from config ``c`` (defaults filled; ``n`` checks a size)."""
        total, c_in = 0, C
        k = n(c["whiten"] or 0)
        if k:
            k *= 2 if c["whiten_neg"] else 1   # whiten_neg stores each filter and its negation
            total, c_in = k * C * (9 if c["whiten_stride"] == 1 else 4) + k, k
        stem, repeat = n(c["stem"] or 0), n(c["convs_per_group"])
        for F in ([stem] if stem else []):
            total, c_in = total + F * c_in * 9 + 3 * F, F
        for F in map(n, c["widths"]):   # a group: one conv from c_in, repeat - 1 from F (b, gamma, beta each)
            total, c_in = total + F * c_in * 9 + 3 * F + (repeat - 1) * (F * F * 9 + 3 * F), F
        return total + c_in * classes + classes

    def config(self) -> dict:
        return {"kind": self.kind, "input_dims": list(self.input_dims), "stem": self.stem, "widths": list(self.widths),
                "whiten": self.whiten, "whiten_stride": self.whiten_stride,
                "convs_per_group": self.convs_per_group, "num_classes": self.num_classes,
                "smoothing": self.smoothing, "logit_scale": self.logit_scale, "tta_flip": self.tta_flip,
                "weight_scale": self.weight_scale, "reg": self.reg, "dtype": self.dtype.name,
                "backend": self.backend, "whiten_neg": self.whiten_neg, "dirac": self.dirac,
                "freeze_bn_scale": self.freeze_bn_scale, "bn_momentum": self.bn_momentum, "tta_shift": self.tta_shift}

    def _scores(self, X, train: bool):
        self._set_bn_mode("train" if train else "test")
        p = self.params
        caches = []
        h = X
        if self.whiten:   # frozen: nothing is kept for backward
            h, _ = self.nb.Conv.forward(X, p["whiten_W"], p["whiten_b"], self.whiten_conv_param)
            if self.whiten_neg:
                h, _ = self.nb.ReLU.forward(h)
        for i, (_, pool) in enumerate(self.layers, start=1):
            layer = self._bn_layer(pool)
            h, cache = layer.forward(h, p[f"W{i}"], p[f"b{i}"], p[f"gamma{i}"], p[f"beta{i}"], self.conv_param,
                                     self.bn_params[i - 1], *((POOL,) if pool else ()))
            caches.append((layer, cache))
        ops = self._device_ops(X)
        g, gcache = (ops or _host_ops(self.nb)).global_max_pool_forward(h)
        last = len(self.layers) + 1
        scores, lcache = self.nb.Linear.forward(g, p[f"W{last}"], p[f"b{last}"])
        if ops is not None:
            return ops.axpby(scores, scores, self.logit_scale, 0.0), (caches, gcache, lcache)
        return scores * self.dtype.type(self.logit_scale), (caches, gcache, lcache)

    def _view_scores(self, X):
        """Test-mode scores of X, averaged with its mirror when ``tta_flip``."""
        scores, _ = self._scores(X, train=False)
        if self.tta_flip:
            ops = self._device_ops(X)
            if ops is not None:
                return ops.axpby(scores, self._scores(ops.shift_flip(X, 0, 0, True), train=False)[0], 0.5, 0.5)
            scores = 0.5 * (scores + self._scores(np.ascontiguousarray(X[..., ::-1]), train=False)[0])
        return scores

    def loss(self, X, y=None):
        X = self._check_inputs(X, y)
        if y is None:
            if not self.tta_shift:
                return self._view_scores(X)
            s = self.tta_shift
            ops = self._device_ops(X)
            if ops is not None:   # the same sum, in the same order
                views = [self._view_scores(v) for v in (X, ops.shift_flip(X, s, s, False),
                                                         ops.shift_flip(X, -s, -s, False))]
                return ops.axpby(ops.axpby(views[0], views[1], 0.5, 0.25), views[2], 1.0, 0.25)
            return (0.5 * self._view_scores(X) + 0.25 * self._view_scores(shift_images(X, s, s))
                    + 0.25 * self._view_scores(shift_images(X, -s, -s)))
        scores, (caches, gcache, lcache) = self._scores(X, train=True)
        ops = self._device_ops(X)
        if ops is not None:   # the loss stays on the device until the end; dscores come scaled
            loss, dscores = ops.smoothed_softmax_loss(scores, ops.labels(y, scores), self.smoothing, self.logit_scale)
        else:
            from .losses import smoothed_softmax_loss

            loss, dscores = smoothed_softmax_loss(scores, y, self.smoothing)
            dscores = dscores * self.dtype.type(self.logit_scale)
        last = len(self.layers) + 1
        grads = {}
        dg, grads[f"W{last}"], grads[f"b{last}"] = self.nb.Linear.backward(dscores, lcache)
        dh = (ops or _host_ops(self.nb)).global_max_pool_backward(dg, gcache)
        for i in range(len(self.layers), 0, -1):
            layer, cache = caches[i - 1]
            dh, grads[f"W{i}"], grads[f"b{i}"], grads[f"gamma{i}"], grads[f"beta{i}"] = self._backward(
                layer, dh, cache, first=i == 1)
        if ops is not None:
            self._device_l2(ops, loss, grads)
            return ops.loss_value(loss), grads
        return self._host_l2(loss, grads), grads


MODELS = {ThreeLayerConvNet.kind: ThreeLayerConvNet, DeepConvNet.kind: DeepConvNet, FastNet.kind: FastNet}


def param_count(config: dict) -> int | None:
    """How many weights ``build_model(config)`` allocates, from the config alone (the models
    allocate in their constructors, so a config from a file cannot be checked by building it).
    None when an entry has a type or value the constructor refuses with its own message.
    tests/test_checkpoint_safety.py holds it equal to the built models' counts."""
    import inspect

    cls = MODELS.get(config.get("kind")) if isinstance(config, dict) else None
    if cls is None:
        return None
    defaults = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}
    c = {**defaults, **config}

    def n(v) -> int:   # a size, as the constructors accept it
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise TypeError
        return v

    try:
        C, H, W = (n(d) for d in c["input_dims"])
        return cls._count_params(c, n, C, H, W, n(c["num_classes"]))
    except (TypeError, ValueError, KeyError):
        return None


def build_model(config: dict, **overrides):
    """A fresh model from ``model.config()`` (``overrides`` replace entries, e.g. backend)."""
    if not isinstance(config, dict) or config.get("kind") not in MODELS:
        kind = config.get("kind") if isinstance(config, dict) else config
        raise ValueError(f"model config must name a kind in {sorted(MODELS)}, got {kind!r}")
    kwargs = {k: v for k, v in {**config, **overrides}.items() if k != "kind"}
    try:
        return MODELS[config["kind"]](**kwargs)
    except TypeError as e:  # an unknown or missing key in a hand-edited config
        raise ValueError(f"bad {config['kind']} model config: {e}") from None
