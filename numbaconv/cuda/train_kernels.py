"""The kernels of device-resident training (registered in kernels.TRAINING_KERNELS).

Minibatch gather with crop/flip augmentation, label gather, global max pool, the
label-smoothed softmax loss and its reduction, L2, the update rules of
numbaconv.optim, lookahead, and the arg-max of evaluation. Every output element has
one owner thread and every sum is a fixed tree (kernels.block_sum): deterministic,
no atomics. The update rules repeat numbaconv.optim's arithmetic operation for
operation in the array's dtype (hyperparameters cast to it first, as NumPy does with
Python floats); the NumPy rules are the spec, and tests compare the two.
"""
from __future__ import annotations

import math

from ._runtime import cuda
from .kernels import RED_THREADS, TRAINING_KERNELS, block_sum, device_function, kernel, row_log_sum_exp


def training_kernel(name: str, args: str, shared_elems: int = 0):
    return kernel(name, args, shared_elems, registry=TRAINING_KERNELS)


# ----------------------------------------------------------------- data
@training_kernel("gather_crop_flip", "ALAiiiii")
def _make_gather_crop_flip(dt):
    def gather_crop_flip(X, plan, out, N, C, H, W, pad):
        # plan holds four int64 rows of N: image index, row offset, column offset, mirror.
        # out[n, c, i, j] = X[index[n], c, i + oy[n] - pad, cx(j)] with cx(j) = (W-1-j if
        # mirror[n] else j) + ox[n] - pad, and 0 outside the image (numbaconv.cpu.augment's rule).
        per = C * H * W
        for e in range(cuda.grid(1), N * per, cuda.gridsize(1)):
            n = e // per
            r = e - n * per
            c = r // (H * W)
            r -= c * H * W
            i = r // W
            j = r - i * W
            y = i + plan[N + n] - pad
            x = (W - 1 - j if plan[3 * N + n] != 0 else j) + plan[2 * N + n] - pad
            if 0 <= y < H and 0 <= x < W:
                out[e] = X[((plan[n] * C + c) * H + y) * W + x]
            else:
                out[e] = dt(0)
    return gather_crop_flip


@training_kernel("gather_labels", "LLLi")
def _make_gather_labels(dt):
    def gather_labels(y_all, plan, y_out, N):
        for n in range(cuda.grid(1), N, cuda.gridsize(1)):
            y_out[n] = y_all[plan[n]]
    return gather_labels


@training_kernel("shift_flip", "AAiiiiiii")
def _make_shift_flip(dt):
    def shift_flip(X, out, N, C, H, W, dy, dx, mirror):
        # One shift and mirror for the whole batch (test-time views): out[..., i, j] =
        # S[..., i, m(j)], m(j) = W-1-j if mirror else j, with S = X shifted by (dy, dx)
        # (numbaconv.models.shift_images: S[i, j] = X[i - dy, j - dx], 0 outside).
        total = N * C * H * W
        for e in range(cuda.grid(1), total, cuda.gridsize(1)):
            plane = e // (H * W)
            r = e - plane * H * W
            i = r // W
            j = r - i * W
            y = i - dy
            x = (W - 1 - j if mirror != 0 else j) - dx
            if 0 <= y < H and 0 <= x < W:
                out[e] = X[(plane * H + y) * W + x]
            else:
                out[e] = dt(0)
    return shift_flip


# ----------------------------------------------------------------- model-level ops
@device_function
def first_argmax(x, base, L):
    """(max, its index) of x[base:base + L] as NumPy's argmax: the first maximum, or the first NaN."""
    best = x[base]
    k = 0
    for t in range(1, L):
        v = x[base + t]
        if v > best or (v != v and best == best):
            best = v
            k = t
    return best, k


@training_kernel("global_max_pool_forward", "AAIii")
def _make_global_max_pool_forward(dt):
    def global_max_pool_forward(x, out, arg, NC, L):
        # The max of each (n, c) map; ties and NaN as NumPy's argmax: the first wins.
        for m in range(cuda.grid(1), NC, cuda.gridsize(1)):
            best, k = first_argmax(x, m * L, L)
            out[m] = best
            arg[m] = k
    return global_max_pool_forward


@training_kernel("global_max_pool_backward", "AIAii")
def _make_global_max_pool_backward(dt):
    def global_max_pool_backward(dout, arg, dx, NC, L):
        for e in range(cuda.grid(1), NC * L, cuda.gridsize(1)):
            m = e // L
            dx[e] = dout[m] if arg[m] == e - m * L else dt(0)
    return global_max_pool_backward


@training_kernel("axpby", "AAffAi")
def _make_axpby(dt):
    def axpby(x, y, a, b, out, total):
        # out = a * x + b * y (L2's gradient, view averages); b = 0: a * x (scores times the
        # logit scale: an infinite y adds no NaN); a = b = 0: zeros (a fresh optimizer state)
        ca = dt(a)
        cb = dt(b)
        for e in range(cuda.grid(1), total, cuda.gridsize(1)):
            if b != 0.0:
                out[e] = ca * x[e] + cb * y[e]
            elif a != 0.0:
                out[e] = ca * x[e]
            else:
                out[e] = dt(0)
    return axpby


@training_kernel("smoothed_softmax_rows", "ALAAiiff")
def _make_smoothed_softmax_rows(dt):
    def smoothed_softmax_rows(x, y, dx, rows, N, C, eps, grad_scale):
        # One thread per row: the cross-entropy against (1 - eps) * onehot + eps / C
        # (numbaconv.losses.smoothed_softmax_loss), and dx = (p - target) / N * grad_scale.
        off = dt(eps) / dt(C)
        hit = dt(1) - dt(eps)
        for row in range(cuda.grid(1), N, cuda.gridsize(1)):
            base = row * C
            top, log_total = row_log_sum_exp(x, base, C)
            label = y[row]
            acc = dt(0)
            for c in range(C):
                logp = x[base + c] - top - log_total
                target = off + hit if c == label else off
                acc -= target * logp
                dx[base + c] = (math.exp(logp) - target) / dt(N) * dt(grad_scale)
            rows[row] = acc
    return smoothed_softmax_rows


@training_kernel("mean_into", "AAi", shared_elems=RED_THREADS)
def _make_mean_into(dt):
    def mean_into(rows, out, N):
        # One block: out[0] = mean of rows (the loss), by a fixed tree.
        sh = cuda.shared.array(RED_THREADS, dt)
        tid = cuda.threadIdx.x
        acc = dt(0)
        for r in range(tid, N, cuda.blockDim.x):
            acc += rows[r]
        acc = block_sum(sh, acc, tid, cuda.blockDim.x)
        if tid == 0:
            out[0] = acc / dt(N)
    return mean_into


@training_kernel("add_sum_squares", "AAfi", shared_elems=RED_THREADS)
def _make_add_sum_squares(dt):
    def add_sum_squares(w, out, reg, size):
        # One block: out[0] += reg * sum(w ** 2) (L2 regularisation's loss term).
        sh = cuda.shared.array(RED_THREADS, dt)
        tid = cuda.threadIdx.x
        acc = dt(0)
        for e in range(tid, size, cuda.blockDim.x):
            acc += w[e] * w[e]
        acc = block_sum(sh, acc, tid, cuda.blockDim.x)
        if tid == 0:
            out[0] += dt(reg) * acc
    return add_sum_squares


@training_kernel("row_argmax", "ALiii")
def _make_row_argmax(dt):
    def row_argmax(scores, preds, N, C, offset):
        # preds[offset + r]: the first index of row r's maximum (NumPy's argmax, NaN first)
        for r in range(cuda.grid(1), N, cuda.gridsize(1)):
            preds[offset + r] = first_argmax(scores, r * C, C)[1]
    return row_argmax


# ----------------------------------------------------------------- update rules (numbaconv.optim)
@training_kernel("sgd", "AAAfi")
def _make_sgd(dt):
    def sgd(w, dw, out, lr, total):
        a = dt(lr)
        for e in range(cuda.grid(1), total, cuda.gridsize(1)):
            out[e] = w[e] - a * dw[e]
    return sgd


@training_kernel("sgd_momentum", "AAAAAffi")
def _make_sgd_momentum(dt):
    def sgd_momentum(w, dw, v, out, v_out, lr, momentum, total):
        a = dt(lr)
        mu = dt(momentum)
        for e in range(cuda.grid(1), total, cuda.gridsize(1)):
            nv = mu * v[e] - a * dw[e]
            v_out[e] = nv
            out[e] = w[e] + nv
    return sgd_momentum


@training_kernel("rmsprop", "AAAAAffffi")
def _make_rmsprop(dt):
    def rmsprop(w, dw, cache, out, cache_out, lr, decay, one_minus_decay, epsilon, total):
        a = dt(lr)
        d = dt(decay)
        od = dt(one_minus_decay)
        ep = dt(epsilon)
        for e in range(cuda.grid(1), total, cuda.gridsize(1)):
            g = dw[e]
            c = d * cache[e] + od * g * g
            cache_out[e] = c
            out[e] = w[e] - a * g / (math.sqrt(c) + ep)
    return rmsprop


@training_kernel("adam", "AAAAAAAffffffffi")
def _make_adam(dt):
    def adam(w, dw, m, v, out, m_out, v_out, lr, beta1, one_minus_beta1, beta2, one_minus_beta2, epsilon,
             correction1, correction2, total):
        # correction1, correction2: 1 - beta1 ** t and 1 - beta2 ** t (computed on the host, as NumPy does)
        a = dt(lr)
        b1 = dt(beta1)
        ob1 = dt(one_minus_beta1)
        b2 = dt(beta2)
        ob2 = dt(one_minus_beta2)
        ep = dt(epsilon)
        c1 = dt(correction1)
        c2 = dt(correction2)
        for e in range(cuda.grid(1), total, cuda.gridsize(1)):
            g = dw[e]
            nm = b1 * m[e] + ob1 * g
            nv = b2 * v[e] + ob2 * g * g
            m_out[e] = nm
            v_out[e] = nv
            out[e] = w[e] - a * (nm / c1) / (math.sqrt(nv / c2) + ep)
    return adam


@training_kernel("sgd_nesterov", "AAAAAfffi")
def _make_sgd_nesterov(dt):
    def sgd_nesterov(w, dw, v, out, v_out, lr, momentum, weight_decay, total):
        a = dt(lr)
        mu = dt(momentum)
        wd = dt(weight_decay)
        for e in range(cuda.grid(1), total, cuda.gridsize(1)):
            g = dw[e]
            if weight_decay != 0.0:
                g = g + wd * w[e]
            nv = mu * v[e] + g
            v_out[e] = nv
            out[e] = w[e] - a * (g + mu * nv)
    return sgd_nesterov


@training_kernel("lookahead", "AAAffi")
def _make_lookahead(dt):
    def lookahead(w, slow, out, decay, one_minus_decay, total):
        # Solver._lookahead: slow = d * slow + (1 - d) * w
        d = dt(decay)
        od = dt(one_minus_decay)
        for e in range(cuda.grid(1), total, cuda.gridsize(1)):
            out[e] = d * slow[e] + od * w[e]
    return lookahead
