"""benchmarks/train_60s.py and benchmarks/time_to_accuracy.py with --against-torch import PyTorch before
numbaconv.cpu (numbaconv.bench.load_torch_first), as `numbaconv bench` does: PyTorch's CPU wheel shares
numba's libgomp, whose wait policy is read once, when it loads, so whoever loads it first sets it for
both. Loaded first, PyTorch runs as its users run it (tests/test_cpu_bench.py checks the policy itself).

Each script runs in a fresh interpreter (in this one numbaconv.cpu is long loaded), with its training
runs replaced by fakes that import numbaconv.cpu where the real ones first do."""
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = str(Path(__file__).resolve().parents[1] / "benchmarks")

FAKE_RUNS = """
import sys
sys.path.insert(0, {benchmarks!r})
import train_60s as script

class Fake:
    def __init__(self, *args):
        import numbaconv.cpu   # the real runs build a model here
    def advance(self, seconds):
        pass
    def result(self, X_test, y_test):
        return {{"val_acc": 0.5, "images_per_s": 1.0, "epochs": 1.0, "steps": 1, "train_time": 1.0}}

script.OursRun = script.TorchRun = Fake
script.main(["--dataset", "synthetic", "--budget", "1", "--slice", "1"{extra}])
"""

FAKE_CURVES = """
import sys
sys.path.insert(0, {benchmarks!r})
import time_to_accuracy as script

def curve(*args, **kwargs):
    import numbaconv.cpu   # the real curves build a model here
    return [{{"time": 1.0, "epoch": 1.0, "iteration": 1, "val_acc": 0.5}}]

script.curve_ours = script.curve_torch = curve
script.plot_curves = lambda *args: None
script.main(["--dataset", "synthetic", "--recipe", "fast", "--budget", "1"{extra}])
"""

ORDER = """
loaded = list(sys.modules)
print("ORDER", "torch" in loaded, "torch" in loaded and loaded.index("torch") < loaded.index("numbaconv.cpu"))
"""


@pytest.mark.parametrize("template", [FAKE_RUNS, FAKE_CURVES], ids=["train_60s", "time_to_accuracy"])
@pytest.mark.parametrize("against_torch", [True, False])
def test_pytorch_is_imported_before_numbaconv_cpu(template, against_torch):
    pytest.importorskip("torch", reason="PyTorch is the yardstick (pip install torch), not a dependency")
    code = template.format(benchmarks=BENCHMARKS, extra=', "--against-torch"' if against_torch else "") + ORDER
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    # with --against-torch PyTorch comes first; without it the script does not load PyTorch at all
    assert out.stdout.strip().splitlines()[-1] == ("ORDER True True" if against_torch else "ORDER False False")
