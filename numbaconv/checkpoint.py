"""HDF5 checkpoints: everything needed to rebuild a model, evaluate it on data
preprocessed the same way, and resume its training exactly.

Layout of a checkpoint file (attrs ``format="numbaconv-checkpoint"``,
``version=1``, ``which="last"|"best"|"model"``)::

    model_config     JSON: model.config() (kind, filters, pools, batchnorm, dtype, backend, ...)
    data_info        JSON: dataset source, mean, std, num_val, ... (what evaluate needs)
    extra            JSON: anything the caller adds (e.g. the command line)
    params/<name>    the weights (for "last": the training weights; for "best": the best on validation)
    bn/<i>/running_mean, bn/<i>/running_var      batch-norm running statistics per conv layer
    history/<key>    the Solver's history lists (numbaconv.solver.History.to_dict())
    solver/settings  JSON: update rule, lr decay, batch size, epoch, iteration, time, rng states, ...
    solver/optim/<param>/<key>     optimizer state (arrays) and hyperparameters (scalars)
    solver/best/params/<name>, solver/best/bn/<i>/...   the best weights so far

Files are written to a temporary name in the same folder, synced, and renamed
over the target, so a crash or Ctrl-C never leaves a half-written checkpoint.
Loading rebuilds the model from ``model_config`` and reports every weight whose
name, shape or dtype does not match it. A damaged or crafted file (sizes beyond
MAX_CHECKPOINT_BYTES, a config asking for more weights than it stores, links, a
string where numbers belong, NaN weights, a negative running variance, optimizer
state missing after training steps) is one ValueError naming the entry, raised
before anything large is allocated.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .files import atomic_write
from .models import build_model, param_count
from .solver import SAMPLINGS, History

FORMAT = "numbaconv-checkpoint"
VERSION = 1
WHICH = ("last", "best", "model")


@dataclass
class Checkpoint:
    path: Path
    which: str
    model: object                 # the rebuilt model, weights loaded
    model_config: dict
    data_info: dict
    extra: dict
    history: dict | None          # the Solver's history lists, if saved with a solver
    solver_state: dict | None = field(default=None)   # for Solver.load_state_dict ("last" only)


# ------------------------------------------------------------------- writing
def save_json(path, obj) -> None:
    """Write ``obj`` as indented JSON, atomically (config.json, history.json)."""
    def write(tmp):
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=1)
            fh.write("\n")
    atomic_write(path, write)


def _put_json(group, name: str, obj) -> None:
    group.create_dataset(name, data=json.dumps(obj))


def _put_arrays(group, arrays: dict) -> None:
    for name, a in arrays.items():
        group.create_dataset(name, data=np.asarray(a))


def _put_bn(group, bn: list) -> None:
    for i, stats in enumerate(bn):
        _put_arrays(group.create_group(str(i)), stats)


def _put_optim(group, configs: dict) -> None:
    for p, cfg in configs.items():
        g = group.create_group(p)
        for key, value in cfg.items():
            if isinstance(value, np.ndarray):
                g.create_dataset(key, data=value)
            elif isinstance(value, (bool, np.bool_)):
                g.create_dataset(key, data=np.bool_(value))
            elif isinstance(value, (int, np.integer)):
                g.create_dataset(key, data=np.int64(value))
            elif isinstance(value, (float, np.floating)):
                g.create_dataset(key, data=np.float64(value))
            else:
                raise ValueError(f"cannot store optimizer state {p}[{key!r}] of type {type(value).__name__}")


def save_checkpoint(path, model, solver=None, which: str = "last", data_info: dict | None = None,
                    extra: dict | None = None) -> None:
    """Write ``model`` (and, for which="last", ``solver``'s training state) to ``path``.

    which="last": the training weights and, with a solver, everything to resume;
    which="best": the solver's best weights on validation (no optimizer state);
    which="model": the model's current weights only.
    """
    import h5py

    if which not in WHICH:
        raise ValueError(f"which must be one of {', '.join(WHICH)}, got {which!r}")
    if which == "best":
        if solver is None or solver.best_params is None:
            raise ValueError("a 'best' checkpoint needs a solver that has checked validation accuracy at least once")
        params, bn = solver.best_params, solver.best_bn
    elif which == "last" and solver is not None:
        params, bn = solver.training_weights()
    else:
        params = model.params
        bn = [{k: bp[k] for k in ("running_mean", "running_var") if bp.get(k) is not None} for bp in model.bn_params]
    state = solver.state_dict() if solver is not None else None

    def write(tmp):
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["version"] = VERSION
            f.attrs["which"] = which
            _put_json(f, "model_config", model.config())
            _put_json(f, "data_info", data_info or {})
            _put_json(f, "extra", extra or {})
            _put_arrays(f.create_group("params"), params)
            _put_bn(f.create_group("bn"), bn)
            if state is not None:
                h = f.create_group("history")
                for key, values in state["history"].items():
                    h.create_dataset(key, data=np.asarray(values, dtype=np.int64 if key in History.INT_KEYS
                                                          else np.float64))
            if which == "last" and state is not None:
                s = f.create_group("solver")
                _put_json(s, "settings", state["settings"])
                _put_optim(s.create_group("optim"), state["optim_configs"])
                if state["best_params"] is not None:
                    b = s.create_group("best")
                    _put_arrays(b.create_group("params"), state["best_params"])
                    _put_bn(b.create_group("bn"), state["best_bn"])

    atomic_write(path, write)


# ------------------------------------------------------------------- reading
# What a file may declare before any of it is read: far above any model numbaconv trains
# (the fast recipe's net has ~0.2 M parameters; a "last" file holds about five copies of
# them), far below what a crafted header could make a loader allocate (terabytes).
MAX_CHECKPOINT_BYTES = 1 << 30
# A model config may ask for more weights than the file stores only by this many before the
# model is built: allocating that much is harmless, and the report after building names each
# difference; beyond it, a hand-edited config (num_filters: [100000]) is refused unbuilt.
PARAM_SLACK = 1 << 20


def _bad(path, entry: str, what: str) -> ValueError:
    return ValueError(f"checkpoint {path}: {entry} {what}")


def _nbytes(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024


def _check_layout(f, path) -> None:
    """Refuse links (an external link would read another file) and declared sizes
    above MAX_CHECKPOINT_BYTES, from the metadata alone, before any data is read."""
    import h5py

    total, largest, link = 0, (0, "", None), None

    def visit(name, link_):
        nonlocal total, largest, link
        if not isinstance(link_, h5py.HardLink):
            link = (name, "an external link" if isinstance(link_, h5py.ExternalLink) else "a soft link")
            return True   # stops the visit (an exception raised in here would not unwind cleanly)
        obj = f[name]
        if isinstance(obj, h5py.Dataset) and obj.shape is not None:   # shape None: an empty dataset
            nbytes = int(np.prod(obj.shape, dtype=object)) * obj.dtype.itemsize
            total += nbytes
            if nbytes > largest[0]:
                largest = (nbytes, name, obj.shape)
        return None

    f.visititems_links(visit)
    if link is not None:
        raise _bad(path, link[0], f"is {link[1]}; a numbaconv checkpoint holds no links")
    if total > MAX_CHECKPOINT_BYTES:
        raise ValueError(f"checkpoint {path} declares {_nbytes(total)} of arrays (the largest, {largest[1]}, has shape "
                         f"{largest[2]}); numbaconv reads at most {_nbytes(MAX_CHECKPOINT_BYTES)}: the file is "
                         "damaged or was not written by numbaconv")


def _entry(obj) -> str:
    return obj.name.lstrip("/")


def _group(parent, name: str, path, required: bool = True):
    """The subgroup ``name`` of ``parent`` (None if absent and not required)."""
    import h5py

    obj = parent.get(name)
    entry = f"{_entry(parent)}/{name}".lstrip("/")
    if obj is None:
        if required:
            raise _bad(path, entry, "is missing")
        return None
    if not isinstance(obj, h5py.Group):
        raise _bad(path, entry, "is an array where a group belongs")
    return obj


def _read_array(obj, path) -> np.ndarray:
    """The numbers stored in dataset ``obj``; anything else (a string, a group) is an error naming it."""
    import h5py

    if not isinstance(obj, h5py.Dataset):
        raise _bad(path, _entry(obj), "is a group where an array belongs")
    if obj.shape is None or obj.dtype.kind not in "biuf":
        what = "a string" if h5py.check_string_dtype(obj.dtype) else f"{obj.dtype} data" if obj.shape else "nothing"
        raise _bad(path, _entry(obj), f"holds {what}, not numbers")
    return obj[()]


def _get_json(group, name: str, path) -> dict:
    import h5py

    if name not in group:
        raise ValueError(f"checkpoint {path} has no {name!r} entry; it was not written by numbaconv")
    obj = group[name]
    entry = _entry(obj)
    if not isinstance(obj, h5py.Dataset) or obj.shape != () or not h5py.check_string_dtype(obj.dtype):
        raise _bad(path, entry, "must be one JSON string")
    try:
        value = json.loads(obj.asstr()[()])
    except (ValueError, UnicodeDecodeError) as e:
        raise _bad(path, entry, f"is not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise _bad(path, entry, f"must be a JSON object, got {type(value).__name__}")
    return value


def _get_arrays(group, path) -> dict:
    return {name: _read_array(group[name], path) for name in group}


def _get_bn(group, path) -> list:
    want = [str(i) for i in range(len(group))]
    if sorted(group, key=lambda k: (len(k), k)) != want:
        raise _bad(path, _entry(group), f"must hold groups numbered 0 to {len(group) - 1}, got {sorted(group)}")
    return [_get_arrays(_group(group, i, path), path) for i in want]


def _get_optim(group, path) -> dict:
    configs = {}
    for p in group:
        cfg = {}
        for key, value in _get_arrays(_group(group, p, path), path).items():
            # Scalars come back as Python numbers: NumPy scalars would change dtype promotion.
            cfg[key] = value.item() if np.ndim(value) == 0 else value
        configs[p] = cfg
    return configs


def _get_history(group, path) -> dict:
    """The history lists, checked as History.from_dict checks them (a value that is
    not a list of numbers, a missing list, check lists of unequal length)."""
    history = {k: _read_array(group[k], path).tolist() for k in group}
    try:
        History.from_dict(history)
    except ValueError as e:
        raise _bad(path, _entry(group), f"is damaged: {e}") from None
    return history


# solver/settings as Solver.state_dict writes it: key -> (what it must be, required). The Solver
# reads the required ones without a default; a wrong type would fail (or, for a NaN, train on
# garbage) only later, in the middle of a resumed run, with a message that names no file.
def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


_SETTING_RULES = {
    "an integer >= 0": lambda v: _is_int(v) and v >= 0,
    "a positive integer": lambda v: _is_int(v) and v >= 1,
    "a positive integer or null": lambda v: v is None or (_is_int(v) and v >= 1),
    "a finite number": _is_number,
    "a finite number >= 0": lambda v: _is_number(v) and v >= 0,
    "a number in (0, 1]": lambda v: _is_number(v) and 0 < v <= 1,
    "a number or null": lambda v: v is None or _is_number(v),
    "a string or null": lambda v: v is None or isinstance(v, str),
    "a name": lambda v: isinstance(v, str),
    "a JSON object or null": lambda v: v is None or isinstance(v, dict),
    "a number in [0, 1)": lambda v: _is_number(v) and 0 <= v < 1,
    " or ".join(map(repr, SAMPLINGS)): lambda v: v in SAMPLINGS,
}
_SETTINGS = {   # key: (rule, required)
    "update_rule": ("a name", True), "optim_config": ("a JSON object or null", False),
    "lr_decay": ("a number in (0, 1]", True), "batch_size": ("a positive integer", True),
    "num_epochs": ("a positive integer", True), "num_train_samples": ("a positive integer or null", True),
    "num_val_samples": ("a positive integer or null", True), "print_every": ("a positive integer", False),
    "epoch": ("an integer >= 0", True), "iteration": ("an integer >= 0", True),
    "train_time": ("a finite number >= 0", True), "last_step_time": ("a finite number >= 0", True),
    "best_val_acc": ("a finite number", True), "best_epoch": ("a number or null", False),
    "stop_reason": ("a string or null", False),
    # recipe options, absent from checkpoints written before them (the Solver then uses what they trained with)
    "augment_seed": ("an integer >= 0", False), "shuffle_seed": ("an integer >= 0", False),
    "lookahead_every": ("a positive integer or null", False), "lookahead_decay": ("a number in [0, 1)", False),
    "sampling": (" or ".join(map(repr, SAMPLINGS)), False),
}


def _check_settings(s: dict, path) -> None:
    from .optim import get_update_rule

    entry = "solver/settings"
    missing = [k for k, (_, required) in _SETTINGS.items() if required and k not in s]
    missing += [k for k in ("rng_state", "eval_rng_state") if k not in s]
    if missing:
        raise _bad(path, entry, f"has no {', '.join(missing)}")
    for k, (rule, _) in _SETTINGS.items():
        if k in s and not _SETTING_RULES[rule](s[k]):
            raise _bad(path, entry, f"{k} must be {rule}, got {s[k]!r}")
    try:
        get_update_rule(s["update_rule"])
    except ValueError as e:
        raise _bad(path, entry, str(e)) from None
    for k in ("rng_state", "eval_rng_state"):
        try:   # the Solver's generators are default_rng()s: the state must fit one
            np.random.default_rng().bit_generator.state = s[k]
        except (TypeError, ValueError, KeyError):
            raise _bad(path, entry, f"{k} is not a NumPy PCG64 state") from None


def _optimizer_step_config(settings: dict, dtype, path) -> dict:
    """What each parameter's optimizer config holds after one step of the run's update
    rule: its hyperparameters (numbers) and its state (adam: arrays m, v and the count t).
    One step of the rule on one number says which, for any rule, registered ones included."""
    from .optim import get_update_rule

    rule = get_update_rule(settings["update_rule"])
    try:
        _, cfg = rule(np.zeros(1, dtype), np.ones(1, dtype), dict(settings.get("optim_config") or {}))
    except ValueError as e:
        raise _bad(path, "solver/settings", f"optim_config is not valid for {settings['update_rule']}: {e}") from None
    return cfg


def _optimizer_damage(p: str, cfg: dict, step_config: dict) -> list[str]:
    """Entries of one parameter's optimizer config of another kind than the rule's own
    (a number where it keeps an array, or the reverse), or numbers that are not finite."""
    problems = []
    for key, value in cfg.items():
        if key not in step_config:
            continue   # an extra hyperparameter of this parameter (e.g. weight_decay 0 for BN)
        if isinstance(step_config[key], np.ndarray) != isinstance(value, np.ndarray):
            kind = "an array" if isinstance(step_config[key], np.ndarray) else "a number"
            problems.append(f"solver/optim/{p}/{key} must be {kind}, got {type(value).__name__}")
        elif isinstance(step_config[key], bool):
            if not isinstance(value, bool):
                problems.append(f"solver/optim/{p}/{key} must be true or false, got {value!r}")
        elif not isinstance(value, np.ndarray) and not _is_number(value):
            problems.append(f"solver/optim/{p}/{key} must be a finite number, got {value!r}")
    return problems


def _check_data_info(info: dict, channels: int, path) -> None:
    """The entries of data_info that evaluate and predict use to load and preprocess data
    (written by numbaconv.run.data_info_for), each of the type it must have; any may be absent."""
    def numbers(v, positive=False):
        return (isinstance(v, list) and len(v) == channels and all(_is_number(x) and (x > 0 or not positive)
                                                                    for x in v))
    rules = {
        "name": (lambda v: isinstance(v, str) and v != "", "a dataset name or file"),
        "source": (lambda v: isinstance(v, str), "a string"),
        "num_val": (_SETTING_RULES["an integer >= 0"], "an integer >= 0"),
        "num_train": (_SETTING_RULES["a positive integer or null"], "a positive integer or null"),
        "normalize_std": (lambda v: isinstance(v, bool), "true or false"),
        "seed": (_SETTING_RULES["an integer >= 0"], "an integer >= 0"),
        "mean": (numbers, f"a list of {channels} finite numbers (one per channel)"),
        "std": (lambda v: v is None or numbers(v, positive=True), f"null or a list of {channels} positive numbers"),
        "class_names": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of strings"),
    }
    for key, (ok, what) in rules.items():
        if key in info and not ok(info[key]):
            raise _bad(path, "data_info", f"{key} must be {what}, got {str(info[key])[:60]}")


def _damage(what: str, arrays: dict) -> list[str]:
    """Values no trained model holds: NaN or infinite weights, negative variances."""
    problems = []
    for name, a in arrays.items():
        bad = a.size - int(np.count_nonzero(np.isfinite(a)))
        if bad:
            problems.append(f"{what}{name} holds {bad} NaN or infinite values")
        elif name == "running_var" and (a < 0).any():
            problems.append(f"{what}{name} holds {int((a < 0).sum())} negative variances")
    return problems


def _describe(config: dict) -> str:
    keys = [k for k in ("kind", "input_dims", "num_filters", "filter_size", "hidden_dim", "max_pools",
                        "batchnorm", "num_classes", "dtype") if k in config]
    return ", ".join(f"{k}={config[k]}" for k in keys)


def _mismatches(what: str, arrays: dict, shapes: dict, dtype: np.dtype) -> list[str]:
    problems = []
    for name, shape in shapes.items():
        if name not in arrays:
            problems.append(f"{what}{name} is missing (the config needs shape {shape})")
        elif tuple(arrays[name].shape) != shape:
            problems.append(f"{what}{name} has shape {tuple(arrays[name].shape)} but the config needs {shape}")
        elif arrays[name].dtype != dtype:
            problems.append(f"{what}{name} has dtype {arrays[name].dtype} but the config says {dtype}")
    for name in arrays:
        if name not in shapes:
            problems.append(f"{what}{name} (shape {tuple(arrays[name].shape)}) is not a parameter of this model")
    return problems


def _bn_mismatches(what: str, bn: list, model) -> list[str]:
    want = len(model.bn_params)
    if len(bn) != want:
        return [f"{what}bn holds running statistics for {len(bn)} layers but the config has {want} batch-norm layers"]
    problems = []
    for i, (stats, bp) in enumerate(zip(bn, model.bn_params)):
        shapes = {k: tuple(bp[k].shape) for k in ("running_mean", "running_var")}
        problems += _mismatches(f"{what}bn/{i}/", stats, shapes, model.dtype)
    return problems


def load_checkpoint(path, backend: str | None = None) -> Checkpoint:
    """Rebuild the model stored in ``path`` (optionally on another backend) and
    return it with the data info, history and, for a "last" checkpoint, the
    Solver state. A ValueError lists every way the file disagrees with its config;
    a damaged file (a string where numbers belong, NaN weights, a negative variance,
    optimizer state missing after training steps, sizes beyond MAX_CHECKPOINT_BYTES)
    is refused with a ValueError naming the entry, before anything large is allocated."""
    import h5py

    from .backends import get_backend

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    if backend:
        get_backend(backend)   # an unknown or unavailable backend is named before the file is read
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ValueError(f"checkpoint {path} is not a readable HDF5 file ({e})") from None
    try:
        with f:
            return _read_checkpoint(f, path, backend)
    except (OSError, RuntimeError) as e:   # HDF5's own errors on a damaged file (bad chunks, truncated data)
        raise ValueError(f"checkpoint {path} cannot be read: {e}") from None


def _read_checkpoint(f, path: Path, backend: str | None) -> Checkpoint:
    fmt = f.attrs.get("format")
    if not isinstance(fmt, str) or fmt != FORMAT:
        raise ValueError(f"{path} is an HDF5 file but not a numbaconv checkpoint (format attribute {fmt!r})")
    version = f.attrs.get("version")
    if isinstance(version, (bool, np.bool_)) or not isinstance(version, (int, np.integer)) or version != VERSION:
        raise ValueError(f"checkpoint {path} has format version {version!r}, this numbaconv reads {VERSION}")
    which = f.attrs.get("which", "model")
    if not isinstance(which, str) or which not in WHICH:
        raise _bad(path, "the 'which' attribute", f"must be one of {', '.join(WHICH)}, got {which!r}")
    _check_layout(f, path)
    config = _get_json(f, "model_config", path)
    data_info, extra = _get_json(f, "data_info", path), _get_json(f, "extra", path)
    params_group = _group(f, "params", path, required=False)
    params = _get_arrays(params_group, path) if params_group is not None else {}
    bn_group = _group(f, "bn", path, required=False)
    bn = _get_bn(bn_group, path) if bn_group is not None else []
    implied, stored = param_count(config), sum(a.size for a in params.values())
    if implied is not None and implied > stored + PARAM_SLACK:
        raise _bad(path, "model_config", f"({_describe(config)}) asks for {implied:,} weights but params holds "
                   f"{stored:,}: the config does not belong to these weights (was it edited?)")
    overrides = {"backend": backend} if backend else {}
    try:
        model = build_model(config, **overrides)
    except ValueError as e:
        raise ValueError(f"checkpoint {path}: its model config cannot be built: {e}") from None
    _check_data_info(data_info, model.input_dims[0], path)
    shapes = model.param_shapes()
    problems = _mismatches("params/", params, shapes, model.dtype) + _bn_mismatches("", bn, model)
    state = None
    history = None
    history_group = _group(f, "history", path, required=False)
    if history_group is not None:
        history = _get_history(history_group, path)
    s = _group(f, "solver", path, required=False)
    settings = None
    if s is not None:
        settings = _get_json(s, "settings", path)
        _check_settings(settings, path)
        optim_group = _group(s, "optim", path, required=False)
        optim = _get_optim(optim_group, path) if optim_group is not None else {}
        for p in shapes:
            if p not in optim:
                problems.append(f"solver/optim has no state for parameter {p}")
        for p, cfg in optim.items():
            if p not in shapes:
                problems.append(f"solver/optim/{p} is not a parameter of this model")
                continue
            for key, value in cfg.items():
                if isinstance(value, np.ndarray) and value.shape != shapes[p]:
                    problems.append(f"solver/optim/{p}/{key} has shape {value.shape} but {p} has shape {shapes[p]}")
                elif isinstance(value, np.ndarray) and value.dtype != model.dtype:
                    problems.append(f"solver/optim/{p}/{key} has dtype {value.dtype} but the config says {model.dtype}")
        best_params = best_bn = None
        best = _group(s, "best", path, required=False)
        if best is not None:
            best_params = _get_arrays(_group(best, "params", path), path)
            best_bn = _get_bn(_group(best, "bn", path), path)
            problems += _mismatches("solver/best/params/", best_params, shapes, model.dtype)
            problems += _bn_mismatches("solver/best/", best_bn, model)
        if history is None:
            problems.append("solver state without a history group")
        state = {"settings": settings, "optim_configs": optim, "params": params,
                 "bn": bn, "best_params": best_params, "best_bn": best_bn, "history": history}
    if problems:
        raise ValueError(f"checkpoint {path} does not match its model config ({_describe(config)}):\n  - "
                         + "\n  - ".join(problems))
    # Shapes agree; now the values. Each of these would evaluate to chance, or resume
    # training silently from a different state, with exit code 0.
    damage = _damage("params/", params)
    for i, stats in enumerate(bn):
        damage += _damage(f"bn/{i}/", stats)
    if state is not None:
        if state["best_params"] is not None:
            damage += _damage("solver/best/params/", state["best_params"])
            for i, stats in enumerate(state["best_bn"]):
                damage += _damage(f"solver/best/bn/{i}/", stats)
        for p, cfg in state["optim_configs"].items():
            damage += _damage(f"solver/optim/{p}/", {k: v for k, v in cfg.items() if isinstance(v, np.ndarray)})
        step_config = _optimizer_step_config(settings, model.dtype, path)
        for p, cfg in state["optim_configs"].items():
            damage += _optimizer_damage(p, cfg, step_config)
        if settings["iteration"] > 0:
            # after a step every trained parameter holds the rule's full config; a missing
            # key (adam's m, v or t) would silently restart it from scratch
            frozen = set(getattr(model, "frozen", ()))
            for p, cfg in state["optim_configs"].items():
                lost = sorted(set(step_config) - set(cfg)) if p not in frozen else []
                if lost:
                    damage.append(f"solver/optim/{p} has no {', '.join(lost)} after {settings['iteration']} "
                                  f"{settings['update_rule']} steps (resuming would restart them)")
    if damage:
        raise ValueError(f"checkpoint {path} is damaged: {'; '.join(damage[:5])}"
                         + (f"; and {len(damage) - 5} more" if len(damage) > 5 else "")
                         + "; use another checkpoint or train again")
    model.params = params
    for bp, stats in zip(model.bn_params, bn):
        bp.update(stats)
    return Checkpoint(path, str(which), model, config, data_info, extra, history, state)


# ------------------------------------------------------------ evaluation data
SPLITS = ("train", "val", "test")


def load_split_for(ck: Checkpoint, split: str = "test", dataset: str | None = None, num_val: int | None = None,
                   data_home=None):
    """The raw uint8 images (N, 3, H, W) and int64 labels of ``split`` of ``dataset`` (default: the
    checkpoint's training data), split as the training run split it (same num_val, num_train, seed).
    Returns (images, labels, class_names, source). Preprocess them with the checkpoint's own mean/std,
    batch by batch (``numbaconv.predict.evaluate``): the whole train split as float64 was ~7x the data."""
    from .data import raw_split

    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    info = ck.data_info
    name = dataset or info.get("name")
    if not name:
        raise ValueError(f"checkpoint {ck.path} does not record its dataset; pass one explicitly")
    same = dataset is None or dataset == info.get("name")
    if num_val is not None:
        nv = num_val
    elif split == "test":  # the hold-out does not touch the test split
        nv = 0
    else:
        nv = info.get("num_val", 1000) if same else 1000
    return raw_split(name, split, nv, info.get("num_train") if same else None,
                     int(info.get("seed", 0)) if same else 0, data_home)
