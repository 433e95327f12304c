"""Our HDF5 layout, read and written in one place.

::

    /train/images   uint8 (N, 3, 32, 32)     /train/labels   int64 (N,)
    /test/images    uint8 (M, 3, 32, 32)     /test/labels    int64 (M,)   (only when the source had them)
    attributes of / : format = "numbaconv-images", format_version = 1, class_names,
                      source (path or URL), source_sha256, source_kind, splits

A file is written under a temporary name in the destination folder and renamed
into place only once it is complete and closed, so a crash never leaves a
half-written file under the final name.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from ..files import atomic_write

FORMAT = "numbaconv-images"
FORMAT_VERSION = 1
SPLITS = ("train", "test")


class DatasetError(ValueError):
    """A dataset source or file that cannot be used; the message says why, in one line."""


class Split(NamedTuple):
    images: np.ndarray  # uint8 (N, 3, H, W)
    labels: np.ndarray  # int64 (N,)


class StoredDataset(NamedTuple):
    splits: dict        # name -> Split
    class_names: list
    attrs: dict


def check_split(name: str, images: np.ndarray, labels: np.ndarray, num_classes: int, where: str) -> Split:
    """Images uint8 (N, 3, H, W) with N integer labels in [0, num_classes)."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise DatasetError(f"{where}: {name} images must be uint8 (N, 3, H, W), got {images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DatasetError(f"{where}: {name} has {images.shape[0]} images but labels of shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(f"{where}: {name} labels must be integers, got {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetError(f"{where}: {name} labels must be in [0, {num_classes}), "
                           f"got min {labels.min()} and max {labels.max()}")
    return Split(images, labels.astype(np.int64, copy=False))


def write_h5(path: Path, splits: dict, class_names: list, attrs: dict,
             progress: Callable[[int, int], None] | None = None,
             check: Callable[[], None] | None = None) -> int:
    """Write ``splits`` ({name: Split}) to ``path`` atomically; returns its size in bytes.

    ``progress(done_images, total_images)`` is called as the images are written; ``check()``, if
    given, once more after the file is closed and before it is renamed into place (a last chance to
    stop, e.g. on a deferred Ctrl-C). Written by ``files.atomic_write``: the temporary name carries our
    PID, so what a killed writer leaves is removed by ``files.remove_stale_temporaries``.
    """
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    total = sum(len(s.images) for s in splits.values())
    done = 0

    def write(tmp):
        nonlocal done
        with h5py.File(tmp, "w-") as f:  # "w-": create, never clobber
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["class_names"] = [str(c) for c in class_names]
            f.attrs["splits"] = list(splits)
            for key, value in attrs.items():
                f.attrs[key] = value
            for name, split in splits.items():
                g = f.create_group(name)
                g.create_dataset("labels", data=split.labels.astype(np.int64))
                ds = g.create_dataset("images", shape=split.images.shape, dtype=np.uint8)
                step = 5000  # write in slices so the progress bar moves
                for i in range(0, len(split.images), step):
                    ds[i:i + step] = split.images[i:i + step]
                    done += len(split.images[i:i + step])
                    if progress:
                        progress(done, total)

    atomic_write(path, write, check)
    return path.stat().st_size


@contextmanager
def _open_h5(path: Path):
    """Open a file in our layout for reading; every problem becomes one ``DatasetError`` line."""
    import h5py

    if not path.is_file():
        raise DatasetError(f"no dataset file at {path}")
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != FORMAT:
                raise DatasetError(f"{path} is an HDF5 file but not a numbaconv dataset (attribute format is "
                                   f"{f.attrs.get('format')!r}, expected {FORMAT!r})")
            if "train" not in f:
                raise DatasetError(f"{path}: group /train is missing")
            for name in SPLITS:
                for member in ("images", "labels") if name in f else ():
                    if member not in f[name]:
                        raise DatasetError(f"{path}: /{name}/{member} is missing")
            _check_header(f, path)
            yield f
    except DatasetError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as e:
        # h5py reports truncated or non-HDF5 files as OSError with a long multi-line text.
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DatasetError(f"{path} is not a readable HDF5 dataset (corrupt or truncated?): {first}") from None


# A chunked (compressed) dataset may declare at most this many times the bytes it stores: real
# images compress 1-3x, so a small file that declares terabytes is refused before anything is read.
MAX_EXPANSION = 100


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _check_header(f, path: Path) -> None:
    """Shapes, dtypes and sizes from the header alone, against each other, the file and the memory,
    so that no read allocates what a forged or truncated header declares."""
    import h5py

    file_size = path.stat().st_size
    total = 0
    for name in SPLITS:
        if name not in f:
            continue
        images, labels = f[name]["images"], f[name]["labels"]
        for member, ds in (("images", images), ("labels", labels)):
            if not isinstance(ds, h5py.Dataset):
                raise DatasetError(f"{path}: /{name}/{member} is not a dataset")
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != 3 or min(images.shape[2:]) < 1:
            raise DatasetError(f"{path}: {name} images must be uint8 (N, 3, H, W), got {images.dtype} {images.shape}")
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise DatasetError(f"{path}: {name} has {images.shape[0]} images but labels of shape {labels.shape}")
        if labels.dtype.kind not in "iu":
            raise DatasetError(f"{path}: {name} labels must be integers, got {labels.dtype}")
        for member, ds in (("images", images), ("labels", labels)):
            declared = int(np.prod(ds.shape, dtype=object)) * ds.dtype.itemsize
            if declared == 0:
                continue
            what = f"{path}: /{name}/{member} declares {ds.shape} {ds.dtype} ({declared:,} bytes)"
            if ds.chunks is None:  # contiguous: the bytes must all lie inside the file
                offset = ds.id.get_offset()
                if offset is None or offset + declared > file_size:
                    raise DatasetError(f"{what} but the {file_size:,}-byte file does not hold them "
                                       f"(truncated or forged header)")
            else:
                stored = ds.id.get_storage_size()
                if stored > file_size or declared > MAX_EXPANSION * stored:
                    raise DatasetError(f"{what} but stores only {stored:,} bytes in a {file_size:,}-byte file "
                                       f"(forged header, or more than {MAX_EXPANSION}x compression)")
            total += declared
    memory = _physical_memory()
    if memory and total > memory:
        raise DatasetError(f"{path} declares {total / 2**30:,.1f} GiB of images and labels, more than this "
                           f"machine's {memory / 2**30:,.1f} GiB of memory")


def _attrs(f) -> tuple[list, dict]:
    attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
    class_names = [c.decode() if isinstance(c, bytes) else str(c) for c in f.attrs.get("class_names", [])]
    return class_names, attrs


def read_h5(path: Path) -> StoredDataset:
    """Read and validate a file in our layout; any problem is one ``DatasetError`` line."""
    path = Path(path)
    with _open_h5(path) as f:
        class_names, attrs = _attrs(f)
        if not class_names:
            raise DatasetError(f"{path}: attribute class_names is missing or empty")
        splits = {name: check_split(name, f[name]["images"][()], f[name]["labels"][()], len(class_names), str(path))
                  for name in SPLITS if name in f}
    return StoredDataset(splits, class_names, attrs)


def describe_h5(path: Path) -> dict:
    """Split sizes and attributes of a file in our layout, read without loading the images
    (a quick look for listings; ``read_h5`` is the full check): {"splits": {name: size}, "attrs"}."""
    path = Path(path)
    with _open_h5(path) as f:
        _, attrs = _attrs(f)
        splits = {name: int(f[name]["images"].shape[0]) for name in SPLITS if name in f}
    return {"splits": splits, "attrs": attrs}
