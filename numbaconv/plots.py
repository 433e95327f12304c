"""Figures for runs and experiments (PNG, matplotlib's Agg canvas).

Figures are built as ``matplotlib.figure.Figure`` objects drawn on their own
Agg canvas, never through pyplot, so no global figure state is created or
leaked (safe in tests, threads and long sessions, and no display needed).
Every function writes one PNG of a fixed pixel size (``size`` inches x
``DPI``) and returns its path.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

DPI = 100


def _figure(size):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path) -> Path:
    from .files import atomic_write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # No bbox_inches="tight": it would change the pixel size the callers rely on.
    # Written under a temporary name and renamed: an interrupted run leaves no half PNG.
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))
    return path


def _finite(values):
    return [v if v is not None and math.isfinite(v) else np.nan for v in values]


def plot_history(history: dict, path, title: str | None = None, size=(8, 6)) -> Path:
    """Training loss per iteration (top) and train/val accuracy per check (bottom),
    from a Solver history (``Solver.history()`` / history.json)."""
    for key in ("loss", "epoch", "train_acc", "val_acc"):
        if key not in history:
            raise ValueError(f"history is missing {key!r} (got keys {sorted(history)})")
    fig = _figure(size)
    ax_loss, ax_acc = fig.subplots(2, 1)
    loss = _finite(history["loss"])
    ax_loss.plot(np.arange(1, len(loss) + 1), loss, ".", markersize=2, alpha=0.6)
    ax_loss.set_xlabel("iteration")
    ax_loss.set_ylabel("training loss")
    ax_loss.set_title(title or "training loss")
    ax_acc.plot(history["epoch"], history["train_acc"], "o-", label="train")
    ax_acc.plot(history["epoch"], history["val_acc"], "o-", label="val")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy")
    ax_acc.set_ylim(-0.02, 1.02)
    ax_acc.set_xlim(left=0)   # a run stopped mid-epoch has one check: show it against the start
    ax_acc.legend(loc="center right")   # clear of a train curve near 1 and a val curve near chance
    ax_acc.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def filter_grid(w: np.ndarray, pad: int = 1) -> np.ndarray:
    """(F, C, K, K) filters -> one RGB image (rows, cols, 3) of tiles, each filter
    min-max normalised to [0, 1] on its own (filters differ in scale, and the
    sign carries no colour meaning); one-channel filters become grey, filters
    with C != 1, 3 show the mean over channels. Gaps are white."""
    w = np.asarray(w, dtype=np.float64)
    if w.ndim != 4 or w.shape[2] != w.shape[3] or w.shape[0] < 1:
        raise ValueError(f"filters must have shape (F, C, K, K), got {w.shape}")
    F, C, K, _ = w.shape
    if C == 3:
        tiles = w.transpose(0, 2, 3, 1)
    else:
        tiles = w.mean(axis=1) if C != 1 else w[:, 0]
        tiles = np.repeat(tiles[..., None], 3, axis=-1)
    lo = tiles.reshape(F, -1).min(axis=1)[:, None, None, None]
    hi = tiles.reshape(F, -1).max(axis=1)[:, None, None, None]
    span = np.where(hi > lo, hi - lo, 1.0)   # a constant filter shows as black, not NaN
    tiles = (tiles - lo) / span
    cols = int(math.ceil(math.sqrt(F)))
    rows = int(math.ceil(F / cols))
    grid = np.ones((rows * (K + pad) + pad, cols * (K + pad) + pad, 3))
    for i in range(F):
        r, c = divmod(i, cols)
        y0, x0 = pad + r * (K + pad), pad + c * (K + pad)
        grid[y0:y0 + K, x0:x0 + K] = tiles[i]
    return grid


def _through_stem(w: np.ndarray, stem: np.ndarray, stride: int) -> np.ndarray:
    """The filters (F, C, K', K') on the pixels of conv ``w`` (F, k, 3, 3; stride 1, pad 1)
    applied after the stem conv ``stem`` (k, C, S, S; ``stride``): the composition of the
    two linear maps, biases and image borders aside."""
    F, k, K, _ = w.shape
    S = stem.shape[2]
    if stride == 2:   # tap (i, j) of w sees the non-overlapping S x S window (i, j) of the pixels
        return np.einsum("fkij,kcab->fciajb", w, stem).reshape(F, stem.shape[1], K * S, K * S)
    eff = np.zeros((F, stem.shape[1], K + S - 1, K + S - 1))
    for i in range(K):
        for j in range(K):
            eff[:, :, i:i + S, j:j + S] += np.einsum("fk,kcab->fcab", w[:, :, i, j], stem)
    # the stride-1 stem is a 2x2 filter in a 3x3 kernel: drop the rows and columns it leaves at zero
    rows = np.flatnonzero(np.abs(eff).sum(axis=(0, 1, 3)))
    cols = np.flatnonzero(np.abs(eff).sum(axis=(0, 1, 2)))
    if rows.size and cols.size:
        eff = eff[:, :, :rows[-1] + 1, :cols[-1] + 1]
    return eff


def input_filters(model) -> list[tuple[str, np.ndarray]]:
    """What a model's first layer looks for in the image, as (label, filters (F, C, K, K)) panels.

    Usually the first conv layer's weights W1. A FastNet with a whitening stem (the fast
    recipe) starts with a fixed, untrained conv whose outputs are PCA coordinates, not
    colours, so its W1 on its own is no picture: the panels are then the stem's filters
    and W1 projected through the stem onto the pixels."""
    p = model.params
    w = np.asarray(p.get("W1"))
    if w.ndim != 4:
        raise ValueError(f"the model's W1 is not a conv weight (F, C, K, K): {w.shape}")
    if not getattr(model, "whiten", 0):
        return [(f"first-layer filters ({w.shape[0]} of {'x'.join(map(str, w.shape[1:]))})", w)]
    stem = np.asarray(p["whiten_W"], dtype=np.float64)
    eff = _through_stem(np.asarray(w, dtype=np.float64), stem, model.whiten_stride)
    size = eff.shape[2]
    # whiten_neg: the stem's outputs s and -s pass a ReLU; W+ relu(s) + W- relu(-s) is
    # (W+ - W-) s / 2 + (W+ + W-) |s| / 2, and the composition drawn is its linear part (x2).
    part = " (linear part: the stem's ReLU is left out)" if getattr(model, "whiten_neg", False) else ""
    # stem[..., :2, :2]: the 2x2 filter itself (stride 2) or the 2x2 block of its 3x3 kernel (stride 1)
    return [(f"whitening stem: {stem.shape[0]} fixed 2x2 filters (not trained)", stem[:, :, :2, :2]),
            (f"first trained conv through the stem{part}: {eff.shape[0]} filters on {size}x{size} pixels", eff)]


def plot_filters(w, path, title: str | None = None, size=None) -> Path:
    """Filters (F, C, K, K) as a grid of colour tiles, or several such grids side by side
    when ``w`` is a list of (label, filters) panels (``input_filters``)."""
    panels = [(None, w)] if isinstance(w, np.ndarray) else list(w)
    fig = _figure(size or (6 * len(panels), 6))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (label, filters) in zip(axes, panels):
        ax.imshow(filter_grid(filters), interpolation="nearest")
        ax.set_axis_off()
        if len(panels) > 1:
            ax.set_title(label, fontsize=10)
    if len(panels) == 1:
        f = panels[0][1]
        axes[0].set_title(title or panels[0][0]
                          or f"first-layer filters ({f.shape[0]} x {f.shape[1]}x{f.shape[2]}x{f.shape[3]})")
    elif title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_init_comparison(runs: dict, path, title: str | None = None, size=(10, 5), chance=None) -> Path:
    """Figure 7: training loss per iteration of each initialisation (left) and
    the train/val accuracy each reached (right). ``runs``: label -> history."""
    fig = _figure(size)
    ax_loss, ax_acc = fig.subplots(1, 2)
    labels = list(runs)
    for label in labels:
        loss = _finite(runs[label]["loss"])
        ax_loss.plot(np.arange(1, len(loss) + 1), loss, label=label, linewidth=1)
    ax_loss.set_xlabel("iteration")
    ax_loss.set_ylabel("training loss")
    # A diverging run's few huge losses would flatten the others: the axis spans the bulk (to the
    # 95th percentile of all losses), zoomed so near-chance curves (~ln 10) are told apart.
    vals = np.array([v for h in runs.values() for v in _finite(h["loss"])], dtype=float)
    vals = vals[np.isfinite(vals)]
    if vals.size:
        lo, hi = vals.min(), np.percentile(vals, 95)
        margin = 0.05 * (hi - lo) if hi > lo else 0.05
        ax_loss.set_ylim(lo - margin, hi + margin)
    ax_loss.legend()
    ax_loss.set_title("training loss")
    x = np.arange(len(labels))
    last = lambda h, k: h[k][-1] if h[k] else np.nan  # noqa: E731
    ax_acc.bar(x - 0.2, [last(runs[k], "train_acc") for k in labels], 0.4, label="train")
    ax_acc.bar(x + 0.2, [last(runs[k], "val_acc") for k in labels], 0.4, label="val")
    ax_acc.set_xticks(x, labels)
    ax_acc.set_ylabel("accuracy after training")
    ax_acc.set_ylim(0, 1)
    if chance is not None:
        ax_acc.axhline(chance, color="gray", linestyle=":", label="chance")
    ax_acc.legend()
    ax_acc.set_title("accuracy")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_bn_lr(results: dict, path, title: str | None = None, size=(10, 8)) -> Path:
    """Figure 9: final train and val accuracy against the learning rate (top row,
    log x) and the accuracy curves per epoch of every run (bottom row).
    ``results``: variant ("baseline", "batchnorm") -> {lr: history}."""
    fig = _figure(size)
    axes = fig.subplots(2, 2)
    styles = {"baseline": "-", "batchnorm": "--"}
    for col, key in enumerate(("train_acc", "val_acc")):
        ax = axes[0, col]
        for variant, runs in results.items():
            lrs = sorted(runs)
            final = [runs[lr][key][-1] if runs[lr][key] else np.nan for lr in lrs]
            ax.semilogx(lrs, final, "o" + styles.get(variant, "-"), label=variant)
        ax.set_xlabel("learning rate")
        ax.set_ylabel(("train" if key == "train_acc" else "val") + " accuracy (final)")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend()
        ax = axes[1, col]
        for variant, runs in results.items():
            for j, lr in enumerate(sorted(runs)):   # one colour per learning rate, one line style per variant
                h = runs[lr]
                ax.plot(h["epoch"], h[key], styles.get(variant, "-"), marker=".", color=f"C{j % 10}",
                        label=f"{variant} lr={lr:g}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(("train" if key == "train_acc" else "val") + " accuracy")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[1, 1].legend(fontsize=6, ncol=2)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_confusion(counts, class_names, path, title: str | None = None, size=(8, 7)) -> Path:
    """The confusion matrix counts[true, predicted] as a heat map with the counts written in,
    each row's label carrying that class's recall (correct / images of the class)."""
    counts = np.asarray(counts)
    C = counts.shape[0]
    if counts.ndim != 2 or counts.shape != (C, C) or len(class_names) != C:
        raise ValueError(f"counts must be (C, C) with C = {len(class_names)} class names, got shape {counts.shape}")
    totals = counts.sum(axis=1)
    fig = _figure(size)
    ax = fig.add_subplot(1, 1, 1)
    frac = counts / np.maximum(totals, 1)[:, None]   # colour by row share: classes of any size compare
    ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    for i in range(C):
        for j in range(C):
            if counts[i, j]:
                ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", fontsize=7 if C > 10 else 8,
                        color="white" if frac[i, j] > 0.5 else "black")
    recall = [f"{n} ({counts[i, i] / totals[i]:.0%})" if totals[i] else f"{n} (-)" for i, n in enumerate(class_names)]
    ax.set_xticks(range(C), list(class_names), rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(C), recall, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class (recall)")
    ax.set_title(title or "confusion matrix")
    fig.tight_layout()
    return _save(fig, path)


def _nhwc(images) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be uint8 (N, 3, H, W), got {images.dtype} {images.shape}")
    return images.transpose(0, 2, 3, 1)


def plot_examples(images, labels, class_names, path, per_class: int = 8, title: str | None = None) -> Path:
    """Figure 1 of the report: a grid with one row per class (named on the left) of the first
    ``per_class`` images of that class. ``images`` uint8 (N, 3, H, W), ``labels`` (N,)."""
    if isinstance(per_class, bool) or not isinstance(per_class, (int, np.integer)) or per_class < 1:
        raise ValueError(f"per_class must be a positive integer, got {per_class!r}")
    pictures = _nhwc(images)
    labels = np.asarray(labels)
    C = len(class_names)
    fig = _figure((1.6 + 0.8 * per_class, 0.5 + 0.8 * C))
    axes = fig.subplots(C, per_class, squeeze=False)
    for c in range(C):
        idx = np.flatnonzero(labels == c)[:per_class]
        for j in range(per_class):
            ax = axes[c, j]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if j < len(idx):
                ax.imshow(pictures[idx[j]], interpolation="nearest")
        axes[c, 0].set_ylabel(class_names[c], rotation=0, ha="right", va="center", fontsize=9)
    if title:
        fig.suptitle(title)
    fig.subplots_adjust(left=1.5 / (1.6 + 0.8 * per_class), right=0.99, bottom=0.01,
                        top=1 - 0.45 / (0.5 + 0.8 * C), wspace=0.05, hspace=0.05)
    return _save(fig, path)


SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float64)
LUMA = (0.299, 0.587, 0.114)   # ITU-R BT.601 weights of R, G, B


def grayscale_and_edges(images, backend: str = "cpu"):
    """Grayscale (N, H, W) in [0, 1] and Sobel edge magnitude (N, H, W) of uint8 (N, 3, H, W) images,
    both computed with the backend's Conv layer: a 1x1 conv with the BT.601 luma weights, then a
    3x3 conv (pad 1) with the Sobel x and y filters, magnitude sqrt(gx^2 + gy^2)."""
    from .backends import get_backend

    nb = get_backend(backend)
    x = np.asarray(images)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"images must be uint8 (N, 3, H, W), got {x.dtype} {x.shape}")
    x = x.astype(np.float32) / np.float32(255)
    luma = np.array(LUMA, dtype=np.float32).reshape(1, 3, 1, 1)
    gray, _ = nb.Conv.forward(x, luma, np.zeros(1, np.float32), {"stride": 1, "pad": 0})
    sobel = np.stack([SOBEL_X, SOBEL_X.T])[:, None].astype(np.float32)
    g, _ = nb.Conv.forward(np.ascontiguousarray(gray), sobel, np.zeros(2, np.float32), {"stride": 1, "pad": 1})
    return gray[:, 0], np.sqrt(g[:, 0] ** 2 + g[:, 1] ** 2)


def plot_features(images, names, path, backend: str = "cpu", title: str | None = None) -> Path:
    """Figure 2 of the report: each image (columns, captioned with ``names``) in colour, in
    grayscale and as its Sobel edge map (rows), computed by ``grayscale_and_edges``."""
    pictures = _nhwc(images)
    gray, edges = grayscale_and_edges(images, backend)
    n = len(pictures)
    fig = _figure((1.0 + 1.2 * n, 4.2))
    axes = fig.subplots(3, n, squeeze=False)
    for j in range(n):
        top = edges[j, 1:-1, 1:-1].max()   # the border meets the conv's zero padding: scale by the inside
        for r, (img, kw) in enumerate(((pictures[j], {}), (gray[j], {"cmap": "gray", "vmin": 0, "vmax": 1}),
                                       (edges[j], {"cmap": "gray", "vmin": 0, "vmax": top if top > 0 else 1}))):
            ax = axes[r, j]
            ax.imshow(img, interpolation="nearest", **kw)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0, j].set_title(names[j], fontsize=8)
    for r, label in enumerate(("colour", "grayscale", "Sobel edges")):
        axes[r, 0].set_ylabel(label, fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)
