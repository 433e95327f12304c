"""ONNX export: every model kind, preprocessing in the graph, checked with onnx.checker and
compared with numbaconv.predict under onnxruntime."""
import json

import numpy as np
import pytest
from typer.testing import CliRunner

onnx = pytest.importorskip("onnx", reason="ONNX export needs the onnx extra: pip install 'numbaconv[onnx]'")
ort = pytest.importorskip("onnxruntime", reason="the exported graphs are run with onnxruntime (the onnx extra)")

from numbaconv.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from numbaconv.export import EXPORTERS, export_onnx, to_onnx  # noqa: E402
from numbaconv.models import MODELS, build_model  # noqa: E402
from numbaconv.data import raw_split  # noqa: E402
from numbaconv.predict import predict  # noqa: E402
from numbaconv.recipe import recipe_model_config  # noqa: E402
from numbaconv_cli.main import app  # noqa: E402

CLASSES = [f"class {i}" for i in range(10)]
KINDS = {
    "three-layer": {"kind": "three-layer", "num_filters": 4, "filter_size": 5, "hidden_dim": 16,
                    "weight_scale": 0.05},
    "deep": {"kind": "deep", "num_filters": [4, 8], "max_pools": [0, 1], "weight_scale": "kaiming"},
    "deep-bn": {"kind": "deep", "num_filters": [4, 8, 8], "max_pools": [0, 2], "batchnorm": True,
                "weight_scale": "kaiming"},
    "fast-recipe": recipe_model_config("fast", (3, 32, 32), 10),
    # the long recipe's model (whitening with its negation, dirac init, frozen BN scale, BN momentum,
    # flip and shift test-time views), narrower so 100 images x 6 views stay quick
    "long-recipe": {**recipe_model_config("long", (3, 32, 32), 10), "widths": [8, 16, 16]},
}


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    from numbaconv_cli import console as c

    monkeypatch.setattr(c.console, "width", 200)
    monkeypatch.setattr(c.err_console, "width", 200)


def _images(n=100):
    return raw_split("synthetic", "test")[0][:n]


def _checkpoint(tmp_path, name, std=None):
    """A model of each kind with non-trivial weights everywhere a graph could go wrong: random
    biases, BN running statistics and gamma/beta, a fitted whitening stem, a logit scale."""
    rng = np.random.default_rng(0)
    model = build_model(KINDS[name], seed=0)
    if getattr(model, "whiten", 0):
        from numbaconv.data import preprocess

        model.fit_whitening(preprocess(_images(200), [0.5, 0.45, 0.4]))
        model.logit_scale = 1.7
    for k, v in model.params.items():
        if k.startswith(("b", "beta")) and k not in model.__dict__.get("frozen", ()):
            model.params[k] = (0.1 * rng.standard_normal(v.shape)).astype(v.dtype)
        if k.startswith("gamma"):
            model.params[k] = (1 + 0.2 * rng.standard_normal(v.shape)).astype(v.dtype)
    for bp in model.bn_params:
        bp["running_mean"] = (0.2 * rng.standard_normal(bp["running_mean"].shape)).astype(model.dtype)
        bp["running_var"] = rng.uniform(0.5, 2.0, bp["running_var"].shape).astype(model.dtype)
    info = {"name": "synthetic", "mean": [0.5, 0.45, 0.4], "std": std, "class_names": CLASSES}
    path = tmp_path / f"{name}.h5"
    save_checkpoint(path, model, which="model", data_info=info)
    return path


def test_every_model_kind_has_an_exporter():
    assert set(EXPORTERS) == set(MODELS)


@pytest.mark.parametrize("name", list(KINDS))
def test_onnxruntime_agrees_with_predict(tmp_path, name):
    path = _checkpoint(tmp_path, name)
    out = export_onnx(path, tmp_path / "m.onnx")
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto, full_check=True)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["class_names"]) == CLASSES
    ops = {n.op_type for n in proto.graph.node}
    assert {"Cast", "Div", "Sub", "Conv", "Relu", "Gemm", "Softmax"} <= ops
    X = _images()
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(["probabilities"], {"images": X})[0]
    want = predict(path, X)
    assert got.dtype == np.float32 and got.shape == (100, 10)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert np.array_equal(got.argmax(axis=1), want.argmax(axis=1))


def test_float32_input_and_std_normalisation(tmp_path):
    path = _checkpoint(tmp_path, "deep-bn", std=[0.25, 0.2, 0.3])
    proto = to_onnx(load_checkpoint(path).model, load_checkpoint(path).data_info, input_type="float32")
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    X = _images(20)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": X.astype(np.float32)})[0]
    np.testing.assert_allclose(got, predict(path, X), rtol=0, atol=1e-5)


def test_export_cli_writes_and_refuses_bad_input(tmp_path):
    runner = CliRunner()
    path = _checkpoint(tmp_path, "deep")
    r = runner.invoke(app, ["export", str(path), "-o", str(tmp_path / "m.onnx")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "m.onnx").is_file() and "wrote" in r.output
    (tmp_path / "file").write_text("")
    (tmp_path / "text.h5").write_text("not a checkpoint")
    for args, words in ((["export", str(path), "-o", str(tmp_path / "file" / "m.onnx")], "cannot write"),
                        (["export", str(path), "-o", str(tmp_path / "missing" / "m.onnx")], "does not exist"),
                        (["export", str(tmp_path / "text.h5"), "-o", str(tmp_path / "x.onnx")], "not a readable HDF5")):
        r = runner.invoke(app, args)
        assert r.exit_code == 2 and "Traceback" not in r.output, r.output
        assert r.output.startswith("error:") and words in r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep.h5", "file", "m.onnx", "text.h5"]  # nothing half-written


def test_long_recipe_graph_has_its_pieces(tmp_path):
    proto = onnx.load(str(export_onnx(_checkpoint(tmp_path, "long-recipe"), tmp_path / "m.onnx")))
    names = [n.name for n in proto.graph.node]
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("Pad") == 2 and "whiten_relu" in names and "scores_views" in names
    assert ops.count("Gemm") == 6   # 3 views, each with its mirror
