"""`numbaconv predict`, numbaconv.predict and evaluate's batched, uint8 path."""
import json
import tracemalloc

import numpy as np
import pytest
from typer.testing import CliRunner

from numbaconv.checkpoint import load_checkpoint, load_split_for, save_checkpoint
from numbaconv.data import load_dataset, preprocess
from numbaconv.models import DeepConvNet
from numbaconv.data import raw_split
from numbaconv.predict import as_nchw, predict, read_images
from numbaconv.solver import Solver
from numbaconv_cli.main import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    from numbaconv_cli import console as c

    monkeypatch.setattr(c.console, "width", 200)
    monkeypatch.setattr(c.err_console, "width", 200)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A small deep net with batch norm, trained one epoch on 200 synthetic images (40 held out)."""
    ds = load_dataset("synthetic", num_val=40, num_train=200)
    model = DeepConvNet(num_filters=[4, 8], max_pools=[0, 1], batchnorm=True, weight_scale="kaiming", seed=0)
    solver = Solver(model, ds, update_rule="adam", optim_config={"learning_rate": 3e-3}, batch_size=50,
                    num_epochs=1, seed=0, verbose=False)
    solver.train()
    path = tmp_path_factory.mktemp("ck") / "best.h5"
    save_checkpoint(path, model, solver, "best", synthetic_info(ds, 40, 200))
    return path


def synthetic_info(ds, num_val, num_train):
    """The data_info `numbaconv train` records for the synthetic set."""
    return {"name": "synthetic", "source": "synthetic", "num_val": num_val, "num_train": num_train,
            "normalize_std": False, "seed": 0, "mean": ds.mean.tolist(), "std": None,
            "class_names": list(ds.class_names)}


def _save_png(path, image_chw):
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(image_chw.transpose(1, 2, 0))).save(path)


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_raw_split_is_load_datasets_split_before_preprocessing(split):
    ds = load_dataset("synthetic", num_val=30, num_train=50, seed=2)
    X, y, names, source = raw_split("synthetic", split, 30, 50, 2)
    assert X.dtype == np.uint8 and source == "synthetic" and names == ds.class_names
    want_X = {"train": ds.X_train, "val": ds.X_val, "test": ds.X_test}[split]
    want_y = {"train": ds.y_train, "val": ds.y_val, "test": ds.y_test}[split]
    assert np.array_equal(y, want_y)
    assert np.array_equal(preprocess(X, ds.mean), want_X)


def test_predicting_saved_val_pngs_gives_evaluates_labels(checkpoint, tmp_path):
    ck = load_checkpoint(checkpoint)
    X, y, _, _ = load_split_for(ck, "val")
    for i, image in enumerate(X):
        _save_png(tmp_path / f"{i:03d}.png", image)
    r = runner.invoke(app, ["predict", str(checkpoint), str(tmp_path), "--json", "--top-k", "1"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    names = out["class_names"]
    labels = [names.index(p["top_k"][0]["class"]) for p in out["predictions"]]
    assert len(labels) == len(y) == 40 and not out["errors"] and not out["notes"]
    r = runner.invoke(app, ["evaluate", str(checkpoint), "--split", "val", "--json"])
    assert r.exit_code == 0, r.output
    ev = json.loads(r.output)
    # evaluate's confusion matrix holds exactly the (true, predicted) pairs of predict's labels
    want = np.zeros((10, 10), int)
    np.add.at(want, (y, labels), 1)
    assert ev["confusion"] == want.tolist()
    assert ev["accuracy"] == pytest.approx(np.mean(np.array(labels) == y))
    # and the model's own predict on the same images preprocessed in one piece agrees
    assert np.array_equal(ck.model.predict(preprocess(X, ck.data_info["mean"])), labels)


def test_predict_takes_nchw_nhwc_npy_and_paths_alike(checkpoint, tmp_path):
    X, _, _, _ = raw_split("synthetic", "test")
    X = X[:7]
    p = predict(checkpoint, X)
    assert p.shape == (7, 10) and np.allclose(p.sum(axis=1), 1)
    assert np.array_equal(predict(checkpoint, X.transpose(0, 2, 3, 1)), p)
    np.save(tmp_path / "x.npy", X.transpose(0, 2, 3, 1))
    assert np.array_equal(predict(checkpoint, tmp_path / "x.npy"), p)
    # other batches: other float32 GEMM blockings, so equal to float32 rounding
    np.testing.assert_allclose(predict(checkpoint, X, batch_size=3), p, rtol=1e-5, atol=1e-7)
    ck = load_checkpoint(checkpoint)
    assert np.array_equal(predict(ck.model, X, data_info=ck.data_info), p)
    with pytest.raises(ValueError, match="data_info"):
        predict(ck.model, X)
    with pytest.raises(ValueError, match="raw uint8"):
        predict(checkpoint, X.astype(np.float32))
    with pytest.raises(ValueError, match=r"\(N, 3, 32, 32\) or \(N, 32, 32, 3\)"):
        as_nchw(X[:, :, :16], (3, 32, 32))


def test_read_images_converts_and_resizes_with_notes(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((20, 40), 128, np.uint8), mode="L").save(tmp_path / "gray.png")
    Image.fromarray(np.array([[[200, 10, 10]]], np.uint8)).save(tmp_path / "one.png")
    found = read_images([tmp_path / "gray.png", tmp_path / "one.png"])
    assert found.images.shape == (2, 3, 32, 32) and not found.errors
    assert np.all(found.images[0] == 128)                       # gray -> R = G = B
    assert np.all(found.images[1, :, :, :] == np.array([200, 10, 10])[:, None, None])   # 1x1 -> flat 32x32
    assert any("converted from L to RGB" in n for n in found.notes)
    assert any("resized from 40x20 to 32x32 (bilinear)" in n for n in found.notes)
    assert any("resized from 1x1 to 32x32" in n for n in found.notes)


def test_predict_cli_bad_inputs_one_line_each_others_still_predicted(checkpoint, tmp_path):
    X, _, _, _ = raw_split("synthetic", "test")
    _save_png(tmp_path / "good.png", X[0])
    (tmp_path / "text.png").write_text("not an image")
    from PIL import Image

    Image.fromarray(X[1, 0]).save(tmp_path / "gray.png")              # grayscale: converted
    Image.fromarray(X[2, :, :1, :1].transpose(1, 2, 0)).save(tmp_path / "tiny.png")   # 1x1: resized
    np.save(tmp_path / "bad.npy", np.zeros((2, 5), np.uint8))
    r = runner.invoke(app, ["predict", str(checkpoint), str(tmp_path / "good.png"), str(tmp_path / "text.png"),
                            str(tmp_path / "gray.png"), str(tmp_path / "tiny.png"), str(tmp_path / "bad.npy"),
                            str(tmp_path / "missing.png")])
    assert r.exit_code == 1
    out = r.output
    assert "Traceback" not in out and "good.png" in out and "gray.png" in out and "tiny.png" in out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 3
    assert "text.png: not an image Pillow can decode" in errors[0]
    assert "bad.npy" in errors[1] and "(N, 3, 32, 32)" in errors[1]
    assert "missing.png does not exist" in errors[2]
    assert "converted from L to RGB" in out and "resized from 1x1 to 32x32 (bilinear)" in out


def test_predict_cli_refuses_a_file_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "ck.h5").write_text("hello")
    r = runner.invoke(app, ["predict", str(tmp_path / "ck.h5"), str(tmp_path)])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert r.output.startswith("error:") and "not a readable HDF5 file" in r.output


def test_evaluate_confusion_png_and_json(checkpoint, tmp_path):
    png = tmp_path / "confusion.png"
    r = runner.invoke(app, ["evaluate", str(checkpoint), "--split", "val", "--confusion", str(png), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    counts = np.array(out["confusion"])
    assert counts.shape == (10, 10) and counts.sum() == out["num_images"] == 40
    assert np.trace(counts) == out["correct"]
    recall = np.diag(counts) / counts.sum(axis=1)
    assert np.allclose([out["per_class"][n] for n in out["class_names"]], recall)
    from matplotlib.image import imread

    assert imread(str(png)).shape[:2] == (700, 800)
    (tmp_path / "file").write_text("")
    r = runner.invoke(app, ["evaluate", str(checkpoint), "--confusion", str(tmp_path / "file" / "c.png")])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert r.output.startswith("error: cannot write the confusion matrix to")


def test_evaluate_memory_is_the_uint8_images_plus_a_batch(checkpoint, tmp_path):
    """The whole split is held once as uint8; preprocessing is per batch in the model's dtype
    (it was a float64 copy of the split and its temporaries, ~7x the data)."""
    from numbaconv.data.store import Split, write_h5
    from numbaconv.data.synthetic import CLASS_NAMES
    from numbaconv.predict import evaluate

    X, y, _, _ = raw_split("synthetic", "train", 0, 3000)
    write_h5(tmp_path / "set.h5", {"train": Split(X, y)}, CLASS_NAMES, {"source": "test"})
    ck = load_checkpoint(checkpoint)
    ck.model.predict(preprocess(X[:10], ck.data_info["mean"]))   # compile outside the measurement
    tracemalloc.start()
    images, labels, _, _ = load_split_for(ck, "train", dataset=str(tmp_path / "set.h5"), num_val=0)
    result = evaluate(ck, images, labels, batch_size=100)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert result["confusion"].sum() == 3000
    assert peak < 2 * X.nbytes + 8 * 2**20, f"peak {peak / 2**20:.1f} MiB for {X.nbytes / 2**20:.1f} MiB of images"
