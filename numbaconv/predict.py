"""Use a trained model: class probabilities for new images, and scores on a labelled set.

>>> from numbaconv.predict import predict
>>> probabilities = predict("runs/demo/best.h5", ["cat.png", "more_images/"])   # doctest: +SKIP

Images go in raw (uint8, 0-255): arrays of shape (N, 3, H, W) or (N, H, W, 3), or
paths of PNG/JPEG files, ``.npy`` arrays or folders of them. They are preprocessed
exactly as the checkpoint's training data was (``pixels / 255``, the training run's
per-channel mean subtracted, divided by its std when it was trained so), batch by
batch in the model's dtype, so a large set never exists as one float copy. The
model does the rest as it does at evaluation (a whitening stem, FastNet's mirror
averaging). Image files of another size are resized with Pillow's bilinear filter
(antialiased when shrinking: it averages over the source pixels each output pixel
covers); any mode (grayscale, palette, RGBA) is converted to RGB.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
ARRAY_SUFFIX = ".npy"
RESIZE_FILTER = "bilinear"


# ------------------------------------------------------------------ preprocessing
def preprocessing_of(data_info: dict):
    """(mean, std) per channel in /255 units as recorded in a checkpoint's data_info (std None: not divided)."""
    if not isinstance(data_info, dict) or data_info.get("mean") is None:
        raise ValueError("the checkpoint's data_info records no mean image, so its preprocessing is unknown; "
                         "predict from a checkpoint written by `numbaconv train`")
    std = data_info.get("std")
    return np.asarray(data_info["mean"], dtype=np.float64), None if std is None else np.asarray(std, np.float64)


def as_nchw(images, input_dims) -> np.ndarray:
    """uint8 images (N, C, H, W) or (N, H, W, C) (one image without N also works) as (N, C, H, W)
    for a model with ``input_dims`` (C, H, W); a ValueError names the shape when it fits neither."""
    a = np.asarray(images)
    C, H, W = input_dims
    if a.dtype != np.uint8:
        raise ValueError(f"images must be raw uint8 pixels (0-255), got dtype {a.dtype}; "
                         "pass the images before any preprocessing")
    if a.ndim == 3:
        a = a[None]
    if a.ndim == 4 and a.shape[1:] == (C, H, W):
        return a
    if a.ndim == 4 and a.shape[1:] == (H, W, C):
        return np.ascontiguousarray(a.transpose(0, 3, 1, 2))
    raise ValueError(f"images must have shape (N, {C}, {H}, {W}) or (N, {H}, {W}, {C}) for this model, "
                     f"got {a.shape}")


def batch_scores(model, images, data_info: dict, batch_size: int = 100):
    """Yield (start, scores) per batch: ``images`` uint8 (N, C, H, W) preprocessed with ``data_info``'s
    mean/std in the model's dtype, then ``model.loss`` in test mode (TTA as the model does it)."""
    from .data import preprocess

    mean, std = preprocessing_of(data_info)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    for start in range(0, images.shape[0], batch_size):
        x = preprocess(images[start:start + batch_size], mean, std, model.dtype)
        yield start, model.loss(x)


def softmax(scores) -> np.ndarray:
    """Row-wise softmax in float64 (scores shifted by their row max, so no overflow)."""
    s = np.asarray(scores, dtype=np.float64)
    e = np.exp(s - s.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# ------------------------------------------------------------------ reading files
@dataclass
class ImageSet:
    """Images read from files: ``images`` uint8 (N, 3, H, W), one name per image, a note per
    converted or resized image, and one line per file that could not be read."""
    images: np.ndarray
    names: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _read_picture(path: Path, size: tuple[int, int], notes: list[str]) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            mode, (w, h) = im.mode, im.size
            if mode != "RGB":
                dropped = " (transparency dropped)" if "A" in mode or "transparency" in im.info else ""
                notes.append(f"{path}: converted from {mode} to RGB{dropped}")
                im = im.convert("RGB")
            if (h, w) != size:
                notes.append(f"{path}: resized from {w}x{h} to {size[1]}x{size[0]} ({RESIZE_FILTER})")
                im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)
    except UnidentifiedImageError:
        raise ValueError(f"cannot read {path}: not an image Pillow can decode") from None
    except (OSError, SyntaxError, ValueError) as e:   # truncated or corrupt data, unreadable file
        raise ValueError(f"cannot read {path}: {e}") from None


def _read_array(path: Path, input_dims) -> np.ndarray:
    try:
        a = np.load(path, allow_pickle=False)   # never unpickle a file we were handed
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {path}: not a NumPy .npy array ({e})") from None
    try:
        return as_nchw(a, input_dims)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def read_images(paths, input_dims=(3, 32, 32)) -> ImageSet:
    """Read image files, ``.npy`` arrays and folders of them (not recursive, sorted by name) for a
    model with ``input_dims``. A file that cannot be read is one line in ``errors``; the rest are read."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    C, H, W = input_dims
    if C != 3:
        raise ValueError(f"image files are RGB, but this model takes {C} channels; pass a uint8 array instead")
    chunks, out = [], ImageSet(np.zeros((0, C, H, W), np.uint8))
    files = []   # (path, error), in the order given, so errors come in the order of the arguments
    for p in map(Path, paths):
        if p.is_dir():
            inside = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES + (ARRAY_SUFFIX,))
            if not inside:
                files.append((p, f"{p}: folder holds no {'/'.join(s[1:] for s in IMAGE_SUFFIXES[:3])} or .npy files"))
            files += [(q, None) for q in inside]
        else:
            files.append((p, None if p.exists() else f"{p} does not exist"))
    for p, error in files:
        try:
            if error:
                raise ValueError(error)
            if p.suffix.lower() == ARRAY_SUFFIX:
                a = _read_array(p, input_dims)
                names = [f"{p}[{i}]" for i in range(len(a))]
            else:
                a = _read_picture(p, (H, W), out.notes)[None]
                names = [str(p)]
        except ValueError as e:
            out.errors.append(str(e))
            continue
        chunks.append(a)
        out.names += names
    if chunks:
        out.images = np.concatenate(chunks)
    return out


# ------------------------------------------------------------------ the API
def _resolve(model, data_info):
    """(model, data_info) from a checkpoint path, a Checkpoint, or a model plus data_info."""
    from .checkpoint import Checkpoint, load_checkpoint

    if isinstance(model, (str, Path)):
        model = load_checkpoint(model)
    if isinstance(model, Checkpoint):
        return model.model, data_info if data_info is not None else model.data_info
    if data_info is None:
        raise ValueError("predict needs the preprocessing the model was trained with: pass a checkpoint "
                         "(path or load_checkpoint's result) or data_info=checkpoint.data_info")
    return model, data_info


def predict(model, images, data_info: dict | None = None, batch_size: int = 100) -> np.ndarray:
    """Class probabilities (N, num_classes), float64, for raw images.

    ``model``: a checkpoint path, a ``Checkpoint``, or a model with ``data_info`` (the checkpoint's).
    ``images``: uint8 (N, 3, H, W) or (N, H, W, 3), or a path / list of paths (image files, .npy, folders;
    a file that cannot be read is a ValueError here; the CLI reads each file on its own)."""
    model, data_info = _resolve(model, data_info)
    if isinstance(images, (str, Path)) or (isinstance(images, (list, tuple)) and images
                                           and all(isinstance(p, (str, Path)) for p in images)):
        found = read_images(images, model.input_dims)
        if found.errors:
            raise ValueError("; ".join(found.errors))
        if not found.names:
            raise ValueError(f"no images found in {images}")
        images = found.images
    x = as_nchw(images, model.input_dims)
    if x.shape[0] == 0:
        raise ValueError("no images to predict: got an empty array")
    out = np.empty((x.shape[0], model.num_classes))
    for start, scores in batch_scores(model, x, data_info, batch_size):
        out[start:start + len(scores)] = softmax(scores)
    return out


def top_k(probabilities, class_names, k: int = 3) -> list[list[tuple[str, float]]]:
    """Per image the ``k`` most probable (class name, probability), most probable first."""
    p = np.asarray(probabilities)
    k = max(1, min(int(k), p.shape[1]))
    order = np.argsort(-p, axis=1, kind="stable")[:, :k]
    names = list(class_names) if len(class_names) == p.shape[1] else [str(i) for i in range(p.shape[1])]
    return [[(names[j], float(row[j])) for j in idx] for row, idx in zip(p, order)]


def confusion_matrix(labels, predictions, num_classes: int) -> np.ndarray:
    """counts[true, predicted] (num_classes, num_classes), int64."""
    return np.bincount(np.asarray(labels, np.int64) * num_classes + np.asarray(predictions, np.int64),
                       minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def evaluate(model, images, labels, data_info: dict | None = None, batch_size: int = 100) -> dict:
    """Score raw uint8 ``images`` (N, C, H, W) against ``labels`` batch by batch (memory: the uint8
    images plus one batch). Returns accuracy, per-class recall (NaN for a class absent from labels),
    the confusion matrix counts[true, predicted] and the predictions."""
    model, data_info = _resolve(model, data_info)
    x = as_nchw(images, model.input_dims)
    y = np.asarray(labels, dtype=np.int64)
    if y.shape != (x.shape[0],):
        raise ValueError(f"labels must have shape ({x.shape[0]},) for {x.shape[0]} images, got {y.shape}")
    preds = np.empty(x.shape[0], dtype=np.int64)
    for start, scores in batch_scores(model, x, data_info, batch_size):
        preds[start:start + len(scores)] = np.argmax(scores, axis=1)
    counts = confusion_matrix(y, preds, model.num_classes)
    totals = counts.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(totals > 0, np.diag(counts) / totals, np.nan)
    return {"accuracy": float(np.mean(preds == y)), "correct": int(np.sum(preds == y)), "per_class": recall,
            "confusion": counts, "predictions": preds}
