"""Update rules against the assignment's published expected values (an
independent oracle), plus dtype, purity and bad-input checks."""
import numpy as np
import pytest

from numbaconv.optim import UPDATE_RULES, adam, get_update_rule, register_update_rule, rmsprop, sgd, sgd_momentum

N, D = 4, 5


def assert_published(actual, expected):
    """The published arrays are rounded to 8 decimals: agree to half a unit in the last place."""
    np.testing.assert_allclose(actual, expected, rtol=0, atol=5.01e-9)


def _wd():
    w = np.linspace(-0.4, 0.6, num=N * D).reshape(N, D)
    dw = np.linspace(-0.6, 0.4, num=N * D).reshape(N, D)
    return w, dw


def test_sgd():
    w, dw = _wd()
    next_w, config = sgd(w, dw, {"learning_rate": 0.1})
    np.testing.assert_allclose(next_w, w - 0.1 * dw, rtol=0, atol=1e-15)
    assert config["learning_rate"] == 0.1
    assert sgd(w, dw)[1]["learning_rate"] == 1e-2  # the assignment's default


def test_sgd_momentum_matches_assignment():
    w, dw = _wd()
    v = np.linspace(0.6, 0.9, num=N * D).reshape(N, D)
    next_w, config = sgd_momentum(w, dw, {"learning_rate": 1e-3, "velocity": v})
    expected_next_w = np.asarray([
        [0.1406, 0.20738947, 0.27417895, 0.34096842, 0.40775789],
        [0.47454737, 0.54133684, 0.60812632, 0.67491579, 0.74170526],
        [0.80849474, 0.87528421, 0.94207368, 1.00886316, 1.07565263],
        [1.14244211, 1.20923158, 1.27602105, 1.34281053, 1.4096]])
    expected_velocity = np.asarray([
        [0.5406, 0.55475789, 0.56891579, 0.58307368, 0.59723158],
        [0.61138947, 0.62554737, 0.63970526, 0.65386316, 0.66802105],
        [0.68217895, 0.69633684, 0.71049474, 0.72465263, 0.73881053],
        [0.75296842, 0.76712632, 0.78128421, 0.79544211, 0.8096]])
    assert_published(next_w, expected_next_w)
    assert_published(config["velocity"], expected_velocity)
    assert config["momentum"] == 0.9


def test_rmsprop_matches_assignment():
    w, dw = _wd()
    cache = np.linspace(0.6, 0.9, num=N * D).reshape(N, D)
    next_w, config = rmsprop(w, dw, {"learning_rate": 1e-2, "cache": cache})
    expected_next_w = np.asarray([
        [-0.39223849, -0.34037513, -0.28849239, -0.23659121, -0.18467247],
        [-0.132737, -0.08078555, -0.02881884, 0.02316247, 0.07515774],
        [0.12716641, 0.17918792, 0.23122175, 0.28326742, 0.33532447],
        [0.38739248, 0.43947102, 0.49155973, 0.54365823, 0.59576619]])
    expected_cache = np.asarray([
        [0.5976, 0.6126277, 0.6277108, 0.64284931, 0.65804321],
        [0.67329252, 0.68859723, 0.70395734, 0.71937285, 0.73484377],
        [0.75037008, 0.7659518, 0.78158892, 0.79728144, 0.81302936],
        [0.82883269, 0.84469141, 0.86060554, 0.87657507, 0.8926]])
    assert_published(next_w, expected_next_w)
    assert_published(config["cache"], expected_cache)


def test_adam_matches_assignment():
    w, dw = _wd()
    m = np.linspace(0.6, 0.9, num=N * D).reshape(N, D)
    v = np.linspace(0.7, 0.5, num=N * D).reshape(N, D)
    next_w, config = adam(w, dw, {"learning_rate": 1e-2, "m": m, "v": v, "t": 5})
    expected_next_w = np.asarray([
        [-0.40094747, -0.34836187, -0.29577703, -0.24319299, -0.19060977],
        [-0.1380274, -0.08544591, -0.03286534, 0.01971428, 0.0722929],
        [0.1248705, 0.17744702, 0.23002243, 0.28259667, 0.33516969],
        [0.38774145, 0.44031188, 0.49288093, 0.54544852, 0.59801459]])
    expected_v = np.asarray([
        [0.69966, 0.68908382, 0.67851319, 0.66794809, 0.65738853],
        [0.64683452, 0.63628604, 0.6257431, 0.61520571, 0.60467385],
        [0.59414753, 0.58362676, 0.57311152, 0.56260183, 0.55209767],
        [0.54159906, 0.53110598, 0.52061845, 0.51013645, 0.49966]])
    expected_m = np.asarray([
        [0.48, 0.49947368, 0.51894737, 0.53842105, 0.55789474],
        [0.57736842, 0.59684211, 0.61631579, 0.63578947, 0.65526316],
        [0.67473684, 0.69421053, 0.71368421, 0.73315789, 0.75263158],
        [0.77210526, 0.79157895, 0.81105263, 0.83052632, 0.85]])
    assert_published(next_w, expected_next_w)
    assert_published(config["v"], expected_v)
    assert_published(config["m"], expected_m)
    assert config["t"] == 6


def test_adam_first_step_is_lr_times_sign():
    """With zero moments, bias correction makes the first step lr * dw / (|dw| + eps)."""
    w, dw = _wd()
    next_w, config = adam(w, dw, {"learning_rate": 0.01})
    np.testing.assert_allclose(w - next_w, 0.01 * dw / (np.abs(dw) + 1e-8), rtol=1e-9, atol=1e-12)
    assert config["t"] == 1 and config["beta1"] == 0.9 and config["beta2"] == 0.999


@pytest.mark.parametrize("name", sorted(UPDATE_RULES))
def test_rules_keep_float32_and_do_not_mutate(name):
    rule = get_update_rule(name)
    w, dw = (a.astype(np.float32) for a in _wd())
    w0, dw0 = w.copy(), dw.copy()
    config = {}
    for _ in range(3):
        w, config = rule(w, dw, config)
    assert w.dtype == np.float32
    for key, value in config.items():
        if isinstance(value, np.ndarray):
            assert value.dtype == np.float32, key
    # the inputs of a step are never written to (the Solver relies on it to roll a step back)
    before = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in config.items()}
    rule(w0, dw0, config)
    np.testing.assert_array_equal(dw0, dw)
    for k, v in before.items():
        np.testing.assert_array_equal(config[k], v)


@pytest.mark.parametrize("rule, config, match", [
    (sgd, {"learning_rate": -1.0}, r"learning_rate.*> 0, got -1.0"),
    (sgd, {"learning_rate": float("nan")}, r"learning_rate"),
    (sgd, {"learning_rate": "fast"}, r"must be a number, got 'fast'"),
    (sgd_momentum, {"momentum": 1.0}, r"momentum.*\[0, 1\), got 1.0"),
    (rmsprop, {"decay_rate": -0.1}, r"decay_rate"),
    (adam, {"beta2": 2.0}, r"beta2"),
    (adam, {"epsilon": 0.0}, r"epsilon"),
    (adam, {"t": -1}, r"config\['t'\].*non-negative integer"),
    (adam, {"m": np.zeros((2, 2))}, r"config\['m'\] has shape \(2, 2\) but w has shape \(4, 5\)"),
    (sgd, [], r"config must be a dict"),
])
def test_bad_config(rule, config, match):
    w, dw = _wd()
    with pytest.raises(ValueError, match=match):
        rule(w, dw, config)


def test_bad_shapes_and_names():
    w, dw = _wd()
    with pytest.raises(ValueError, match=r"w has shape \(4, 5\) but dw has shape \(5, 4\)"):
        sgd(w, dw.T)
    with pytest.raises(ValueError, match="unknown update rule 'adamw'.*adam"):
        get_update_rule("adamw")


def test_register_update_rule():
    def halve(w, dw, config=None):
        return w / 2, config or {}

    register_update_rule("test_halve", halve)
    try:
        assert get_update_rule("test_halve") is halve
    finally:
        UPDATE_RULES.pop("test_halve")
    with pytest.raises(ValueError, match="must be callable"):
        register_update_rule("bad", 3)
