"""`numbaconv train`: train a convnet, with a live progress display and a run folder."""
from __future__ import annotations

import json
import math
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn
from rich.table import Table

from ..choices import Backend, DType
from ..console import console, fail

# Defaults of the model options (None in the signature, so --resume can tell
# which options were given and refuse ones the checkpoint fixes).
DEFAULT_FILTERS = {"deep": "16,32,64", "three-layer": "32"}
DEFAULT_POOLS = "0,1,2"
FIXED_BY_CHECKPOINT = ("recipe", "dataset", "model", "filters", "pools", "batchnorm", "optimizer", "lr", "lr_decay",
                       "batch_size", "reg", "weight_scale", "num_train", "num_val", "dtype", "seed", "normalize_std")


class ModelKind(str, Enum):
    three_layer = "three-layer"
    deep = "deep"


class Optimizer(str, Enum):
    sgd = "sgd"
    sgd_momentum = "sgd_momentum"
    rmsprop = "rmsprop"
    adam = "adam"


class Recipe(str, Enum):
    fast = "fast"


# Options a recipe sets itself (giving one with --recipe is an error, not a silent override).
SET_BY_RECIPE = ("model", "filters", "pools", "batchnorm", "optimizer", "lr", "lr_decay", "batch_size", "weight_scale")


def _int_list(option: str, text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip() != ""]
    except ValueError:
        raise fail(f"{option} must be a comma-separated list of integers, got {text!r}", 2) from None
    return values


def _progress_text(solver, budget: Optional[float], session_start: tuple[int, float]) -> str:
    it0, t0 = session_start
    steps, secs = solver.iteration - it0, solver.train_time - t0
    ips = steps * solver.batch_size / secs if secs > 0 else 0.0
    if budget is not None:
        left = max(budget - solver.train_time, 0.0)
        if solver.num_epochs and secs > 0:
            left = min(left, (solver.num_iterations - solver.iteration) * secs / steps)
    else:
        left = (solver.num_iterations - solver.iteration) * secs / steps if steps else float("nan")
    loss = solver.loss_history[-1] if solver.loss_history else float("nan")
    tr = f"{solver.train_acc_history[-1]:.3f}" if solver.train_acc_history else "  -  "
    va = f"{solver.val_acc_history[-1]:.3f}" if solver.val_acc_history else "  -  "
    epoch = solver.iteration / solver.iterations_per_epoch
    left_s = "?" if math.isnan(left) else f"{int(left) // 60}:{int(left) % 60:02d}"
    return (f"epoch {epoch:6.2f}  loss {loss:.4f}  train acc {tr}  val acc {va}  "
            f"{ips:,.0f} img/s  left {left_s}")


def train(
    out: Path = typer.Option(..., "--out", help="Run folder: best.h5, last.h5, history.json, config.json."),
    recipe: Optional[Recipe] = typer.Option(None, help="A named recipe that sets the model, optimizer, schedule and "
                                            "augmentation: fast = FastNet, label smoothing, Nesterov SGD, "
                                            "warm-up + linear decay over --time-budget, flip + 2-pixel shifts."),
    dataset: Optional[str] = typer.Option(None, help="synthetic (default), cifar10 (see `numbaconv datasets`) "
                                          "or an HDF5 file in numbaconv's layout."),
    model: Optional[ModelKind] = typer.Option(None, help="deep (default): {conv - (batchnorm) - relu - (pool)} x L - linear; "
                                              "three-layer: conv-relu-pool-linear-relu-linear."),
    filters: Optional[str] = typer.Option(None, help="deep: conv filters per layer, e.g. 16,32,64 (default); "
                                          "three-layer: the number of conv filters (default 32)."),
    pools: Optional[str] = typer.Option(None, help="deep: conv layers followed by a 2x2 max pool, e.g. 0,1,2 "
                                        "(default)."),
    batchnorm: Optional[bool] = typer.Option(None, "--batchnorm/--no-batchnorm",
                                             help="deep: spatial batch norm after each conv (default off)."),
    epochs: Optional[int] = typer.Option(None, min=1, help="Number of epochs."),
    time_budget: Optional[float] = typer.Option(None, help="Seconds of training steps (data loading and "
                                                "accuracy checks excluded); with --resume, the total."),
    optimizer: Optional[Optimizer] = typer.Option(None, help="Update rule (default adam)."),
    lr: Optional[float] = typer.Option(None, help="Learning rate (default: the rule's, 1e-3 for adam)."),
    lr_decay: Optional[float] = typer.Option(None, help="Learning rate factor per epoch (default 1.0)."),
    batch_size: Optional[int] = typer.Option(None, help="Minibatch size (default 128)."),
    reg: Optional[float] = typer.Option(None, help="L2 strength: loss += reg * sum(W**2) (default 0)."),
    weight_scale: Optional[str] = typer.Option(None, help="Initial weight std, or 'kaiming' (default)."),
    num_train: Optional[int] = typer.Option(None, help="Use only the first N training images."),
    num_val: Optional[int] = typer.Option(None, help="Validation images held out of train (default 1000)."),
    normalize_std: Optional[bool] = typer.Option(None, "--normalize-std/--no-normalize-std",
                                                 help="Also divide by the per-channel std (default off)."),
    dtype: Optional[DType] = typer.Option(None, help="Training precision (default float32)."),
    backend: Optional[Backend] = typer.Option(None, help="Layer backend (default cpu); may change on resume."),
    seed: Optional[int] = typer.Option(None, min=0, help="Seed of the initial weights and minibatches (default 0)."),
    resume: Optional[Path] = typer.Option(None, help="Continue from a last.h5 checkpoint; the model, data and "
                                          "optimizer come from it (give --epochs or --time-budget to extend)."),
) -> None:
    """Train a convnet; Ctrl-C saves last.h5 and exits with code 130, --resume continues."""
    import numpy as np

    from numbaconv import __version__
    from numbaconv.checkpoint import data_info_for, load_checkpoint, save_json, write_run_files
    from numbaconv.data import load_dataset
    from numbaconv.models import build_model
    from numbaconv.recipe import exclude_from_decay, recipe_model_config, recipe_solver_kwargs
    from numbaconv.solver import NonFiniteLossError, Solver

    given = {k: v for k, v in locals().items() if k in FIXED_BY_CHECKPOINT and v is not None}
    if time_budget is not None and not (math.isfinite(time_budget) and time_budget > 0):
        raise fail(f"--time-budget must be a number of seconds > 0, got {time_budget}", 2)
    if out.exists() and not out.is_dir():
        raise fail(f"--out {out} exists and is not a folder", 2)

    try:
        if resume is not None:
            if given:
                names = ", ".join("--" + k.replace("_", "-") for k in given)
                raise fail(f"{names} cannot be given with --resume: the checkpoint fixes the model, data and "
                           f"optimizer (only --epochs, --time-budget, --backend and --out may change)", 2)
            ck = load_checkpoint(resume, backend=backend.value if backend else None)
            if ck.solver_state is None:
                raise fail(f"{resume} holds no training state (a {ck.which!r} checkpoint); resume from last.h5", 2)
            info, run = ck.data_info, dict(ck.extra.get("run", {}))
            net = ck.model
            settings = ck.solver_state["settings"]
            if epochs is None and time_budget is None:
                epochs, time_budget = run.get("epochs"), run.get("time_budget")
            with console.status(f"loading {info['name']}..."):
                ds = load_dataset(info["name"], num_val=info["num_val"], num_train=info.get("num_train"),
                                  normalize_std=info["normalize_std"], dtype=net.dtype, seed=info["seed"])
            solver_kwargs = {"update_rule": settings["update_rule"], "seed": run.get("seed", 0)}
            if run.get("recipe"):   # hooks are code, not state: rebuilt over the (total) budget
                hooks = recipe_solver_kwargs(run["recipe"], time_budget)
                solver_kwargs.update(schedule=hooks["schedule"], augment=hooks["augment"])
        elif recipe is not None:
            if epochs is None and time_budget is None:
                raise fail("give --epochs N or --time-budget SECONDS (or both: whichever ends first)", 2)
            clash = [k for k in SET_BY_RECIPE if k in given]
            if clash:
                names = ", ".join("--" + k.replace("_", "-") for k in clash)
                raise fail(f"{names} cannot be given with --recipe {recipe.value}: the recipe sets them", 2)
            dt = (dtype or DType.float32).value
            run = {"recipe": recipe.value, "dataset": dataset or "synthetic", "epochs": epochs,
                   "time_budget": time_budget, "seed": 0 if seed is None else seed,
                   "num_val": 1000 if num_val is None else num_val, "num_train": num_train,
                   "normalize_std": bool(normalize_std)}
            with console.status(f"loading {run['dataset']}..."):
                ds = load_dataset(run["dataset"], num_val=run["num_val"], num_train=num_train,
                                  normalize_std=run["normalize_std"], dtype=np.dtype(dt))
            config = recipe_model_config(recipe.value, ds.X_train.shape[1:], len(ds.class_names),
                                         (backend or Backend.cpu).value)
            config.update(dtype=dt, **({} if reg is None else {"reg": reg}))
            net = build_model(config, seed=run["seed"])
            info = data_info_for(ds, run["dataset"], run["num_val"], num_train, run["normalize_std"], 0)
            solver_kwargs = {**recipe_solver_kwargs(recipe.value, time_budget), "seed": run["seed"]}
            run.update(optimizer=solver_kwargs["update_rule"], batch_size=solver_kwargs["batch_size"])
        else:
            if epochs is None and time_budget is None:
                raise fail("give --epochs N or --time-budget SECONDS (or both: whichever ends first)", 2)
            kind = (model or ModelKind.deep).value
            if kind == "three-layer" and (pools is not None or batchnorm):
                raise fail("--pools and --batchnorm apply to --model deep only", 2)
            filter_list = _int_list("--filters", filters or DEFAULT_FILTERS[kind])
            ws = weight_scale or "kaiming"
            if ws != "kaiming":
                try:
                    ws = float(ws)
                except ValueError:
                    raise fail(f"--weight-scale must be a number or 'kaiming', got {weight_scale!r}", 2) from None
            run = {"dataset": dataset or "synthetic", "epochs": epochs, "time_budget": time_budget,
                   "seed": 0 if seed is None else seed, "optimizer": (optimizer or Optimizer.adam).value,
                   "lr": lr, "lr_decay": 1.0 if lr_decay is None else lr_decay,
                   "batch_size": 128 if batch_size is None else batch_size,
                   "num_val": 1000 if num_val is None else num_val, "num_train": num_train,
                   "normalize_std": bool(normalize_std)}
            dt = (dtype or DType.float32).value
            with console.status(f"loading {run['dataset']}..."):
                ds = load_dataset(run["dataset"], num_val=run["num_val"], num_train=num_train,
                                  normalize_std=run["normalize_std"], dtype=np.dtype(dt))
            config = {"kind": kind, "input_dims": list(ds.X_train.shape[1:]), "num_classes": len(ds.class_names),
                      "weight_scale": ws, "reg": 0.0 if reg is None else reg, "dtype": dt,
                      "backend": (backend or Backend.cpu).value}
            if kind == "deep":
                config.update(num_filters=filter_list, max_pools=_int_list("--pools", pools or DEFAULT_POOLS),
                              batchnorm=bool(batchnorm))
            else:
                if len(filter_list) != 1:
                    raise fail(f"--filters for three-layer is one number, got {filters!r}", 2)
                config["num_filters"] = filter_list[0]
            net = build_model(config, seed=run["seed"])
            info = data_info_for(ds, run["dataset"], run["num_val"], num_train, run["normalize_std"], 0)
            optim_config = {} if lr is None else {"learning_rate": lr}
            solver_kwargs = {"update_rule": run["optimizer"], "optim_config": optim_config,
                             "lr_decay": run["lr_decay"], "batch_size": run["batch_size"], "seed": run["seed"]}
        run["epochs"], run["time_budget"] = epochs, time_budget
        num_epochs = epochs if epochs is not None else 10 ** 6   # a time budget alone ends the run
        data = {"X_train": ds.X_train, "y_train": ds.y_train, "X_val": ds.X_val, "y_val": ds.y_val}
        solver = Solver(net, data, num_epochs=num_epochs, verbose=False, num_train_samples=1000, **solver_kwargs)
        if resume is not None:
            solver.load_state_dict(ck.solver_state)
            solver.num_epochs = num_epochs
        elif recipe is not None:
            exclude_from_decay(solver)
        out.mkdir(parents=True, exist_ok=True)
    except ValueError as e:  # bad option values, data or checkpoint: the library says what is wrong
        raise fail(str(e), 2) from None

    extra = {"run": run, "argv": sys.argv[1:]}
    save_json(out / "config.json", {"model": net.config(), "data": info, "run": run,
                                    "solver": {"update_rule": solver.update_rule_name, "optim_config": solver.optim_config,
                                               "lr_decay": solver.lr_decay, "batch_size": solver.batch_size,
                                               "num_epochs": epochs},
                                    "resumed_from": str(resume) if resume else None,
                                    "versions": {"numbaconv": __version__, "numpy": np.__version__,
                                                 "python": sys.version.split()[0]}})
    shape = {k: v for k, v in net.config().items() if k in ("num_filters", "max_pools", "batchnorm", "filter_size",
                                                             "hidden_dim", "dtype")}
    console.print(f"training {net.kind} {json.dumps(shape)} with {solver.update_rule_name} on {ds.source}: "
                  f"{ds.X_train.shape[0]} train / {ds.X_val.shape[0]} val images, backend {net.backend}"
                  + (f"; resuming at epoch {solver.epoch}, iteration {solver.iteration}" if resume else ""),
                  highlight=False)
    with console.status("compiling kernels (the first run only: Numba caches them)..."):
        solver.warmup()
    session = (solver.iteration, solver.train_time)
    total = time_budget if epochs is None else solver.num_iterations
    progress = Progress(SpinnerColumn(), BarColumn(), TextColumn("{task.fields[stats]}"), console=console,
                        transient=False)
    task = progress.add_task("train", total=total, stats="taking the first step...")

    def refresh(s):
        done = s.train_time if epochs is None else s.iteration
        progress.update(task, completed=done, stats=_progress_text(s, time_budget, session))

    def on_epoch_end(s):
        refresh(s)
        write_run_files(out, s, info, extra, best=s.best_epoch == s.check_epochs[-1])

    solver.on_iteration, solver.on_epoch_end = refresh, on_epoch_end
    refresh(solver)
    try:
        with progress:
            reason = solver.train(time_limit=time_budget)
            refresh(solver)   # show the final check (a time limit adds one mid-epoch)
            write_run_files(out, solver, info, extra)
    except KeyboardInterrupt:
        write_run_files(out, solver, info, extra, best=False)
        console.print(f"[yellow]interrupted[/] at epoch {solver.iteration / solver.iterations_per_epoch:.2f} "
                      f"(iteration {solver.iteration}); saved {out / 'last.h5'}. Continue with: "
                      f"numbaconv train --out {out} --resume {out / 'last.h5'}", highlight=False)
        raise typer.Exit(130)
    except NonFiniteLossError as e:
        save_json(out / "history.json", solver.history())
        last = out / "last.h5"
        kept = (f"the last good checkpoint is {last} (saved at the end of epoch {solver.epoch})"
                if last.exists() and solver.epoch > 0 else "no checkpoint was written before it diverged")
        raise fail(f"training stopped: {e} {kept[0].upper() + kept[1:]}.", 1) from None

    from numbaconv.plots import plot_history   # the run's curves, as `numbaconv plot` draws them
    plot_history(solver.history(), out / "curves.png", title=f"{out}: training loss")

    table = Table(title=f"run {out}", show_header=False)
    steps, secs = solver.iteration - session[0], solver.train_time - session[1]
    rows = [("stopped", "time budget reached" if reason == "time_limit" else "all epochs done"),
            ("epochs", f"{solver.iteration / solver.iterations_per_epoch:.2f}"),
            ("iterations", str(solver.iteration)),
            ("training time", f"{solver.train_time:.1f} s"),
            ("images/s", f"{steps * solver.batch_size / secs:,.0f}" if secs > 0 else "-"),
            ("final loss", f"{solver.loss_history[-1]:.4f}" if solver.loss_history else "-"),
            ("train acc (last check)", f"{solver.train_acc_history[-1]:.4f}" if solver.train_acc_history else "-"),
            ("best val acc", f"{solver.best_val_acc:.4f} (epoch {solver.best_epoch:.2f})" if solver.best_epoch is not None else "-"),
            ("files", f"{out}/best.h5 last.h5 history.json config.json curves.png")]
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command()(train)
