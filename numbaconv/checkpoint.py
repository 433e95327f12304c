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
name, shape or dtype does not match it.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .models import build_model
from .solver import History

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
def _atomic_write(path, write) -> None:
    """Call write(tmp_path), fsync, then rename over ``path``."""
    path = Path(path)
    if not path.parent.is_dir():
        raise ValueError(f"cannot write {path}: folder {path.parent} does not exist")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def save_json(path, obj) -> None:
    """Write ``obj`` as indented JSON, atomically (config.json, history.json)."""
    def write(tmp):
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=1)
            fh.write("\n")
    _atomic_write(path, write)


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

    _atomic_write(path, write)


# ------------------------------------------------------------------- reading
def _get_json(group, name: str, path) -> dict:
    if name not in group:
        raise ValueError(f"checkpoint {path} has no {name!r} entry; it was not written by numbaconv")
    return json.loads(group[name].asstr()[()])


def _get_arrays(group) -> dict:
    return {name: group[name][()] for name in group}


def _get_bn(group) -> list:
    return [_get_arrays(group[str(i)]) for i in range(len(group))]


def _get_optim(group) -> dict:
    configs = {}
    for p in group:
        cfg = {}
        for key, ds in group[p].items():
            value = ds[()]
            # Scalars come back as Python numbers: NumPy scalars would change dtype promotion.
            cfg[key] = value.item() if ds.shape == () else value
        configs[p] = cfg
    return configs


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
    Solver state. A ValueError lists every way the file disagrees with its config."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ValueError(f"checkpoint {path} is not a readable HDF5 file ({e})") from None
    with f:
        if f.attrs.get("format") != FORMAT:
            raise ValueError(f"{path} is an HDF5 file but not a numbaconv checkpoint (format attribute "
                             f"{f.attrs.get('format')!r})")
        if int(f.attrs.get("version", -1)) != VERSION:
            raise ValueError(f"checkpoint {path} has format version {f.attrs.get('version')}, this numbaconv reads {VERSION}")
        which = str(f.attrs.get("which", "model"))
        config = _get_json(f, "model_config", path)
        overrides = {"backend": backend} if backend else {}
        try:
            model = build_model(config, **overrides)
        except ValueError as e:
            raise ValueError(f"checkpoint {path}: its model config cannot be built: {e}") from None
        shapes = model.param_shapes()
        params = _get_arrays(f["params"]) if "params" in f else {}
        bn = _get_bn(f["bn"]) if "bn" in f else []
        problems = _mismatches("params/", params, shapes, model.dtype) + _bn_mismatches("", bn, model)
        state = None
        history = None
        if "history" in f:
            history = {k: f["history"][k][()].tolist() for k in f["history"]}
        if "solver" in f:
            s = f["solver"]
            optim = _get_optim(s["optim"]) if "optim" in s else {}
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
            best_params = best_bn = None
            if "best" in s:
                best_params = _get_arrays(s["best"]["params"])
                best_bn = _get_bn(s["best"]["bn"])
                problems += _mismatches("solver/best/params/", best_params, shapes, model.dtype)
                problems += _bn_mismatches("solver/best/", best_bn, model)
            if history is None:
                problems.append("solver state without a history group")
            state = {"settings": _get_json(s, "settings", path), "optim_configs": optim, "params": params,
                     "bn": bn, "best_params": best_params, "best_bn": best_bn, "history": history}
        if problems:
            raise ValueError(f"checkpoint {path} does not match its model config ({_describe(config)}):\n  - "
                             + "\n  - ".join(problems))
        model.params = params
        for bp, stats in zip(model.bn_params, bn):
            bp.update(stats)
        return Checkpoint(path, which, model, config, _get_json(f, "data_info", path),
                          _get_json(f, "extra", path), history, state)


def match_preprocessing(X, from_mean, from_std, to_mean, to_std):
    """Re-express images preprocessed as (raw - from_mean) / from_std (per channel;
    std None means 1) as (raw - to_mean) / to_std, so a model sees data exactly
    as it was trained on, whatever split statistics the loader computed.

    One affine map per channel, x * (from_std / to_std) + (from_mean - to_mean) / to_std,
    computed in X's dtype: one output array, no float64 copies of the set."""
    C = X.shape[1]
    def col(v):
        return np.ones(C) if v is None else np.asarray(v, dtype=np.float64).reshape(-1)
    for name, v in (("from_mean", from_mean), ("from_std", from_std), ("to_mean", to_mean), ("to_std", to_std)):
        if v is not None and np.asarray(v).size != C:
            raise ValueError(f"{name} has {np.asarray(v).size} values but X has {C} channels")
    scale = col(from_std) / col(to_std)
    shift = (np.zeros(C) if from_mean is None else col(from_mean)) - (np.zeros(C) if to_mean is None else col(to_mean))
    shift = shift / col(to_std)
    out = X * scale.astype(X.dtype).reshape(1, C, 1, 1)
    out += shift.astype(X.dtype).reshape(1, C, 1, 1)
    return out


# ------------------------------------------------------------ evaluation data
SPLITS = ("train", "val", "test")


def load_split_for(ck: Checkpoint, split: str = "test", dataset: str | None = None, num_val: int | None = None,
                   data_home=None):
    """The raw uint8 images (N, 3, H, W) and int64 labels of ``split`` of ``dataset`` (default: the
    checkpoint's training data), split as the training run split it (same num_val, num_train, seed).
    Returns (images, labels, class_names, source). Preprocess them with the checkpoint's own mean/std,
    batch by batch (``numbaconv.predict.evaluate``): the whole train split as float64 was ~7x the data."""
    from .predict import raw_split

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
