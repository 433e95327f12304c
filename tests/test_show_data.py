"""`numbaconv show-data`: the report's Figures 1 and 2, and the edge maps behind Figure 2."""
import numpy as np
import pytest
from matplotlib.image import imread
from typer.testing import CliRunner

from numbaconv.plots import LUMA, grayscale_and_edges, plot_examples
from numbaconv_cli.main import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    from numbaconv_cli import console as c

    monkeypatch.setattr(c.console, "width", 200)
    monkeypatch.setattr(c.err_console, "width", 200)


def test_grayscale_and_sobel_edges_computed_by_the_conv_layer():
    # left half black, right half white: the luma is 0 | 1, and the Sobel x response on the two
    # columns beside the boundary is 1 + 2 + 1 = 4 (inside the image; the border sees the zero pad)
    x = np.zeros((1, 3, 8, 8), np.uint8)
    x[:, :, :, 4:] = 255
    x[0, 0, 0, 0] = 100                     # one red pixel: its luma is 100 * 0.299 / 255
    gray, edges = grayscale_and_edges(x, backend="reference")
    assert gray.shape == edges.shape == (1, 8, 8)
    np.testing.assert_allclose(gray[0, 1:, 4:], 1.0, rtol=1e-6)
    np.testing.assert_allclose(gray[0, 0, 0], 100 * LUMA[0] / 255, rtol=1e-6)
    np.testing.assert_allclose(edges[0, 2:6, 3:5], 4.0, rtol=1e-6)
    np.testing.assert_allclose(edges[0, 2:6, 0:2], 0.0, atol=1e-6)
    _, edges_cpu = grayscale_and_edges(x, backend="cpu")
    np.testing.assert_allclose(edges_cpu, edges, rtol=1e-5, atol=1e-6)


def test_show_data_draws_figure_1_and_figure_2(tmp_path):
    r = runner.invoke(app, ["show-data", "synthetic", "-o", str(tmp_path / "fig1.png"), "--per-class", "4"])
    assert r.exit_code == 0, r.output
    h, w = imread(str(tmp_path / "fig1.png")).shape[:2]
    assert (h, w) == (850, 480)   # 100 dpi x (0.5 + 0.8 x 10 class rows, 1.6 + 0.8 x 4 images) inches
    r = runner.invoke(app, ["show-data", "synthetic", "-o", str(tmp_path / "fig2.png"), "--features"])
    assert r.exit_code == 0, r.output
    assert imread(str(tmp_path / "fig2.png")).shape[:2] == (420, 1300)   # 3 rows x one image per class


def test_show_data_bad_input_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    r = runner.invoke(app, ["show-data", "synthetic", "-o", str(tmp_path / "file" / "x.png")])
    assert r.exit_code == 1 and r.output.startswith("error: cannot write") and "Traceback" not in r.output
    r = runner.invoke(app, ["show-data", str(tmp_path / "nope.h5"), "-o", str(tmp_path / "x.png")])
    assert r.exit_code == 2 and "unknown dataset" in r.output and not (tmp_path / "x.png").exists()


def test_plot_examples_leaves_gaps_for_short_classes(tmp_path):
    x = np.zeros((3, 3, 4, 4), np.uint8)
    out = plot_examples(x, np.array([0, 0, 1]), ["a", "b", "c"], tmp_path / "e.png", per_class=2)
    assert imread(str(out)).shape[:2] == (290, 320)
    with pytest.raises(ValueError, match="per_class"):
        plot_examples(x, np.zeros(3), ["a"], tmp_path / "f.png", per_class=0)
