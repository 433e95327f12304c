"""A run as data (numbaconv.run): RunSpec to and from JSON, spec_from_options' errors,
execute on a tiny synthetic set, the History structure, and checkpoints written
before the History structure existed (tests/fixtures) still loading and resuming."""
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from numbaconv.run import RunEvent, RunSpec, execute, spec_from_options
from numbaconv.solver import History

FIXTURES = Path(__file__).parent / "fixtures"
# A tiny deep net on a tiny synthetic set: 2 steps per epoch (as in test_train_cli).
TINY = {"dataset": "synthetic", "filters": "4,4,4", "pools": "0,1,2", "num-train": 40, "num-val": 20,
        "batch-size": 20, "backend": "cpu", "seed": 3}


def _params(path):
    with h5py.File(path, "r") as f:
        return {k: f["params"][k][()] for k in f["params"]}


def test_spec_round_trips_through_json():
    spec = spec_from_options({**TINY, "out": "runs/a", "time-budget": 2.5, "lr": 1e-3, "batchnorm": True,
                              "weight-scale": "0.01", "threads": 1})
    assert spec.filters == [4, 4, 4] and spec.pools == [0, 1, 2] and spec.weight_scale == 0.01
    assert spec.time_budget == 2.5 and spec.num_train == 40 and spec.threads == 1
    again = RunSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    # TOML/JSON lists and underscores work as well as the CLI's strings
    assert spec_from_options({**TINY, "filters": [4, 4, 4], "out": "runs/a", "time_budget": 2.5, "lr": 1e-3,
                              "batchnorm": True, "weight-scale": 0.01, "threads": 1}) == spec


@pytest.mark.parametrize("options, message", [
    ({"learning-rate": 0.1}, "unknown option 'learning-rate'"),
    ({"time-budget": -1}, "time-budget must be a number of seconds > 0, got -1"),
    ({"filters": "4,a"}, "filters must be a comma-separated list of integers, got '4,a'"),
    ({"filters": [4, 0]}, "filters entry must be a positive integer, got 0"),
    ({"batchnorm": "yes"}, "batchnorm must be true or false, got 'yes'"),
    ({"optimizer": "lbfgs"}, "optimizer must be one of sgd, sgd_momentum, rmsprop, adam, sgd_nesterov"),
    ({"recipe": "slow"}, "recipe must be one of fast"),
    ({"batch-size": 2.5}, "batch-size must be a positive integer, got 2.5"),
    ({"lr-decay": 0}, "lr-decay must be a number > 0 and <= 1, got 0"),
    ({"dtype": "float16"}, "dtype must be one of float32, float64"),
    ({"recipe": "fast", "lr": 0.1}, "lr cannot be given with recipe fast: the recipe sets them"),
    ({"resume": "x/last.h5", "filters": "8"}, "filters cannot be given with resume"),
    ({"model": "three-layer", "pools": "0"}, "pools and batchnorm apply to model deep only"),
    ({"model": "three-layer", "filters": "4,8"}, "filters for three-layer is one number"),
    ({"sampling": "shuffle"}, "sampling must be one of replacement, epochs, got 'shuffle'"),
    ({"recipe": "long", "sampling": "epochs"}, "sampling cannot be given with recipe long: the recipe sets them"),
    ({"resume": "x/last.h5", "sampling": "epochs"}, "sampling cannot be given with resume"),
])
def test_spec_from_options_names_the_bad_key(options, message):
    base = {"out": "runs/a"} if "resume" in options else {"out": "runs/a", "epochs": 1}
    with pytest.raises(ValueError) as e:
        spec_from_options({**base, **options})
    assert message in str(e.value)


def test_spec_needs_a_length_and_a_folder():
    with pytest.raises(ValueError, match="give --epochs N or --time-budget SECONDS"):
        spec_from_options({"out": "runs/a"}, prefix="--")
    with pytest.raises(ValueError, match="a run needs out"):
        spec_from_options({"epochs": 1})
    with pytest.raises(ValueError, match="unknown run spec key 'learning_rate'"):
        RunSpec.from_dict({"out": "a", "epochs": 1, "learning_rate": 0.1})
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got -3"):
        RunSpec.from_dict({"out": "a", "epochs": 1, "batch_size": -3})
    # from_dict sees no "given" set: a non-default value the recipe would override is refused
    with pytest.raises(ValueError, match="optimizer cannot be given with recipe fast"):
        RunSpec.from_dict({"out": "a", "epochs": 1, "recipe": "fast", "optimizer": "sgd"})


def test_execute_tiny_run_and_rerun_from_its_record(tmp_path):
    import numba

    seen, threads = [], []

    def on_progress(event: RunEvent):
        seen.append(event.kind)
        if event.kind == "step":
            threads.append(numba.get_num_threads())

    before = numba.get_num_threads()
    spec = spec_from_options({**TINY, "epochs": 2, "out": str(tmp_path / "a"), "threads": 1})
    result = execute(spec, on_progress=on_progress)
    assert numba.get_num_threads() == before and set(threads) == {1}   # set for the run, restored after
    assert seen[:4] == ["loading", "planned", "compiling", "training"] and seen[-1] == "finished"
    assert seen.count("step") == 4 and seen.count("epoch") == 2
    out = tmp_path / "a"
    assert sorted(p.name for p in out.iterdir()) == ["best.h5", "config.json", "curves.png", "history.json", "last.h5"]
    assert result.stopped == "done" and result.iterations == 4 and result.epochs == 2.0
    assert result.run_dir == str(out) and result.history == json.loads((out / "history.json").read_text())
    assert result.best_val_acc == max(result.history["val_acc"])
    assert result.final_train_acc == result.history["train_acc"][-1]

    # config.json's run record is the spec without its folder: executing it again gives the same run
    record = json.loads((out / "config.json").read_text())["run"]
    again = execute(RunSpec.from_dict({**record, "out": str(tmp_path / "b")}))
    a, b = _params(out / "last.h5"), _params(tmp_path / "b" / "last.h5")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert again.history["loss"] == result.history["loss"]


def test_history_round_trip_and_bad_histories():
    h = History()
    h.loss += [2.0, 1.5]
    h.add_check(1.0, 2, 0.1, 1e-3, 0.5, 0.25)
    d = h.to_dict()
    assert d == {"loss": [2.0, 1.5], "epoch": [1.0], "iteration": [2], "time": [0.1], "lr": [1e-3],
                 "train_acc": [0.5], "val_acc": [0.25]}
    assert History.from_dict(d) == h and type(History.from_dict(d).iteration[0]) is int
    with pytest.raises(ValueError, match="history has no val_acc list"):
        History.from_dict({k: v for k, v in d.items() if k != "val_acc"})
    with pytest.raises(ValueError, match=r"history\['loss'\] must be a list of numbers"):
        History.from_dict({**d, "loss": ["a"]})
    with pytest.raises(ValueError, match="differ in length"):
        History.from_dict({**d, "lr": []})


def test_checkpoint_from_before_the_history_structure_loads_and_resumes(tmp_path):
    """tests/fixtures/checkpoint_v1_last.h5 was written by `numbaconv train` at commit
    35239cc (one epoch of the TINY run above, seven parallel history lists in the Solver)."""
    from numbaconv.checkpoint import load_checkpoint

    ck_path = tmp_path / "old" / "last.h5"
    ck_path.parent.mkdir()
    shutil.copy(FIXTURES / "checkpoint_v1_last.h5", ck_path)
    ck = load_checkpoint(ck_path)
    old = History.from_dict(ck.history)
    assert old.epoch == [1.0] and old.iteration == [2] and len(old.loss) == 2
    assert ck.solver_state["settings"]["iteration"] == 2

    result = execute(RunSpec.from_dict({"out": str(tmp_path / "old"), "resume": str(ck_path), "epochs": 2}))
    assert result.iterations == 4 and result.history["epoch"] == [1.0, 2.0]
    assert result.history["loss"][:2] == old.loss and result.history["val_acc"][:1] == old.val_acc


def test_cli_choices_and_recipe_help_come_from_the_registries():
    from numbaconv.optim import UPDATE_RULES
    from numbaconv.recipe import RECIPES, describe_recipe
    from numbaconv_cli.choices import Optimizer, Recipe
    from numbaconv_cli.commands.train import RECIPE_HELP

    assert [o.value for o in Optimizer] == list(UPDATE_RULES) and "sgd_nesterov" in UPDATE_RULES
    assert [r.value for r in Recipe] == list(RECIPES)
    assert all(describe_recipe(name) in RECIPE_HELP for name in RECIPES)
    # training shifts are named from the entry's padding (the fast recipe's 1 pixel; none without
    # padding), test-time shifts from tta_shift
    fast = RECIPES["fast"]
    assert fast["pad"] == 1 and fast["model"]["tta_shift"] == 1
    assert "augmentation: random flips and 1-pixel shifts, test-time: mirror and 1-pixel shifts;" in describe_recipe("fast")
    assert "augmentation: random flips, test-time: mirror and 1-pixel shifts;" in describe_recipe({**fast, "pad": 0})


def test_epoch_sampling_is_recorded_and_resumed(tmp_path):
    # --sampling epochs reaches the Solver, config.json and the checkpoint: a run stopped after one
    # epoch and resumed to two ends with the weights of one that ran two.
    spec = {**TINY, "sampling": "epochs"}
    whole = execute(spec_from_options({**spec, "out": str(tmp_path / "whole"), "epochs": 2}))
    config = json.loads((Path(whole.run_dir) / "config.json").read_text())
    assert config["run"]["sampling"] == config["solver"]["sampling"] == "epochs"
    half = execute(spec_from_options({**spec, "out": str(tmp_path / "half"), "epochs": 1}))
    resumed = execute(RunSpec.from_dict({"out": str(tmp_path / "half"), "resume": str(Path(half.run_dir) / "last.h5"),
                                         "epochs": 2}))
    assert json.loads((Path(resumed.run_dir) / "config.json").read_text())["solver"]["sampling"] == "epochs"
    a, b = _params(Path(whole.run_dir) / "last.h5"), _params(Path(resumed.run_dir) / "last.h5")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    other = execute(spec_from_options({**TINY, "out": str(tmp_path / "other"), "epochs": 2}))   # with replacement
    c = _params(Path(other.run_dir) / "last.h5")
    assert any(not np.array_equal(a[k], c[k]) for k in a)


def test_resume_keeps_the_checkpoints_backend_unless_one_is_given(tmp_path):
    # A run trained on one backend resumes on it by default (a cuda run must not move to the
    # cpu silently); --backend moves it.
    small = {**TINY, "filters": "2", "pools": "0", "num-train": 10, "num-val": 5, "batch-size": 10}  # reference is slow
    first = execute(spec_from_options({**small, "backend": "reference", "out": str(tmp_path / "a"), "epochs": 1}))
    last = Path(first.run_dir) / "last.h5"
    kept = execute(RunSpec.from_dict({"out": str(tmp_path / "a"), "resume": str(last), "epochs": 2}))
    assert json.loads((Path(kept.run_dir) / "config.json").read_text())["run"]["backend"] == "reference"
    moved = execute(RunSpec.from_dict({"out": str(tmp_path / "a"), "resume": str(last), "epochs": 2,
                                       "backend": "cpu", "force": True}))
    assert json.loads((Path(moved.run_dir) / "config.json").read_text())["run"]["backend"] == "cpu"


@pytest.mark.parametrize("recipe", ["fast", "long"])
def test_a_recipe_brings_its_validation_size_and_budget(recipe):
    # `train --recipe long` is judged on the recipe's 5,000 validation images and, with neither
    # --epochs nor --time-budget, runs for the recipe's own budget; both recorded in the run.
    from numbaconv.recipe import RECIPES
    from numbaconv.run import make_plan

    plan = make_plan(spec_from_options({"out": "unused", "recipe": recipe, "num-train": 300}))
    assert plan.time_budget == RECIPES[recipe]["time_budget"] and plan.epochs is None
    assert plan.dataset.X_val.shape[0] == RECIPES[recipe]["num_val"]
    assert plan.run["num_val"] == RECIPES[recipe]["num_val"] and plan.run["time_budget"] == plan.time_budget
    given = make_plan(spec_from_options({"out": "unused", "recipe": recipe, "num-train": 300, "num-val": 50,
                                         "epochs": 1}))
    assert given.time_budget is None and given.epochs == 1 and given.dataset.X_val.shape[0] == 50
