"""The built-in synthetic set, preprocessing and load_dataset("synthetic")."""
import numpy as np
import pytest

from numbaconv.data import Dataset, load_dataset, preprocess, synthetic_images
from numbaconv.data.preprocess import channel_stats
from numbaconv.data.synthetic import CLASS_NAMES, synthetic_test_images


def test_synthetic_shapes_balance_and_determinism():
    x, y = synthetic_images(200, seed=3)
    assert x.shape == (200, 3, 32, 32) and x.dtype == np.uint8
    assert y.shape == (200,) and y.dtype == np.int64
    assert np.bincount(y, minlength=10).tolist() == [20] * 10
    x2, y2 = synthetic_images(200, seed=3)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    x3, _ = synthetic_images(200, seed=4)
    assert not np.array_equal(x, x3)
    xt, _ = synthetic_test_images(200, seed=3)
    assert not np.array_equal(x, xt)
    assert x.std() > 40  # not blank: colours span the range


@pytest.mark.parametrize("bad", [-1, 2.5, True, "10"])
def test_synthetic_rejects_bad_count(bad):
    with pytest.raises(ValueError, match="num_images must be a non-negative integer"):
        synthetic_images(bad)


def _ridge_accuracies(Xtr, ytr, Xte, yte, lams):
    """Held-out accuracy of one-hot ridge regression for each lam (dual form, n=1500 < d=3072:
    W = X^T (X X^T + lam I)^-1 Y, the same solution, cheaper; the Gram matrix is shared)."""
    mu = Xtr.mean(0)
    Xtr, Xte = Xtr - mu, Xte - mu
    gram, cross = Xtr @ Xtr.T, Xte @ Xtr.T
    Y = np.eye(10)[ytr]
    return [float((np.argmax(cross @ np.linalg.solve(gram + lam * np.eye(len(Xtr)), Y), 1) == yte).mean())
            for lam in lams]


def test_class_signal_is_not_linear_in_pixels():
    """A ridge (least-squares) classifier on raw pixels stays near chance on held-out images,
    while the same classifier on a translation-invariant nonlinear feature (per-channel |FFT|)
    is near perfect: the classes are there, but not linearly in the pixels."""
    x, y = synthetic_images(2500, seed=0)
    pixels = x.reshape(len(x), -1).astype(np.float64) / 255
    g = x.astype(np.float64) / 255
    g -= g.mean(axis=(2, 3), keepdims=True)
    spectrum = np.abs(np.fft.rfft2(g)).reshape(len(x), -1)
    spectrum /= spectrum[:1500].std(0) + 1e-9
    tr, te = slice(0, 1500), slice(1500, None)
    lams = (10.0, 100.0, 1000.0)  # both get the same choice of regularisation, the best on held-out data
    linear = max(_ridge_accuracies(pixels[tr], y[tr], pixels[te], y[te], lams))
    nonlinear = max(_ridge_accuracies(spectrum[tr], y[tr], spectrum[te], y[te], lams))
    assert linear < 0.3, linear          # chance is 0.1; CIFAR-10 gives a linear classifier ~0.4
    assert nonlinear > 0.9, nonlinear


def test_class_means_carry_no_signal():
    """The two colours are exchangeable, so every class has the same mean image (up to noise)."""
    x, y = synthetic_images(5000, seed=1)
    m = x.astype(np.float64).mean(axis=(2, 3))  # (N, 3) per-image channel means
    overall = m.mean(0)
    for k in range(10):
        mk = m[y == k]
        z = (mk.mean(0) - overall) / (mk.std(0) / np.sqrt(len(mk)))
        # 30 z-scores under the null of equal means: |z| > 4 has probability ~2e-3 in total
        assert np.abs(z).max() < 4, (k, z)


def test_preprocess_matches_formula():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (4, 3, 5, 5), dtype=np.uint8)
    mean, std = np.array([0.1, 0.2, 0.3]), np.array([0.5, 0.25, 2.0])
    for dtype in (np.float32, np.float64):
        out = preprocess(x, mean, std, dtype)
        assert out.dtype == dtype
        expected = (x / 255.0 - mean[None, :, None, None]) / std[None, :, None, None]
        np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(preprocess(x, mean, dtype=np.float64), x / 255.0 - mean[None, :, None, None])


def test_channel_stats_exact():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (3000, 3, 4, 4), dtype=np.uint8)  # more than one chunk
    mean, std = channel_stats(x)
    np.testing.assert_allclose(mean, (x / 255.0).mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(std, (x / 255.0).std(axis=(0, 2, 3)), rtol=1e-10)


@pytest.mark.parametrize("args, match", [
    ((np.zeros((2, 3, 4, 4)), np.zeros(3)), r"images must be a uint8 array of shape \(N, 3, H, W\), got dtype float64"),
    ((np.zeros((2, 4, 4), np.uint8), np.zeros(3)), r"got dtype uint8 with shape \(2, 4, 4\)"),
    ((np.zeros((2, 3, 4, 4), np.uint8), np.zeros(2)), r"mean must have shape \(3,\)"),
    ((np.zeros((2, 3, 4, 4), np.uint8), np.zeros(3), np.array([1.0, 0.0, 1.0])), r"std must have shape \(3,\) with positive"),
    ((np.zeros((2, 3, 4, 4), np.uint8), np.zeros(3), None, np.int32), r"dtype must be float32 or float64, got int32"),
])
def test_preprocess_rejects_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        preprocess(*args)


def test_load_synthetic_splits_and_preprocessing():
    ds = load_dataset("synthetic", num_val=100, num_train=300, seed=2)
    assert isinstance(ds, Dataset)
    assert ds.X_train.shape == (300, 3, 32, 32) and ds.X_train.dtype == np.float32
    assert ds.X_val.shape == (100, 3, 32, 32) and ds.y_val.dtype == np.int64
    assert ds.X_test.shape == (1000, 3, 32, 32) and ds.y_test.shape == (1000,)
    assert ds.class_names == CLASS_NAMES and ds.source == "synthetic" and ds.std is None
    # Validation = the last num_val images of the generated training set; mean from the train split only.
    raw, labels = synthetic_images(400, seed=2)
    assert np.array_equal(ds.y_val, labels[300:]) and np.array_equal(ds.y_train, labels[:300])
    np.testing.assert_allclose(ds.mean, (raw[:300] / 255.0).mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(ds.X_val, preprocess(raw[300:], ds.mean), rtol=1e-6)
    np.testing.assert_allclose(ds.X_train.mean(axis=(0, 2, 3)), 0, atol=1e-5)


def test_load_synthetic_defaults_and_std():
    ds = load_dataset(num_val=1000, normalize_std=True, dtype=np.float64)
    assert ds.X_train.shape[0] == 4000 and ds.X_val.shape[0] == 1000 and ds.X_train.dtype == np.float64
    assert ds.std.shape == (3,)
    np.testing.assert_allclose(ds.X_train.std(axis=(0, 2, 3)), 1.0, rtol=1e-9)


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_val=-1), r"num_val must be an integer >= 0, got -1"),
    (dict(num_train=0), r"num_train must be an integer >= 1, got 0"),
    (dict(num_val=1.5), r"num_val must be an integer >= 0, got 1.5"),
    (dict(dtype=np.int64), r"dtype must be float32 or float64, got int64"),
    (dict(name_or_path="mnist"), r"unknown dataset 'mnist': not 'synthetic', 'cifar10' or an existing HDF5 file"),
    (dict(seed=-3), r"seed must be a non-negative integer, got -3"),
])
def test_load_dataset_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_dataset(**kwargs)


def test_missing_cifar10_says_how_to_get_it(tmp_path):
    with pytest.raises(ValueError, match=r"run `numbaconv datasets cifar10`"):
        load_dataset("cifar10", data_home=str(tmp_path))
