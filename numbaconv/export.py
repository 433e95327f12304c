"""ONNX export of a trained model, preprocessing included.

The graph takes **raw images**, NCHW, 0-255: input ``images`` of type uint8 (the default) or
float32 (``input_type="float32"``, for runtimes that feed floats), shape (N, 3, H, W) with N free.
Its first nodes do the checkpoint's preprocessing (Cast to float32, Div 255, Sub the training
mean, Div the std when training divided by it), then the network in standard operators (Conv,
BatchNormalization in inference mode, Relu, MaxPool, Flatten, Gemm, GlobalMaxPool, Mul, Slice
with step -1 for FastNet's mirror averaging, Pad and Slice for its shifted test-time views), and a Softmax: output ``probabilities`` float32
(N, num_classes). Weights are stored as float32 (a float64 model is exported in float32).
``metadata_props`` hold ``class_names`` (JSON list), ``model_config`` and ``data_info`` (JSON),
``input`` (a sentence on what the input is) and ``producer`` numbaconv.

A model kind is one function in ``EXPORTERS``: ``(model, graph, x) -> scores`` that appends its
nodes to ``graph`` (a ``Graph``) from the preprocessed tensor ``x`` and returns the name of the
(N, num_classes) scores. The "long" recipe's FastNet options are in ``_fast``: the whitening
stem with its negation (a Relu after the stem), and shifted test-time views.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

OPSET = 17
INPUT_TYPES = ("uint8", "float32")


class Graph:
    """Nodes and initializers being built, with fresh names."""

    def __init__(self):
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes, self.initializers, self._names = [], [], set()

    def name(self, base: str) -> str:
        n, i = base, 1
        while n in self._names:
            i += 1
            n = f"{base}_{i}"
        self._names.add(n)
        return n

    def const(self, base: str, value, dtype=np.float32) -> str:
        """An initializer (float32 unless told), named once per call."""
        name = self.name(base)
        self.initializers.append(self.numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs, base: str | None = None, **attrs) -> str:
        out = self.name(base or op_type.lower())
        self.nodes.append(self.helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out


# ------------------------------------------------------------------ layers
def _conv(g: Graph, x: str, w, b, stride: int, pad: int, prefix: str) -> str:
    w = np.asarray(w)
    return g.op("Conv", [x, g.const(f"{prefix}W", w), g.const(f"{prefix}b", b)], f"{prefix}conv",
                kernel_shape=list(w.shape[2:]), strides=[stride, stride], pads=[pad] * 4)


def _batchnorm(g: Graph, x: str, model, i: int, prefix: str) -> str:
    """Spatial batch norm in test mode: the running statistics of conv layer i (1-based)."""
    bp = model.bn_params[i - 1]
    p = model.params
    return g.op("BatchNormalization", [x, g.const(f"gamma{i}", p[f"gamma{i}"]), g.const(f"beta{i}", p[f"beta{i}"]),
                                       g.const(f"running_mean{i}", bp["running_mean"]),
                                       g.const(f"running_var{i}", bp["running_var"])],
                f"{prefix}bn", epsilon=float(bp.get("eps", 1e-5)))


def _pool(g: Graph, x: str, prefix: str) -> str:
    return g.op("MaxPool", [x], f"{prefix}pool", kernel_shape=[2, 2], strides=[2, 2])


def _linear(g: Graph, x: str, w, b, prefix: str) -> str:
    """numbaconv's Linear: x flattened to (N, D) times w (D, M) plus b."""
    flat = g.op("Flatten", [x], f"{prefix}flatten", axis=1)
    return g.op("Gemm", [flat, g.const(f"{prefix}W", w), g.const(f"{prefix}b", b)], f"{prefix}gemm")


# ------------------------------------------------------------------ model kinds
def _three_layer(model, g: Graph, x: str) -> str:
    p = model.params
    h = _conv(g, x, p["W1"], p["b1"], 1, model.conv_param["pad"], "l1_")
    h = _pool(g, g.op("Relu", [h], "l1_relu"), "l1_")
    h = g.op("Relu", [_linear(g, h, p["W2"], p["b2"], "l2_")], "l2_relu")
    return _linear(g, h, p["W3"], p["b3"], "l3_")


def _deep(model, g: Graph, x: str) -> str:
    p = model.params
    h = x
    for i in range(1, model.num_layers):
        h = _conv(g, h, p[f"W{i}"], p[f"b{i}"], 1, 1, f"l{i}_")
        if model.batchnorm:
            h = _batchnorm(g, h, model, i, f"l{i}_")
        h = g.op("Relu", [h], f"l{i}_relu")
        if (i - 1) in model.max_pools:
            h = _pool(g, h, f"l{i}_")
    last = model.num_layers
    return _linear(g, h, p[f"W{last}"], p[f"b{last}"], f"l{last}_")


def _fast(model, g: Graph, x: str) -> str:
    """FastNet: [whitening conv [- Relu with whiten_neg]] - {conv-BN-ReLU[-pool]} - global max pool -
    linear - x logit_scale; with tta_flip the same layers (shared weights) also run on the mirrored
    images and the scores are averaged, and with tta_shift on the images shifted by +-s pixels
    (zero padding), weighted 0.5, 0.25, 0.25, as ``FastNet.loss`` does at evaluation. Dirac init
    and a frozen BN scale change only the weights' values."""
    p = model.params
    names = {}   # weights once, shared by both branches

    def const(key, value, dtype=np.float32):
        if key not in names:
            names[key] = g.const(key, value, dtype)
        return names[key]

    def branch(h, tag):
        if model.whiten:
            wp = model.whiten_conv_param
            h = g.op("Conv", [h, const("whiten_W", p["whiten_W"]), const("whiten_b", p["whiten_b"])],
                     f"{tag}whiten", kernel_shape=list(p["whiten_W"].shape[2:]),
                     strides=[wp["stride"]] * 2, pads=[wp["pad"]] * 4)
            if getattr(model, "whiten_neg", False):
                h = g.op("Relu", [h], f"{tag}whiten_relu")
        for i, (_, pool) in enumerate(model.layers, start=1):
            bp = model.bn_params[i - 1]
            h = g.op("Conv", [h, const(f"W{i}", p[f"W{i}"]), const(f"b{i}", p[f"b{i}"])], f"{tag}l{i}_conv",
                     kernel_shape=[3, 3], strides=[1, 1], pads=[1] * 4)
            h = g.op("BatchNormalization", [h, const(f"gamma{i}", p[f"gamma{i}"]), const(f"beta{i}", p[f"beta{i}"]),
                                            const(f"running_mean{i}", bp["running_mean"]),
                                            const(f"running_var{i}", bp["running_var"])],
                     f"{tag}l{i}_bn", epsilon=float(bp.get("eps", 1e-5)))
            h = g.op("Relu", [h], f"{tag}l{i}_relu")
            if pool:
                h = _pool(g, h, f"{tag}l{i}_")
        h = g.op("Flatten", [g.op("GlobalMaxPool", [h], f"{tag}global_max")], f"{tag}flatten", axis=1)
        last = len(model.layers) + 1
        s = g.op("Gemm", [h, const(f"W{last}", p[f"W{last}"]), const(f"b{last}", p[f"b{last}"])], f"{tag}gemm")
        return g.op("Mul", [s, const("logit_scale", np.float32(model.logit_scale))], f"{tag}scores")

    def view(h, tag):   # the scores of one view, mirror-averaged with tta_flip
        scores = branch(h, tag)
        if model.tta_flip:
            mirrored = g.op("Slice", [h, const("start_last", [-1], np.int64),
                                      const("end_before_first", [np.iinfo(np.int64).min], np.int64),
                                      const("axis_w", [3], np.int64), const("step_back", [-1], np.int64)],
                            f"{tag}mirror")
            both = g.op("Add", [scores, branch(mirrored, f"{tag}mirror_")], f"{tag}scores_sum")
            scores = g.op("Mul", [both, const("half", np.float32(0.5))], f"{tag}scores_mean")
        return scores

    scores = view(x, "")
    s = getattr(model, "tta_shift", 0)
    if s:
        _, H, W = model.input_dims
        views = [g.op("Mul", [scores, g.const("weight_image", np.float32(0.5))], "weighted_image")]
        for sign, tag in ((1, "shift_down_"), (-1, "shift_up_")):
            # shift by (s, s) rows/columns: zero rows/columns in front and a crop back to H x W (or
            # the reverse for -s), as numbaconv.models.shift_images
            before, after = (s, 0) if sign > 0 else (0, s)
            padded = g.op("Pad", [x, g.const(f"{tag}pads", [0, 0, before, before, 0, 0, after, after], np.int64)],
                          f"{tag}pad")
            start = after
            shifted = g.op("Slice", [padded, g.const(f"{tag}starts", [start, start], np.int64),
                                     g.const(f"{tag}ends", [start + H, start + W], np.int64),
                                     g.const(f"{tag}axes", [2, 3], np.int64)], f"{tag}crop")
            views.append(g.op("Mul", [view(shifted, tag), g.const(f"{tag}weight", np.float32(0.25))],
                              f"{tag}weighted"))
        scores = g.op("Sum", views, "scores_views")
    return scores


EXPORTERS = {"three-layer": _three_layer, "deep": _deep, "fast": _fast}


# ------------------------------------------------------------------ the graph
def to_onnx(model, data_info: dict, input_type: str = "uint8"):
    """The ONNX ModelProto of ``model`` with ``data_info``'s preprocessing (see the module docstring)."""
    import onnx
    from onnx import TensorProto, helper

    from .predict import preprocessing_of

    if input_type not in INPUT_TYPES:
        raise ValueError(f"input_type must be one of {', '.join(INPUT_TYPES)}, got {input_type!r}")
    exporter = EXPORTERS.get(model.kind)
    if exporter is None:
        raise ValueError(f"no ONNX export for model kind {model.kind!r} (exportable: {', '.join(EXPORTERS)})")
    mean, std = preprocessing_of(data_info)
    C, H, W = model.input_dims
    g = Graph()
    x = g.name("images")
    if input_type == "uint8":
        x = g.op("Cast", [x], "pixels", to=TensorProto.FLOAT)
    # the library's order: pixels / 255, minus the mean, divided by the std (numbaconv.data.preprocess)
    x = g.op("Div", [x, g.const("max_pixel", np.float32(255))], "scaled")
    x = g.op("Sub", [x, g.const("mean", mean.astype(np.float32).reshape(1, C, 1, 1))], "centred")
    if std is not None:
        x = g.op("Div", [x, g.const("std", std.astype(np.float32).reshape(1, C, 1, 1))], "normalised")
    scores = exporter(model, g, x)
    g.nodes.append(helper.make_node("Softmax", [scores], ["probabilities"], name="softmax", axis=1))
    elem = TensorProto.UINT8 if input_type == "uint8" else TensorProto.FLOAT
    graph = helper.make_graph(
        g.nodes, f"numbaconv_{model.kind}",
        [helper.make_tensor_value_info("images", elem, ["N", C, H, W])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", model.num_classes])],
        g.initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="numbaconv")
    proto.ir_version = min(proto.ir_version, 8)   # readable by onnxruntime releases from 1.14 on
    names = data_info.get("class_names") or [str(i) for i in range(model.num_classes)]
    meta = {"class_names": json.dumps(list(names)), "model_config": json.dumps(model.config()),
            "data_info": json.dumps(data_info),
            "input": f"raw RGB images, NCHW, {input_type} 0-255, shape (N, {C}, {H}, {W}); preprocessing is in the graph"}
    helper.set_model_props(proto, meta)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def export_onnx(checkpoint, path, input_type: str = "uint8") -> Path:
    """Write ``checkpoint`` (a path or a ``Checkpoint``) as ONNX to ``path`` (atomically)."""
    try:
        import onnx
    except ImportError:
        raise ValueError("ONNX export needs the onnx package: pip install 'numbaconv[onnx]'") from None
    from .checkpoint import Checkpoint, load_checkpoint
    from .files import atomic_write

    ck = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    proto = to_onnx(ck.model, ck.data_info, input_type)
    path = Path(path)
    try:
        atomic_write(path, lambda tmp: onnx.save_model(proto, str(tmp)))
    except OSError as e:
        raise ValueError(f"cannot write {path}: {e.strerror or e}") from None
    return path
