"""The Solver: minibatch training with the assignment's keyword arguments.

>>> # solver = Solver(model, {"X_train": X, "y_train": y, "X_val": Xv, "y_val": yv},
>>> #                 update_rule="adam", optim_config={"learning_rate": 1e-3},
>>> #                 lr_decay=0.95, batch_size=100, num_epochs=10, seed=0)
>>> # solver.train()                 # or solver.train(time_limit=60.0)
>>> # solver.best_val_acc, solver.loss_history, solver.val_acc_history

Training state is exact and resumable: ``state_dict()`` / ``load_state_dict()``
carry the weights, batch-norm running statistics, optimizer state, epoch,
iteration, the random generators' states and the histories, so a run
interrupted (Ctrl-C raises KeyboardInterrupt out of ``train()`` at a clean
point) and resumed ends with the same weights as an uninterrupted one.

A step is all or nothing: an interrupt or a non-finite loss inside a step
rolls back the minibatch generator and the running statistics the forward pass
touched, and the new weights are committed with SIGINT held off.

History: ``solver.record``, a ``History`` (``to_dict()`` is what ``history()``
returns, history.json holds and checkpoints store, one list per key):
  loss       the training loss of every iteration
  epoch, iteration, time, lr, train_acc, val_acc
             one entry per accuracy check (at every epoch end, and when a time
             limit stops training mid-epoch): the (fractional) epoch, the
             iterations done, the training seconds spent (steps only), the
             learning rate used, and the two accuracies
``loss_history``, ``train_acc_history`` and ``val_acc_history`` are the
assignment's names for three of them.
Hooks for extensions: ``schedule(solver)`` runs before every step (set the
learning rate with ``solver.set_learning_rate``; it must depend only on solver
state, such as ``solver.iteration`` or ``solver.train_time``, to stay
resumable); ``augment(X, y, rng)`` transforms each minibatch with the solver's
generator; ``on_iteration(solver)`` and ``on_epoch_end(solver)`` are called
after each committed step and epoch end (progress displays, checkpoints).
A model with a ``prepare(X_train)`` method (data-dependent initialisation, e.g.
FastNet's whitening stem) gets it called once, when the Solver is built, before
any training time is counted; ``load_state_dict`` then overwrites what it set.
Parameters named in ``model.frozen`` are never updated (and need no gradient).

Recipe options: an optimizer config key ``lr_scale`` multiplies the learning rate that
``set_learning_rate`` gives that parameter (per-group rates, e.g. numbaconv.recipe's 64x for
BN biases); ``learning_rate`` reports the unscaled one. ``lookahead_every=k`` pulls the
weights towards a running average every k steps (airbench's lookahead: slow = d * slow +
(1 - d) * w, then w = slow, with d = ``lookahead_decay`` ** k times the training progress
cubed, so it moves freely early and averages strongly at the end); the averages live in
each parameter's optimizer config (key "lookahead"), so checkpoints keep them. An augment
hook with ``per_image = True`` is also given ``index`` (the minibatch's image indices),
``epoch`` (``iteration // iterations_per_epoch``) and ``seed`` (``augment_seed``, drawn
from the Solver's seed and kept in its state), for augmentations that depend on the image
and epoch (alternating flips) and stay reproducible on resume. ``sampling`` decides which images make a minibatch:
"replacement" (the assignment's: each minibatch drawn at random with replacement, so an "epoch"
of steps sees about 63% of the images) or "epochs" (each epoch a fresh permutation of the
training set, cut into consecutive minibatches, the last ``N % batch_size`` images of the
permutation left out: every image once per epoch, as PyTorch's shuffling DataLoader with
drop_last and airbench; epoch e's order is ``epoch_permutation(shuffle_seed, e, N)``, so a
resumed run continues it exactly). An augment hook with
``takes_backend = True`` is also given ``backend`` (the model's backend name), so its kernel
is that backend's.

Device-resident training (a model on the cuda backend): inside ``train()`` and ``warmup()``
the parameters, their optimizer state (every rule in numbaconv.optim, as kernels), lookahead
averages, BN running statistics and the best weights live on the GPU; the training split is
uploaded once, in the model's dtype (the Solver receives preprocessed floats, so the gather
reads exactly what the host path would), and so is the validation split. A step draws its
minibatch indices and augmentation (an augment hook with a ``draw`` method, as
numbaconv.recipe's) with the Solver's generator, as on every backend, copies that plan to
the device (its one host->device copy), gathers and augments the batch in one kernel, and
copies back only the loss (its one device->host copy). Accuracy checks run in device batches
and bring back predictions. When ``train()`` returns (or raises), everything is back in
NumPy arrays; ``state_dict()``, ``training_weights()`` and ``best_params`` copy to the host
when asked during training (checkpoints), only then.
"""
from __future__ import annotations

import contextlib
import functools
import math
import signal
import time
from dataclasses import dataclass, field, fields
from typing import Any, Callable

import numpy as np

from .optim import DEFAULTS, get_update_rule



@dataclass
class History:
    """What training recorded: the loss of every step, and one entry per accuracy
    check in each of the other lists (they always have the same length)."""
    loss: list = field(default_factory=list)
    epoch: list = field(default_factory=list)       # fractional epoch of each check
    iteration: list = field(default_factory=list)   # steps done at each check
    time: list = field(default_factory=list)        # training seconds spent at each check
    lr: list = field(default_factory=list)          # learning rate in use at each check
    train_acc: list = field(default_factory=list)
    val_acc: list = field(default_factory=list)

    CHECK_KEYS = ("epoch", "iteration", "time", "lr", "train_acc", "val_acc")
    INT_KEYS = ("iteration",)   # stored as int64, the rest as float64

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def add_check(self, epoch: float, iteration: int, time: float, lr: float, train_acc: float,
                  val_acc: float) -> None:
        self.epoch.append(float(epoch))
        self.iteration.append(int(iteration))
        self.time.append(float(time))
        self.lr.append(float(lr))
        self.train_acc.append(float(train_acc))
        self.val_acc.append(float(val_acc))

    def to_dict(self) -> dict:
        """Plain lists (copies), keyed as in history.json and a checkpoint's history group."""
        return {k: list(getattr(self, k)) for k in self.keys()}

    @classmethod
    def from_dict(cls, d: dict) -> "History":
        """The inverse of ``to_dict`` (e.g. a checkpoint's history); a ValueError names
        a missing key, a value that is not a list of numbers, or check lists of unequal length."""
        if not isinstance(d, dict):
            raise ValueError(f"a history must be a dict of lists, got {type(d).__name__}")
        missing = [k for k in cls.keys() if k not in d]
        if missing:
            raise ValueError(f"history has no {', '.join(missing)} list")
        out = {}
        for k in cls.keys():
            values = d[k]
            if isinstance(values, np.ndarray):
                values = values.tolist()
            if not isinstance(values, (list, tuple)) or not all(
                    isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
                    for v in values):
                raise ValueError(f"history[{k!r}] must be a list of numbers, got {str(values)[:60]}")
            out[k] = [int(v) for v in values] if k in cls.INT_KEYS else [float(v) for v in values]
        lengths = {k: len(out[k]) for k in cls.CHECK_KEYS}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"history lists of accuracy checks differ in length: {lengths}")
        return cls(**out)


class NonFiniteLossError(FloatingPointError):
    """The loss of a step was NaN or infinite; the step was rolled back."""

    def __init__(self, loss: float, iteration: int, epoch: int):
        self.loss, self.iteration, self.epoch = loss, iteration, epoch
        super().__init__(f"the training loss became {loss} at iteration {iteration + 1} (epoch {epoch + 1}); "
                         f"the step was not applied. A lower learning rate usually helps.")


@contextlib.contextmanager
def _sigint_deferred():
    """Hold a Ctrl-C that arrives inside the block and deliver it after, so a
    multi-part update is never left half done. (Python runs signal handlers in
    the main thread only; elsewhere this is a no-op.)"""
    received = []
    try:
        old = signal.signal(signal.SIGINT, lambda signum, frame: received.append(frame))
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
        if received and old is not signal.SIG_IGN:
            if callable(old):
                old(signal.SIGINT, received[0])
            else:  # SIG_DFL or a handler installed from C: behave like Python's default
                raise KeyboardInterrupt


def _get(data: Any, key: str):
    if isinstance(data, dict):
        if key not in data:
            raise ValueError(f"data is missing {key!r} (got keys {sorted(data)})")
        return data[key]
    if not hasattr(data, key):
        raise ValueError(f"data has no attribute {key!r}")
    return getattr(data, key)


def _check_split(X, y, split: str):
    if not hasattr(X, "shape") or X.ndim != 4:
        raise ValueError(f"X_{split} must be an array (N, C, H, W), got {getattr(X, 'shape', type(X).__name__)}")
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != X.shape[0]:
        raise ValueError(f"y_{split} must have shape ({X.shape[0]},) to match X_{split} {tuple(X.shape)}, got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"y_{split} must hold integer labels, got dtype {y.dtype}")
    if X.shape[0] < 1:
        raise ValueError(f"the {split} split is empty: X_{split} has shape {tuple(X.shape)}")
    return X, y


def _opt_int(name: str, value, allow_none: bool = False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer{' or None' if allow_none else ''}, got {value!r}")
    return int(value)


SAMPLINGS = ("replacement", "epochs")   # how minibatches are drawn (module docstring)


def _sampling(value) -> str:
    if not isinstance(value, str) or value not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {', '.join(map(repr, SAMPLINGS))}, got {value!r}")
    return value


def _on_device(a) -> bool:
    """A numba device array (the cuda backend's), not a NumPy one."""
    return not isinstance(a, np.ndarray) and hasattr(a, "copy_to_host")


def _copy(a):
    """A copy where ``a`` lives: a device array's stays on the device (no host transfer)."""
    if _on_device(a):
        from .cuda.training import copy

        return copy(a)
    return np.array(a, copy=True)


def _copy_bn(bn_params: list[dict]) -> list[dict]:
    return [{k: _copy(bp[k]) for k in ("running_mean", "running_var") if bp.get(k) is not None}
            for bp in bn_params]


def _restore_bn(bn_params: list[dict], saved: list[dict]) -> None:
    for bp, s in zip(bn_params, saved):
        for k in ("running_mean", "running_var"):
            if k in s:
                bp[k] = _copy(s[k])
            else:
                bp.pop(k, None)


def _map_arrays(tree, fn):
    """``tree`` (dicts and lists of arrays and numbers, or None) with ``fn`` applied to every array."""
    if isinstance(tree, dict):
        return {k: _map_arrays(v, fn) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_map_arrays(v, fn) for v in tree]
    if isinstance(tree, tuple):
        return tuple(_map_arrays(v, fn) for v in tree)
    if isinstance(tree, np.ndarray) or _on_device(tree):
        return fn(tree)
    return tree


def evaluate_accuracy(model, X, y, batch_size: int = 100) -> tuple[float, np.ndarray]:
    """(accuracy, per-class accuracy over model.num_classes; NaN for a class absent from y)."""
    X, y = _check_split(X, y, "eval")
    preds = model.predict(X, batch_size=batch_size)
    correct = preds == y
    per_class = np.full(model.num_classes, np.nan)
    for c in range(model.num_classes):
        mask = y == c
        if mask.any():
            per_class[c] = float(correct[mask].mean())
    return float(correct.mean()), per_class


def stream_seeds(seed) -> tuple:
    """The Solver's random streams from its ``seed``: (minibatch/augmentation SeedSequence, accuracy
    checks' SeedSequence, augment_seed, shuffle_seed). SeedSequence children go by position, so a
    stream added at the end leaves the earlier ones (and runs recorded with them) unchanged."""
    train_seq, eval_seq, aug_seq, shuffle_seq = np.random.SeedSequence(seed).spawn(4)
    return (train_seq, eval_seq, int(aug_seq.generate_state(1, dtype=np.uint32)[0]),
            int(shuffle_seq.generate_state(1, dtype=np.uint32)[0]))


@functools.lru_cache(maxsize=2)   # an epoch's steps read one permutation (read-only, so it can be shared)
def epoch_permutation(shuffle_seed: int, epoch: int, n: int) -> np.ndarray:
    """The order of the ``n`` training images in epoch ``epoch`` under ``sampling="epochs"``."""
    order = np.random.Generator(np.random.PCG64([int(shuffle_seed), int(epoch)])).permutation(n)
    order.flags.writeable = False
    return order


def epoch_minibatch(shuffle_seed: int, step: int, n: int, batch_size: int) -> np.ndarray:
    """The images of step ``step`` (counted from 0) under ``sampling="epochs"``: slice ``step % k``
    of epoch ``step // k``'s permutation, k = max(n // batch_size, 1) steps an epoch."""
    epoch, j = divmod(int(step), max(n // batch_size, 1))
    return epoch_permutation(shuffle_seed, epoch, n)[j * batch_size:(j + 1) * batch_size]


def minibatch_indices(sampling: str, step: int, n: int, batch_size: int, rng, shuffle_seed: int) -> np.ndarray:
    """The images of step ``step`` under ``sampling`` (module docstring): "replacement" draws them from
    ``rng``, "epochs" takes ``epoch_minibatch``. The Solver's rule, also followed by numbaconv.torch_recipe."""
    if sampling == "replacement":
        return rng.choice(n, batch_size)
    return epoch_minibatch(shuffle_seed, step, n, batch_size)


class Solver:
    """Trains a model (``params``, ``loss(X, y=None)``) on ``data`` (a dict or an
    object with X_train, y_train, X_val, y_val).

    Keyword arguments (the assignment's, plus seed and hooks):
      update_rule ("sgd"), optim_config ({}), lr_decay (1.0, applied at each
      epoch end), batch_size (100), num_epochs (10), print_every (10),
      verbose (True), num_train_samples (1000: train accuracy is checked on a
      random subset of this size; None for all), num_val_samples (None: all),
      checkpoint_name (None; else ``{name}_epoch_{e}.h5`` after every epoch),
      seed (None: fresh entropy) for minibatch sampling, sampling ("replacement";
      or "epochs"), schedule, augment, on_iteration, on_epoch_end, lookahead_every,
      lookahead_decay (see the module docstring).
    """

    def __init__(self, model, data, **kwargs):
        self.model = model
        self.X_train, self.y_train = _check_split(_get(data, "X_train"), _get(data, "y_train"), "train")
        self.X_val, self.y_val = _check_split(_get(data, "X_val"), _get(data, "y_val"), "val")
        if callable(getattr(model, "prepare", None)):
            model.prepare(self.X_train)

        self.update_rule_name = kwargs.pop("update_rule", "sgd")
        if not isinstance(self.update_rule_name, str):
            raise ValueError(f"update_rule must be the name of a rule in numbaconv.optim, got {self.update_rule_name!r}")
        self.update_rule = get_update_rule(self.update_rule_name)
        optim_config = kwargs.pop("optim_config", None) or {}
        if not isinstance(optim_config, dict):
            raise ValueError(f"optim_config must be a dict, got {type(optim_config).__name__}")
        self.optim_config = dict(optim_config)
        self.lr_decay = kwargs.pop("lr_decay", 1.0)
        try:
            self.lr_decay = float(self.lr_decay)
        except (TypeError, ValueError):
            raise ValueError(f"lr_decay must be a number in (0, 1], got {self.lr_decay!r}") from None
        if not 0.0 < self.lr_decay <= 1.0:
            raise ValueError(f"lr_decay must be in (0, 1], got {self.lr_decay!r}")
        self.batch_size = _opt_int("batch_size", kwargs.pop("batch_size", 100))
        self.num_epochs = _opt_int("num_epochs", kwargs.pop("num_epochs", 10))
        self.num_train_samples = _opt_int("num_train_samples", kwargs.pop("num_train_samples", 1000), True)
        self.num_val_samples = _opt_int("num_val_samples", kwargs.pop("num_val_samples", None), True)
        self.checkpoint_name = kwargs.pop("checkpoint_name", None)
        self.print_every = _opt_int("print_every", kwargs.pop("print_every", 10))
        self.verbose = bool(kwargs.pop("verbose", True))
        seed = kwargs.pop("seed", None)
        self.schedule: Callable | None = kwargs.pop("schedule", None)
        self.augment: Callable | None = kwargs.pop("augment", None)
        self.on_iteration: Callable | None = kwargs.pop("on_iteration", None)
        self.on_epoch_end: Callable | None = kwargs.pop("on_epoch_end", None)
        self.lookahead_every = _opt_int("lookahead_every", kwargs.pop("lookahead_every", None), True)
        self.lookahead_decay = kwargs.pop("lookahead_decay", 0.95)
        if isinstance(self.lookahead_decay, bool) or not isinstance(self.lookahead_decay, (int, float)) \
                or not 0.0 <= self.lookahead_decay < 1.0:
            raise ValueError(f"lookahead_decay must be a number in [0, 1), got {self.lookahead_decay!r}")
        self.lookahead_decay = float(self.lookahead_decay)
        self.sampling = _sampling(kwargs.pop("sampling", "replacement"))
        if kwargs:
            raise ValueError(f"unrecognized Solver arguments: {', '.join(sorted(kwargs))}")
        # Two generators, so accuracy checks (extra ones included) never shift the
        # minibatch stream: one for minibatches and augmentation, one for checks.
        # Two more seed per-image augmentation and the epochs' permutations (stream_seeds).
        train_seq, eval_seq, self.augment_seed, self.shuffle_seed = stream_seeds(seed)
        self.rng = np.random.Generator(np.random.PCG64(train_seq))
        self.eval_rng = np.random.Generator(np.random.PCG64(eval_seq))
        self._reset()

    # ------------------------------------------------------------------ state
    def _reset(self) -> None:
        self.epoch = 0              # completed epochs
        self.iteration = 0          # committed steps
        self.train_time = 0.0       # seconds spent in steps (not in checks)
        self.last_step_time = 0.0
        self.best_val_acc = -1.0
        self.best_epoch = None
        self.best_params: dict | None = None
        self.best_bn: list | None = None
        self.record = History()
        self.stop_reason: str | None = None
        self._final = None          # (params, bn) training continues from, once best is swapped in
        self._warm = False
        # cuda: the backend's device ops (numbaconv.cuda.training); state is on the device while _resident
        self._ops = getattr(getattr(self.model, "nb", None), "device_ops", None)
        self._resident = False
        self._device_splits: dict = {}   # id(X) -> (X, X on the device, y on the device)
        self.optim_configs = {p: dict(self.optim_config) for p in self.model.params}
        for p, cfg in self.optim_configs.items():  # fail now, not at the first step, on bad hyperparameters
            self.update_rule(np.zeros(1, dtype=self.model.params[p].dtype),
                             np.zeros(1, dtype=self.model.params[p].dtype), dict(cfg))

    @property
    def best_params(self) -> dict | None:
        """The best weights on validation (NumPy arrays: copied from the device during cuda training)."""
        return self._hosted(self._best_params)

    @best_params.setter
    def best_params(self, value) -> None:
        self._best_params = value

    @property
    def best_bn(self) -> list | None:
        return self._hosted(self._best_bn)

    @best_bn.setter
    def best_bn(self, value) -> None:
        self._best_bn = value

    def _hosted(self, tree):
        """``tree`` with its device arrays copied to the host (counted); unchanged when none are."""
        if not self._resident:
            return tree
        from .cuda.training import host

        return _map_arrays(tree, host)

    # ---------------------------------------------------------------- residency (cuda)
    def _move_state(self, fn) -> None:
        """Apply ``fn`` to every array of the training state: weights, BN statistics, optimizer
        state, best weights and the weights training continues from."""
        self.model.params = _map_arrays(self.model.params, fn)
        for bp in self.model.bn_params:
            for k in ("running_mean", "running_var"):
                if bp.get(k) is not None:
                    bp[k] = fn(bp[k])
        self.optim_configs = _map_arrays(self.optim_configs, fn)
        self._best_params, self._best_bn = _map_arrays(self._best_params, fn), _map_arrays(self._best_bn, fn)
        self._final = _map_arrays(self._final, fn)

    @contextlib.contextmanager
    def _device_resident(self):
        """On the cuda backend: the training state on the device inside the block, back in NumPy
        arrays after it (also when it raises). Elsewhere (or nested) nothing happens."""
        if self._ops is None or self._resident:
            yield
            return
        ops = self._ops
        self._move_state(lambda a: a if ops.is_device(a) else ops.upload(a))
        self._resident = True
        self._device_split(self.X_train, self.y_train)   # once per Solver (kept while X_train is the same array)
        try:
            yield
        finally:
            with _sigint_deferred():
                self._resident = False
                self._move_state(ops.host)

    def _device_split(self, X, y):
        """(X, y) on the device, uploaded once per array (X in the model's dtype, y checked and int64)."""
        hit = self._device_splits.get(id(X))
        if hit is None or hit[0] is not X:
            ops = self._ops
            y = ops.check_labels(y, self.model.num_classes)
            hit = self._device_splits[id(X)] = (X, ops.upload(X, self.model.dtype), ops.upload(y, np.int64))
        return hit[1], hit[2]

    def _device_gather(self, X, y, idx, oy=None, ox=None, mirror=None, pad: int = 0):
        """Images idx of the resident (X, y), shifted/mirrored on the device: one plan copied up."""
        zeros = np.zeros(len(idx), dtype=np.int64)
        plan = np.concatenate([np.asarray(a if a is not None else zeros, dtype=np.int64)
                               for a in (idx, oy, ox, mirror)])
        return self._ops.gather(*self._device_split(X, y), plan, pad)

    def _augment_kwargs(self, idx) -> dict:
        kwargs = {}
        if getattr(self.augment, "per_image", False):
            kwargs.update(index=idx, epoch=self.iteration // self.iterations_per_epoch, seed=self.augment_seed)
        if getattr(self.augment, "takes_backend", False):
            kwargs["backend"] = self.model.backend
        return kwargs

    def _minibatch(self, idx):
        """The step's (X, y) for indices idx, augmented. On the device: the augmentation's draws
        (made here with the Solver's generator, in the host path's order) go up with the indices."""
        aug = self.augment
        if self._resident:
            draw = getattr(aug, "draw", None)
            if aug is None or draw is not None:
                oy, ox, mirror = draw(len(idx), self.rng, **self._augment_kwargs(idx)) if aug else (None,) * 3
                return self._device_gather(self.X_train, self.y_train, idx, oy, ox, mirror,
                                           getattr(aug, "pad", 0) if aug else 0)
        X_batch, y_batch = self.X_train[idx], self.y_train[idx]
        if aug is not None:
            X_batch, y_batch = aug(X_batch, y_batch, self.rng, **self._augment_kwargs(idx))
        if self._resident:   # a hook without a device form ran on the host: its batch goes up (counted)
            X_batch, y_batch = self._ops.upload(X_batch, self.model.dtype), self._ops.upload(y_batch, np.int64)
        return X_batch, y_batch

    # The assignment's names for three of the history lists.
    @property
    def loss_history(self) -> list[float]:
        return self.record.loss

    @property
    def train_acc_history(self) -> list[float]:
        return self.record.train_acc

    @property
    def val_acc_history(self) -> list[float]:
        return self.record.val_acc

    @property
    def iterations_per_epoch(self) -> int:
        return max(self.X_train.shape[0] // self.batch_size, 1)

    @property
    def num_iterations(self) -> int:
        return self.num_epochs * self.iterations_per_epoch

    @property
    def learning_rate(self) -> float:
        cfgs = list(self.optim_configs.values())
        if cfgs and "learning_rate" in cfgs[0]:
            return float(cfgs[0]["learning_rate"]) / float(cfgs[0].get("lr_scale", 1.0))
        return float(DEFAULTS.get(self.update_rule_name, {}).get("learning_rate", float("nan")))

    def set_learning_rate(self, lr: float) -> None:
        for cfg in self.optim_configs.values():
            cfg["learning_rate"] = float(lr) * float(cfg.get("lr_scale", 1.0))

    def progress(self) -> float:
        """The fraction of training done, as the schedule measures it (its ``fraction``:
        time or iterations), else by iterations."""
        fraction = getattr(self.schedule, "fraction", None)
        t = fraction(self) if callable(fraction) else self.iteration / max(self.num_iterations, 1)
        return min(max(float(t), 0.0), 1.0)

    def _lookahead(self, params: dict, configs: dict) -> None:
        """Every ``lookahead_every`` steps (counted after this one), move the slow weights of each
        trained parameter towards its new value and reset the parameter to them (in place in the
        new ``params``/``configs`` of the step being committed)."""
        k = self.lookahead_every
        if not k or (self.iteration + 1) % k:
            return
        d = self.lookahead_decay ** k * self.progress() ** 3
        for p, w in params.items():
            slow = configs[p].get("lookahead")
            if slow is None:
                slow = w
            elif _on_device(w):
                slow = self._ops.lookahead(w, slow, d)
            else:
                slow = (d * slow + (1.0 - d) * w).astype(w.dtype)
            params[p] = slow
            configs[p]["lookahead"] = _copy(slow)

    def training_weights(self) -> tuple[dict, list]:
        """The (params, bn running stats) that training continues from (NumPy arrays: copied from
        the device during cuda training)."""
        if self._final is not None:
            return self._hosted(self._final)
        if self._resident:
            return self._hosted(self.model.params), self._hosted(_copy_bn(self.model.bn_params))
        return self.model.params, _copy_bn(self.model.bn_params)

    def _unswap(self) -> None:
        """Put the training weights back after train() swapped the best ones in."""
        if self._final is not None:
            params, bn = self._final
            self.model.params = {k: _copy(v) for k, v in params.items()}
            _restore_bn(self.model.bn_params, bn)
            self._final = None

    # ------------------------------------------------------------------ steps
    def _step(self) -> None:
        rng_state = self.rng.bit_generator.state
        bn_saved = _copy_bn(self.model.bn_params)
        start = time.perf_counter()
        try:
            if self.schedule is not None:
                self.schedule(self)
            idx = minibatch_indices(self.sampling, self.iteration, self.X_train.shape[0], self.batch_size, self.rng,
                                    self.shuffle_seed)
            X_batch, y_batch = self._minibatch(idx)
            loss, grads = self.model.loss(X_batch, y_batch)
            if not math.isfinite(loss):
                raise NonFiniteLossError(loss, self.iteration, self.epoch)
            new_params, new_configs = {}, {}
            frozen = getattr(self.model, "frozen", ())   # parameters training leaves alone
            rule = self.update_rule
            if self._resident:   # the same rule as kernels on the device arrays
                rule = functools.partial(self._ops.update, self.update_rule_name)
            for p, w in self.model.params.items():
                if p not in frozen:
                    new_params[p], new_configs[p] = rule(w, grads[p], dict(self.optim_configs[p]))
            self._lookahead(new_params, new_configs)
        except BaseException:
            self.rng.bit_generator.state = rng_state
            _restore_bn(self.model.bn_params, bn_saved)
            raise
        elapsed = time.perf_counter() - start
        with _sigint_deferred():
            self.model.params.update(new_params)
            self.optim_configs.update(new_configs)
            self.record.loss.append(float(loss))
            self.train_time += elapsed
            self.last_step_time = elapsed
            self.iteration += 1
        if self.verbose and self.iteration % self.print_every == 0:
            print(f"(Iteration {self.iteration} / {self.num_iterations}) loss: {loss:f}")

    def warmup(self) -> None:
        """One forward/backward pass on the first minibatch, with no effect on any
        state, so one-time costs (Numba compiling or loading its kernels) are not
        counted as training time. ``train(time_limit=...)`` calls it once."""
        with self._device_resident():
            bn_saved = _copy_bn(self.model.bn_params)
            try:
                n = min(self.batch_size, self.X_train.shape[0])
                if self._resident:   # the device path: uploads the split, compiles its kernels
                    self.model.loss(*self._device_gather(self.X_train, self.y_train, np.arange(n)))
                else:
                    self.model.loss(self.X_train[:n], self.y_train[:n])
            finally:
                _restore_bn(self.model.bn_params, bn_saved)
        self._warm = True

    def check_accuracy(self, X, y, num_samples: int | None = None, batch_size: int = 100) -> float:
        """Accuracy of the model on (X, y), on a random subset of ``num_samples`` if given."""
        N = X.shape[0]
        idx = self.eval_rng.choice(N, num_samples) if num_samples is not None and N > num_samples else None
        if self._resident:   # the split is (or goes, once) on the device; the subset is gathered there
            y = np.asarray(y)
            Xd = self._device_gather(X, y, idx)[0] if idx is not None else self._device_split(X, y)[0]
            return evaluate_accuracy(self.model, Xd, y if idx is None else y[idx], batch_size)[0]
        if idx is not None:
            X, y = X[idx], y[idx]
        return evaluate_accuracy(self.model, X, y, batch_size)[0]

    def _check(self, end_of_epoch: bool) -> None:
        eval_state = self.eval_rng.bit_generator.state
        try:
            train_acc = self.check_accuracy(self.X_train, self.y_train, self.num_train_samples)
            val_acc = self.check_accuracy(self.X_val, self.y_val, self.num_val_samples)
        except BaseException:
            self.eval_rng.bit_generator.state = eval_state
            raise
        with _sigint_deferred():
            lr = self.learning_rate
            if end_of_epoch:
                self.epoch += 1
                for cfg in self.optim_configs.values():
                    cfg["learning_rate"] = float(cfg.get("learning_rate", lr)) * self.lr_decay
            self.record.add_check(self.iteration / self.iterations_per_epoch, self.iteration, self.train_time, lr,
                                  train_acc, val_acc)
            if val_acc > self.best_val_acc:
                self.best_val_acc = val_acc
                self.best_epoch = self.record.epoch[-1]
                self._best_params = {k: _copy(v) for k, v in self.model.params.items()}
                self._best_bn = _copy_bn(self.model.bn_params)
        if self.verbose:
            print(f"(Epoch {self.record.epoch[-1]:g} / {self.num_epochs}) train acc: {train_acc:f}; val_acc: {val_acc:f}")

    def train(self, time_limit: float | None = None) -> str:
        """Train until ``num_epochs`` are done or, with ``time_limit`` (seconds of
        training steps, accumulated over resumes), until the next step would pass
        the limit (judged by the last step's duration). Then the best parameters
        on validation are swapped into the model (the training weights are kept
        for ``state_dict`` and for a later ``train()``). Returns the stop reason:
        "done" or "time_limit". KeyboardInterrupt and NonFiniteLossError propagate,
        leaving the solver at the last committed step."""
        if time_limit is not None:
            try:
                time_limit = float(time_limit)
            except (TypeError, ValueError):
                raise ValueError(f"time_limit must be a number of seconds > 0, got {time_limit!r}") from None
            if not time_limit > 0 or math.isnan(time_limit):
                raise ValueError(f"time_limit must be a number of seconds > 0, got {time_limit!r}")
        self._unswap()
        self.stop_reason = None
        with self._device_resident():
            return self._train(time_limit)

    def _train(self, time_limit: float | None) -> str:
        if time_limit is not None and not self._warm:
            # Otherwise a first step that compiles kernels would count (tens of seconds on a
            # fresh machine) and, taken as the next step's duration, end the run early.
            self.warmup()
        ipe = self.iterations_per_epoch
        while True:
            if self.epoch < self.iteration // ipe:   # an epoch ended (or its check was interrupted)
                self._check(end_of_epoch=True)
                if self.checkpoint_name:
                    self.save_checkpoint(f"{self.checkpoint_name}_epoch_{self.epoch}.h5")
                if self.on_epoch_end is not None:
                    self.on_epoch_end(self)
            if self.iteration >= self.num_iterations:
                self.stop_reason = "done"
                break
            if time_limit is not None and self.train_time + self.last_step_time > time_limit:
                self.stop_reason = "time_limit"
                if not self.record.iteration or self.record.iteration[-1] != self.iteration:
                    self._check(end_of_epoch=False)
                break
            self._step()
            if self.on_iteration is not None:
                self.on_iteration(self)
        if self._best_params is not None:
            self._final = (self.model.params, _copy_bn(self.model.bn_params))
            self.model.params = {k: _copy(v) for k, v in self._best_params.items()}
            _restore_bn(self.model.bn_params, self._best_bn)
        return self.stop_reason

    # ------------------------------------------------------------- persistence
    def history(self) -> dict:
        """Plain lists (the history.json format): ``self.record.to_dict()``."""
        return self.record.to_dict()

    def state_dict(self) -> dict:
        """Everything training continues from. Arrays are not copied (during cuda training: copied
        to the host, the one time they leave the device)."""
        params, bn = self.training_weights()
        return {
            "params": params, "bn": bn,
            "optim_configs": self._hosted(self.optim_configs),
            "best_params": self.best_params, "best_bn": self.best_bn,
            "history": self.history(),
            "settings": {
                "update_rule": self.update_rule_name, "optim_config": self.optim_config,
                "lr_decay": self.lr_decay, "batch_size": self.batch_size, "num_epochs": self.num_epochs,
                "num_train_samples": self.num_train_samples, "num_val_samples": self.num_val_samples,
                "print_every": self.print_every,
                "epoch": self.epoch, "iteration": self.iteration, "train_time": self.train_time,
                "last_step_time": self.last_step_time, "best_val_acc": self.best_val_acc,
                "best_epoch": self.best_epoch, "stop_reason": self.stop_reason,
                "rng_state": self.rng.bit_generator.state, "eval_rng_state": self.eval_rng.bit_generator.state,
                "augment_seed": self.augment_seed, "lookahead_every": self.lookahead_every,
                "lookahead_decay": self.lookahead_decay,
                "sampling": self.sampling, "shuffle_seed": self.shuffle_seed,
            },
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state_dict()`` output (e.g. read back from a checkpoint)."""
        record = History.from_dict(state["history"])   # checked before anything is changed
        s = state["settings"]
        self.update_rule_name = s["update_rule"]
        self.update_rule = get_update_rule(self.update_rule_name)
        self.optim_config = dict(s.get("optim_config") or {})
        self.lr_decay = float(s["lr_decay"])
        self.batch_size = _opt_int("batch_size", s["batch_size"])
        self.num_epochs = _opt_int("num_epochs", s["num_epochs"])
        self.num_train_samples = _opt_int("num_train_samples", s["num_train_samples"], True)
        self.num_val_samples = _opt_int("num_val_samples", s["num_val_samples"], True)
        self.print_every = _opt_int("print_every", s.get("print_every", self.print_every))
        self.epoch, self.iteration = int(s["epoch"]), int(s["iteration"])
        self.train_time, self.last_step_time = float(s["train_time"]), float(s["last_step_time"])
        self.best_val_acc = float(s["best_val_acc"])
        self.best_epoch = s.get("best_epoch")
        self.stop_reason = s.get("stop_reason")
        self.rng.bit_generator.state = s["rng_state"]
        self.eval_rng.bit_generator.state = s["eval_rng_state"]
        # absent from checkpoints written before these options: the values they trained with
        self.augment_seed = int(s.get("augment_seed", self.augment_seed))
        self.lookahead_every = _opt_int("lookahead_every", s.get("lookahead_every"), True)
        self.lookahead_decay = float(s.get("lookahead_decay", 0.95))
        self.sampling = _sampling(s.get("sampling", "replacement"))
        self.shuffle_seed = int(s.get("shuffle_seed", self.shuffle_seed))
        missing = set(self.model.params) ^ set(state["optim_configs"])
        if missing:
            raise ValueError(f"optimizer state does not match the model's parameters: {sorted(missing)}")
        self.optim_configs = {p: dict(c) for p, c in state["optim_configs"].items()}
        self._final = None
        self.model.params = {k: np.array(v, copy=True) for k, v in state["params"].items()}
        _restore_bn(self.model.bn_params, state["bn"])
        self.best_params = None if state.get("best_params") is None else dict(state["best_params"])
        self.best_bn = state.get("best_bn")
        self.record = record

    def save_checkpoint(self, path, which: str = "last", data_info: dict | None = None, extra: dict | None = None) -> None:
        """Write an HDF5 checkpoint (see numbaconv.checkpoint): "last" holds the
        training state to resume from, "best" the best weights on validation."""
        from .checkpoint import save_checkpoint

        save_checkpoint(path, self.model, solver=self, which=which, data_info=data_info, extra=extra)
