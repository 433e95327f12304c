"""The command line, driven in-process with typer's CliRunner."""
import pytest
from typer.testing import CliRunner

from numbaconv.gradcheck import CheckResult
from numbaconv_cli.main import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    """Tables render at 200 columns so assertions do not depend on wrapping."""
    from numbaconv_cli import console as c

    monkeypatch.setattr(c.console, "width", 200)
    monkeypatch.setattr(c.err_console, "width", 200)


def test_help_lists_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "gradcheck" in result.output


def test_gradcheck_reference_passes():
    result = runner.invoke(app, ["gradcheck", "--backend", "reference", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "Conv_BatchNorm_ReLU_Pool" in result.output
    assert "FAIL" not in result.output
    assert "gradient checks passed" in result.output


def test_gradcheck_exits_1_when_a_check_fails(monkeypatch):
    import numbaconv.gradcheck as gc

    monkeypatch.setattr(gc, "check_backend", lambda *a: [CheckResult("Conv", "dx", 1e-3, 1e-8),
                                                          CheckResult("ReLU", "dx", 1e-12, 1e-8)])
    result = runner.invoke(app, ["gradcheck"])
    assert result.exit_code == 1
    assert "FAIL" in result.output and "1 of 2 gradient checks failed" in result.output


@pytest.mark.parametrize("args", [["gradcheck", "--backend", "gpu"], ["gradcheck", "--dtype", "float16"]])
def test_gradcheck_rejects_bad_options(args):
    result = runner.invoke(app, args)
    assert result.exit_code == 2


def _one_line_error(result, code=2):
    """The command failed with ``code`` and one `error:` line, no traceback."""
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


def test_version_matches_the_installed_package():
    from importlib.metadata import version

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"numbaconv {version('numbaconv')}\n"


def test_gradcheck_negative_seed_is_one_line():
    line = _one_line_error(runner.invoke(app, ["gradcheck", "--seed", "-1"]))
    assert line == "error: seed must be an integer >= 0, got -1"


@pytest.fixture
def no_gpu(monkeypatch):
    """The cuda backend as on a machine with neither a GPU nor NUMBA_ENABLE_CUDASIM=1."""
    from numbaconv import get_backend

    nb = get_backend("cuda")   # the simulator (conftest), imported before it is switched off
    monkeypatch.setattr(nb, "SIMULATOR", False)
    monkeypatch.setattr(nb, "is_available", lambda: False)


NO_GPU_LINE = ("error: backend 'cuda' needs a CUDA GPU and none was found; use --backend cpu (or set "
               "NUMBA_ENABLE_CUDASIM=1 to run the cuda kernels in the slow simulator)")


def test_gradcheck_cuda_without_gpu_is_one_line(no_gpu):
    assert _one_line_error(runner.invoke(app, ["gradcheck", "--backend", "cuda"])) == NO_GPU_LINE


def _tiny_checkpoint(path, **edit):
    import numpy as np

    from numbaconv.checkpoint import save_checkpoint
    from numbaconv.models import DeepConvNet

    m = DeepConvNet(input_dims=(3, 32, 32), num_filters=[2], max_pools=[0], batchnorm=True, backend="reference",
                    seed=0)
    for key, value in edit.items():   # a weight, or the running variance, set to one value
        arrays = m.bn_params[0] if key == "running_var" else m.params
        arrays[key] = np.full_like(arrays[key], value)
    save_checkpoint(path, m, which="model", data_info={"name": "synthetic"})
    return path


def test_evaluate_cuda_without_gpu_is_one_line(no_gpu, tmp_path):
    ck = _tiny_checkpoint(tmp_path / "m.h5")
    before = sorted(tmp_path.iterdir())
    line = _one_line_error(runner.invoke(app, ["evaluate", str(ck), "--backend", "cuda"]))
    assert line == NO_GPU_LINE
    assert sorted(tmp_path.iterdir()) == before   # nothing left behind


@pytest.mark.parametrize("edit, message", [
    ({"W1": float("nan")}, "params/W1 holds 54 NaN or infinite values"),
    ({"running_var": -1.0}, "bn/0/running_var holds 2 negative variances"),
])
def test_evaluate_refuses_a_damaged_checkpoint(tmp_path, edit, message):
    ck = _tiny_checkpoint(tmp_path / "m.h5", **edit)
    line = _one_line_error(runner.invoke(app, ["evaluate", str(ck)]))
    assert line == f"error: checkpoint {ck} is damaged: {message}; use another checkpoint or train again"


# ------------------------------------------------------------- visualize-filters
def test_stem_projection_is_the_composition_of_the_two_convs():
    import numpy as np

    from numbaconv import get_backend
    from numbaconv.models import FastNet
    from numbaconv.plots import input_filters

    Conv = get_backend("reference").Conv
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 12, 12))
    for stride in (1, 2):
        m = FastNet(input_dims=(3, 12, 12), stem=0, widths=[4], whiten=5, whiten_stride=stride, dtype=np.float64,
                    backend="reference", seed=1)
        m.fit_whitening(rng.standard_normal((20, 3, 12, 12)))
        (_, stem), (label, eff) = input_filters(m)
        assert stem.shape == (5, 3, 2, 2)
        zero_b = np.zeros(5)
        h, _ = Conv.forward(x, m.params["whiten_W"], zero_b, m.whiten_conv_param)
        y, _ = Conv.forward(h, m.params["W1"], np.zeros(4), {"stride": 1, "pad": 1})
        if stride == 2:   # 3x3 taps of 2x2 windows: 6x6 pixels at stride 2; compare away from the padded border
            assert eff.shape == (4, 3, 6, 6) and "6x6 pixels" in label
            direct, _ = Conv.forward(x, eff, np.zeros(4), {"stride": 2, "pad": 0})
            np.testing.assert_allclose(direct, y[:, :, 1:-1, 1:-1], rtol=1e-10, atol=1e-10)
        else:             # a 3x3 conv of 2x2 windows: 4x4 pixels, reaching 2 up/left and 1 down/right
            assert eff.shape == (4, 3, 4, 4) and "4x4 pixels" in label
            direct, _ = Conv.forward(x[:, :, :, :], eff, np.zeros(4), {"stride": 1, "pad": 0})
            np.testing.assert_allclose(direct, y[:, :, 2:-1, 2:-1], rtol=1e-10, atol=1e-10)


def test_visualize_filters_of_a_whitened_net_writes_beside_the_checkpoint(tmp_path, monkeypatch):
    import numpy as np

    from numbaconv.checkpoint import save_checkpoint
    from numbaconv.models import FastNet

    m = FastNet(input_dims=(3, 8, 8), stem=0, widths=[4], whiten=12, whiten_stride=2, backend="reference", seed=0)
    m.fit_whitening(np.random.default_rng(0).standard_normal((20, 3, 8, 8)))
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint(run / "best.h5", m, which="model")
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    result = runner.invoke(app, ["visualize-filters", str(run / "best.h5")])
    assert result.exit_code == 0, result.output
    assert "whitening stem" in result.output and "12x3x2x2" in result.output
    assert "first trained conv through the stem" in result.output and "4x3x6x6" in result.output
    assert sorted(p.name for p in run.iterdir()) == ["best-filters.png", "best.h5"]
    assert not list(cwd.iterdir())   # nothing in the current folder
    from PIL import Image

    assert Image.open(run / "best-filters.png").size == (1200, 600)   # two 6-inch panels at 100 dpi


def test_visualize_filters_unwritable_output_is_one_line(tmp_path):
    ck = _tiny_checkpoint(tmp_path / "m.h5")
    (tmp_path / "file").write_text("x")
    line = _one_line_error(runner.invoke(app, ["visualize-filters", str(ck), "-o", str(tmp_path / "file" / "f.png")]))
    assert line.startswith(f"error: cannot visualize {ck}: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "m.h5"]


def test_visualize_filters_of_a_cuda_checkpoint_needs_no_gpu(tmp_path, no_gpu):
    from numbaconv.checkpoint import save_checkpoint
    from numbaconv.models import DeepConvNet

    save_checkpoint(tmp_path / "gpu.h5", DeepConvNet(num_filters=[5], max_pools=[0], backend="reference", seed=0),
                    which="model")
    _h5_edit(tmp_path / "gpu.h5", lambda f: _set_json(f, "model_config", backend="cuda"))   # trained on a GPU
    result = runner.invoke(app, ["visualize-filters", str(tmp_path / "gpu.h5")])
    assert result.exit_code == 0, result.output
    assert "5x3x3x3" in result.output and (tmp_path / "gpu-filters.png").is_file()


def _h5_edit(path, edit):
    import h5py

    with h5py.File(path, "r+") as f:
        edit(f)


def _set_json(f, name, **changes):
    import json

    value = {**json.loads(f[name].asstr()[()]), **changes}
    del f[name]
    f[name] = json.dumps(value)


@pytest.fixture
def long_lines(monkeypatch):
    """Error lines that name a long tmp path and a whole config stay on one terminal line."""
    from numbaconv_cli import console as c

    monkeypatch.setattr(c.err_console, "width", 1000)


@pytest.mark.parametrize("edit, message", [
    (lambda f: (f["params"].pop("W1"), f["params"].create_dataset("W1", data="0.5")),
     "params/W1 holds a string, not numbers"),
    # stored: conv 3 -> 2 (54 + 3 * 2) and linear 2 * 16 * 16 -> 10 (5,130); asked: conv 3 -> 2e5
    # (5.4e6 + 6e5) and linear 2e5 * 16 * 16 -> 10 (512,000,010)
    (lambda f: _set_json(f, "model_config", num_filters=[200000]),
     "asks for 518,000,010 weights but params holds 5,190: the config does not belong to these weights"),
])
def test_evaluate_refuses_a_malformed_checkpoint_in_one_line(tmp_path, long_lines, edit, message):
    ck = _tiny_checkpoint(tmp_path / "m.h5")
    _h5_edit(ck, edit)
    line = _one_line_error(runner.invoke(app, ["evaluate", str(ck)]))
    assert line.startswith(f"error: checkpoint {ck}") and message in line
    assert [p.name for p in tmp_path.iterdir()] == ["m.h5"]


def test_resume_refuses_missing_optimizer_state_and_leaves_the_run_alone(tmp_path, long_lines):
    import numpy as np

    from numbaconv.models import DeepConvNet
    from numbaconv.solver import Solver

    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((12, 3, 4, 4)).astype(np.float32), rng.integers(0, 10, 12)
    s = Solver(DeepConvNet(input_dims=(3, 4, 4), num_filters=[2], max_pools=[0], backend="reference", seed=0),
               {"X_train": X[:8], "y_train": y[:8], "X_val": X[8:], "y_val": y[8:]}, update_rule="adam",
               batch_size=4, num_epochs=1, seed=0, verbose=False)
    s.train()
    run = tmp_path / "run"
    run.mkdir()
    s.save_checkpoint(run / "last.h5", "last", data_info={"name": "synthetic"})
    _h5_edit(run / "last.h5", lambda f: (f["solver/optim/b2"].pop("v"), f["solver/optim/b2"].pop("t")))
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    line = _one_line_error(runner.invoke(app, ["train", "--resume", str(run / "last.h5"), "--out", str(run),
                                               "--epochs", "2"]))
    assert line == (f"error: checkpoint {run / 'last.h5'} is damaged: solver/optim/b2 has no t, v after 2 adam steps "
                    "(resuming would restart them); use another checkpoint or train again")
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before   # nothing written, nothing left behind


@pytest.mark.parametrize("history, output, message", [
    ({"loss": "2.3, 2.1"}, None, "history has no epoch, iteration, time, lr, train_acc, val_acc list"),
    ({"loss": [2.3, "x"], "epoch": [], "iteration": [], "time": [], "lr": [], "train_acc": [], "val_acc": []},
     None, "history['loss'] must be a list of numbers"),
    ({"loss": [2.3], "epoch": [], "iteration": [], "time": [], "lr": [], "train_acc": [], "val_acc": []},
     "history.json/curves.png", "File exists"),   # the output folder is a file
])
def test_plot_bad_history_or_output_is_one_line(tmp_path, long_lines, history, output, message):
    import json

    (tmp_path / "history.json").write_text(json.dumps(history))
    args = ["plot", str(tmp_path)] + (["-o", str(tmp_path / output)] if output else [])
    line = _one_line_error(runner.invoke(app, args))
    assert line.startswith(f"error: cannot plot {tmp_path / 'history.json'}: ") and message in line
    assert [p.name for p in tmp_path.iterdir()] == ["history.json"]


# ---------------------------------------------------------------- 80-column tables
def _render(renderable, width):
    from rich.console import Console

    c = Console(width=width, record=True, file=open("/dev/null", "w"))
    c.print(renderable)
    return c.export_text()


def _words_whole(text, words):
    """Every word of ``words`` appears unbroken in ``text`` (rich folds a word it cannot fit)."""
    return all(w in text.split() for w in words)


def _bench_rows():
    from numbaconv.bench import SHAPE_SETS

    ops = ["conv forward", "conv forward+backward", "max pool forward+backward", "spatial BN forward+backward",
           "spatial BN backward (graph)", "spatial BN backward_alt (closed form)"]
    return [{"op": op, "shape": s.label, "ms": 12345.678, "reference_ms": 123456.7, "speedup": 123456.0,
             "gflops": 1234.5, "torch_ms": 10.2, "torch_ratio": 12.21, "cpu_ms": 1000.0, "speedup_vs_cpu": 35.0}
            for shapes in SHAPE_SETS.values() for s in shapes for op in ops]


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_bench_tables_fit_80_columns_and_use_more(device):
    from numbaconv_cli.commands.bench import _tables

    rows = _bench_rows()
    narrow = "".join(_render(t, 80) for t in _tables(rows, device, 80))
    assert max(map(len, narrow.splitlines())) <= 80
    numbers = ["12345.68", "123456.7", "123,456x", "1234.5", "10.20", "12.21x"]
    assert _words_whole(narrow, numbers + [r["shape"].split()[-1] for r in rows] + ["fwd+bwd", "bwd_alt"])
    wide = "".join(_render(t, 160) for t in _tables(rows, device, 160))
    assert "vs torch" in wide and "spatial BN bwd_alt (closed form)" in wide   # one line each when there is room


def test_evaluate_and_predict_tables_fit_80_columns(tmp_path, monkeypatch):
    import numpy as np

    from numbaconv.checkpoint import save_checkpoint
    from numbaconv.data.synthetic import CLASS_NAMES
    from numbaconv.models import DeepConvNet
    from numbaconv_cli import console as c

    deep = tmp_path / ("a-rather-long-folder-name-" * 3) / "runs" / "2026-11-30" / "best.h5"
    deep.parent.mkdir(parents=True)
    model = DeepConvNet(num_filters=[4], max_pools=[0], weight_scale="kaiming", seed=0)
    save_checkpoint(deep, model, which="model", data_info={"name": "synthetic", "num_val": 20, "num_train": 40,
                                                          "mean": [0.5] * 3, "std": None, "class_names": CLASS_NAMES})
    np.save(tmp_path / "x.npy", np.zeros((2, 32, 32, 3), np.uint8))
    for width in (80, 160):
        monkeypatch.setattr(c.console, "width", width)
        for args in (["evaluate", str(deep), "--split", "val"], ["predict", str(deep), str(tmp_path / "x.npy")]):
            r = runner.invoke(app, args)
            assert r.exit_code == 0, r.output
            lines = r.output.splitlines()
            assert max(map(len, lines)) <= width
            # paths are shortened from the left, whole file names kept; class names never folded
            assert "best.h5" in r.output and (args[0] == "evaluate" or "x.npy[1]" in r.output)
            col = 1 if args[0] == "evaluate" else 2   # the class column: every cell a whole class name
            cells = [line.split("│")[col].strip() for line in lines if line.count("│") > col]
            assert cells and set(cells) <= set(CLASS_NAMES) | {"all", ""}, cells
        # the room is used: more of the path at 160 columns than at 80
        assert ("a-rather-long-folder-name-" in r.output) == (width == 160)


def test_error_lines_are_plain_text_on_one_line(capsys):
    # A message with rich markup-like brackets (a TOML table name, a path) prints as written,
    # on one line however narrow the console.
    import typer

    from numbaconv_cli.console import err_console, fail

    width = err_console.width
    err_console.width = 20
    try:
        exit_ = fail("bad key [grid] lr in /tmp/a[1]/spec.toml: give a list", 2)
    finally:
        err_console.width = width
    assert isinstance(exit_, typer.Exit) and exit_.exit_code == 2
    assert capsys.readouterr().err == "error: bad key [grid] lr in /tmp/a[1]/spec.toml: give a list\n"


def test_stem_projection_with_negated_stem_is_its_linear_part():
    # whiten_neg: W+ relu(s) + W- relu(-s) has linear part (W+ - W-) s / 2; the panel draws
    # (W+ - W-) through the stem's k filters, and says it leaves the ReLU out.
    import numpy as np

    from numbaconv.models import FastNet
    from numbaconv.plots import _through_stem, input_filters

    rng = np.random.default_rng(0)
    m = FastNet(input_dims=(3, 12, 12), stem=0, widths=[4], whiten=3, whiten_stride=2, whiten_neg=True,
                dtype=np.float64, backend="reference", seed=1)
    m.fit_whitening(rng.standard_normal((20, 3, 12, 12)))
    (_, stem), (label, eff) = input_filters(m)
    assert stem.shape == (6, 3, 2, 2) and "linear part" in label
    W, S = m.params["W1"], m.params["whiten_W"]
    np.testing.assert_allclose(S[3:], -S[:3])
    np.testing.assert_allclose(eff, _through_stem(W[:, :3] - W[:, 3:], S[:3], 2), rtol=1e-12, atol=1e-12)
