"""`numbaconv train --recipe fast`: a run folder with the recipe's model and optimizer, resumable."""
import json

import pytest
from typer.testing import CliRunner

from numbaconv_cli.main import app

runner = CliRunner()
BASE = ["train", "--recipe", "fast", "--dataset", "synthetic", "--num-train", "40", "--num-val", "20", "--seed", "1"]


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    from numbaconv_cli import console as c

    monkeypatch.setattr(c.console, "width", 200)
    monkeypatch.setattr(c.err_console, "width", 200)


def test_recipe_fast_trains_and_resumes(tmp_path):
    out = tmp_path / "run"
    r = runner.invoke(app, [*BASE, "--epochs", "1", "--out", str(out)])
    assert r.exit_code == 0, r.output
    from numbaconv.recipe import RECIPES

    fast = RECIPES["fast"]   # the summary line is made from the recipe table
    widths = ",".join(str(w) for w in fast["model"]["widths"])
    assert (f"training fast net of recipe fast (widths {widths}, float32) with sgd_nesterov, scheduled lr "
            f"(peak {fast['peak_lr']:g}), batch {fast['batch_size']}") in " ".join(r.output.split())
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["kind"] == "fast" and config["model"]["smoothing"] == fast["model"]["smoothing"]
    assert config["run"]["recipe"] == "fast" and config["solver"]["update_rule"] == "sgd_nesterov"
    assert config["solver"]["batch_size"] == fast["batch_size"] > 40
    assert config["solver"]["sampling"] == fast["sampling"]
    history = json.loads((out / "history.json").read_text())
    assert history["epoch"] == [1.0] and len(history["loss"]) == 1   # 40 images < the batch: one step an epoch

    r = runner.invoke(app, ["train", "--resume", str(out / "last.h5"), "--epochs", "2", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "history.json").read_text())["epoch"] == [1.0, 2.0]

    r = runner.invoke(app, ["evaluate", str(out / "best.h5"), "--split", "val", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["accuracy"] == pytest.approx(max(json.loads((out / "history.json").read_text())["val_acc"]))


@pytest.mark.parametrize("extra", [["--model", "deep"], ["--lr", "0.1"], ["--batch-size", "8"]])
def test_recipe_refuses_options_it_sets(tmp_path, extra):
    r = runner.invoke(app, [*BASE, "--epochs", "1", "--out", str(tmp_path / "r"), *extra])
    assert r.exit_code == 2
    assert "the recipe sets them" in r.output
