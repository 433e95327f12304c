"""Solver: overfitting, exact resume after interrupts, time limits, NaN
handling, LR decay, best parameters, histories and bad input."""
import numpy as np
import pytest

from numbaconv.models import DeepConvNet
from numbaconv.solver import NonFiniteLossError, Solver, epoch_permutation, stream_seeds

TINY = dict(input_dims=(3, 4, 4), num_filters=[3, 4], max_pools=[0, 1], batchnorm=True,
            weight_scale="kaiming", backend="reference", seed=0)
KW = dict(update_rule="adam", optim_config={"learning_rate": 1e-2}, lr_decay=0.9, batch_size=4, num_epochs=3,
          num_train_samples=8, seed=1, verbose=False)


def _data(n_train=16, n_val=8, shape=(3, 4, 4), seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_train + n_val, *shape)).astype(np.float32)
    y = rng.integers(0, 10, n_train + n_val)
    return {"X_train": X[:n_train], "y_train": y[:n_train], "X_val": X[n_train:], "y_val": y[n_train:]}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _uninterrupted(**kw):
    solver = Solver(DeepConvNet(**TINY), _data(), **{**KW, **kw})
    solver.train()
    return solver


def _resume_from(solver, **kw):
    """A fresh model and solver continuing from ``solver``'s state (deep-copied)."""
    import copy

    fresh = Solver(DeepConvNet(**{**TINY, "seed": 99}), _data(), **{**KW, "seed": 123, **kw})
    fresh.load_state_dict(copy.deepcopy(solver.state_dict()))
    fresh.train()
    return fresh


def _assert_same_run(a, b):
    assert _same(a.state_dict()["params"], b.state_dict()["params"])
    assert _same(a.model.params, b.model.params)           # the best weights swapped in
    for x, y in zip(a.model.bn_params, b.model.bn_params):
        assert np.array_equal(x["running_mean"], y["running_mean"]) and np.array_equal(x["running_var"], y["running_var"])
    assert a.loss_history == b.loss_history
    assert a.history() == {**b.history(), "time": a.history()["time"]}
    assert a.best_val_acc == b.best_val_acc and a.epoch == b.epoch and a.iteration == b.iteration


@pytest.mark.slow
def test_overfits_50_synthetic_images():
    """The assignment's sanity check: [8,16,32,64] filters, pools [0,1,2,3], batch 10."""
    from numbaconv.data import load_dataset

    ds = load_dataset("synthetic", num_val=50, num_train=50)
    model = DeepConvNet(num_filters=[8, 16, 32, 64], max_pools=[0, 1, 2, 3], weight_scale="kaiming", reg=1e-5,
                        backend="cpu", seed=0)
    solver = Solver(model, {"X_train": ds.X_train, "y_train": ds.y_train, "X_val": ds.X_val, "y_val": ds.y_val},
                    update_rule="adam", optim_config={"learning_rate": 2e-3}, batch_size=10, num_epochs=30,
                    seed=0, verbose=False)
    solver.train()
    assert len(solver.train_acc_history) == 30
    assert max(solver.train_acc_history) == 1.0, solver.train_acc_history
    assert solver.loss_history[-1] < 0.5 * solver.loss_history[0]


def test_interrupted_mid_epoch_resumes_exactly():
    full = _uninterrupted()

    def stop(s):
        if s.iteration == 6:   # mid-epoch (4 steps per epoch)
            raise KeyboardInterrupt

    part = Solver(DeepConvNet(**TINY), _data(), on_iteration=stop, **KW)
    with pytest.raises(KeyboardInterrupt):
        part.train()
    assert part.iteration == 6 and part.epoch == 1
    _assert_same_run(full, _resume_from(part))


def test_interrupt_inside_a_step_rolls_it_back():
    """Ctrl-C during forward/backward: the batch-norm running stats the forward
    pass updated and the minibatch generator are restored."""
    full = _uninterrupted()
    model = DeepConvNet(**TINY)
    part = Solver(model, _data(), **KW)
    calls = {"n": 0}
    real_loss = model.loss

    def loss(X, y=None):
        out = real_loss(X, y)
        if y is not None:
            calls["n"] += 1
            if calls["n"] == 7:
                raise KeyboardInterrupt   # after the forward pass touched the running stats
        return out

    model.loss = loss
    with pytest.raises(KeyboardInterrupt):
        part.train()
    assert part.iteration == 6 and len(part.loss_history) == 6
    model.loss = real_loss
    _assert_same_run(full, _resume_from(part))


def test_interrupt_during_the_epoch_check_resumes_exactly():
    full = _uninterrupted()
    part = Solver(DeepConvNet(**TINY), _data(), **KW)
    real = part.check_accuracy
    calls = {"n": 0}

    def check(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:   # epoch 2's validation check
            raise KeyboardInterrupt
        return real(*a, **k)

    part.check_accuracy = check
    with pytest.raises(KeyboardInterrupt):
        part.train()
    assert part.iteration == 8 and part.epoch == 1   # the epoch end is redone on resume
    _assert_same_run(full, _resume_from(part))


def test_train_twice_continues_from_last_not_best():
    a = _uninterrupted(num_epochs=4)
    b = Solver(DeepConvNet(**TINY), _data(), **{**KW, "num_epochs": 2})
    b.train()
    b.num_epochs = 4
    b.train()
    _assert_same_run(a, b)


class FakeClock:
    def __init__(self, step):
        self.t, self.step = 0.0, step

    def __call__(self):
        self.t += self.step
        return self.t


def test_time_limit_stops_before_passing_it(monkeypatch):
    import numbaconv.solver as solver_module

    monkeypatch.setattr(solver_module.time, "perf_counter", FakeClock(0.5))  # each step: 0.5 s
    s = Solver(DeepConvNet(**TINY), _data(), **{**KW, "num_epochs": 100})
    assert s.train(time_limit=1.75) == "time_limit"
    # after 3 steps 1.5 s are spent and the next would end at 2.0 > 1.75
    assert s.iteration == 3 and s.train_time == pytest.approx(1.5)
    assert s.record.iteration == [3] and s.record.epoch == [0.75]   # a final check, mid-epoch
    # the limit counts all training time: a later call continues up to the new total
    assert s.train(time_limit=3.0) == "time_limit"
    assert s.iteration == 6
    with pytest.raises(ValueError, match="time_limit must be a number of seconds > 0, got -1"):
        s.train(time_limit=-1)


def test_nan_loss_stops_and_keeps_the_last_good_state():
    model = DeepConvNet(**TINY)
    s = Solver(model, _data(), **KW)
    real_loss = model.loss
    calls = {"n": 0}

    def loss(X, y=None):
        out = real_loss(X, y)
        if y is not None:
            calls["n"] += 1
            if calls["n"] == 3:
                return float("nan"), out[1]
        return out

    model.loss = loss
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at iteration 3 \(epoch 1\)"):
        s.train()
    assert s.iteration == 2 and len(s.loss_history) == 2
    assert all(np.isfinite(v).all() for v in model.params.values())


def test_lr_decay_history_and_best_params():
    s = _uninterrupted()
    h = s.history()
    assert set(h) == {"loss", "epoch", "iteration", "time", "lr", "train_acc", "val_acc"}
    assert len(h["loss"]) == 12 and h["epoch"] == [1.0, 2.0, 3.0] and h["iteration"] == [4, 8, 12]
    assert h["lr"] == pytest.approx([1e-2, 0.9e-2, 0.81e-2])
    assert s.optim_configs["W1"]["learning_rate"] == pytest.approx(0.729e-2)
    assert h["time"] == sorted(h["time"]) and h["time"][0] > 0
    assert s.best_val_acc == max(h["val_acc"])
    best = s.val_acc_history.index(s.best_val_acc)
    assert s.best_epoch == h["epoch"][best]
    assert _same(s.model.params, s.best_params)   # swapped in after training
    assert s.stop_reason == "done"


def test_checkpoint_name_writes_every_epoch(tmp_path):
    s = Solver(DeepConvNet(**TINY), _data(), **{**KW, "checkpoint_name": str(tmp_path / "run")})
    s.train()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run_epoch_1.h5", "run_epoch_2.h5", "run_epoch_3.h5"]


@pytest.mark.parametrize("kwargs, match", [
    ({"learning_rate": 1e-3}, "unrecognized Solver arguments: learning_rate"),
    ({"update_rule": "adamw"}, "unknown update rule 'adamw'"),
    ({"optim_config": {"learning_rate": -1}}, r"adam: config\['learning_rate'\] must be finite and > 0"),
    ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
    ({"num_epochs": 2.5}, "num_epochs must be a positive integer"),
    ({"lr_decay": 1.5}, r"lr_decay must be in \(0, 1\]"),
    ({"num_val_samples": -3}, "num_val_samples must be a positive integer or None"),
    ({"sampling": "shuffle"}, "sampling must be one of 'replacement', 'epochs', got 'shuffle'"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Solver(DeepConvNet(**TINY), _data(), **{**KW, **kwargs})


def test_bad_data():
    d = _data()
    with pytest.raises(ValueError, match="data is missing 'X_val'"):
        Solver(DeepConvNet(**TINY), {k: v for k, v in d.items() if k != "X_val"})
    with pytest.raises(ValueError, match=r"y_train must have shape \(16,\) to match X_train"):
        Solver(DeepConvNet(**TINY), {**d, "y_train": d["y_train"][:5]})
    with pytest.raises(ValueError, match="y_val must hold integer labels"):
        Solver(DeepConvNet(**TINY), {**d, "y_val": d["y_val"].astype(float)})
    with pytest.raises(ValueError, match="the train split is empty"):
        Solver(DeepConvNet(**TINY), {**d, "X_train": d["X_train"][:0], "y_train": d["y_train"][:0]})


def test_warmup_changes_nothing_and_runs_once_before_a_time_limit(monkeypatch):
    import copy

    s = Solver(DeepConvNet(**TINY), _data(), **KW)
    before = copy.deepcopy(s.state_dict())
    s.warmup()
    after = s.state_dict()
    assert _same(before["params"], after["params"])
    for x, y in zip(before["bn"], after["bn"]):
        assert _same(x, y)
    assert before["settings"] == after["settings"]          # rng states, counters, time
    calls = []
    monkeypatch.setattr(Solver, "warmup", lambda self: (calls.append(1), setattr(self, "_warm", True)))
    s = Solver(DeepConvNet(**TINY), _data(), **KW)
    s.train(time_limit=1e6)
    s.num_epochs = 4
    s.train(time_limit=1e6)
    assert calls == [1] and s.iteration == 16


def _indices_seen(**kw):
    """The image indices of every minibatch a 3-epoch run on 18 images (batch 4) draws."""
    seen = []

    def record(X, y, rng, index=None, epoch=None, seed=None):
        seen.append((epoch, list(index)))
        return X, y

    record.per_image = True
    solver = Solver(DeepConvNet(**TINY), _data(n_train=18), augment=record, **{**KW, **kw})
    solver.train()
    return solver, seen


def test_epoch_sampling_takes_each_image_once_an_epoch():
    solver, seen = _indices_seen(sampling="epochs")
    assert solver.iterations_per_epoch == 4 and [e for e, _ in seen] == [0] * 4 + [1] * 4 + [2] * 4
    orders = []
    for e in range(3):
        order = sum((idx for epoch, idx in seen if epoch == e), [])
        assert len(order) == len(set(order)) == 16 and set(order) <= set(range(18))   # 2 of 18 left out
        orders.append(order)
        np.testing.assert_array_equal(order, epoch_permutation(solver.shuffle_seed, e, 18)[:16])
    assert orders[0] != orders[1] != orders[2]                        # a fresh shuffle each epoch
    assert _indices_seen(sampling="epochs")[1] == seen                 # the seed decides
    assert _indices_seen(sampling="epochs", seed=2)[1] != seen
    # the default, the assignment's: drawn with replacement, an image may come twice in an epoch
    replacement = _indices_seen()[1]
    assert any(len(set(sum((i for e, i in replacement if e == k), []))) < 16 for k in range(3))


def test_epoch_sampling_resumes_exactly_and_is_kept_in_the_state():
    full = _uninterrupted(sampling="epochs")

    def stop(s):
        if s.iteration == 6:
            raise KeyboardInterrupt

    part = Solver(DeepConvNet(**TINY), _data(), on_iteration=stop, **{**KW, "sampling": "epochs"})
    with pytest.raises(KeyboardInterrupt):
        part.train()
    resumed = _resume_from(part)   # a Solver made with the default sampling and another seed
    assert resumed.sampling == "epochs" and resumed.shuffle_seed == part.shuffle_seed
    _assert_same_run(full, resumed)
    # a checkpoint from before the option trained with replacement, and resumes so
    state = part.state_dict()
    for key in ("sampling", "shuffle_seed"):
        del state["settings"][key]
    old = Solver(DeepConvNet(**TINY), _data(), **{**KW, "sampling": "epochs"})
    old.load_state_dict(state)
    assert old.sampling == "replacement"


def test_stream_seeds_keep_the_earlier_streams():
    """The shuffle seed came last: the generators and augment seed of a seed are what they were."""
    old_train, old_eval, old_aug = np.random.SeedSequence(5).spawn(3)
    train, evals, aug, shuffle = stream_seeds(5)
    assert train.generate_state(4).tolist() == old_train.generate_state(4).tolist()
    assert evals.generate_state(4).tolist() == old_eval.generate_state(4).tolist()
    assert aug == int(old_aug.generate_state(1, dtype=np.uint32)[0]) and shuffle != aug
