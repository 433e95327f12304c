"""Bad input is a ValueError naming the shapes and parameters, in every backend,
before any kernel runs."""
import numpy as np
import pytest

CP = {"stride": 1, "pad": 1}
PP = {"pool_height": 2, "pool_width": 2, "stride": 2}


def conv_args(**over):
    args = dict(x=np.zeros((2, 3, 8, 8)), w=np.zeros((4, 3, 3, 3)), b=np.zeros(4), conv_param=dict(CP))
    args.update(over)
    return args


@pytest.mark.parametrize("over, match", [
    (dict(x=np.zeros((3, 8, 8))), r"x must have 4 dimensions, got shape \(3, 8, 8\)"),
    (dict(w=np.zeros((4, 2, 3, 3))), r"channel mismatch: x has shape \(2, 3, 8, 8\) \(C=3\) but w has shape \(4, 2, 3, 3\) \(C=2\)"),
    (dict(b=np.zeros(5)), r"b must have shape \(4,\)"),
    (dict(conv_param={"stride": 2, "pad": 0}), r"stride 2 does not tile the input along height: .*= 5 is not a multiple of 2"),
    (dict(conv_param={"stride": 0, "pad": 1}), r"conv_param\['stride'\] must be >= 1, got 0"),
    (dict(conv_param={"stride": 1, "pad": -1}), r"conv_param\['pad'\] must be >= 0, got -1"),
    (dict(conv_param={"stride": 1}), r"conv_param is missing 'pad'"),
    (dict(conv_param={"stride": float("nan"), "pad": 1}), r"conv_param\['stride'\] must be an integer"),
    (dict(w=np.zeros((4, 3, 11, 11))), r"filter height 11 is larger than the padded input height 10"),
    (dict(x=np.zeros((2, 3, 8, 8), np.float32)), r"arrays must share one dtype, got x=float32, w=float64, b=float64"),
    (dict(x=np.zeros((2, 3, 8, 8), np.int64)), r"x must be float32 or float64, got dtype int64"),
])
def test_conv_rejects_bad_input(nb, over, match):
    with pytest.raises(ValueError, match=match):
        nb.Conv.forward(**conv_args(**over))


@pytest.mark.parametrize("x, pp, match", [
    (np.zeros((1, 1, 3, 3)), {"pool_height": 4, "pool_width": 2, "stride": 1}, r"pool height 4 is larger than the input height 3"),
    (np.zeros((1, 1, 5, 5)), PP, r"stride 2 does not tile the input along height"),
    (np.zeros((1, 4, 4)), PP, r"x must have 4 dimensions"),
    (np.zeros((1, 1, 4, 4)), {"pool_height": 2, "stride": 2}, r"pool_param is missing 'pool_width'"),
])
def test_maxpool_rejects_bad_input(nb, x, pp, match):
    with pytest.raises(ValueError, match=match):
        nb.MaxPool.forward(x, pp)


@pytest.mark.parametrize("bn_param, gamma, match", [
    ({"mode": "train", "eps": float("nan")}, np.ones(3), r"bn_param\['eps'\] must be finite"),
    ({"mode": "train", "momentum": float("inf")}, np.ones(3), r"bn_param\['momentum'\] must be finite"),
    ({"mode": "train", "eps": 0.0}, np.ones(3), r"bn_param\['eps'\] must be > 0"),
    ({"mode": "eval"}, np.ones(3), r"bn_param\['mode'\] must be 'train' or 'test', got 'eval'"),
    ({"mode": "test"}, np.ones(3), r"needs bn_param\['running_mean'\]"),
    ({"mode": "train"}, np.ones(4), r"gamma must have shape \(3,\) for x of shape \(5, 3\)"),
    ({"mode": "train", "running_mean": np.zeros(2)}, np.ones(3), r"bn_param\['running_mean'\] has shape \(2,\)"),
])
def test_batchnorm_rejects_bad_input(nb, bn_param, gamma, match):
    with pytest.raises(ValueError, match=match):
        nb.BatchNorm.forward(np.zeros((5, 3)), gamma, np.zeros(3), bn_param)


def test_spatial_batchnorm_rejects_channel_mismatch(nb):
    with pytest.raises(ValueError, match=r"gamma must have shape \(2,\) for x of shape \(1, 2, 3, 3\) \(channels C\)"):
        nb.SpatialBatchNorm.forward(np.zeros((1, 2, 3, 3)), np.ones(3), np.zeros(3), {"mode": "train"})


def test_linear_rejects_mismatched_weights(nb):
    with pytest.raises(ValueError, match=r"x of shape \(2, 3, 4\) flattens to \(N=2, D=12\) but w has shape \(10, 5\)"):
        nb.Linear.forward(np.zeros((2, 3, 4)), np.zeros((10, 5)), np.zeros(5))


@pytest.mark.parametrize("y, match", [
    (np.array([0, 1, 10]), r"labels must be in \[0, 10\), got min 0 and max 10"),
    (np.array([0, 1]), r"y must have shape \(3,\)"),
    (np.array([0.0, 1.0, 2.0]), r"y must hold integer class labels"),
])
def test_softmax_rejects_bad_labels(nb, y, match):
    with pytest.raises(ValueError, match=match):
        nb.softmax_loss(np.zeros((3, 10)), y)


def test_backward_rejects_wrong_dout(nb):
    _, cache = nb.Conv.forward(**conv_args())
    with pytest.raises(ValueError, match=r"Conv.backward: dout has shape \(2, 4, 7, 7\) but the forward output had shape \(2, 4, 8, 8\)"):
        nb.Conv.backward(np.zeros((2, 4, 7, 7)), cache)
    _, cache = nb.MaxPool.forward(np.zeros((1, 1, 4, 4)), PP)
    with pytest.raises(ValueError, match=r"dout has dtype float32 but the forward pass ran in float64"):
        nb.MaxPool.backward(np.zeros((1, 1, 2, 2), np.float32), cache)


def test_non_array_input(nb):
    with pytest.raises(ValueError, match=r"x must be an array, got list"):
        nb.ReLU.forward([1.0, -1.0])


@pytest.mark.parametrize("call", [
    lambda nb: nb.ReLU.forward(np.array(1.0)),
    lambda nb: nb.Linear.forward(np.array(1.0), np.zeros((1, 2)), np.zeros(2)),
])
def test_zero_dimensional_input_is_refused(nb, call):
    with pytest.raises(ValueError, match=r"x must have at least one dimension, got a 0-d array"):
        call(nb)


@pytest.mark.parametrize("mode", ["train", "test"])
@pytest.mark.parametrize("layer, x", [("BatchNorm", np.zeros((0, 3))), ("BatchNorm", np.zeros((2, 0))),
                                      ("SpatialBatchNorm", np.zeros((0, 3, 2, 2)))])
def test_batchnorm_refuses_an_empty_batch_in_both_modes(nb, layer, x, mode):
    C = x.shape[1]
    bn_param = {"mode": mode, "running_mean": np.zeros(C), "running_var": np.ones(C)}
    with pytest.raises(ValueError, match=r"batch norm needs a non-empty x \(at least one sample and one of the "
                                         + r"(features D|channels C)\), got shape \(" + str(x.shape[0])):
        getattr(nb, layer).forward(x, np.ones(C), np.zeros(C), bn_param)


@pytest.mark.parametrize("key", ["running_mean", "running_var"])
def test_batchnorm_running_stats_must_be_arrays(nb, key):
    bn_param = {"mode": "test", "running_mean": np.zeros(3), "running_var": np.ones(3)}
    bn_param[key] = [0.0, 1.0, 2.0]
    with pytest.raises(ValueError, match=rf"bn_param\['{key}'\] must be an array, got list \(convert it with numpy"):
        nb.BatchNorm.forward(np.zeros((5, 3)), np.ones(3), np.zeros(3), bn_param)
    bn_param[key] = np.zeros(3, np.int64)
    with pytest.raises(ValueError, match=rf"bn_param\['{key}'\] must be float32 or float64, got dtype int64"):
        nb.BatchNorm.forward(np.zeros((5, 3)), np.ones(3), np.zeros(3), bn_param)
