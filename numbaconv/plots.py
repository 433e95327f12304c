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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # No bbox_inches="tight": it would change the pixel size the callers rely on.
    fig.savefig(path, format="png", dpi=DPI)
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


def plot_filters(w: np.ndarray, path, title: str | None = None, size=(6, 6)) -> Path:
    """The first conv layer's filters (F, C, K, K) as a grid of colour tiles."""
    grid = filter_grid(w)
    fig = _figure(size)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(grid, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title or f"first-layer filters ({w.shape[0]} x {w.shape[1]}x{w.shape[2]}x{w.shape[3]})")
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
