"""HDF5 checkpoints: round trips, atomic writes, and clear errors for files that
do not match their model config."""
import json

import h5py
import numpy as np
import pytest

from numbaconv.checkpoint import load_checkpoint, save_checkpoint, save_json
from numbaconv.models import DeepConvNet, ThreeLayerConvNet
from numbaconv.run import write_run_files
from numbaconv.solver import Solver

TINY = dict(input_dims=(3, 4, 4), num_filters=[3, 4], max_pools=[0, 1], batchnorm=True,
            weight_scale="kaiming", backend="reference", seed=0)


def _data(seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((24, 3, 4, 4)).astype(np.float32)
    y = rng.integers(0, 10, 24)
    return {"X_train": X[:16], "y_train": y[:16], "X_val": X[16:], "y_val": y[16:]}


@pytest.fixture
def trained():
    s = Solver(DeepConvNet(**TINY), _data(), update_rule="adam", optim_config={"learning_rate": 1e-2},
               batch_size=4, num_epochs=2, seed=0, verbose=False)
    s.train()
    return s


def test_last_checkpoint_round_trip(tmp_path, trained):
    info = {"name": "synthetic", "mean": [0.1, 0.2, 0.3], "std": None}
    trained.save_checkpoint(tmp_path / "last.h5", "last", data_info=info, extra={"note": "x"})
    ck = load_checkpoint(tmp_path / "last.h5")
    assert ck.which == "last" and ck.data_info == info and ck.extra == {"note": "x"}
    assert ck.model_config == trained.model.config()
    params, bn = trained.training_weights()
    for k, v in params.items():
        assert ck.model.params[k].dtype == np.float32 and np.array_equal(ck.model.params[k], v)
    for got, want in zip(ck.model.bn_params, bn):
        assert np.array_equal(got["running_mean"], want["running_mean"])
        assert np.array_equal(got["running_var"], want["running_var"])
    st = ck.solver_state
    assert st["settings"]["iteration"] == 8 and st["settings"]["epoch"] == 2
    cfg = st["optim_configs"]["W1"]
    assert type(cfg["t"]) is int and cfg["t"] == 8      # Python scalars, as the update rule left them
    assert type(cfg["learning_rate"]) is float
    assert cfg["m"].dtype == np.float32 and np.array_equal(cfg["m"], trained.optim_configs["W1"]["m"])
    assert st["history"]["val_acc"] == trained.val_acc_history
    assert st["history"]["loss"] == trained.loss_history
    assert ck.history == trained.history()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # no temporary file left


def test_best_checkpoint_holds_best_weights_and_no_solver(tmp_path, trained):
    trained.save_checkpoint(tmp_path / "best.h5", "best")
    ck = load_checkpoint(tmp_path / "best.h5")
    assert ck.which == "best" and ck.solver_state is None
    assert all(np.array_equal(ck.model.params[k], v) for k, v in trained.best_params.items())
    # the model predicts exactly like the solver's best model
    X = _data()["X_val"]
    np.testing.assert_array_equal(ck.model.predict(X), trained.model.predict(X))


def test_three_layer_round_trip_and_backend_override(tmp_path):
    m = ThreeLayerConvNet(input_dims=(3, 8, 8), num_filters=2, filter_size=3, hidden_dim=4, dtype=np.float64,
                          backend="reference", seed=1)
    save_checkpoint(tmp_path / "m.h5", m, which="model")
    ck = load_checkpoint(tmp_path / "m.h5", backend="cpu")
    assert ck.model.backend == "cpu" and ck.model.kind == "three-layer" and ck.history is None
    X = np.random.default_rng(0).standard_normal((3, 3, 8, 8))
    np.testing.assert_allclose(ck.model.loss(X), m.loss(X), rtol=1e-10, atol=1e-12)


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path, trained):
    path = tmp_path / "last.h5"
    trained.save_checkpoint(path)
    before = path.read_bytes()
    trained.optim_configs["W1"]["bad"] = object()      # cannot be stored
    with pytest.raises(ValueError, match=r"cannot store optimizer state W1\['bad'\] of type object"):
        trained.save_checkpoint(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.h5"]


def _tamper(path, edit):
    with h5py.File(path, "r+") as f:
        edit(f)


@pytest.mark.parametrize("edit, messages", [
    (lambda f: (f["params"].pop("W2"), f["params"].create_dataset("W2", data=np.zeros((4, 3, 5, 5), np.float32))),
     ["params/W2 has shape (4, 3, 5, 5) but the config needs (4, 3, 3, 3)"]),
    (lambda f: f["params"].pop("b3"), ["params/b3 is missing (the config needs shape (10,))"]),
    (lambda f: f["params"].create_dataset("W9", data=np.zeros(2, np.float32)),
     ["params/W9 (shape (2,)) is not a parameter of this model"]),
    (lambda f: (f["params"].pop("W1"), f["params"].create_dataset("W1", data=np.zeros((3, 3, 3, 3)))),
     ["params/W1 has dtype float64 but the config says float32"]),
    (lambda f: f["bn"].pop("1"), ["bn holds running statistics for 1 layers but the config has 2"]),
    (lambda f: (f["solver/optim/W1"].pop("m"), f["solver/optim/W1"].create_dataset("m", data=np.zeros(3))),
     ["solver/optim/W1/m has shape (3,) but W1 has shape (3, 3, 3, 3)"]),
    (lambda f: (f.pop("model_config"), f.create_dataset("model_config", data=json.dumps(
        {**DeepConvNet(**TINY).config(), "num_filters": [3, 5]}))),
     ["params/W2 has shape (4, 3, 3, 3) but the config needs (5, 3, 3, 3)", "params/gamma2 has shape (4,)",
      "num_filters=[3, 5]"]),
])
def test_mismatch_is_reported(tmp_path, trained, edit, messages):
    path = tmp_path / "last.h5"
    trained.save_checkpoint(path)
    _tamper(path, edit)
    with pytest.raises(ValueError, match="does not match its model config") as e:
        load_checkpoint(path)
    for m in messages:
        assert m in str(e.value)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.h5")
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(ValueError, match="is not a readable HDF5 file"):
        load_checkpoint(tmp_path / "text.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(ValueError, match="not a numbaconv checkpoint"):
        load_checkpoint(tmp_path / "other.h5")
    m = DeepConvNet(**TINY)
    save_checkpoint(tmp_path / "m.h5", m, which="model")
    _tamper(tmp_path / "m.h5", lambda f: (f.pop("model_config"), f.create_dataset("model_config", data='{"kind": "vgg"}')))
    with pytest.raises(ValueError, match="model config cannot be built.*'vgg'"):
        load_checkpoint(tmp_path / "m.h5")
    with pytest.raises(ValueError, match="which must be one of"):
        save_checkpoint(tmp_path / "x.h5", m, which="first")
    with pytest.raises(ValueError, match="a 'best' checkpoint needs a solver"):
        save_checkpoint(tmp_path / "x.h5", m, which="best")
    with pytest.raises(ValueError, match="folder .* does not exist"):
        save_checkpoint(tmp_path / "no" / "x.h5", m)


def test_write_run_files_and_json(tmp_path, trained):
    write_run_files(tmp_path, trained, {"name": "synthetic"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.h5", "history.json", "last.h5"]
    assert json.loads((tmp_path / "history.json").read_text()) == trained.history()
    save_json(tmp_path / "c.json", {"a": [1, 2]})
    assert json.loads((tmp_path / "c.json").read_text()) == {"a": [1, 2]}


