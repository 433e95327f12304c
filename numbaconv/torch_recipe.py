"""A training recipe's network and step in PyTorch CPU, for comparisons in the same process.

Used by ``numbaconv bench --op step`` and ``benchmarks/train_60s.py --against-torch``: the same
architecture as ``numbaconv.models.FastNet`` (the same frozen whitening stem, fitted by our
FastNet's ``prepare()`` on the same images; conv - BN - ReLU - pool blocks; global max pool;
linear), the same init scheme, augmentation function, minibatch stream, schedule, loss and
optimizer. PyTorch is optional (the ``bench`` extra); it is imported when a ``TorchRecipe`` is made.
"""
from __future__ import annotations

import numpy as np


class TorchRecipe:
    """Recipe ``recipe`` (a name in ``numbaconv.recipe.RECIPES``) on ``data`` (the Solver's dict of
    splits) in PyTorch, on ``threads`` threads (None: PyTorch's own count); ``budget`` seconds
    for the learning-rate schedule (None: the schedule is not used, ``step(progress)`` says)."""

    def __init__(self, recipe: str, data: dict, seed: int = 0, threads: int | None = None,
                 budget: float | None = None):
        import torch
        import torch.nn as nn

        from .models import build_model
        from .recipe import RECIPES, TimeSchedule, augment_crop_flip, recipe_model_config

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
            layers, c_in = [stem], ww.shape[0]
        plan = ([(m["stem"], False)] if m["stem"] else [])
        for w in m["widths"]:
            plan += [(w, True)] + [(w, False)] * (m["convs_per_group"] - 1)
        for F, pool in plan:   # conv - BN - ReLU - pool, the order of our Conv_BatchNorm_ReLU_Pool
            conv = nn.Conv2d(c_in, F, 3, padding=1)
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            nn.init.zeros_(conv.bias)
            layers += [conv, nn.BatchNorm2d(F, momentum=0.1), nn.ReLU()] + ([nn.MaxPool2d(2)] if pool else [])
            c_in = F
        fc = nn.Linear(c_in, num_classes)
        nn.init.normal_(fc.weight, std=(1.0 / c_in) ** 0.5)
        nn.init.zeros_(fc.bias)
        self.net = nn.Sequential(*layers, nn.AdaptiveMaxPool2d(1), nn.Flatten(), fc)
        self.scale = m["logit_scale"]
        trained = [p for p in self.net.parameters() if p.requires_grad]    # not the frozen stem
        decay = [p for p in trained if p.ndim > 1]       # conv and linear weights only
        no_decay = [p for p in trained if p.ndim <= 1]    # biases, BN gamma/beta
        oc = r["optim_config"]
        self.opt = torch.optim.SGD([{"params": decay, "weight_decay": oc["weight_decay"]},
                                    {"params": no_decay, "weight_decay": 0.0}],
                                   lr=r["peak_lr"], momentum=oc["momentum"], nesterov=True)
        self.sched = TimeSchedule(r["peak_lr"], budget, warmup=r["warmup"], shape=r["shape"])
        self.lossf = nn.CrossEntropyLoss(label_smoothing=m["smoothing"])
        self.augment = augment_crop_flip(r["pad"], r["flip"])
        self.rng = np.random.default_rng(seed)
        self.X, self.y = data["X_train"], data["y_train"]
        self.batch_size = r["batch_size"]

    def warmup(self) -> None:
        """One forward/backward outside any clock (like Solver.warmup), its update thrown away."""
        B = self.batch_size
        state0 = {k: v.clone() for k, v in self.net.state_dict().items()}
        self.lossf(self.net(self.torch.from_numpy(self.X[:B])), self.torch.from_numpy(self.y[:B])).backward()
        self.net.load_state_dict(state0)
        self.opt.zero_grad(set_to_none=True)

    def step(self, progress: float | None = None) -> float:
        """One training step (minibatch gather, augmentation, forward, backward, update) at
        ``progress`` (0..1) of the schedule, or at the peak learning rate if None; returns the loss."""
        torch = self.torch
        lr = self.sched.peak_lr if progress is None else self.sched.peak_lr * self.sched.factor(progress)
        for g in self.opt.param_groups:
            g["lr"] = lr
        idx = self.rng.choice(self.X.shape[0], self.batch_size)
        xb, yb = self.augment(self.X[idx], self.y[idx], self.rng)
        loss = self.lossf(self.net(torch.from_numpy(np.ascontiguousarray(xb))) * self.scale, torch.from_numpy(yb))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return float(loss)

    def accuracy(self, X, y, batch: int = 500) -> float:
        """Accuracy with BN running statistics (and the mirror averaged in, if the recipe says so)."""
        torch = self.torch
        self.net.eval()
        correct = 0
        with torch.no_grad():
            for s in range(0, X.shape[0], batch):
                xb = torch.from_numpy(np.ascontiguousarray(X[s:s + batch]))
                scores = self.net(xb)
                if self.m["tta_flip"]:
                    scores = 0.5 * (scores + self.net(torch.flip(xb, dims=[3])))
                correct += int((scores.argmax(1).numpy() == y[s:s + batch]).sum())
        self.net.train()
        return correct / X.shape[0]

    def state(self) -> dict:
        return {k: v.clone() for k, v in self.net.state_dict().items()}
