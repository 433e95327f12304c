"""numbaconv.plots and the `plot` / `visualize-filters` commands: PNGs of the
expected pixel size, filter tiles normalised per filter, no pyplot state."""
import json
import sys

import numpy as np
import pytest
from matplotlib.image import imread
from typer.testing import CliRunner

from numbaconv.checkpoint import save_checkpoint
from numbaconv.models import DeepConvNet
from numbaconv.plots import DPI, filter_grid, plot_filters, plot_history
from numbaconv_cli.main import app

runner = CliRunner()
HISTORY = {"loss": [2.3, 2.1, 1.9, 1.7], "epoch": [1, 2], "iteration": [2, 4], "time": [0.1, 0.2],
           "lr": [1e-3, 1e-3], "train_acc": [0.3, 0.5], "val_acc": [0.2, 0.4]}


def _shape(path):
    return imread(str(path)).shape


def test_plot_history_size_and_no_pyplot(tmp_path):
    out = plot_history(HISTORY, tmp_path / "c.png", size=(4, 3))
    assert _shape(out)[:2] == (3 * DPI, 4 * DPI)
    # Figures are drawn on their own Agg canvas: pyplot is never imported here.
    assert "matplotlib.pyplot" not in sys.modules or not __import__("matplotlib.pyplot").pyplot.get_fignums()


def test_plot_history_names_missing_key(tmp_path):
    with pytest.raises(ValueError, match="val_acc"):
        plot_history({k: v for k, v in HISTORY.items() if k != "val_acc"}, tmp_path / "c.png")


def test_filter_grid_normalises_each_filter():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 3, 3, 3))
    w[1] *= 100.0          # a filter of another scale still spans [0, 1]
    w[4] = 7.0             # a constant filter shows as black, not NaN
    g = filter_grid(w, pad=1)
    assert g.shape == (2 * 4 + 1, 3 * 4 + 1, 3)
    tile = lambda i: g[1 + (i // 3) * 4:1 + (i // 3) * 4 + 3, 1 + (i % 3) * 4:1 + (i % 3) * 4 + 3]  # noqa: E731
    for i in range(4):
        assert tile(i).min() == 0.0 and tile(i).max() == 1.0
    np.testing.assert_allclose(tile(1), (w[1].transpose(1, 2, 0) - w[1].min()) / np.ptp(w[1]))
    assert np.all(tile(4) == 0.0)
    with pytest.raises(ValueError, match=r"\(F, C, K, K\)"):
        filter_grid(np.zeros((3, 3, 3)))


def test_visualize_filters_cli(tmp_path):
    model = DeepConvNet(num_filters=[6, 4], max_pools=[0], weight_scale="kaiming", seed=0)
    save_checkpoint(tmp_path / "m.h5", model, which="model")
    out = tmp_path / "filters.png"
    r = runner.invoke(app, ["visualize-filters", str(tmp_path / "m.h5"), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "6x3x3x3" in r.output
    assert _shape(out)[:2] == (6 * DPI, 6 * DPI)
    r = runner.invoke(app, ["visualize-filters", str(tmp_path / "missing.h5")])
    assert r.exit_code == 2


def test_plot_cli(tmp_path):
    (tmp_path / "history.json").write_text(json.dumps(HISTORY))
    r = runner.invoke(app, ["plot", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert _shape(tmp_path / "curves.png")[:2] == (6 * DPI, 8 * DPI)
    assert "0.4000" in r.output        # best val acc of the history
    r = runner.invoke(app, ["plot", str(tmp_path / "nowhere")])
    assert r.exit_code == 2 and "history.json" in r.output
