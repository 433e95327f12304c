"""Training recipes: the pieces a fast run needs on top of the Solver's hooks.

- ``augment_crop_flip(pad, flip)``: an ``augment(X, y, rng)`` hook doing random
  translation by up to ``pad`` pixels (zero padding, i.e. the mean image after
  mean subtraction) and horizontal flips, one parallel kernel over the batch.
- ``TimeSchedule``: warm-up then linear/cosine decay of the learning rate by the
  elapsed fraction of a time budget (``solver.train_time / time_budget``), or of
  the iterations when no budget is given; a ``schedule(solver)`` hook.
- ``param_group(name)``: the one place that sorts parameters into groups by name;
  ``apply_param_groups(solver, lr_scales)`` gives each group its weight decay (weights
  only) and learning-rate multiplier; ``exclude_from_decay(solver)`` is the decay part.
- ``RECIPES``: the table of named recipes (model config, optimizer, schedule, augmentation,
  validation size), each entry with its unit and reason; the CLI's ``--recipe`` choices and
  help are made from it (``describe_recipe``).
"""
from __future__ import annotations

import math

import numpy as np


FLIPS = (False, True, "alternate")


def image_bits(seed: int, index) -> np.ndarray:
    """One pseudo-random bit per image index, fixed by ``seed`` (splitmix64's finaliser:
    no table over the dataset, the same bit for an image whenever it is drawn)."""
    with np.errstate(over="ignore"):   # arithmetic modulo 2**64, by design
        z = np.asarray(index, dtype=np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return ((z ^ (z >> np.uint64(31))) & np.uint64(1)).astype(bool)


def augment_crop_flip(pad: int = 2, flip=True):
    """An augment hook: each image shifted by (dy, dx) in [-pad, pad]^2 and mirrored: with p=0.5
    (``flip=True``), never (False), or ``"alternate"``: image i mirrored in the epochs where
    image_bits(seed, i) XOR (epoch odd) is set, i.e. on every other epoch, half the images
    starting mirrored (airbench's alternating flip: across two epochs every image is seen both
    ways, where random flips see a quarter of them one way only). The alternate hook is
    ``per_image``: the Solver passes the indices, epoch and its augment seed.

    The copy is the model's backend's ``crop_flip`` (numbaconv.<backend>.augment; the Solver
    passes ``backend``, the hook is ``takes_backend``; called without one: cpu's kernel), so
    training on cuda or reference loads no cpu kernel. ``hook.draw(N, rng, ...)`` makes the
    hook's random draws alone ((oy, ox, mirror), in the same order), and ``hook.pad`` is its
    padding: device-resident training (the Solver on cuda) applies them in its gather kernel."""
    if isinstance(pad, bool) or not isinstance(pad, (int, np.integer)) or pad < 0:
        raise ValueError(f"pad must be an integer >= 0, got {pad!r}")
    if not any(flip is f or (isinstance(flip, str) and flip == f) for f in FLIPS):
        raise ValueError(f"flip must be True, False or 'alternate', got {flip!r}")
    pad = int(pad)

    def draw(N, rng, index=None, epoch=None, seed=None, backend=None):
        oy, ox = rng.integers(0, 2 * pad + 1, size=N), rng.integers(0, 2 * pad + 1, size=N)
        if flip == "alternate":
            return oy, ox, image_bits(seed, index) ^ bool(epoch % 2)
        return oy, ox, (rng.random(N) < 0.5 if flip else np.zeros(N, dtype=bool))

    def augment(X, y, rng, index=None, epoch=None, seed=None, backend="cpu"):
        if X.ndim != 4:
            raise ValueError(f"augment expects images (N, C, H, W), got shape {X.shape}")
        import importlib   # here, so reading the recipe table does not start Numba

        name = backend if isinstance(backend, str) else backend.NAME
        crop_flip = importlib.import_module(f"numbaconv.{name}.augment").crop_flip
        return crop_flip(X, *draw(X.shape[0], rng, index, epoch, seed), pad), y

    augment.per_image = flip == "alternate"
    augment.takes_backend = True
    augment.draw, augment.pad = draw, pad
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


PARAM_GROUPS = ("weights", "bn_bias", "bn_scale", "other")


def param_group(name: str) -> str:
    """The group of parameter ``name``, decided here only: "weights" (W*: conv and linear
    weights), "bn_bias" (beta*), "bn_scale" (gamma*), "other" (conv biases b*, whiten_*)."""
    if name.startswith("W"):
        return "weights"
    if name.startswith("beta"):
        return "bn_bias"
    if name.startswith("gamma"):
        return "bn_scale"
    return "other"


def apply_param_groups(solver, lr_scales: dict | None = None) -> None:
    """Weight decay only on "weights" (``exclude_from_decay``) and each group's learning rate
    times ``lr_scales[group]`` (optimizer config key ``lr_scale``, read by the Solver's
    ``set_learning_rate``; groups not named keep 1 and get no key)."""
    lr_scales = dict(lr_scales or {})
    unknown = [g for g in lr_scales if g not in PARAM_GROUPS]
    if unknown:
        raise ValueError(f"unknown parameter group {unknown[0]!r}; groups are {', '.join(PARAM_GROUPS)}")
    for group, scale in lr_scales.items():
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"the learning-rate scale of {group} must be a finite number > 0, got {scale!r}")
    exclude_from_decay(solver)
    if not lr_scales:
        return
    base = solver.learning_rate
    for name, cfg in solver.optim_configs.items():
        cfg["lr_scale"] = float(lr_scales.get(param_group(name), 1.0))
    solver.set_learning_rate(base)   # the scales hold from the first step, schedule or not


def exclude_from_decay(solver) -> None:
    """Set weight_decay 0 for every parameter that is not in the "weights" group (biases, gamma,
    beta): decay would pull them towards 0, which only shifts or shrinks what BN normalises."""
    for name, cfg in solver.optim_configs.items():
        if param_group(name) != "weights":
            cfg["weight_decay"] = 0.0


# The recipe table, in the spirit of airbench's `hyp` dict: every entry with its unit and its reason.
# Units: learning rates are per step on the batch-mean loss; weight decay is PyTorch's coupled L2
# (added to the gradient); fractions are of the schedule's length (the --time-budget seconds, or
# the iterations when only epochs are given); pixels are of the 32x32 input.
#
# "fast" was tuned for ~4 epochs (what 60 s of training steps give on 2 cores; benchmarks/RESULTS.md,
# "60-second training"): a stride-2 whitening stem (12 channels at 16x16) makes each image ~3x cheaper
# than 16/32/64 groups at full resolution and pays for wider groups; at this length a higher peak lr
# helped (0.4 > 0.2, 0.8 no better), 512-image batches (half the steps) and translation (1 or 2 pixels)
# hurt, flips alone were best. Retuned with the options of issue #13 (benchmarks/RESULTS.md, "Retuning the
# fast recipe"): at equal training time (steps scaled by each variant's measured step cost), seed 0, 5,000
# validation images, batch 128 at peak lr 0.3 with +-1-pixel test-time shifts reached 0.753 against 0.733
# for the old entry; wider groups, two convs a group, whitening with its negation, alternating flips,
# lookahead, dirac init and a frozen BN scale did not pay at this length (each within +-0.6 or worse).
# Retuned for ~6-7 epochs (what 60 s gives since the step got faster: ~2,450 steps of 128; RESULTS.md,
# "Retuning the fast recipe for ~6 epochs"): same method, five seeds; +-1-pixel translation with label
# smoothing 0.1 (pad costs ~1% a step) reached 0.786 mean against 0.778 (+0.8, ahead by >1 point on three
# seeds, level on one); either alone, wider groups, two convs a group, batch 256, lr 0.2/0.4, 10% warm-up
# and alternating flips did not pay (within the noise or worse).
#
# "long" is airbench93 (github.com/KellerJordan/cifar10-airbench, airbench/lib_airbench93.py; 93.0% on
# the original CIFAR-10 in 11 epochs at batch 1024) on this library's pieces, for ~15 minutes of
# training steps on two cores (~127 MFLOP per image forward; untuned here). Its hyperparameters are
# airbench's converted to these units: lr 11.5 "per 1024 examples" with momentum 0.85 is 11.5 * B /
# (1024 * (1 + 1 / 0.15)) on the mean loss, 0.75 at B = 512; its decoupled weight decay 0.0153 / 11.5
# per unit lr is 1.33e-3 coupled. Differences, each for a reason: ReLU, not GELU (the fused CPU kernels
# take the max over a pool window of relu(bn(conv)); GELU is not monotonic, so it would need the
# pre-activation kept and its own backward: not cheap, left out); BN before the pool (our fused
# layer's order); the whitening bias is not trained (ours centres the patches); translation pads with
# the mean image, not a reflection; batch 512, not 1024 (on a CPU a step costs the same per image, and
# twice the steps help at ~10 epochs). Its minibatches are airbench's: a fresh shuffle each epoch (sampling
# "epochs"). Drawn with replacement (the Solver's default, the assignment's) an epoch's worth of steps
# leaves ~37% of the images out and repeats others, and alternating flips lose their pairing; at 1,200
# steps, shuffled epochs reached 0.899 and 0.900 (seeds 0, 1) against 0.892 (seed 0; RESULTS.md, "Shuffled
# epochs for the long recipe").
RECIPES = {
    "fast": {
        "model": {"kind": "fast", "stem": 0, "whiten": 12, "whiten_stride": 2, "widths": [24, 48, 96],
                  "convs_per_group": 1, "logit_scale": 1.0, "tta_flip": True,
                  "smoothing": 0.1,         # with translation; 0.2 was best with flips alone at ~4 epochs
                  "tta_shift": 1,           # evaluation: mirror and +-1 pixel shifts (free: not training time)
                  "weight_scale": "kaiming", "reg": 0.0, "dtype": "float32"},
        "update_rule": "sgd_nesterov", "optim_config": {"momentum": 0.9, "weight_decay": 5e-4},
        "peak_lr": 0.3,                 # per step on the mean loss at batch 128
        "warmup": 0.2, "shape": "linear",
        "batch_size": 128,              # twice the steps of 256 for ~12% more time per image: +1 point at 60 s
        "sampling": "replacement",      # minibatches drawn with replacement (the Solver's default; tuned so)
        "pad": 1, "flip": True,         # +-1-pixel translation and random flips (translation hurt at ~4 epochs)
        "start": 0.1, "final": 0.0,     # lr factors at the start of warm-up and at the end
        "lr_scales": {},                # no per-group learning rates
        "lookahead_every": None,        # no lookahead
        "lookahead_decay": 0.95,        # (unused without lookahead_every)
        "num_val": 1000,                # validation images: 1,000 judge 77% to about +-1.3%
        "time_budget": 60.0,            # seconds of training steps it was tuned for
    },
    "long": {
        "model": {"kind": "fast", "stem": 0,
                  "whiten": 12, "whiten_stride": 1,   # 2x2 patches at every pixel: 12 components of 12
                  "whiten_neg": True,       # 24 channels: each component and its negation, then ReLU
                  "widths": [64, 128, 128], "convs_per_group": 2,   # airbench93's widths, two convs per group
                  "dirac": True,            # identity init: a deep plain net starts as a short one
                  "freeze_bn_scale": True,  # gamma fixed at 1: redundant with the next conv's weights
                  "bn_momentum": 0.6,       # running stats follow the weights lookahead keeps moving
                  "smoothing": 0.2,         # label smoothing
                  "logit_scale": 1 / 9,     # scores x 1/9: softer softmax early, a gentler loss surface
                  "tta_flip": True, "tta_shift": 1,   # evaluation: mirror, and +-1 pixel shifts
                  "weight_scale": "kaiming", "reg": 0.0, "dtype": "float32"},
        "update_rule": "sgd_nesterov",
        "optim_config": {"momentum": 0.85,           # airbench's
                         "weight_decay": 1.33e-3},   # on weights only; airbench's 0.0153 per unit lr
        "peak_lr": 0.75,                # per step on the mean loss at batch 512 (airbench's 11.5 per 1024)
        "warmup": 0.23, "start": 0.2, "final": 0.07, "shape": "linear",   # airbench's triangle
        "batch_size": 512,              # images per step
        "sampling": "epochs",           # each image once an epoch (a fresh shuffle each), not drawn with replacement
        "pad": 2,                       # random translation by up to 2 pixels
        "flip": "alternate",            # each image mirrored on every other epoch (random start)
        "lr_scales": {"bn_bias": 64.0},  # BN biases learn 64x faster: they set each channel's threshold
        "lookahead_every": 5,           # steps between lookahead updates
        "lookahead_decay": 0.95,        # per step; times progress**3 (free early, strong averaging late)
        "num_val": 5000,                # 1,000 images judge 89% to about +-1%; 5,000 to about +-0.45%
        "time_budget": 900.0,           # seconds of training steps it is meant for (--time-budget scales it)
    },
}


def describe_recipe(name: str) -> str:
    """One line on what recipe ``name`` does, made from its table entry (so help text cannot drift)."""
    r = _recipe(name)
    m = r["model"]
    model = {"fast": "FastNet"}.get(m["kind"], m["kind"])
    if m.get("whiten"):
        neg = ", with their negations and a ReLU" if m.get("whiten_neg") else ""
        model += f" (frozen 2x2 whitening stem, stride {m.get('whiten_stride', 1)}, {m['whiten']} channels{neg})"
    model += f", groups {'/'.join(str(w) for w in m['widths'])}"
    if m.get("convs_per_group", 1) > 1:
        model += f" of {m['convs_per_group']} convs"
    extras = [text for key, text in (("dirac", "identity-initialised convs"), ("freeze_bn_scale", "BN scale frozen at 1"))
              if m.get(key)]
    if m.get("bn_momentum", 0.9) != 0.9:
        extras.append(f"BN momentum {m['bn_momentum']:g}")
    if m.get("logit_scale", 1.0) != 1.0:
        extras.append(f"logits x {m['logit_scale']:.3g}")
    opt = r["optim_config"]
    # recipe_solver calls exclude_from_decay: weight decay never reaches biases or BN
    rule = ", ".join([r["update_rule"]] + [f"{k.replace('_', ' ')} {v:g}" + (" on weights only" if k == "weight_decay"
                                                                               else "") for k, v in opt.items()])
    rule += "".join(f", {g.replace('_', ' ')} lr x {v:g}" for g, v in r.get("lr_scales", {}).items())
    if r.get("lookahead_every"):
        rule += f", lookahead every {r['lookahead_every']} steps"
    flips = {True: "random flips", "alternate": "alternating flips"}.get(r["flip"])
    aug = [kind for kind, on in ((flips, r["flip"]), (f"{r['pad']}-pixel shifts", r["pad"] > 0)) if on]
    tta = [kind for kind, on in (("mirror", m.get("tta_flip")), (f"{m.get('tta_shift', 0)}-pixel shifts",
                                                                  m.get("tta_shift", 0))) if on]
    batches = {"replacement": "drawn with replacement", "epochs": "each image once an epoch"}[r["sampling"]]
    return (f"{model}{''.join(', ' + e for e in extras)}, label smoothing {m['smoothing']:g}, {rule}, batch "
            f"{r['batch_size']} ({batches}), peak lr {r['peak_lr']:g} with {r['warmup']:.0%} warm-up then {r['shape']} decay over "
            f"--time-budget (default {r['time_budget']:g} s), augmentation: {' and '.join(aug) or 'none'}, "
            f"test-time: {' and '.join(tta) or 'none'}; judged on {r['num_val']} validation images (the --num-val default)")


def _recipe(name) -> dict:
    """Recipe ``name``'s table entry; an entry itself (a dict, e.g. a variant being compared by
    benchmarks/recipe_variants.py) is taken as it is, so variants need not enter the table."""
    if isinstance(name, dict):
        return name
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return RECIPES[name]


def recipe_model_config(name, input_dims, num_classes: int, backend: str = "cpu") -> dict:
    """The model config (for ``build_model``) of recipe ``name`` (or of a table entry)."""
    return {**_recipe(name)["model"], "input_dims": list(input_dims), "num_classes": int(num_classes),
            "backend": backend}


def recipe_solver_kwargs(name, time_budget: float | None) -> dict:
    """Solver arguments of recipe ``name`` (or of a table entry): update rule, optimizer config, batch size and the
    schedule/augment hooks (the schedule runs over ``time_budget`` seconds, or the iterations if None),
    lookahead, minibatch sampling. Call ``apply_param_groups(solver, RECIPES[name]["lr_scales"])`` on the
    Solver afterwards (a fresh one; resumed configs keep it, as the Solver's state keeps the lookahead and
    sampling settings)."""
    r = _recipe(name)
    return {"update_rule": r["update_rule"], "optim_config": dict(r["optim_config"]), "batch_size": r["batch_size"],
            "schedule": TimeSchedule(r["peak_lr"], time_budget, warmup=r["warmup"], shape=r["shape"],
                                     start=r["start"], final=r["final"]),
            "augment": augment_crop_flip(r["pad"], r["flip"]),
            "lookahead_every": r["lookahead_every"], "lookahead_decay": r["lookahead_decay"],
            "sampling": r["sampling"]}


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
    apply_param_groups(solver, _recipe(name)["lr_scales"])
    return model, solver
