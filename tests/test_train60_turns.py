"""benchmarks/train_60s.py --against-torch: ours and PyTorch take turns, who goes first swaps every
other seed (a drifting machine favours neither), and the last line is the mean images/s ratio."""
from conftest import load_benchmark


def test_against_torch_swaps_who_goes_first_and_reports_the_mean_ratio(monkeypatch, capsys):
    t60 = load_benchmark("train_60s")
    calls = []

    def fake(who, images_per_s):
        def run(data, X_test, y_test, budget, seed, recipe, *threads):
            calls.append((who, seed))
            return {"val_acc": 0.5, "images_per_s": images_per_s[seed], "epochs": 1.0, "steps": 10, "train_time": budget}
        return run

    monkeypatch.setattr(t60, "run_ours", fake("ours", {0: 110.0, 1: 120.0, 2: 90.0}))
    monkeypatch.setattr(t60, "run_torch", fake("torch", {0: 100.0, 1: 100.0, 2: 100.0}))
    t60.main(["--dataset", "synthetic", "--seeds", "0", "1", "2", "--against-torch", "--budget", "1"])
    assert calls == [("ours", 0), ("torch", 0), ("torch", 1), ("ours", 1), ("ours", 2), ("torch", 2)]
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == "images/s ours/torch: mean 1.07 min 0.90 max 1.20 over 3 seeds"


def test_without_torch_only_ours_runs(monkeypatch, capsys):
    t60 = load_benchmark("train_60s")
    calls = []
    monkeypatch.setattr(t60, "run_ours", lambda data, X, y, budget, seed, recipe: calls.append(seed) or
                        {"val_acc": 0.5, "images_per_s": 1.0, "epochs": 1.0, "steps": 1, "train_time": budget})
    t60.main(["--dataset", "synthetic", "--seeds", "3", "4", "--budget", "1"])
    assert calls == [3, 4]
    assert "ours/torch" not in capsys.readouterr().out
