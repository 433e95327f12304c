"""benchmarks/train_60s.py --against-torch: ours and PyTorch train side by side in turns of --slice
seconds of training steps, who starts swaps every other seed (a drifting machine favours neither),
and the last line is the mean images/s ratio."""
import pytest
from conftest import load_benchmark


def _fakes(t60, monkeypatch, calls, images_per_s):
    class Fake:
        who = None

        def __init__(self, data, budget, seed, recipe, *threads):
            self.seed = seed

        def advance(self, seconds):
            calls.append((self.who, self.seed, seconds))

        def result(self, X_test, y_test):
            return {"val_acc": 0.5, "images_per_s": images_per_s[self.who][self.seed], "epochs": 1.0, "steps": 10,
                    "train_time": 1.0}

    monkeypatch.setattr(t60, "OursRun", type("Ours", (Fake,), {"who": "ours"}))
    monkeypatch.setattr(t60, "TorchRun", type("Torch", (Fake,), {"who": "torch"}))


def test_against_torch_takes_turns_by_slices_and_reports_the_mean_ratio(monkeypatch, capsys):
    t60 = load_benchmark("train_60s")
    calls = []
    _fakes(t60, monkeypatch, calls, {"ours": {0: 110.0, 1: 120.0, 2: 90.0}, "torch": {0: 100.0, 1: 100.0, 2: 100.0}})
    t60.main(["--dataset", "synthetic", "--seeds", "0", "1", "2", "--against-torch", "--budget", "12", "--slice", "5"])
    assert calls == [("ours", 0, 5), ("torch", 0, 5), ("ours", 0, 10), ("torch", 0, 10), ("ours", 0, 12), ("torch", 0, 12),
                     ("torch", 1, 5), ("ours", 1, 5), ("torch", 1, 10), ("ours", 1, 10), ("torch", 1, 12), ("ours", 1, 12),
                     ("ours", 2, 5), ("torch", 2, 5), ("ours", 2, 10), ("torch", 2, 10), ("ours", 2, 12), ("torch", 2, 12)]
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == "images/s ours/torch: mean 1.07 min 0.90 max 1.20 over 3 seeds"


def test_without_torch_ours_runs_the_whole_budget_at_once(monkeypatch, capsys):
    t60 = load_benchmark("train_60s")
    calls = []
    _fakes(t60, monkeypatch, calls, {"ours": {3: 1.0, 4: 1.0}})
    t60.main(["--dataset", "synthetic", "--seeds", "3", "4", "--budget", "12"])
    assert calls == [("ours", 3, 12), ("ours", 4, 12)]
    assert "ours/torch" not in capsys.readouterr().out


def test_bad_slice_is_one_error_naming_it(capsys):
    t60 = load_benchmark("train_60s")
    with pytest.raises(SystemExit):
        t60.main(["--dataset", "synthetic", "--against-torch", "--slice", "0"])
    assert "--slice must be seconds > 0, got 0.0" in capsys.readouterr().err


def test_runs_advance_in_turns_on_a_tiny_set():
    """The real runners on a few synthetic images: each advance adds training time up to the turn's end,
    the result counts every step, and PyTorch's best state is the one its checks kept."""
    pytest.importorskip("torch")
    import numpy as np

    t60 = load_benchmark("train_60s")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, 300)
    data = {"X_train": X[:256], "y_train": y[:256], "X_val": X[256:], "y_val": y[256:]}
    ours, torch = t60.OursRun(data, 2.0, 0, "fast"), t60.TorchRun(data, 2.0, 0, "fast", 2)
    for t in (1.0, 2.0):
        for run in (ours, torch):
            run.advance(t)
            clock = run.solver if run is ours else run.rec
            # the Solver's rule: stop when the next step, as long as the last, would pass t; so the last
            # step started within t (it may end past it on a machine whose speed varies)
            assert clock.train_time + clock.last_step_time > t >= clock.train_time - clock.last_step_time
    r_ours, r_torch = ours.result(None, None), torch.result(None, None)
    assert r_ours["steps"] == ours.solver.iteration > 0 and r_torch["steps"] == torch.rec.steps > 0
    assert 0.0 <= r_torch["val_acc"] <= 1.0 and torch.checked_at == torch.rec.steps
