"""Training recipes: the pieces a fast run needs on top of the Solver's hooks.

- ``augment_crop_flip(pad, flip)``: an ``augment(X, y, rng)`` hook doing random
  translation by up to ``pad`` pixels (zero padding, i.e. the mean image after
  mean subtraction) and horizontal flips, one parallel kernel over the batch.
- ``TimeSchedule``: warm-up then linear/cosine decay of the learning rate by the
  elapsed fraction of a time budget (``solver.train_time / time_budget``), or of
  the iterations when no budget is given; a ``schedule(solver)`` hook.
- ``exclude_from_decay(solver)``: weight decay only on weights ("W*"), never on
  biases or BN's gamma/beta.
- ``RECIPES["fast"]``: the "fast CIFAR" recipe (FastNet with a 2x2 whitening stem,
  label smoothing 0.2, Nesterov SGD, one-cycle over the time budget, flips).
"""
from __future__ import annotations

import math

import numpy as np


def augment_crop_flip(pad: int = 2, flip: bool = True):
    """An augment hook: each image shifted by (dy, dx) in [-pad, pad]^2 and mirrored with p=0.5."""
    if isinstance(pad, bool) or not isinstance(pad, (int, np.integer)) or pad < 0:
        raise ValueError(f"pad must be an integer >= 0, got {pad!r}")
    pad = int(pad)
    from .cpu.augment import crop_flip   # here, so reading the recipe table does not start Numba

    def augment(X, y, rng):
        if X.ndim != 4:
            raise ValueError(f"augment expects images (N, C, H, W), got shape {X.shape}")
        N = X.shape[0]
        oy = rng.integers(0, 2 * pad + 1, size=N)
        ox = rng.integers(0, 2 * pad + 1, size=N)
        mirror = rng.random(N) < 0.5 if flip else np.zeros(N, dtype=bool)
        return crop_flip(X, oy, ox, mirror, pad), y

    return augment


class TimeSchedule:
    """lr = peak * f(t), t the elapsed fraction in [0, 1]: linear warm-up from
    ``start`` to 1 over ``warmup``, then ``shape`` ("linear" or "cosine") decay to ``final``."""

    def __init__(self, peak_lr: float, time_budget: float | None = None, warmup: float = 0.2,
                 shape: str = "linear", start: float = 0.1, final: float = 0.0):
        if shape not in ("linear", "cosine"):
            raise ValueError(f"shape must be 'linear' or 'cosine', got {shape!r}")
        if not (math.isfinite(peak_lr) and peak_lr > 0):
            raise ValueError(f"peak_lr must be a finite number > 0, got {peak_lr!r}")
        if time_budget is not None and not (math.isfinite(time_budget) and time_budget > 0):
            raise ValueError(f"time_budget must be a number of seconds > 0, got {time_budget!r}")
        if not 0.0 <= warmup < 1.0:
            raise ValueError(f"warmup must be a fraction in [0, 1), got {warmup!r}")
        for name, v in (("start", start), ("final", final)):
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        self.peak_lr, self.time_budget, self.warmup = float(peak_lr), time_budget, float(warmup)
        self.shape, self.start, self.final = shape, float(start), float(final)

    def factor(self, t: float) -> float:
        t = min(max(t, 0.0), 1.0)
        if t < self.warmup:
            return self.start + (1.0 - self.start) * t / self.warmup
        u = (t - self.warmup) / (1.0 - self.warmup)
        if self.shape == "linear":
            return 1.0 + (self.final - 1.0) * u
        return self.final + (1.0 - self.final) * 0.5 * (1.0 + math.cos(math.pi * u))

    def fraction(self, solver) -> float:
        if self.time_budget is not None:
            return solver.train_time / self.time_budget
        return solver.iteration / max(solver.num_iterations, 1)

    def __call__(self, solver) -> None:
        solver.set_learning_rate(self.peak_lr * self.factor(self.fraction(solver)))


def exclude_from_decay(solver) -> None:
    """Set weight_decay 0 for every parameter that is not a weight (biases, gamma, beta)."""
    for name, cfg in solver.optim_configs.items():
        if not name.startswith("W"):
            cfg["weight_decay"] = 0.0


# name -> model config (FastNet kind) and solver settings. "fast" was tuned for ~4 epochs
# (what 60 s of training steps give on 2 cores; benchmarks/RESULTS.md, "60-second training"):
# a stride-2 whitening stem (12 channels at 16x16) makes each image ~3x cheaper than
# 16/32/64 groups at full resolution and pays for wider groups; at this length a higher
# peak lr helped (0.4 > 0.2, 0.8 no better), 512-image batches (half the steps) and
# translation (1 or 2 pixels) hurt, flips alone were best.
RECIPES = {
    "fast": {
        "model": {"kind": "fast", "stem": 0, "whiten": 12, "whiten_stride": 2, "widths": [24, 48, 96],
                  "convs_per_group": 1, "smoothing": 0.2, "logit_scale": 1.0, "tta_flip": True,
                  "weight_scale": "kaiming", "reg": 0.0, "dtype": "float32"},
        "update_rule": "sgd_nesterov", "optim_config": {"momentum": 0.9, "weight_decay": 5e-4},
        "peak_lr": 0.4, "warmup": 0.2, "shape": "linear", "batch_size": 256, "pad": 0, "flip": True,
    },
}


def describe_recipe(name: str) -> str:
    """One line on what recipe ``name`` does, made from its table entry (so help text cannot drift)."""
    r = _recipe(name)
    m = r["model"]
    model = {"fast": "FastNet"}.get(m["kind"], m["kind"])
    if m.get("whiten"):
        model += f" (frozen 2x2 whitening stem, stride {m.get('whiten_stride', 1)}, {m['whiten']} channels)"
    model += f", groups {'/'.join(str(w) for w in m['widths'])}"
    opt = r["optim_config"]
    # recipe_solver calls exclude_from_decay: weight decay never reaches biases or BN
    rule = ", ".join([r["update_rule"]] + [f"{k.replace('_', ' ')} {v:g}" + (" on weights only" if k == "weight_decay"
                                                                               else "") for k, v in opt.items()])
    aug = [kind for kind, on in (("flips", r["flip"]), (f"{r['pad']}-pixel shifts", r["pad"] > 0)) if on]
    return (f"{model}, label smoothing {m['smoothing']:g}, {rule}, batch {r['batch_size']}, peak lr "
            f"{r['peak_lr']:g} with {r['warmup']:.0%} warm-up then {r['shape']} decay over --time-budget, "
            f"augmentation: {' and '.join(aug) or 'none'}")


def _recipe(name: str) -> dict:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return RECIPES[name]


def recipe_model_config(name: str, input_dims, num_classes: int, backend: str = "cpu") -> dict:
    """The model config (for ``build_model``) of recipe ``name``."""
    return {**_recipe(name)["model"], "input_dims": list(input_dims), "num_classes": int(num_classes),
            "backend": backend}


def recipe_solver_kwargs(name: str, time_budget: float | None) -> dict:
    """Solver arguments of recipe ``name``: update rule, optimizer config, batch size and the
    schedule/augment hooks (the schedule runs over ``time_budget`` seconds, or the iterations if None).
    Call ``exclude_from_decay`` on the Solver afterwards (a fresh one; resumed configs keep it)."""
    r = _recipe(name)
    return {"update_rule": r["update_rule"], "optim_config": dict(r["optim_config"]), "batch_size": r["batch_size"],
            "schedule": TimeSchedule(r["peak_lr"], time_budget, warmup=r["warmup"], shape=r["shape"]),
            "augment": augment_crop_flip(r["pad"], r["flip"])}


def recipe_solver(name: str, data: dict, time_budget: float | None, seed: int = 0, backend: str = "cpu",
                  num_epochs: int | None = None, num_classes: int | None = None, model_overrides: dict | None = None,
                  **solver_kwargs):
    """(model, solver) set up for recipe ``name`` on ``data`` (Solver's dict of splits).
    ``num_classes`` defaults to the largest label + 1; ``model_overrides`` replace model config
    entries the recipe leaves open (e.g. dtype, reg)."""
    from .models import build_model
    from .solver import Solver

    if num_classes is None:
        num_classes = int(max(data["y_train"].max(), data["y_val"].max())) + 1
    config = {**recipe_model_config(name, data["X_train"].shape[1:], num_classes, backend), **(model_overrides or {})}
    model = build_model(config, seed=seed)
    if num_epochs is None:
        num_epochs = 10 ** 6 if time_budget is not None else 10
    solver = Solver(model, data, num_epochs=num_epochs, seed=seed,
                    **{**recipe_solver_kwargs(name, time_budget), **solver_kwargs})
    exclude_from_decay(solver)
    return model, solver
