"""Damaged and crafted checkpoints are refused with one ValueError that names the
entry, before anything large is allocated; the cuda backend is refused where it is
chosen when there is neither a GPU nor the simulator; an unwritable package folder
moves numba's cache instead of failing."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest

import numbaconv
from numbaconv.backends import BackendUnavailableError, get_backend
from numbaconv.checkpoint import MAX_CHECKPOINT_BYTES, load_checkpoint
from numbaconv.models import param_count
from numbaconv.models import DeepConvNet, FastNet, ThreeLayerConvNet
from numbaconv.solver import Solver

REPO = Path(__file__).resolve().parents[1]
TINY = dict(input_dims=(3, 4, 4), num_filters=[3, 4], max_pools=[0, 1], batchnorm=True,
            weight_scale="kaiming", backend="reference", seed=0)


@pytest.fixture(scope="module")
def last_file(tmp_path_factory):
    """A resumable checkpoint of 2 epochs of adam (8 steps) on 16 random images."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((24, 3, 4, 4)).astype(np.float32)
    y = rng.integers(0, 10, 24)
    s = Solver(DeepConvNet(**TINY), {"X_train": X[:16], "y_train": y[:16], "X_val": X[16:], "y_val": y[16:]},
               update_rule="adam", optim_config={"learning_rate": 1e-2}, batch_size=4, num_epochs=2, seed=0,
               verbose=False)
    s.train()
    path = tmp_path_factory.mktemp("ck") / "last.h5"
    s.save_checkpoint(path, "last", data_info={"name": "synthetic"})
    return path


@pytest.fixture
def ck(tmp_path, last_file):
    """A fresh copy of the checkpoint to tamper with."""
    path = tmp_path / "last.h5"
    shutil.copy(last_file, path)
    return path


def _edit(path, edit):
    with h5py.File(path, "r+") as f:
        edit(f)


def _replace(f, name, data, **kw):
    del f[name]
    f.create_dataset(name, data=data, **kw)


def _config(f, **changes):
    config = json.loads(f["model_config"].asstr()[()])
    _replace(f, "model_config", json.dumps({**config, **changes}))


def _settings(f, drop=(), **changes):
    s = json.loads(f["solver/settings"].asstr()[()])
    s = {k: v for k, v in {**s, **changes}.items() if k not in drop}
    _replace(f, "solver/settings", json.dumps(s))


def _nan_first(f, name):
    a = f[name][()]
    a.flat[0] = np.nan
    f[name][...] = a


def _negative_var(f):
    a = f["bn/0/running_var"][()]
    a[1] = -0.5
    f["bn/0/running_var"][...] = a


CASES = {
    "param as a string": (lambda f: _replace(f, "params/W1", "not numbers"), "params/W1 holds a string, not numbers"),
    "param as a group": (lambda f: (f.__delitem__("params/b1"), f.create_group("params/b1")),
                         "params/b1 is a group where an array belongs"),
    "params as an array": (lambda f: (f.__delitem__("params"), f.create_dataset("params", data=[1.0])),
                           "params is an array where a group belongs"),
    "config a list": (lambda f: _replace(f, "model_config", json.dumps([1, 2])),
                      "model_config must be a JSON object, got list"),
    "config not JSON": (lambda f: _replace(f, "model_config", "{kind: deep"), "model_config is not valid JSON"),
    "config a number": (lambda f: _replace(f, "model_config", 3.0), "model_config must be one JSON string"),
    "config field of the wrong type": (lambda f: _config(f, num_filters="many"),
                                       "its model config cannot be built: num_filters[0] must be a positive integer"),
    "data_info a string": (lambda f: _replace(f, "data_info", json.dumps("cifar10")),
                           "data_info must be a JSON object, got str"),
    "bn groups misnumbered": (lambda f: f.move("bn/1", "bn/7"), "bn must hold groups numbered 0 to 1"),
    "best params missing": (lambda f: f.__delitem__("solver/best/params"), "solver/best/params is missing"),
    "history not numbers": (lambda f: _replace(f, "history/loss", "1, 2, 3"), "history/loss holds a string"),
    "history a scalar": (lambda f: _replace(f, "history/val_acc", 0.5), "history is damaged: "),
    "history list missing": (lambda f: f.__delitem__("history/lr"), "history is damaged: "),
    "settings key missing": (lambda f: _settings(f, drop=("iteration", "rng_state")),
                             "solver/settings has no iteration, rng_state"),
    "settings wrong type": (lambda f: _settings(f, lr_decay="fast"), "lr_decay must be a number in (0, 1], got 'fast'"),
    "settings NaN": (lambda f: _settings(f, train_time=float("nan")),
                     "train_time must be a finite number >= 0, got nan"),
    "settings count": (lambda f: _settings(f, batch_size=0), "batch_size must be a positive integer, got 0"),
    "settings best epoch": (lambda f: _settings(f, best_epoch="2"), "best_epoch must be a number or null, got '2'"),
    "settings sampling": (lambda f: _settings(f, sampling="shuffle"),
                          "sampling must be 'replacement' or 'epochs', got 'shuffle'"),
    "settings shuffle seed": (lambda f: _settings(f, shuffle_seed=-1), "shuffle_seed must be an integer >= 0, got -1"),
    "settings lookahead": (lambda f: _settings(f, lookahead_decay=1.5), "lookahead_decay must be a number in [0, 1)"),
    "data_info name": (lambda f: _replace(f, "data_info", json.dumps({"name": 3})),
                       "data_info name must be a dataset name or file, got 3"),
    "data_info mean": (lambda f: _replace(f, "data_info", json.dumps({"name": "synthetic", "mean": [0.5, 0.5]})),
                       "data_info mean must be a list of 3 finite numbers (one per channel), got [0.5, 0.5]"),
    "data_info std": (lambda f: _replace(f, "data_info", json.dumps({"std": [1, 0, 1]})),
                      "data_info std must be null or a list of 3 positive numbers, got [1, 0, 1]"),
    "data_info num_val": (lambda f: _replace(f, "data_info", json.dumps({"num_val": "all"})),
                          "data_info num_val must be an integer >= 0, got all"),
    "optimizer number an array": (lambda f: _replace(f, "solver/optim/W1/learning_rate",
                                                     np.ones((3, 3, 3, 3), np.float32)),
                                  "solver/optim/W1/learning_rate must be a number, got ndarray"),
    "optimizer number NaN": (lambda f: _replace(f, "solver/optim/W1/beta1", np.nan),
                             "solver/optim/W1/beta1 must be a finite number, got nan"),
    "settings bad rng": (lambda f: _settings(f, rng_state={"bit_generator": "MT19937"}),
                         "rng_state is not a NumPy PCG64 state"),
    "settings unknown rule": (lambda f: _settings(f, update_rule="lion"), "unknown update rule 'lion'"),
    "optimizer state as a string": (lambda f: _replace(f, "solver/optim/W1/m", "zeros"),
                                    "solver/optim/W1/m holds a string, not numbers"),
    "adam state missing": (lambda f: (f.__delitem__("solver/optim/W2/m"), f.__delitem__("solver/optim/W2/t")),
                           "solver/optim/W2 has no m, t after 8 adam steps (resuming would restart them); use another "
                           "checkpoint or train again"),
    "optimizer dtype": (lambda f: _replace(f, "solver/optim/b1/v", np.zeros(3)),
                        "solver/optim/b1/v has dtype float64 but the config says float32"),
    "NaN weight": (lambda f: _nan_first(f, "params/W2"), "params/W2 holds 1 NaN or infinite values"),
    "NaN best weight": (lambda f: _nan_first(f, "solver/best/params/b3"),
                        "solver/best/params/b3 holds 1 NaN or infinite values"),
    "negative running variance": (_negative_var, "bn/0/running_var holds 1 negative variances"),
    "external link": (lambda f: f.__setitem__("params/W9", h5py.ExternalLink("/etc/other.h5", "/x")),
                      "params/W9 is an external link; a numbaconv checkpoint holds no links"),
    "version a string": (lambda f: f.attrs.__setitem__("version", "1"), "has format version '1'"),
    "which unknown": (lambda f: f.attrs.__setitem__("which", "first"), "the 'which' attribute must be one of"),
}


@pytest.mark.parametrize("case", CASES)
def test_damaged_checkpoint_is_one_value_error_naming_the_entry(ck, case):
    edit, message = CASES[case]
    _edit(ck, edit)
    with pytest.raises(ValueError) as e:
        load_checkpoint(ck)
    assert message in str(e.value)
    assert str(e.value).startswith(f"checkpoint {ck}") or str(e.value).startswith(str(ck))


def test_untouched_copy_loads(ck):
    # the cases above fail because of their edit, not because of the copy
    assert load_checkpoint(ck).solver_state["settings"]["iteration"] == 8


# TINY stores 260 weights: conv 3->3 and 3->4 (3x3, with b, gamma, beta), then linear 4 -> 10.
@pytest.mark.parametrize("changes, asks", [
    # conv 3 -> 1e5 (3e6 with b, gamma, beta), 1e5 -> 1e5 (9e10 + 3e5), linear 1e5 -> 10 (1e6 + 10)
    ({"num_filters": [100000, 100000]}, 90_004_300_010),
    # the convs as stored (210), then a 4 x 1 x 1e6 map after two pools into 10 classes
    ({"input_dims": [3, 4, 4000000]}, 210 + 4 * 1_000_000 * 10 + 10),
])
def test_huge_config_is_refused_before_building(ck, monkeypatch, changes, asks):
    import numbaconv.checkpoint as c

    monkeypatch.setattr(c, "build_model", lambda *a, **k: pytest.fail("the model was built"))
    _edit(ck, lambda f: _config(f, **changes))
    with pytest.raises(ValueError) as e:
        load_checkpoint(ck)
    assert f": model_config (kind=deep" in str(e.value)
    assert f"asks for {asks:,} weights but params holds 260: the config does not belong" in str(e.value)


def test_huge_declared_dataset_is_refused_unread(ck):
    # 54.6 TiB declared (500 x 3 x 1e5 x 1e5 float32) in a file of a few KiB: chunked storage, nothing written
    _edit(ck, lambda f: f.create_dataset("params/W9", shape=(500, 3, 100000, 100000), dtype="f4",
                                         chunks=(1, 1, 100, 100)))
    assert ck.stat().st_size < 1 << 20
    with pytest.raises(ValueError, match=r"declares 54\.6 TiB of arrays") as e:
        load_checkpoint(ck)
    assert "params/W9" in str(e.value) and f"at most {MAX_CHECKPOINT_BYTES // 2**30:.1f} GiB" in str(e.value)


@pytest.mark.parametrize("model", [
    ThreeLayerConvNet(input_dims=(3, 8, 6), num_filters=5, filter_size=3, hidden_dim=7, num_classes=4,
                      backend="reference"),
    DeepConvNet(input_dims=(2, 8, 8), num_filters=[3, 4, 5], max_pools=[0, 2], batchnorm=False, backend="reference"),
    DeepConvNet(**TINY),
    FastNet(input_dims=(3, 8, 8), stem=4, widths=[5, 6], convs_per_group=3, backend="reference"),
    FastNet(input_dims=(3, 8, 8), stem=0, widths=[5], whiten=6, whiten_stride=1, backend="reference"),
    FastNet(input_dims=(3, 8, 8), stem=0, widths=[5, 7], whiten=12, whiten_stride=2, backend="reference"),
    FastNet(input_dims=(3, 8, 8), stem=0, widths=[5, 7], whiten=4, whiten_stride=2, whiten_neg=True,
            convs_per_group=2, backend="reference"),
], ids=lambda m: m.kind)
def test_param_count_from_the_config_equals_the_built_model(model):
    assert param_count(model.config()) == sum(a.size for a in model.params.values())
    defaults_only = {"kind": model.kind}   # what build_model fills in from the constructor
    built = {"three-layer": ThreeLayerConvNet, "deep": DeepConvNet, "fast": FastNet}[model.kind](backend="reference")
    assert param_count(defaults_only) == sum(a.size for a in built.params.values())


def _no_gpu(monkeypatch):
    nb = get_backend("cuda")   # the simulator, as conftest sets it
    monkeypatch.setattr(nb, "SIMULATOR", False)
    monkeypatch.setattr(nb, "is_available", lambda: False)


def test_cuda_without_gpu_or_simulator_is_refused_where_chosen(monkeypatch, ck):
    assert get_backend("cuda").NAME == "cuda"   # the simulator counts
    _no_gpu(monkeypatch)
    with pytest.raises(BackendUnavailableError, match="backend 'cuda' needs a CUDA GPU and none was found; "
                       "use --backend cpu"):
        get_backend("cuda")
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        load_checkpoint(ck, backend="cuda")


def test_gradcheck_refuses_a_negative_seed():
    from numbaconv.gradcheck import check_backend

    with pytest.raises(ValueError, match="seed must be an integer >= 0, got -1"):
        check_backend("reference", "float64", -1)


# ----------------------------------------------------------- numba cache folder
def test_cache_fallback_only_when_the_package_is_not_writable(tmp_path, monkeypatch):
    env = {"XDG_CACHE_HOME": str(tmp_path / "home-cache")}
    assert numbaconv.numba_cache_fallback(env, tmp_path / "pkg") is None and "NUMBA_CACHE_DIR" not in env
    monkeypatch.setattr(numbaconv, "_writable_dir", lambda p: "pkg" not in str(p))
    monkeypatch.setattr(numbaconv, "_private_dir", lambda p: True)
    chosen = numbaconv.numba_cache_fallback(env, tmp_path / "pkg")
    assert chosen == env["NUMBA_CACHE_DIR"] == str(tmp_path / "home-cache" / "numbaconv" / "numba")
    env["NUMBA_CACHE_DIR"] = "/mine"   # the user's choice stays
    assert numbaconv.numba_cache_fallback(env, tmp_path / "pkg") is None and env["NUMBA_CACHE_DIR"] == "/mine"


def test_cache_fallback_refuses_a_folder_others_can_write(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    assert not numbaconv._private_dir(shared)
    assert numbaconv._private_dir(tmp_path / "mine") and (tmp_path / "mine").stat().st_mode & 0o777 == 0o700


def _unprivileged():
    """A command prefix that runs as a user who cannot write the copy (nobody, when we are root)."""
    if os.getuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: cannot drop the right to write")
    return [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX permissions")
def test_read_only_package_without_a_writable_home_still_runs(tmp_path):
    # numba alone fails here ("cannot cache function ...: no locator available") when the
    # package folder and the home folder are both read-only: a system-wide install run by a
    # service user. Outside pytest's private tmp_path, so that user can reach it.
    base = Path(tempfile.mkdtemp(prefix="numbaconv-ro-"))
    try:
        base.chmod(0o755)
        site, tmp = base / "site", base / "tmp"
        shutil.copytree(REPO / "numbaconv", site / "numbaconv", ignore=shutil.ignore_patterns("__pycache__"))
        (base / "home").mkdir()
        tmp.mkdir()
        for p in [site, *site.rglob("*"), base / "home"]:
            p.chmod(0o555 if p.is_dir() else 0o444)
        tmp.chmod(0o777)   # like /tmp: the only place that user may write
        code = ("import numpy as np, os\nfrom numbaconv import get_backend\n"
                "out, _ = get_backend('cpu').ReLU.forward(np.array([-1.0, 2.0]))\n"
                "print(out.tolist(), os.environ['NUMBA_CACHE_DIR'])\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_CACHE")}
        env.update(HOME=str(base / "home"), XDG_CACHE_HOME="", PYTHONPATH=str(site), TMPDIR=str(tmp))
        proc = subprocess.run(_unprivileged() + [sys.executable, "-c", code], env=env, cwd=tmp,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        values, cache_dir = proc.stdout.strip().rsplit(" ", 1)
        assert values == "[0.0, 2.0]"
        assert Path(cache_dir).parent == tmp and any(Path(cache_dir).rglob("*.nbi"))   # the kernel was cached there
        assert not list(site.rglob("__pycache__"))   # and nothing was written into the package
    finally:
        for p in [base, *base.rglob("*")]:
            if not p.is_symlink():
                p.chmod(0o755 if p.is_dir() else 0o644)
        shutil.rmtree(base)
