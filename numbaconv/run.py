"""A training run as data: ``RunSpec`` (every field JSON-serialisable, keyed like
``numbaconv train``'s long options), the plans that turn it into a model and a
Solver (fresh, recipe, resume), the run folder's files, and ``execute(spec)``.

>>> # spec = spec_from_options({"out": "runs/a", "epochs": 2, "filters": "8,16", "lr": 1e-3})
>>> # result = execute(spec)          # writes runs/a/{best,last}.h5, history.json, config.json, curves.png
>>> # result.best_val_acc, result.history["val_acc"]

``numbaconv train`` parses its options into a RunSpec and executes it; sweeps
and experiments build RunSpecs and execute them the same way.

A run folder holds: ``config.json`` (the model config, the data's preprocessing,
the run record, the solver settings and versions), ``last.h5`` (resumable),
``best.h5`` (best weights on validation), ``history.json`` and ``curves.png``.
The run record (``config.json["run"]``) is the spec without its folder: for a
fresh or recipe run, ``RunSpec.from_dict({**run, "out": DIR})`` trains it again.
"""
from __future__ import annotations

import contextlib
import math
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np

# Options the checkpoint fixes when resuming, and options a recipe sets itself:
# giving one is an error, not a silent override.
FIXED_BY_CHECKPOINT = ("recipe", "dataset", "model", "filters", "pools", "batchnorm", "optimizer", "lr", "lr_decay",
                       "batch_size", "sampling", "reg", "weight_scale", "num_train", "num_val", "dtype", "seed",
                       "normalize_std")
SET_BY_RECIPE = ("model", "filters", "pools", "batchnorm", "optimizer", "lr", "lr_decay", "batch_size", "sampling",
                 "weight_scale")
MODEL_KINDS = ("deep", "three-layer")
DEFAULT_FILTERS = {"deep": [16, 32, 64], "three-layer": 32}
DEFAULT_POOLS = [0, 1, 2]
DTYPES = ("float32", "float64")
NUM_TRAIN_SAMPLES = 1000   # train accuracy is checked on a random subset of this size
DEFAULT_NUM_VAL = 1000     # validation images held out of train (the assignment's); recipes set their own
RUN_FILES = ("config.json", "last.h5", "best.h5", "history.json", "curves.png")


def option_name(key: str) -> str:
    """The `numbaconv train` long option of a RunSpec field: batch_size -> batch-size."""
    return key.replace("_", "-")


# ----------------------------------------------------------------- the spec
def _number(label: str, v, *, lo: float | None = None, lo_open: bool = False, hi: float | None = None,
            what: str = "a number") -> float:
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            pass
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v):
        raise ValueError(f"{label} must be {what}, got {v!r}")
    v = float(v)
    if lo is not None and (v <= lo if lo_open else v < lo) or hi is not None and v > hi:
        bounds = " ".join(filter(None, [f"{'>' if lo_open else '>='} {lo:g}" if lo is not None else "",
                                        "and" if lo is not None and hi is not None else "",
                                        f"<= {hi:g}" if hi is not None else ""]))
        raise ValueError(f"{label} must be {what} {bounds}, got {v:g}")
    return v


def _integer(label: str, v, lo: int) -> int:
    if isinstance(v, str) and v.strip().lstrip("-").isdigit():
        v = int(v)
    if isinstance(v, float) and v.is_integer():   # JSON/TOML may give 3.0
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        what = "a positive integer" if lo == 1 else f"an integer >= {lo}"
        raise ValueError(f"{label} must be {what}, got {v!r}")
    return int(v)


def _int_list(label: str, v, lo: int) -> list[int]:
    if isinstance(v, str):
        items = [t for t in v.split(",") if t.strip() != ""]
        try:
            items = [int(t) for t in items]
        except ValueError:
            raise ValueError(f"{label} must be a comma-separated list of integers, got {v!r}") from None
    elif isinstance(v, (list, tuple)):
        items = list(v)
    else:
        raise ValueError(f"{label} must be a list of integers, got {v!r}")
    return [_integer(f"{label} entry", x, lo) for x in items]


def _choice(label: str, v, choices) -> str:
    if not isinstance(v, str) or v not in choices:
        raise ValueError(f"{label} must be one of {', '.join(choices)}, got {v!r}")
    return v


def _boolean(label: str, v) -> bool:
    if not isinstance(v, (bool, np.bool_)):
        raise ValueError(f"{label} must be true or false, got {v!r}")
    return bool(v)


def _text(label: str, v) -> str:
    if isinstance(v, Path):
        v = str(v)
    if not isinstance(v, str) or not v.strip():
        raise ValueError(f"{label} must be a non-empty string, got {v!r}")
    return v


def _optional(check):
    return lambda label, v: None if v is None else check(label, v)


def _filters(label, v):
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return _integer(label, v, 1)
    out = _int_list(label, v, 1)
    if not out:
        raise ValueError(f"{label} must name at least one layer's filters, got {v!r}")
    return out


def _weight_scale(label, v):
    if v == "kaiming":
        return v
    try:
        return _number(label, v, lo=0.0, lo_open=True)
    except ValueError:
        raise ValueError(f"{label} must be a number or 'kaiming', got {v!r}") from None


def _recipes():
    from .recipe import RECIPES
    return tuple(RECIPES)


def _update_rules():
    from .optim import UPDATE_RULES
    return tuple(UPDATE_RULES)


def _samplings():
    from .solver import SAMPLINGS
    return SAMPLINGS


def _backends():
    from .backends import BACKENDS
    return BACKENDS


# field -> check(label, value) returning the clean value (or raising ValueError naming label)
_CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "out": _text,
    "dataset": _text,
    "recipe": _optional(lambda label, v: _choice(label, v, _recipes())),
    "model": lambda label, v: _choice(label, v, MODEL_KINDS),
    "filters": _optional(_filters),
    "pools": _optional(lambda label, v: _int_list(label, v, 0)),
    "batchnorm": _boolean,
    "weight_scale": _weight_scale,
    "optimizer": lambda label, v: _choice(label, v, _update_rules()),
    "lr": _optional(lambda label, v: _number(label, v, lo=0.0, lo_open=True)),
    "lr_decay": lambda label, v: _number(label, v, lo=0.0, lo_open=True, hi=1.0),
    "batch_size": lambda label, v: _integer(label, v, 1),
    "sampling": lambda label, v: _choice(label, v, _samplings()),
    "reg": lambda label, v: _number(label, v, lo=0.0),
    "epochs": _optional(lambda label, v: _integer(label, v, 1)),
    "time_budget": _optional(lambda label, v: _number(label, v, lo=0.0, lo_open=True, what="a number of seconds")),
    "num_train": _optional(lambda label, v: _integer(label, v, 1)),
    "num_val": _optional(lambda label, v: _integer(label, v, 1)),
    "normalize_std": _boolean,
    "dtype": lambda label, v: _choice(label, v, DTYPES),
    "backend": _optional(lambda label, v: _choice(label, v, _backends())),
    "seed": lambda label, v: _integer(label, v, 0),
    "threads": _optional(lambda label, v: _integer(label, v, 1)),
    "resume": _optional(_text),
    "force": _boolean,
}


@dataclass
class RunSpec:
    """One training run, as data. Field names are `numbaconv train`'s long options
    (with underscores); values are plain JSON. Bad values raise ValueError naming the field."""
    out: str                                  # run folder
    dataset: str = "synthetic"                # synthetic, cifar10 or an HDF5 file
    recipe: str | None = None                 # a named recipe (numbaconv.recipe.RECIPES)
    model: str = "deep"                       # deep | three-layer
    filters: list[int] | int | None = None    # None: 16,32,64 (deep) or 32 (three-layer)
    pools: list[int] | None = None            # None: 0,1,2 (deep)
    batchnorm: bool = False
    weight_scale: float | str = "kaiming"
    optimizer: str = "adam"                   # an update rule of numbaconv.optim
    lr: float | None = None                   # None: the rule's default
    lr_decay: float = 1.0
    batch_size: int = 128                     # the default: at most the training images; a given one must fit
    sampling: str = "replacement"             # minibatches: replacement (the assignment's) | epochs (a shuffle each)
    reg: float = 0.0
    epochs: int | None = None
    time_budget: float | None = None          # seconds of training steps (with resume: the total)
    num_train: int | None = None
    num_val: int | None = None                # None: 1000, or the recipe's own (RECIPES[name]["num_val"])
    normalize_std: bool = False
    dtype: str = "float32"
    backend: str | None = None                # None: cpu for a new run, the checkpoint's own on resume
                                              # (a run may move between backends when one is given)
    seed: int = 0
    threads: int | None = None                # Numba (and BLAS) threads for this run; None: as set
    resume: str | None = None                 # a last.h5 to continue from
    force: bool = False                       # replace a run already in `out`

    def __post_init__(self):
        for f in fields(self):
            setattr(self, f.name, _CHECKS[f.name](f.name, getattr(self, f.name)))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunSpec":
        """The inverse of ``to_dict``; a ValueError names an unknown key, a bad value or a
        combination that cannot run (see ``validate``)."""
        if not isinstance(d, dict):
            raise ValueError(f"a run spec must be a dict, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = [k for k in d if k not in known]
        if unknown:
            raise ValueError(f"unknown run spec key {unknown[0]!r}; known keys: {', '.join(sorted(known))}")
        if "out" not in d:
            raise ValueError("a run spec needs 'out' (the run folder)")
        spec = cls(**d)
        spec.validate()
        return spec

    def given(self) -> set[str]:
        """The fields that differ from their defaults."""
        return {f.name for f in fields(self) if f.name != "out" and getattr(self, f.name) != f.default}

    def validate(self, given=None, label: Callable[[str], str] = lambda k: k) -> "RunSpec":
        """Check the combination of fields: resume and recipe runs take no option they fix
        themselves (``given``: the fields the user set; default: those not at their default),
        a fresh run needs epochs or a time budget, the model options fit the model."""
        given = self.given() if given is None else set(given)

        def names(keys):
            return ", ".join(label(k) for k in keys)

        if self.resume is not None:
            clash = [k for k in FIXED_BY_CHECKPOINT if k in given]
            if clash:
                raise ValueError(f"{names(clash)} cannot be given with {label('resume')}: the checkpoint fixes the "
                                 f"model, data and optimizer (only {names(['epochs', 'time_budget', 'backend'])}, "
                                 f"{label('threads')} and {label('out')} may change)")
            return self
        if self.recipe is not None:   # without epochs or a budget, a recipe runs for its own budget
            clash = [k for k in SET_BY_RECIPE if k in given]
            if clash:
                raise ValueError(f"{names(clash)} cannot be given with {label('recipe')} {self.recipe}: "
                                 f"the recipe sets them")
            return self
        if self.epochs is None and self.time_budget is None:
            raise ValueError(f"give {label('epochs')} N or {label('time_budget')} SECONDS "
                             f"(or both: whichever ends first)")
        if self.model == "three-layer":
            if self.pools is not None or self.batchnorm:
                raise ValueError(f"{label('pools')} and {label('batchnorm')} apply to {label('model')} deep only")
            if isinstance(self.filters, list) and len(self.filters) != 1:
                raise ValueError(f"{label('filters')} for three-layer is one number, got {self.filters}")
        return self


def spec_from_options(options: dict, prefix: str = "") -> RunSpec:
    """A RunSpec from options keyed by `numbaconv train` long option names as a user writes
    them ("time-budget", "lr", "batchnorm", "filters" as "16,32" or [16, 32], ...), values as
    TOML/JSON give them. A ValueError names the bad key, as ``prefix + key`` (the CLI passes "--")."""
    if not isinstance(options, dict):
        raise ValueError(f"run options must be a table of option = value, got {type(options).__name__}")
    known = {f.name for f in fields(RunSpec)}
    labels = {}
    values = {}
    for key, value in options.items():
        name = str(key).replace("-", "_")
        if name not in known:
            raise ValueError(f"unknown option {prefix}{key!r}; `numbaconv train` options are: "
                             + ", ".join(option_name(k) for k in sorted(known)))
        if name in values:
            raise ValueError(f"option {prefix}{key} is given twice")
        labels[name] = f"{prefix}{key}"
        values[name] = _CHECKS[name](labels[name], value)
    if "out" not in values:
        raise ValueError(f"a run needs {prefix}out (the run folder)")
    spec = RunSpec(**values)
    spec.validate(given=[k for k, v in values.items() if v is not None and k != "out"],
                  label=lambda k: labels.get(k, prefix + option_name(k)))
    return spec


# ------------------------------------------------------------- run folders
def data_info_for(ds, name: str, num_val: int, num_train: int | None, normalize_std: bool, seed: int) -> dict:
    """What a checkpoint records about its training data: how to load it again
    (name, num_val, num_train, normalize_std, seed) and how it was preprocessed."""
    if name not in ("synthetic", "cifar10"):  # a file: absolute, so evaluate works from any folder
        name = str(Path(name).resolve())
    return {"name": str(name), "source": ds.source, "num_val": int(num_val),
            "num_train": None if num_train is None else int(num_train), "normalize_std": bool(normalize_std),
            "seed": int(seed), "mean": np.asarray(ds.mean, dtype=np.float64).tolist(),
            "std": None if ds.std is None else np.asarray(ds.std, dtype=np.float64).tolist(),
            "class_names": list(ds.class_names)}


def write_run_files(run_dir, solver, data_info: dict, extra: dict | None = None, best: bool = True) -> None:
    """The run folder's checkpoints and history: last.h5 (resumable), history.json and,
    when the solver has best weights and ``best``, best.h5."""
    from .checkpoint import save_checkpoint, save_json

    run_dir = Path(run_dir)
    save_checkpoint(run_dir / "last.h5", solver.model, solver, "last", data_info, extra)
    if best and solver.best_params is not None:
        save_checkpoint(run_dir / "best.h5", solver.model, solver, "best", data_info, extra)
    save_json(run_dir / "history.json", solver.history())


# ------------------------------------------------------------------- plans
@dataclass
class Plan:
    """A spec made concrete: the data, the model and its Solver, ready to train."""
    spec: RunSpec
    solver: Any                  # numbaconv.solver.Solver (its .model is the model)
    dataset: Any                 # numbaconv.data.Dataset
    data_info: dict              # what checkpoints record about the data
    run: dict                    # the run record (config.json "run", checkpoints' extra["run"])
    epochs: int | None           # the epochs and time budget in force (resume may inherit them)
    time_budget: float | None
    resumed_from: str | None = None

    @property
    def model(self):
        return self.solver.model

    def extra(self) -> dict:
        """What checkpoints record besides the model and data."""
        return {"run": self.run, "argv": sys.argv[1:]}

    def describe(self) -> str:
        """One readable line: the model, optimizer, data and backend."""
        s, m, ds = self.solver, self.model, self.dataset
        cfg = m.config()
        if m.kind == "deep":
            shape = f"filters {','.join(map(str, cfg['num_filters']))}, pools {','.join(map(str, cfg['max_pools']))}"
            shape += ", batch norm" if cfg["batchnorm"] else ""
        elif m.kind == "three-layer":
            shape = f"{cfg['num_filters']} filters {cfg['filter_size']}x{cfg['filter_size']}, hidden {cfg['hidden_dim']}"
        else:
            shape = f"widths {','.join(map(str, cfg.get('widths', [])))}"
        recipe = f" of recipe {self.run['recipe']}" if self.run.get("recipe") else ""
        peak = getattr(s.schedule, "peak_lr", None)   # a schedule sets the rate step by step
        lr = f"lr {s.learning_rate:g}" if s.schedule is None else "scheduled lr" + (f" (peak {peak:g})" if peak else "")
        return (f"training {m.kind} net{recipe} ({shape}, {cfg['dtype']}) with {s.update_rule_name}, {lr}, "
                f"batch {s.batch_size} on {ds.source}: {ds.X_train.shape[0]} train / "
                f"{ds.X_val.shape[0]} val images, backend {m.backend}")


def _num_epochs(epochs: int | None) -> int:
    return epochs if epochs is not None else 10 ** 6   # a time budget alone ends the run


def _load_data(name, num_val, num_train, normalize_std, dtype, seed=0):
    from .data import load_dataset

    ds = load_dataset(name, num_val=num_val, num_train=num_train, normalize_std=normalize_std,
                      dtype=np.dtype(dtype), seed=seed)
    return ds, {"X_train": ds.X_train, "y_train": ds.y_train, "X_val": ds.X_val, "y_val": ds.y_val}


def _run_record(spec: RunSpec, **effective) -> dict:
    """The spec without what is not part of the run itself (where it is written, how it started),
    with the values its defaults took (``effective``: e.g. a recipe's num_val and time budget)."""
    drop = {"out", "resume", "force"} | (set(SET_BY_RECIPE) if spec.recipe else set())
    return {**{k: v for k, v in spec.to_dict().items() if k not in drop}, **effective}


def _check_batch_size(batch_size: int, num_images: int) -> None:
    # minibatches are drawn from the training images: more per batch than there are images is
    # a mistake (and a large one allocates the whole batch first)
    if batch_size > num_images:
        raise ValueError(f"--batch-size {batch_size} is more than the {num_images} training images; "
                         f"choose at most {num_images}")


def plan_fresh(spec: RunSpec) -> Plan:
    """A new model of ``spec.model`` and a Solver with the spec's optimizer settings."""
    from .models import build_model
    from .solver import Solver

    given = "batch_size" in spec.given()
    if given and spec.num_train is not None:   # known before loading: say so without reading any data
        _check_batch_size(spec.batch_size, spec.num_train)
    num_val = DEFAULT_NUM_VAL if spec.num_val is None else spec.num_val
    ds, data = _load_data(spec.dataset, num_val, spec.num_train, spec.normalize_std, spec.dtype)
    if given:
        _check_batch_size(spec.batch_size, ds.X_train.shape[0])
    batch_size = spec.batch_size if given else min(spec.batch_size, ds.X_train.shape[0])   # the default adapts
    filters = spec.filters if spec.filters is not None else DEFAULT_FILTERS[spec.model]
    config = {"kind": spec.model, "input_dims": list(ds.X_train.shape[1:]), "num_classes": len(ds.class_names),
              "weight_scale": spec.weight_scale, "reg": spec.reg, "dtype": spec.dtype,
              "backend": spec.backend or "cpu"}
    if spec.model == "deep":
        config.update(num_filters=[filters] if isinstance(filters, int) else list(filters),
                      max_pools=list(spec.pools if spec.pools is not None else DEFAULT_POOLS),
                      batchnorm=spec.batchnorm)
    else:
        config["num_filters"] = filters if isinstance(filters, int) else filters[0]
    net = build_model(config, seed=spec.seed)
    solver = Solver(net, data, update_rule=spec.optimizer,
                    optim_config={} if spec.lr is None else {"learning_rate": spec.lr}, lr_decay=spec.lr_decay,
                    batch_size=batch_size, sampling=spec.sampling, num_epochs=_num_epochs(spec.epochs),
                    seed=spec.seed, verbose=False, num_train_samples=NUM_TRAIN_SAMPLES)
    info = data_info_for(ds, spec.dataset, num_val, spec.num_train, spec.normalize_std, 0)
    return Plan(spec, solver, ds, info, _run_record(spec, num_val=num_val), spec.epochs, spec.time_budget)


def plan_recipe(spec: RunSpec) -> Plan:
    """The recipe's model and Solver (numbaconv.recipe.recipe_solver) on the spec's data; the
    validation size and, when neither epochs nor a budget is given, the time budget are the
    recipe's own unless the spec sets them."""
    from .recipe import RECIPES, recipe_solver

    table = RECIPES[spec.recipe]
    num_val = table["num_val"] if spec.num_val is None else spec.num_val
    budget = table["time_budget"] if spec.epochs is None and spec.time_budget is None else spec.time_budget
    ds, data = _load_data(spec.dataset, num_val, spec.num_train, spec.normalize_std, spec.dtype)
    _, solver = recipe_solver(spec.recipe, data, budget, seed=spec.seed, backend=spec.backend or "cpu",
                              num_epochs=_num_epochs(spec.epochs), num_classes=len(ds.class_names),
                              model_overrides={"dtype": spec.dtype, "reg": spec.reg},
                              verbose=False, num_train_samples=NUM_TRAIN_SAMPLES)
    info = data_info_for(ds, spec.dataset, num_val, spec.num_train, spec.normalize_std, 0)
    return Plan(spec, solver, ds, info, _run_record(spec, num_val=num_val, time_budget=budget), spec.epochs, budget)


def _check_same_data(checkpoint, net, info: dict, ds) -> None:
    """The dataset a run resumes on must still have the images and classes it was trained on."""
    want_shape, got_shape = tuple(net.config()["input_dims"]), tuple(ds.X_train.shape[1:])
    want_names, got_names = info.get("class_names"), list(ds.class_names)
    if got_shape != want_shape or len(got_names) != net.num_classes or (want_names and want_names != got_names):
        raise ValueError(f"cannot resume from {checkpoint}: it was trained on {info.get('source', info['name'])} "
                         f"with images {want_shape} and {net.num_classes} classes "
                         f"({', '.join(want_names) if want_names else 'names not recorded'}), but that dataset now has "
                         f"images {got_shape} and {len(got_names)} classes ({', '.join(got_names)}); resume on the "
                         f"data it was trained on, or start a new run")


def plan_resume(spec: RunSpec) -> Plan:
    """The model, data and Solver state of the checkpoint ``spec.resume``, continued on
    ``spec.backend`` for ``spec.epochs`` / ``spec.time_budget`` (default: the run's own)."""
    from .checkpoint import load_checkpoint
    from .recipe import recipe_solver_kwargs
    from .solver import Solver

    ck = load_checkpoint(spec.resume, backend=spec.backend)
    if ck.solver_state is None:
        raise ValueError(f"{spec.resume} holds no training state (a {ck.which!r} checkpoint); resume from last.h5")
    info, run = ck.data_info, dict(ck.extra.get("run", {}))
    epochs, budget = spec.epochs, spec.time_budget
    if epochs is None and budget is None:
        epochs, budget = run.get("epochs"), run.get("time_budget")
    net = ck.model
    ds, data = _load_data(info["name"], info["num_val"], info.get("num_train"), info["normalize_std"],
                          net.dtype, info["seed"])
    _check_same_data(spec.resume, net, info, ds)
    kwargs = {"update_rule": ck.solver_state["settings"]["update_rule"], "seed": run.get("seed", 0)}
    if run.get("recipe"):   # hooks are code, not state: rebuilt over the (total) budget
        hooks = recipe_solver_kwargs(run["recipe"], budget)
        kwargs.update(schedule=hooks["schedule"], augment=hooks["augment"])
    solver = Solver(net, data, num_epochs=_num_epochs(epochs), verbose=False, num_train_samples=NUM_TRAIN_SAMPLES,
                    **kwargs)
    solver.load_state_dict(ck.solver_state)
    solver.num_epochs = _num_epochs(epochs)
    run.update(epochs=epochs, time_budget=budget, backend=net.backend, threads=spec.threads)
    return Plan(spec, solver, ds, info, run, epochs, budget, resumed_from=str(spec.resume))


def make_plan(spec: RunSpec) -> Plan:
    """The plan for ``spec``: resume, recipe or fresh."""
    if spec.resume is not None:
        return plan_resume(spec)
    if spec.recipe is not None:
        return plan_recipe(spec)
    return plan_fresh(spec)


def write_config(plan: Plan) -> None:
    """config.json: everything about the run that is not weights or history."""
    from . import __version__
    from .checkpoint import save_json

    s = plan.solver
    save_json(Path(plan.spec.out) / "config.json",
              {"model": plan.model.config(), "data": plan.data_info, "run": plan.run,
               "solver": {"update_rule": s.update_rule_name, "optim_config": s.optim_config, "lr_decay": s.lr_decay,
                          "batch_size": s.batch_size, "sampling": s.sampling, "num_epochs": plan.epochs},
               "resumed_from": plan.resumed_from,
               "versions": {"numbaconv": __version__, "numpy": np.__version__, "python": sys.version.split()[0]}})


# --------------------------------------------------------------- execution
@dataclass
class RunEvent:
    """What ``execute`` tells ``on_progress``: kind is "loading" (before the data is read),
    "planned" (plan ready, config.json written), "compiling" (before the warm-up pass),
    "training" (the first step is next), "step" (after each step), "epoch" (after an epoch's
    check and files) or "finished" (training ended; ``reason`` says why)."""
    kind: str
    spec: RunSpec
    plan: Plan | None = None
    reason: str | None = None

    @property
    def solver(self):
        return None if self.plan is None else self.plan.solver


@dataclass
class RunResult:
    run_dir: str
    stopped: str                    # "done" (all epochs) or "time_limit"
    best_val_acc: float | None
    best_epoch: float | None
    final_train_acc: float | None
    final_val_acc: float | None
    final_loss: float | None
    iterations: int
    epochs: float
    train_time: float               # seconds of training steps, over all sessions of the run
    images_per_s: float | None      # this session's
    history: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: last.h5 was saved; the run continues with ``resume=last``."""

    def __init__(self, run_dir: Path, iteration: int, epoch: float):
        self.run_dir, self.iteration, self.epoch = Path(run_dir), iteration, epoch
        self.last = self.run_dir / "last.h5"
        super().__init__(f"interrupted at epoch {epoch:.2f} (iteration {iteration}); saved {self.last}")


@contextlib.contextmanager
def numba_threads(n: int | None):
    """Run the block with ``n`` Numba threads (BLAS follows them, see cpu/_blas.py), restored after."""
    if n is None:
        yield
        return
    import numba

    most = numba.config.NUMBA_NUM_THREADS
    if not 1 <= n <= most:
        raise ValueError(f"threads must be between 1 and {most} (this machine's NUMBA_NUM_THREADS), got {n}")
    old = numba.get_num_threads()
    numba.set_num_threads(n)
    try:
        yield
    finally:
        numba.set_num_threads(old)


class RunFilesError(ValueError):
    """The run folder could not be written (a full disk, lost permissions); the files
    written before are kept (every file is written whole or not at all)."""


def _write_failure(e: OSError, out: Path, saved: dict) -> str:
    from .files import is_disk_full

    cause = "no space left on device" if is_disk_full(e) else (e.strerror or str(e))
    last = out / "last.h5"
    if saved.get("iteration") is not None:
        kept = f"{last} from iteration {saved['iteration']} is kept"
    elif last.exists():
        kept = f"the earlier {last} is kept"
    else:
        kept = "no checkpoint was saved"
    then = f"continue with --resume {last}" if last.exists() else "run it again"
    return f"cannot write into run folder {out}: {cause}; {kept}. Free some space (or fix permissions), then {then}"


def _guarded(out: Path, saved: dict, write: Callable[[], None]) -> None:
    """Run ``write``; an OSError becomes one RunFilesError line saying what was kept."""
    try:
        write()
    except OSError as e:
        raise RunFilesError(_write_failure(e, out, saved)) from None


def _make_folders(out: Path) -> list[Path]:
    """``mkdir -p out``; returns the folders it created, deepest first (removed again if the run
    fails before writing anything)."""
    made, p = [], out
    while not p.exists() and p.parent != p:
        made.append(p)
        p = p.parent
    out.mkdir(parents=True, exist_ok=True)
    return made


def _existing_run(spec: RunSpec, out: Path) -> bool:
    """Whether ``out`` holds a run that this spec replaces (True with ``force``); a run that is
    neither continued (resume from its own last.h5) nor replaced is refused."""
    found = [name for name in ("config.json", "last.h5", "best.h5") if (out / name).exists()]
    if not found:
        return False
    if spec.resume is not None and Path(spec.resume).resolve().parent == out.resolve():
        return False   # continuing the run that is there
    if spec.force:
        return True
    raise ValueError(f"run folder {out} already holds a run ({', '.join(found)}); continue it with --resume "
                     f"{out / 'last.h5'}, or replace it with --force")


def execute(spec: RunSpec, *, on_progress: Callable[[RunEvent], None] | None = None) -> RunResult:
    """Train ``spec`` into ``spec.out`` (best.h5, last.h5, history.json, config.json,
    curves.png) and return a RunResult.

    The run folder is locked while the run writes it (a second run into it raises
    ``files.LockedError`` naming the PID); temporaries a killed run left there are removed;
    a folder that already holds a run is refused unless ``spec.resume`` continues it or
    ``spec.force`` replaces it. Everything that can be checked is checked before the first
    file is written (spec, backend, folder, data, checkpoint); a run that fails then
    leaves no folder behind. Raises ValueError for those, RunFilesError when the folder
    cannot be written later (e.g. a full disk; earlier checkpoints kept), NonFiniteLossError
    when the loss diverges (history.json written; ``e.kept`` names the last good
    checkpoint) and RunInterrupted on Ctrl-C (last.h5 saved)."""
    from .backends import get_backend
    from .checkpoint import save_json
    from .files import check_writable_folder, exclusive_lock, remove_stale_temporaries
    from .solver import NonFiniteLossError

    spec.validate()
    notify = on_progress or (lambda event: None)
    out = Path(spec.out)
    get_backend(spec.backend or "cpu")   # a backend that cannot run here (no GPU) fails before any file is
    # written; on resume without --backend, the checkpoint's backend is checked when the plan loads it
    check_writable_folder(out, "run folder")
    made = _make_folders(out)
    started = False
    saved: dict = {"iteration": None}
    try:
        with exclusive_lock(out, what=f"run folder {out}"), numba_threads(spec.threads):
            remove_stale_temporaries(out)   # what a run killed mid-write (kill -9) left behind
            replace = _existing_run(spec, out)
            notify(RunEvent("loading", spec))
            plan = make_plan(spec)
            solver = plan.solver
            started = True
            if replace:
                for name in RUN_FILES:
                    (out / name).unlink(missing_ok=True)
            _guarded(out, saved, lambda: write_config(plan))
            notify(RunEvent("planned", spec, plan))
            notify(RunEvent("compiling", spec, plan))
            solver.warmup()
            session = (solver.iteration, solver.train_time)

            def save(s, best=True):
                _guarded(out, saved, lambda: write_run_files(out, s, plan.data_info, plan.extra(), best=best))
                saved["iteration"] = s.iteration

            def on_epoch_end(s):
                save(s, best=s.best_epoch == s.record.epoch[-1])
                notify(RunEvent("epoch", spec, plan))

            solver.on_iteration = lambda s: notify(RunEvent("step", spec, plan))
            solver.on_epoch_end = on_epoch_end
            notify(RunEvent("training", spec, plan))
            try:
                reason = solver.train(time_limit=plan.time_budget)
                save(solver)
            except KeyboardInterrupt:
                save(solver, best=False)
                raise RunInterrupted(out, solver.iteration, solver.iteration / solver.iterations_per_epoch) from None
            except NonFiniteLossError as e:
                _guarded(out, saved, lambda: save_json(out / "history.json", solver.history()))
                last = out / "last.h5"
                e.kept = (f"The last good checkpoint is {last} (saved at the end of epoch {solver.epoch})."
                          if last.exists() and solver.epoch > 0 else "No checkpoint was written before it diverged.")
                raise
            finally:
                solver.on_iteration = solver.on_epoch_end = None
            notify(RunEvent("finished", spec, plan, reason))

            from .plots import plot_history   # the run's curves, as `numbaconv plot` draws them
            _guarded(out, saved, lambda: plot_history(solver.history(), out / "curves.png",
                                                      title=f"{out}: training loss"))
    except BaseException:
        if not started:   # nothing was written: leave no folder behind either
            for folder in made:
                try:
                    folder.rmdir()
                except OSError:
                    break
        raise
    h = solver.history()
    steps, secs = solver.iteration - session[0], solver.train_time - session[1]
    return RunResult(
        run_dir=str(out), stopped=reason,
        best_val_acc=solver.best_val_acc if solver.best_epoch is not None else None, best_epoch=solver.best_epoch,
        final_train_acc=h["train_acc"][-1] if h["train_acc"] else None,
        final_val_acc=h["val_acc"][-1] if h["val_acc"] else None,
        final_loss=h["loss"][-1] if h["loss"] else None, iterations=solver.iteration,
        epochs=solver.iteration / solver.iterations_per_epoch, train_time=solver.train_time,
        images_per_s=steps * solver.batch_size / secs if secs > 0 else None, history=h)


__all__ = ["RunSpec", "spec_from_options", "execute", "RunResult", "RunEvent", "RunInterrupted", "RunFilesError", "Plan",
           "make_plan", "plan_fresh", "plan_recipe", "plan_resume", "data_info_for", "write_run_files",
           "write_config", "numba_threads", "option_name"]
