"""A training recipe's network and step in PyTorch CPU, for comparisons in the same process.

Used by ``numbaconv bench --op step`` and ``benchmarks/train_60s.py --against-torch``: the same
architecture as ``numbaconv.models.FastNet`` (the same frozen whitening stem, fitted by our
FastNet's ``prepare()`` on the same images; conv - BN - ReLU - pool blocks; global max pool;
linear), the same init scheme, augmentation function, minibatch stream, schedule, loss and
optimizer. PyTorch is optional (the ``bench`` extra); it is imported when a ``TorchRecipe`` is made.
The recipe options of issue #13 follow the table the same way: whitening with its negation (a ReLU
after the stem), dirac init, frozen BN scale, BN momentum (PyTorch's is 1 - ours), per-group learning
rates (``numbaconv.recipe.param_group`` on our names for the same tensors), lookahead (as the Solver's),
alternating flips (the Solver's augment seed, so the same images flip in the same epochs), minibatch
sampling (with "epochs", the Solver's permutations: the same minibatches) and shifted
test-time views (``numbaconv.models.shift_images``).
"""
from __future__ import annotations

import time

import numpy as np


class TorchRecipe:
    """Recipe ``recipe`` (a name in ``numbaconv.recipe.RECIPES``) on ``data`` (the Solver's dict of
    splits) in PyTorch, on ``threads`` threads (None: PyTorch's own count); ``budget`` seconds
    for the learning-rate schedule (None: the schedule is not used, ``step(progress)`` says);
    ``channels_last``: weights and activations in PyTorch's NHWC memory format, oneDNN's own layout
    and the faster one here (a fast-recipe step took ~0.8x the time of NCHW's, 2 threads), so the
    default: a comparison is against PyTorch at its best on this CPU."""

    def __init__(self, recipe: str, data: dict, seed: int = 0, threads: int | None = None,
                 budget: float | None = None, channels_last: bool = True):
        import torch
        import torch.nn as nn

        from .models import build_model
        from .recipe import RECIPES, TimeSchedule, augment_crop_flip, param_group, recipe_model_config
        from .solver import stream_seeds

        if threads is not None:
            torch.set_num_threads(threads)
        torch.manual_seed(seed)
        self.torch = torch
        r = RECIPES[recipe]
        m = self.m = r["model"]
        C = data["X_train"].shape[1]
        layers, c_in = [], C
        num_classes = int(max(data["y_train"].max(), data["y_val"].max())) + 1
        if m.get("whiten"):   # the same frozen stem: fitted by our FastNet's prepare() on the same images
            ours = build_model(recipe_model_config(recipe, data["X_train"].shape[1:], num_classes), seed=seed)
            ours.prepare(data["X_train"])
            ww, cp = ours.params["whiten_W"], ours.whiten_conv_param
            stem = nn.Conv2d(C, ww.shape[0], ww.shape[2], stride=cp["stride"], padding=cp["pad"])
            with torch.no_grad():
                stem.weight.copy_(torch.from_numpy(ww))
                stem.bias.copy_(torch.from_numpy(ours.params["whiten_b"]))
            stem.requires_grad_(False)
            layers, c_in = [stem] + ([nn.ReLU()] if m.get("whiten_neg") else []), ww.shape[0]
        plan = ([(m["stem"], False)] if m["stem"] else [])
        for w in m["widths"]:
            plan += [(w, True)] + [(w, False)] * (m["convs_per_group"] - 1)
        names = {}   # tensor -> our parameter name, for the groups
        bn_momentum = round(1.0 - m.get("bn_momentum", 0.9), 12)   # PyTorch weighs the batch, we the history
        for i, (F, pool) in enumerate(plan, start=1):   # conv - BN - ReLU - pool, as our Conv_BatchNorm_ReLU_Pool
            conv = nn.Conv2d(c_in, F, 3, padding=1)
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            nn.init.zeros_(conv.bias)
            if m.get("dirac"):
                with torch.no_grad():
                    nn.init.dirac_(conv.weight[:min(F, c_in)])
            bn = nn.BatchNorm2d(F, momentum=bn_momentum)
            bn.weight.requires_grad_(not m.get("freeze_bn_scale"))
            names.update({conv.weight: f"W{i}", conv.bias: f"b{i}", bn.weight: f"gamma{i}", bn.bias: f"beta{i}"})
            layers += [conv, bn, nn.ReLU()] + ([nn.MaxPool2d(2)] if pool else [])
            c_in = F
        fc = nn.Linear(c_in, num_classes)
        nn.init.normal_(fc.weight, std=(1.0 / c_in) ** 0.5)
        nn.init.zeros_(fc.bias)
        names.update({fc.weight: f"W{len(plan) + 1}", fc.bias: f"b{len(plan) + 1}"})
        self.net = nn.Sequential(*layers, nn.AdaptiveMaxPool2d(1), nn.Flatten(), fc)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.net = self.net.to(memory_format=self.memory_format)
        self.scale = m["logit_scale"]
        trained = [p for p in self.net.parameters() if p.requires_grad]    # not the frozen stem (or BN scale)
        oc, scales = r["optim_config"], r.get("lr_scales", {})
        groups = {}   # our groups: decay on "weights" only (conv and linear), lr scales by group
        for p in trained:
            groups.setdefault(param_group(names[p]), []).append(p)
        self.opt = torch.optim.SGD([{"params": ps, "weight_decay": oc["weight_decay"] if g == "weights" else 0.0,
                                     "lr_scale": float(scales.get(g, 1.0))} for g, ps in groups.items()],
                                   lr=r["peak_lr"], momentum=oc["momentum"], nesterov=True)
        self.sched = TimeSchedule(r["peak_lr"], budget, warmup=r["warmup"], shape=r["shape"],
                                  start=r.get("start", 0.1), final=r.get("final", 0.0))
        self.lossf = nn.CrossEntropyLoss(label_smoothing=m["smoothing"])
        self.augment = augment_crop_flip(r["pad"], r["flip"])
        # the Solver's augment and shuffle seeds for this seed: the same images flip in the same epochs and,
        # with sampling "epochs", the same minibatches are drawn
        _, _, self.augment_seed, self.shuffle_seed = stream_seeds(seed)
        self.sampling = r.get("sampling", "replacement")
        self.lookahead_every, self.lookahead_decay = r.get("lookahead_every"), r.get("lookahead_decay", 0.95)
        self.slow = None   # lookahead's averages, by parameter
        self.steps = 0
        self.budget = budget
        self.train_time, self.last_step_time = 0.0, 0.0   # seconds of training steps, as the Solver's
        self.rng = np.random.default_rng(seed)
        self.X, self.y = data["X_train"], data["y_train"]
        self.batch_size = r["batch_size"]

    def warmup(self) -> None:
        """One forward/backward outside any clock (like Solver.warmup), its update thrown away."""
        B = self.batch_size
        state0 = {k: v.clone() for k, v in self.net.state_dict().items()}
        self.lossf(self.net(self._input(self.X[:B])), self.torch.from_numpy(self.y[:B])).backward()
        self.net.load_state_dict(state0)
        self.opt.zero_grad(set_to_none=True)

    def step(self, progress: float | None = None) -> float:
        """One training step (minibatch gather, augmentation, forward, backward, update) at
        ``progress`` (0..1) of the schedule, or at the peak learning rate if None; returns the loss."""
        torch = self.torch
        lr = self.sched.peak_lr if progress is None else self.sched.peak_lr * self.sched.factor(progress)
        for g in self.opt.param_groups:
            g["lr"] = lr * g["lr_scale"]
        from .solver import minibatch_indices   # here, as in __init__: importing this module starts nothing

        idx = minibatch_indices(self.sampling, self.steps, self.X.shape[0], self.batch_size, self.rng,
                                self.shuffle_seed)
        if getattr(self.augment, "per_image", False):
            xb, yb = self.augment(self.X[idx], self.y[idx], self.rng, index=idx,
                                  epoch=self.steps // self.iterations_per_epoch, seed=self.augment_seed)
        else:
            xb, yb = self.augment(self.X[idx], self.y[idx], self.rng)
        loss = self.lossf(self.net(self._input(xb)) * self.scale, torch.from_numpy(yb))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        k = self.lookahead_every
        if k and (self.steps + 1) % k == 0:   # as Solver._lookahead: progress before this step, cubed
            d = self.lookahead_decay ** k * (0.0 if progress is None else min(max(progress, 0.0), 1.0)) ** 3
            with torch.no_grad():
                params = [p for g in self.opt.param_groups for p in g["params"]]
                if self.slow is None:
                    self.slow = [p.detach().clone() for p in params]
                else:
                    for s, p in zip(self.slow, params):
                        s.mul_(d).add_(p, alpha=1.0 - d)
                        p.copy_(s)
        self.steps += 1
        return float(loss.detach())   # the value only: no autograd warning

    @property
    def iterations_per_epoch(self) -> int:
        return max(self.X.shape[0] // self.batch_size, 1)

    def train_until(self, seconds: float, on_epoch_end=None) -> None:
        """Training steps while the clock of training steps plus the last step's duration stays within
        ``seconds`` (the Solver's time-limit rule), at the schedule's ``train_time / budget``;
        ``on_epoch_end(self)`` after each epoch's last step (not counted as training time)."""
        while self.train_time + self.last_step_time <= seconds:
            start = time.perf_counter()
            self.step(None if self.budget is None else self.train_time / self.budget)
            self.last_step_time = time.perf_counter() - start
            self.train_time += self.last_step_time
            if on_epoch_end is not None and self.steps % self.iterations_per_epoch == 0:
                on_epoch_end(self)

    def accuracy(self, X, y, batch: int = 500) -> float:
        """Accuracy with BN running statistics (and the mirror averaged in, if the recipe says so)."""
        torch = self.torch
        self.net.eval()
        correct = 0
        with torch.no_grad():
            for s in range(0, X.shape[0], batch):
                scores = self._view_scores(X[s:s + batch])
                shift = self.m.get("tta_shift", 0)
                if shift:   # as FastNet.loss: the image 0.5, each shifted view 0.25
                    from .models import shift_images

                    scores = (0.5 * scores + 0.25 * self._view_scores(shift_images(X[s:s + batch], shift, shift))
                              + 0.25 * self._view_scores(shift_images(X[s:s + batch], -shift, -shift)))
                correct += int((scores.argmax(1).numpy() == y[s:s + batch]).sum())
        self.net.train()
        return correct / X.shape[0]

    def _view_scores(self, X):
        """Test-mode scores of one view, mirror-averaged if the recipe says so."""
        xb = self._input(X)
        scores = self.net(xb)
        if self.m["tta_flip"]:
            scores = 0.5 * (scores + self.net(self.torch.flip(xb, dims=[3])))
        return scores

    def _input(self, X):
        """Images (N, C, H, W) as a tensor in the net's memory format."""
        return self.torch.from_numpy(np.ascontiguousarray(X)).contiguous(memory_format=self.memory_format)

    def state(self) -> dict:
        return {k: v.clone() for k, v in self.net.state_dict().items()}
