"""benchmarks/recipe_variants.py: a variant is the recipe's table entry with overrides, trained
for a fixed number of steps with the schedule over those steps."""
import numpy as np
import pytest

from conftest import load_benchmark
from numbaconv.recipe import RECIPES


def _module():
    return load_benchmark("recipe_variants")


def test_variant_overrides_the_table_and_names_unknown_keys():
    rv = _module()
    v = rv.variant("fast", {"batch_size": 64, "model.widths": [4, 4, 4]})
    assert v["batch_size"] == 64 and v["model"]["widths"] == [4, 4, 4]
    assert RECIPES["fast"]["model"]["widths"] != [4, 4, 4]   # the table itself is untouched
    with pytest.raises(ValueError, match="'model.width'"):
        rv.variant("fast", {"model.width": 3})
    with pytest.raises(ValueError, match="'peak'"):
        rv.variant("fast", {"peak": 0.1})


def test_build_trains_the_given_steps_over_the_schedule():
    rv = _module()
    rng = np.random.default_rng(0)
    data = {"X_train": rng.standard_normal((40, 3, 16, 16)).astype(np.float32), "y_train": rng.integers(0, 3, 40),
            "X_val": rng.standard_normal((10, 3, 16, 16)).astype(np.float32), "y_val": rng.integers(0, 3, 10)}
    entry = rv.variant("fast", {"batch_size": 8, "model.widths": [4, 4, 4]})
    _, solver = rv.build(entry, data, steps=7, seed=0)   # 7 steps: not a whole number of 5-step epochs
    solver.train()
    assert solver.iteration == 7 and "_variant" not in RECIPES
    # the last step's rate is the schedule's at 6/7 of the steps: the schedule ran over 7 steps, not 2 epochs
    assert solver.learning_rate == pytest.approx(entry["peak_lr"] * solver.schedule.factor(6 / 7))
