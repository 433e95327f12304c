"""Datasets: the built-in ``synthetic`` set, CIFAR-10 stored as HDF5, preprocessing.

>>> from numbaconv.data import load_dataset
>>> ds = load_dataset("synthetic", num_val=100, num_train=200)
>>> ds.X_train.shape, ds.X_train.dtype, ds.y_train.dtype, ds.X_val.shape
((200, 3, 32, 32), dtype('float32'), dtype('int64'), (100, 3, 32, 32))

``load_dataset`` follows the assignment: pixels / 255, the per-channel mean of the
training images subtracted (optionally divided by their std), and the last
``num_val`` training images held out as the validation split.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .preprocess import channel_stats, preprocess
from .store import DatasetError, describe_h5, read_h5
from .synthetic import CLASS_NAMES as SYNTHETIC_CLASS_NAMES
from .synthetic import synthetic_images, synthetic_test_images

__all__ = ["Dataset", "DatasetError", "RawSplits", "load_dataset", "load_raw", "raw_split", "preprocess",
           "synthetic_images", "data_home",
           "dataset_path", "describe_dataset"]

# The built-in synthetic set: training images when num_train is not given (the num_val validation
# images come on top), and the size of its test split.
SYNTHETIC_NUM_TRAIN = 4000
SYNTHETIC_TEST_SIZE = 1000
# Most training + validation images the synthetic set makes (CIFAR-10's 60,000; generating them
# peaks at ~2 GB), so a mistyped size fails at once instead of filling the memory.
SYNTHETIC_MAX_IMAGES = 60_000


@dataclass
class Dataset:
    X_train: np.ndarray  # (N, 3, 32, 32) float, preprocessed
    y_train: np.ndarray  # (N,) int64
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray | None
    y_test: np.ndarray | None
    class_names: list[str]
    mean: np.ndarray  # (3,) per-channel mean subtracted (in /255 units)
    std: np.ndarray | None  # (3,) when normalize_std
    source: str  # "synthetic" or the file path


def data_home() -> Path:
    """Where datasets live: ``$NUMBACONV_DATA`` if set, else the ``datasets/`` folder of
    the working copy when numbaconv runs from a checkout (editable install), else
    ``./datasets`` under the current directory."""
    env = os.environ.get("NUMBACONV_DATA")
    if env:
        return Path(env).expanduser()
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file() and (root / "numbaconv").is_dir():
        return root / "datasets"
    return Path.cwd() / "datasets"


_default_data_home = data_home  # load_dataset's data_home argument shadows the function


def _int_arg(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _refuse_dangling(path: Path) -> None:
    if path.is_symlink() and not path.exists():
        raise DatasetError(f"{path} is a dangling symbolic link (to {os.readlink(path)}); remove it, or point it "
                           f"at an existing file")


def _check_sizes(num_val: int, num_train: int | None, available: int, source: str) -> None:
    """The split sizes asked for against the training images there are, before anything is allocated."""
    if num_val >= available:
        raise ValueError(f"num_val={num_val} leaves no training images: {source} has {available} training images")
    if num_train is not None and num_train > available - num_val:
        raise ValueError(f"num_train={num_train} is more than the {available - num_val} training images left in "
                         f"{source} after num_val={num_val} (it has {available})")


def dataset_path(name_or_path: str, data_home: str | None = None) -> Path:
    """The HDF5 file behind a dataset name: "cifar10" -> <data_home>/cifar10.h5, else a path.
    Raises ``DatasetError`` (telling how to get it) when the file does not exist."""
    if name_or_path == "cifar10":
        path = (Path(data_home) if data_home else _default_data_home()) / "cifar10.h5"
        _refuse_dangling(path)
        if not path.is_file():
            raise DatasetError(f"CIFAR-10 is not in the data home yet ({path} is missing); "
                               f"run `numbaconv datasets cifar10` to download and convert it")
        return path
    path = Path(name_or_path)
    _refuse_dangling(path)
    if not path.is_file():
        raise DatasetError(f"unknown dataset {name_or_path!r}: not 'synthetic', 'cifar10' or an existing HDF5 file")
    return path


def describe_dataset(name_or_path: str = "synthetic", data_home: str | None = None) -> dict:
    """Splits, per-class counts and provenance without preprocessing (for ``numbaconv datasets info``):
    {"splits": {name: size}, "counts": {name: per-class counts}, "class_names", "attrs"}."""
    if name_or_path == "synthetic":
        _, y_train = synthetic_images(SYNTHETIC_NUM_TRAIN + 1000)  # as load_dataset() with defaults
        _, y_test = synthetic_test_images(SYNTHETIC_TEST_SIZE)
        n = len(SYNTHETIC_CLASS_NAMES)
        return {"splits": {"train": len(y_train), "test": len(y_test)},
                "counts": {"train": np.bincount(y_train, minlength=n), "test": np.bincount(y_test, minlength=n)},
                "class_names": list(SYNTHETIC_CLASS_NAMES),
                "attrs": {"source": "synthetic (built-in, seed 0; train = what load_dataset() splits into "
                                     f"{SYNTHETIC_NUM_TRAIN} train + 1000 val by default)"}}
    stored = read_h5(dataset_path(name_or_path, data_home))  # reads everything: a full check of the file
    n = len(stored.class_names)
    return {"splits": {k: len(s.labels) for k, s in stored.splits.items()},
            "counts": {k: np.bincount(s.labels, minlength=n) for k, s in stored.splits.items()},
            "class_names": stored.class_names, "attrs": stored.attrs}


@dataclass
class RawSplits:
    """A dataset's images as stored (uint8 (N, 3, H, W), int64 labels), split as ``load_dataset``
    splits them; what evaluation and figures need without a float copy of the set."""
    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray] | None
    class_names: list[str]
    source: str  # "synthetic" or the file path


def load_raw(name_or_path: str = "synthetic", num_val: int = 1000, num_train: int | None = None,
             data_home: str | None = None, seed: int = 0) -> RawSplits:
    """The raw splits of a dataset (see ``load_dataset`` for names, sizes and the split rule).
    Sizes beyond the data raise ``ValueError`` before anything is allocated; a file's header is
    checked before its images are read."""
    num_val = _int_arg("num_val", num_val, 0)
    if num_train is not None:
        num_train = _int_arg("num_train", num_train, 1)
    if name_or_path == "synthetic":
        total = num_val + (num_train if num_train is not None else SYNTHETIC_NUM_TRAIN)
        if total > SYNTHETIC_MAX_IMAGES:
            raise ValueError(f"num_val={num_val} and num_train={num_train or SYNTHETIC_NUM_TRAIN} ask for {total} "
                             f"synthetic images; the synthetic set makes at most {SYNTHETIC_MAX_IMAGES:,}")
        images, labels = synthetic_images(total, seed)
        test = synthetic_test_images(SYNTHETIC_TEST_SIZE, seed)
        class_names, source = list(SYNTHETIC_CLASS_NAMES), "synthetic"
    else:
        path = dataset_path(name_or_path, data_home)
        _check_sizes(num_val, num_train, describe_h5(path)["splits"]["train"], str(path))  # header only
        stored = read_h5(path)
        images, labels = stored.splits["train"]
        test = stored.splits.get("test")
        class_names, source = list(stored.class_names), str(path)
    labels = np.asarray(labels, dtype=np.int64)
    n = len(images)
    X_tr, y_tr = images[:n - num_val], labels[:n - num_val]
    if num_train is not None:
        X_tr, y_tr = X_tr[:num_train], y_tr[:num_train]
    test = None if test is None else (test[0], np.asarray(test[1], dtype=np.int64))
    return RawSplits((X_tr, y_tr), (images[n - num_val:], labels[n - num_val:]), test, class_names, source)


def raw_split(name: str, split: str = "train", num_val: int = 0, num_train: int | None = None, seed: int = 0,
              data_home=None):
    """One raw split ("train", "val" or "test") of ``load_raw``: (images, labels, class_names, source).
    A missing or empty split is a ValueError that says which."""
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be one of train, val, test, got {split!r}")
    raw = load_raw(name, num_val, num_train, data_home, seed)
    if split == "test" and raw.test is None:
        raise ValueError(f"dataset {raw.source} has no test split (its source had none); use its train split")
    X, y = {"train": raw.train, "val": raw.val, "test": raw.test}[split]
    if X.shape[0] == 0:
        raise ValueError(f"the {split} split of {raw.source} is empty")
    return X, y, raw.class_names, raw.source


def load_dataset(name_or_path: str = "synthetic", num_val: int = 1000, num_train: int | None = None,
                 normalize_std: bool = False, dtype=np.float32, data_home: str | None = None,
                 seed: int = 0) -> Dataset:
    """Load and preprocess a dataset.

    ``"synthetic"``: the built-in set, generated from ``seed`` (num_train + num_val training images,
    num_train 4,000 by default, and 1,000 test images); ``seed`` is ignored for files. ``"cifar10"``: ``<data_home>/cifar10.h5`` as written by
    ``numbaconv datasets cifar10``. Anything else: the path of an HDF5 file in our layout.

    The last ``num_val`` training images become the validation split; ``num_train`` then keeps the first
    ``num_train`` of the rest. The mean (and std) come from those training images only.
    Sizes beyond the data (or, for synthetic, beyond ``SYNTHETIC_MAX_IMAGES``) raise ``ValueError``
    before anything is allocated; a file's header is checked before its images are read.
    """
    if np.dtype(dtype) not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be float32 or float64, got {np.dtype(dtype)}")
    raw = load_raw(name_or_path, num_val, num_train, data_home, seed)
    (X_tr, y_tr), (X_va, y_va), test = raw.train, raw.val, raw.test
    class_names, source = raw.class_names, raw.source
    mean, std = channel_stats(X_tr)
    std = std if normalize_std else None
    if std is not None and np.any(std == 0):
        raise ValueError(f"cannot normalize by std: a channel of the training images is constant (std {std})")

    def prep(x):
        return preprocess(x, mean, std, dtype)

    return Dataset(
        X_train=prep(X_tr), y_train=y_tr,
        X_val=prep(X_va), y_val=y_va,
        X_test=prep(test[0]) if test is not None else None,
        y_test=test[1] if test is not None else None,
        class_names=class_names, mean=mean, std=std, source=source,
    )
