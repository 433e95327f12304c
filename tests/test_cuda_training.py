"""Device-resident training on the cuda backend, under the simulator (no GPU needed):

* the transfer budget: after the warm-up step, a training step of FastNet (the fast recipe's
  config at tiny widths) and of DeepConvNet copies one plan up (minibatch indices and
  augmentation draws) and one loss scalar down, counted by numbaconv.cuda.count_transfers;
* residency changes nothing: the weights, optimizer state and losses after a few steps equal
  the cpu backend's for the same seed (to float32 tolerance);
* the update-rule kernels against numbaconv.optim's NumPy rules (the spec), the gather/crop/flip
  kernel against the cpu and reference crop_flip, and every training kernel compiles to PTX for
  compute capability 9.0, with every launch's arguments matching the kernel's signature.

The simulator costs ~1 s per launch of a big block, so the nets are as small as they come.
"""
import os
import subprocess
import sys

import numpy as np
import pytest
from test_cuda_backend import _PTX_SCRIPT, REPO

from numbaconv import get_backend
from numbaconv.models import DeepConvNet, build_model, shift_images
from numbaconv.optim import get_update_rule
from numbaconv.recipe import augment_crop_flip, recipe_model_config
from numbaconv.solver import Solver

nb = get_backend("cuda")
from numbaconv.cuda import device_ops as ops  # noqa: E402
from numbaconv.cuda import _runtime, kernels  # noqa: E402
from numbaconv.cuda._runtime import cuda, is_device  # noqa: E402

LAUNCHED: set = set()


@pytest.fixture(autouse=True, scope="module")
def checked_launches():
    """Every training-kernel launch is checked against the signature it is compiled with on a GPU
    (the simulator ignores signatures) and recorded, for the every-kernel-launched test."""
    real = kernels.get_kernel
    arrays = {"I": np.dtype(np.int32), "L": np.dtype(np.int64)}

    def get_kernel(name, dtype):
        k = real(name, dtype)
        if name not in kernels.TRAINING_KERNELS:
            return k

        def configure(config):
            def run(*args):
                codes = kernels.spec(name).args
                assert len(args) == len(codes), name
                for i, (code, arg) in enumerate(zip(codes, args)):
                    if code in "AIL":
                        assert is_device(arg) and arg.ndim == 1 and arg.is_c_contiguous(), (name, i)
                        assert np.dtype(arg.dtype) == arrays.get(code, np.dtype(dtype)), (name, i, arg.dtype)
                    elif code == "i":
                        assert isinstance(arg, (int, np.integer)) and not isinstance(arg, bool), (name, i, type(arg))
                    else:
                        assert isinstance(arg, float), (name, i, type(arg))
                LAUNCHED.add(name)
                return k[config](*args)
            return run
        return type("Checked", (), {"__getitem__": lambda _, config: configure(config)})()

    with pytest.MonkeyPatch.context() as mp:   # module scope: the training runs (a module fixture) too
        mp.setattr(kernels, "get_kernel", get_kernel)
        mp.setattr(_runtime, "DIRECT_LAUNCH", False)   # on a GPU: every launch through get_kernel
        yield


# ---------------------------------------------------------------- a few steps, cpu vs cuda
def _data(seed=0, N=4, C=3, HW=8, classes=3):
    rng = np.random.default_rng(seed)
    return {"X_train": rng.standard_normal((N, C, HW, HW)).astype(np.float32), "y_train": rng.integers(0, classes, N),
            "X_val": rng.standard_normal((2, C, HW, HW)).astype(np.float32), "y_val": rng.integers(0, classes, 2)}


def _fastnet(backend):
    # the fast recipe's model at tiny widths (and no test-time mirror: a second forward pass per check)
    config = {**recipe_model_config("fast", (3, 8, 8), 3, backend), "whiten": 4, "widths": [2], "tta_flip": False,
              "reg": 1e-2}
    return build_model(config, seed=0)


def _deepnet(backend):
    return DeepConvNet(input_dims=(3, 4, 4), num_filters=[2], max_pools=[0], batchnorm=True, num_classes=3,
                       weight_scale="kaiming", reg=1e-2, backend=backend, seed=0)


CASES = {   # name: (model maker, image size, Solver arguments)
    # the fast recipe's optimizer with its weight decay, alternating flips with 1-pixel shifts, lookahead,
    # the long recipe's minibatches (a shuffle each epoch)
    "fastnet": (_fastnet, 8, {"update_rule": "sgd_nesterov", "optim_config": {"learning_rate": 0.1, "momentum": 0.9,
                                                                           "weight_decay": 5e-4},
                           "augment": augment_crop_flip(1, "alternate"), "lookahead_every": 2, "sampling": "epochs"}),
    # (not adam: with BN after it, a conv bias's gradient is rounding noise, which adam would normalise)
    "deepconvnet": (_deepnet, 4, {"update_rule": "sgd_momentum", "optim_config": {"learning_rate": 0.1},
                               "augment": augment_crop_flip(1, True)}),
}


def _train(case, backend):
    make, size, kwargs = CASES[case]
    steps, seen = [], {}

    def schedule(s):   # runs inside each step, first: the step's own copies are counted from here
        steps.append([nb.transfer_stats()])

    def on_iteration(s):
        steps[-1].append(nb.transfer_stats())
        seen["device"] = all(is_device(w) for w in s.model.params.values())

    def on_epoch_end(s):   # a checkpoint written mid-training gets host arrays
        state = s.state_dict()
        seen["state_on_host"] = all(isinstance(a, np.ndarray) for a in state["params"].values()) and all(
            isinstance(v, np.ndarray) for cfg in state["optim_configs"].values() for v in cfg.values()
            if hasattr(v, "shape"))
        seen["best_on_host"] = all(isinstance(a, np.ndarray) for a in s.best_params.values())

    solver = Solver(make(backend), _data(HW=size), batch_size=2, num_epochs=1, seed=3, verbose=False,
                    num_train_samples=2, schedule=schedule, on_iteration=on_iteration, on_epoch_end=on_epoch_end,
                    **kwargs)
    solver.train()
    return solver, steps, seen


@pytest.fixture(scope="module", params=sorted(CASES))
def runs(request):
    return request.param, _train(request.param, "cpu")[0], _train(request.param, "cuda")


def test_a_step_copies_one_plan_up_and_one_loss_down(runs):
    case, _, (solver, steps, seen) = runs
    assert solver.iteration == 2 and len(steps) == 2
    # train() uploaded the split and the weights before the first step (its warm-up); a step
    # then copies its plan up (4 int64 per image: index, two offsets, mirror) and a float32 loss down
    for a, b in steps:
        assert (b.h2d - a.h2d, b.d2h - a.d2h, b.h2d_bytes - a.h2d_bytes, b.d2h_bytes - a.d2h_bytes) == \
            (1, 1, 4 * 2 * 8, 4), case
    assert seen == {"device": True, "state_on_host": True, "best_on_host": True}


def test_residency_changes_nothing(runs):
    case, host, (dev, _, _) = runs
    assert all(isinstance(w, np.ndarray) for w in dev.model.params.values())   # back on the host after train()
    np.testing.assert_allclose(dev.loss_history, host.loss_history, rtol=1e-5)
    want, got = host.state_dict(), dev.state_dict()
    for name, w in want["params"].items():
        np.testing.assert_allclose(got["params"][name], w, rtol=1e-4, atol=1e-6, err_msg=name)
        for key, v in want["optim_configs"][name].items():
            if isinstance(v, np.ndarray):
                np.testing.assert_allclose(got["optim_configs"][name][key], v, rtol=1e-4, atol=1e-6, err_msg=key)
            else:
                assert got["optim_configs"][name][key] == v, key
    for bn_want, bn_got in zip(want["bn"], got["bn"]):
        for key in bn_want:
            np.testing.assert_allclose(bn_got[key], bn_want[key], rtol=1e-4, atol=1e-6)
    assert dev.record.val_acc == host.record.val_acc and dev.record.train_acc == host.record.train_acc


# the simulator's kernel threads do NumPy scalar maths on inf (np.errstate is per thread)
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_a_non_finite_step_is_rolled_back_on_the_device():
    from numbaconv.solver import NonFiniteLossError

    data = _data(HW=4)
    data["X_train"][:] = np.inf   # every batch: an infinite conv output, NaN statistics and loss
    model = _deepnet("cuda")
    before = {k: v.copy() for k, v in model.params.items()}
    solver = Solver(model, data, batch_size=2, num_epochs=1, seed=0, verbose=False,
                    update_rule="sgd_momentum", optim_config={"learning_rate": 0.1})
    with pytest.raises(NonFiniteLossError):
        solver.train()
    assert solver.iteration == 0 and solver.loss_history == []
    for k, v in model.params.items():   # back on the host, unchanged
        assert isinstance(v, np.ndarray)
        np.testing.assert_array_equal(v, before[k])
    for bp in model.bn_params:          # the forward pass's running-statistics update undone
        for key in ("running_mean", "running_var"):
            assert isinstance(bp[key], np.ndarray) and not bp[key].any()
    assert all("velocity" not in cfg for cfg in solver.optim_configs.values())


# ---------------------------------------------------------------- the pieces
RULE_CONFIGS = {
    "sgd": {"learning_rate": 0.1},
    "sgd_momentum": {"learning_rate": 0.1, "momentum": 0.8},
    "rmsprop": {"learning_rate": 0.01, "decay_rate": 0.9},
    "adam": {"learning_rate": 0.01},
    "sgd_nesterov": {"learning_rate": 0.1, "momentum": 0.9, "weight_decay": 5e-4},
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rule", sorted(RULE_CONFIGS))
def test_update_kernels_follow_the_numpy_rules(rule, dtype):
    rng = np.random.default_rng(5)
    w = rng.standard_normal(7).astype(dtype)
    config, dconfig = dict(RULE_CONFIGS[rule]), dict(RULE_CONFIGS[rule])
    wd = cuda.to_device(w)
    for _ in range(2):   # the second step reads the state the first one left
        dw = rng.standard_normal(7).astype(dtype)
        w_before = wd.copy_to_host()
        w, config = get_update_rule(rule)(w, dw, config)
        dw_d = cuda.to_device(dw)
        wd, dconfig = ops.update(rule, wd, dw_d, dconfig)
        np.testing.assert_array_equal(dw_d.copy_to_host(), dw)   # inputs untouched
        assert not np.array_equal(wd.copy_to_host(), w_before)
        tol = 1e-6 if dtype == np.float32 else 1e-13
        np.testing.assert_allclose(wd.copy_to_host(), w, rtol=tol, atol=tol)
        for key, v in config.items():
            got = dconfig[key]
            if isinstance(v, np.ndarray):
                assert is_device(got) and got.dtype == dtype
                np.testing.assert_allclose(got.copy_to_host(), v, rtol=tol, atol=tol)
            else:
                assert got == v, key


def test_update_rejects_what_the_numpy_rule_rejects():
    w = cuda.to_device(np.ones(3))
    with pytest.raises(ValueError, match="momentum"):
        ops.update("sgd_momentum", w, w, {"momentum": 1.5})
    with pytest.raises(ValueError, match="shape"):
        ops.update("sgd", w, cuda.to_device(np.ones(2)), {})
    with pytest.raises(ValueError, match="velocity"):
        ops.update("sgd_momentum", w, w, {"velocity": cuda.to_device(np.ones(2))})


def test_lookahead_kernel():
    w, slow = np.arange(4.0), np.full(4, 2.0)
    got = ops.lookahead(cuda.to_device(w), cuda.to_device(slow), 0.3).copy_to_host()
    np.testing.assert_allclose(got, 0.3 * slow + 0.7 * w, rtol=1e-15)


@pytest.mark.parametrize("pad", [0, 2])
def test_crop_flip_is_the_same_on_every_backend(pad):
    rng = np.random.default_rng(2)
    X = rng.standard_normal((3, 2, 5, 6)).astype(np.float32)
    oy, ox = rng.integers(0, 2 * pad + 1, 3), rng.integers(0, 2 * pad + 1, 3)
    mirror = np.array([True, False, True])
    from numbaconv.cpu.augment import crop_flip as cpu_crop_flip
    from numbaconv.cuda.augment import crop_flip as cuda_crop_flip
    from numbaconv.reference.augment import crop_flip as ref_crop_flip

    want = cpu_crop_flip(X, oy, ox, mirror, pad)
    np.testing.assert_array_equal(ref_crop_flip(X, oy, ox, mirror, pad), want)
    np.testing.assert_array_equal(cuda_crop_flip(X, oy, ox, mirror, pad), want)
    got = cuda_crop_flip(cuda.to_device(X), oy, ox, mirror, pad)
    assert is_device(got)
    np.testing.assert_array_equal(got.copy_to_host(), want)


def test_the_hook_uses_the_backends_kernel_and_reference_loads_no_cpu_kernel():
    script = ("import sys, numpy as np\nfrom numbaconv.recipe import augment_crop_flip\n"
              "hook = augment_crop_flip(1, True)\nX = np.ones((2, 1, 4, 4))\n"
              "out, y = hook(X, np.arange(2), np.random.default_rng(0), backend='reference')\n"
              "assert out.shape == X.shape\nprint(sorted(m for m in sys.modules if m.startswith('numbaconv.cpu')))")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_device_scores_and_predictions_match_the_host():
    # FastNet's test-time views (the long recipe's shifts; the mirror below) and the arg-max, on the device
    config = {**recipe_model_config("long", (3, 4, 4), 3, "cuda"), "whiten": 0, "whiten_neg": False, "widths": [1],
              "convs_per_group": 1, "tta_flip": False}
    model = build_model(config, seed=1)
    X = np.random.default_rng(4).standard_normal((2, 3, 4, 4)).astype(np.float32)
    want = build_model(config, seed=1, backend="cpu").loss(X)
    got = model.loss(cuda.to_device(X))
    assert is_device(got)
    np.testing.assert_allclose(got.copy_to_host(), want, rtol=1e-5, atol=1e-6)
    for dy, dx in ((1, -2), (0, 0)):
        np.testing.assert_array_equal(ops.shift_flip(cuda.to_device(X), dy, dx, True).copy_to_host(),
                                      shift_images(X, dy, dx)[..., ::-1])
    deep = _deepnet("cuda")
    deep.params = {k: cuda.to_device(v) for k, v in deep.params.items()}
    for bp in deep.bn_params:
        bp.update((k, cuda.to_device(bp[k])) for k in ("running_mean", "running_var"))
    X3 = np.concatenate([X, X[:1] * 2])
    Xd = cuda.to_device(X3)
    with nb.count_transfers() as t:
        preds = deep.predict(Xd, batch_size=2)   # two batches, one copy back
    assert (t.h2d, t.d2h, t.d2h_bytes) == (0, 1, 3 * 8) and isinstance(preds, np.ndarray)   # the predictions only
    np.testing.assert_array_equal(preds, np.argmax(_deepnet("cpu").loss(X3), axis=1))


def test_every_training_kernel_was_launched_and_compiles_to_ptx_for_sm90():
    # runs last in this file: the tests above launched every training kernel
    assert LAUNCHED == set(kernels.TRAINING_KERNELS)
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0"}
    script = _PTX_SCRIPT.replace("kernels.KERNELS", "kernels.TRAINING_KERNELS")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"compiled {2 * len(kernels.TRAINING_KERNELS)}" in proc.stdout


def test_train_summary_row_counts_the_runs_copies():
    from numbaconv_cli.commands.train import copies_row, cuda_copies

    before = cuda_copies()
    nb.ReLU.forward(np.ones(3, np.float32))   # one copy up, one down
    assert copies_row(before, cuda_copies()) == ("host<->GPU copies", "1 up (0.0 MB), 1 down (0.0 MB): uploads, "
                                                 "1 up + 1 down per step, checks, checkpoints")
    assert copies_row(before, before) is None and copies_row(None, None) is None   # another backend's run
