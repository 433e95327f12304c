#!/usr/bin/env bash
# The cuda backend on a real GPU, in one go (under 8 minutes):
#   1. install the project from this checkout (no network: --no-deps --no-index);
#   2. run the cuda tests natively (NUMBA_ENABLE_CUDASIM=0): the shared suites
#      including the numeric-gradient checks the simulator cannot afford, device
#      arrays in/out, PTX for sm_90, launch limits;
#   3. time the layers: numbaconv bench --device cuda --json "$OUT/cuda.json";
#   4. time the fused conv-BN-ReLU-pool layer against its composition, kernel by
#      kernel (benchmarks/cuda_kernel_times.py --op fused|composed);
#   5. train the fast recipe on the device for 10 s, beside PyTorch eager (cuDNN) on the same GPU
#      when torch is there (benchmarks/train_gpu.py --against-torch);
#   6. print a summary against the targets (500x over the reference for conv and
#      max pool forward+backward; conv forward+backward float32 within 3x of PyTorch/cuDNN).
# Needs python3 with numpy, numba, numba-cuda, h5py, typer, rich, pytest,
# pytest-benchmark (and torch for the cuDNN column). Results land in $OUT
# (default: ./gpu_check_out). Exit code: 0 only if the tests and the bench passed.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
export NUMBA_ENABLE_CUDASIM=0     # real kernels on the GPU, never the simulator
export PYTHONUNBUFFERED=1

# numba-cuda 0.30 does not import under NumPy 2.5 (np.row_stack is gone) and numba
# 0.68 supports NumPy < 2.5; where the machine's python3 has a newer NumPy, pass
# WHEELS=DIR holding a supported numpy wheel: it is installed ahead of the system one.
if [ -n "${WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/gpu_check_site "$WHEELS"/*.whl
  export PYTHONPATH=/tmp/gpu_check_site${PYTHONPATH:+:$PYTHONPATH}
fi

echo "== machine"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv 2>&1 || echo "nvidia-smi not found"
  python3 - <<'EOF'
import platform, numpy, numba
print("python", platform.python_version(), "| numpy", numpy.__version__, "| numba", numba.__version__)
try:
    from importlib.metadata import version
    print("numba-cuda", version("numba-cuda"))
except Exception as exc:
    print("numba-cuda version unknown:", exc)
try:
    import torch
    print("torch", torch.__version__, "| cuda", torch.version.cuda, "| cudnn", torch.backends.cudnn.version())
except ImportError:
    print("torch not installed")
EOF
} | tee "$OUT/machine.txt"

echo "== install (no network)"
# A distribution's python3 may be "externally managed" (PEP 668); this editable,
# dependency-free install of the checkout is what the check is for, so allow it.
export PIP_BREAK_SYSTEM_PACKAGES=1
timeout 120 python3 -m pip install --quiet --no-deps --no-build-isolation --no-index -e . 2>&1 | tail -5

echo "== preflight: compile and run one kernel"
# numba-cuda finds NVVM and the CUDA runtime in the pip packages by default; if
# that fails (say, an NVVM newer than the driver), try the system toolkit.
preflight() {
  timeout 90 python3 - <<'EOF'
import sys
import numpy as np
from numba import cuda
from numbaconv import get_backend
nb = get_backend("cuda")
if not nb.is_available():
    sys.exit("gpu_check: numba.cuda sees no GPU (driver or CUDA runtime missing?)")
out, _ = nb.ReLU.forward(np.array([-1.0, 2.0]))
assert out.tolist() == [0.0, 2.0], out
name = cuda.get_current_device().name
print("GPU:", name.decode() if isinstance(name, bytes) else name, "| a kernel ran")
EOF
}
if ! preflight 2>&1 | tee "$OUT/preflight.txt"; then
  if [ -d /usr/local/cuda ]; then
    echo "retrying with CUDA_HOME=/usr/local/cuda"
    export CUDA_HOME=/usr/local/cuda
    preflight 2>&1 | tee -a "$OUT/preflight.txt" || { echo "gpu_check: no kernel runs; see $OUT/preflight.txt"; exit 1; }
  else
    echo "gpu_check: no kernel runs; see $OUT/preflight.txt"; exit 1
  fi
fi

status=0
echo "== cuda tests, natively on the GPU"
# The shared suites' cuda cases (the fused layers' too), the cuda-only tests
# (transfer counter, interop), and the at-scale tests that only run on a GPU.
# Left out: the PTX and missing-package tests (they run in every CI run, without
# a GPU, and cost a minute of compiling here).
timeout 210 python3 -m pytest -q -p no:cacheprovider -o addopts="" -ra \
  tests/test_conformance.py tests/test_gradients.py tests/test_forward_values.py tests/test_checks.py \
  tests/test_fused_layers.py tests/test_cuda_backend.py tests/test_cuda_transfers.py tests/test_cuda_training.py \
  tests/test_cuda_gpu.py \
  -k "cuda or test_cuda_gpu" \
  --deselect tests/test_cuda_backend.py::test_every_kernel_compiles_to_ptx_for_sm90 \
  --deselect tests/test_cuda_backend.py::test_missing_numba_cuda_is_a_clear_import_error \
  --junitxml "$OUT/cuda-tests.xml" 2>&1 | tee "$OUT/cuda-tests.txt" || status=1

echo "== numbaconv bench --device cuda"
timeout 150 python3 -m numbaconv_cli.main bench --device cuda --dtype float32 --repeat 5 \
  --json "$OUT/cuda.json" 2>&1 | tee "$OUT/bench.txt" || status=1

echo "== conv-BN-ReLU-pool: fused against composed, kernel by kernel"
for op in fused composed; do
  timeout 60 python3 benchmarks/cuda_kernel_times.py --op "$op" --repeat 5 --json "$OUT/kernels-$op.json" 2>&1 \
    | tee "$OUT/kernels-$op.txt" || status=1
done

echo "== device-resident training: the fast recipe, ours and PyTorch eager on this GPU"
# 10 s of training steps per side on the synthetic set (DATASET=cifar10 or an HDF5 path for real data);
# PyTorch's side only where torch is installed.
against=""
if python3 -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then against="--against-torch"; fi
timeout 150 python3 benchmarks/train_gpu.py --recipe fast $against --budget 10 --dataset "${DATASET:-synthetic}" \
  --json "$OUT/train-gpu.json" 2>&1 | tee "$OUT/train-gpu.txt" || status=1

echo "== summary"
python3 - "$OUT" "$status" <<'EOF'
import json, sys
from pathlib import Path
out, status = Path(sys.argv[1]), int(sys.argv[2])
tests = (out / "cuda-tests.txt").read_text().strip().splitlines()
print("tests:", tests[-1] if tests else "no output")
path = out / "cuda.json"
if not path.exists():
    print("bench: no JSON written")
    sys.exit(1)
rows = json.loads(path.read_text())["rows"]
print(f"{'set':10} {'op':30} {'shape':44} {'cuda ms':>9} {'x ref':>9} {'x cpu':>7} {'cuda/torch':>10}")
for r in rows:
    ratio = r["ms"] / r["torch_ms"] if r.get("torch_ms") else None
    fmt = lambda v, spec: format("-", ">" + spec.split(".")[0]) if v is None else format(v, spec)
    print(f"{r['shape_set']:10} {r['op']:30} {r['shape']:44} {fmt(r['ms'], '9.3f')} {fmt(r.get('speedup'), '9.0f')} "
          f"{fmt(r.get('speedup_vs_cpu'), '7.1f')} {fmt(ratio, '10.2f')}")
train = out / "train-gpu.txt"
print("training:", " | ".join(l for l in train.read_text().splitlines() if l.startswith(("ours", "torch", "images/s")))
      if train.exists() else "no output")
print("targets:")
for op in ("conv forward+backward", "max pool forward+backward"):
    # the assignment's bar, on the assignment's own timing shapes
    s = [r["speedup"] for r in rows if r["op"] == op and r["shape_set"] == "assignment" and r.get("speedup")]
    small = [r["speedup"] for r in rows if r["op"] == op and r["shape_set"] == "small" and r.get("speedup")]
    print(f"  {op}: >= 500x over the reference on the assignment's shapes: "
          f"{'met' if s and min(s) >= 500 else 'NOT met'} (measured {', '.join(f'{v:,.0f}x' for v in s) or 'none'}; "
          f"on the small N=8 shapes {', '.join(f'{v:,.0f}x' for v in small) or 'none'})")
ratios = [r["ms"] / r["torch_ms"] for r in rows
          if r["op"] == "conv forward+backward" and r["shape_set"] == "cifar" and r.get("torch_ms")]
print(f"  conv forward+backward float32 on the CIFAR shapes within 3x of PyTorch/cuDNN: "
      f"{'met' if ratios and max(ratios) <= 3 else 'NOT met'} "
      f"(cuda/torch {', '.join(f'{v:.2f}' for v in ratios) or 'not measured'})")
kernel_runs = {op: json.loads((out / f"kernels-{op}.json").read_text())
               for op in ("fused", "composed") if (out / f"kernels-{op}.json").exists()}
if len(kernel_runs) == 2:   # synchronised per launch: launch counts and GPU time, not end-to-end speed
    print("conv-BN-ReLU-pool forward+backward, fused vs composed (ms, synchronised per launch):")
    for label, fused in kernel_runs["fused"].items():
        composed = kernel_runs["composed"].get(label)
        if composed:
            launches = lambda r: sum(p["per_call"] for k, p in r["parts"].items() if k.startswith("launch"))
            print(f"  {label}: {fused['total_ms_median']:.3f} vs {composed['total_ms_median']:.3f} "
                  f"({launches(fused)} vs {launches(composed)} launches)")
else:
    print("conv-BN-ReLU-pool fused vs composed: not measured")
print("overall:", "PASS" if status == 0 else "FAIL (see above)")
EOF
exit "$status"
