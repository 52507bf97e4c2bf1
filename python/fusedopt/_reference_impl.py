"""The reference implementations, in NumPy or CuPy (whichever module the arrays belong to).

Two modes:

* exact: the kernel's operation order, at the storage precision, with the coefficients of
  fusedopt._coeffs. float32 results equal the native kernels bit for bit. Each function
  here mirrors the rule of the same name in csrc/math/ line by line.
* float64: the textbook formula from the raw hyperparameters, computed in float64 and
  stored back at the arrays' precision. It checks drift, not bits.

Public entry points are in fusedopt.reference; both modes go through the same array checks
as the kernels.
"""

from __future__ import annotations

import math

from fusedopt._coeffs import (
    MOM_KERAS,
    MOM_NONE,
    MOM_TORCH_FIRST,
    WD_COUPLED,
    WD_DECOUPLED,
)

# csrc/math/sumsq.h
NORM_LANES = 32
NORM_BLOCK = 65536


# --------------------------------------------------------------------------------------
# exact mode
# --------------------------------------------------------------------------------------
def _effective_grad(xp, T, p, g, maximize, wd_mode, weight_decay):
    g = -g if maximize else g
    if wd_mode == WD_COUPLED:
        g = g + T(weight_decay) * p
    return g


def sgd_exact(xp, p, g, states, c):
    T = p.dtype.type
    g = _effective_grad(xp, T, p, g, c.maximize, c.wd_mode, c.weight_decay)
    if c.wd_mode == WD_DECOUPLED:
        p[...] = p * T(c.decay_factor)
    lr, momentum = T(c.lr), T(c.momentum)
    if c.momentum_mode == MOM_NONE:
        p[...] = p - lr * g
    elif c.momentum_mode == MOM_KERAS:
        v = states[0]
        v[...] = momentum * v - lr * g
        p[...] = p + (momentum * v - lr * g) if c.nesterov else p + v
    else:
        buf = states[0]
        if c.momentum_mode == MOM_TORCH_FIRST:
            buf[...] = g
        else:
            buf[...] = momentum * buf + T(c.one_minus_dampening) * g
        d = g + momentum * buf if c.nesterov else buf
        p[...] = p - lr * d


def adagrad_exact(xp, p, g, states, c):
    T = p.dtype.type
    g = _effective_grad(xp, T, p, g, c.maximize, c.wd_mode, c.weight_decay)
    s = states[0]
    s[...] = s + g * g
    std = xp.sqrt(s) + T(c.eps)
    p[...] = p - T(c.clr) * (g / std)


def rmsprop_exact(xp, p, g, states, c):
    T = p.dtype.type
    g = _effective_grad(xp, T, p, g, c.maximize, c.wd_mode, c.weight_decay)
    alpha, one_minus_alpha, eps = T(c.alpha), T(c.one_minus_alpha), T(c.eps)
    sq = states[0]
    sq[...] = alpha * sq + one_minus_alpha * (g * g)
    if c.centered:
        ga = states[1]
        ga[...] = alpha * ga + one_minus_alpha * g
        avg = xp.sqrt(sq - ga * ga) + eps
    else:
        avg = xp.sqrt(sq) + eps
    if c.has_momentum:
        buf = states[2 if c.centered else 1]
        buf[...] = T(c.momentum) * buf + g / avg
        p[...] = p - T(c.lr) * buf
    else:
        p[...] = p - T(c.lr) * (g / avg)


def adam_exact(xp, p, g, states, c):
    T = p.dtype.type
    g = _effective_grad(xp, T, p, g, c.maximize, c.wd_mode, c.weight_decay)
    if c.wd_mode == WD_DECOUPLED:
        p[...] = p * T(c.decay_factor)
    m, v = states[0], states[1]
    m[...] = T(c.beta1) * m + T(c.one_minus_beta1) * g
    v[...] = T(c.beta2) * v + T(c.one_minus_beta2) * (g * g)
    vhat = v
    if c.amsgrad:
        vmax = states[2]
        # math::max_propagate_nan: (a != a) ? a : (a > b ? a : b), with a = vmax, b = v
        vmax[...] = xp.where((vmax != vmax) | (vmax > v), vmax, v)
        vhat = vmax
    denom = xp.sqrt(vhat) * T(c.inv_sqrt_bc2) + T(c.eps)
    p[...] = p - T(c.step_size) * (m / denom)


def _sign_keep_zero(xp, x):
    # math::sign_keep_zero: (x > 0) ? 1 : ((x < 0) ? -1 : x), so +0, -0 and NaN come back
    # as they are (numpy.sign would turn -0 into +0).
    T = x.dtype.type
    return xp.where(x > 0, T(1), xp.where(x < 0, T(-1), x))


def lion_exact(xp, p, g, states, c):
    T = p.dtype.type
    g = _effective_grad(xp, T, p, g, c.maximize, c.wd_mode, c.weight_decay)
    m = states[0]
    direction = T(c.beta1) * m + T(c.one_minus_beta1) * g
    if c.wd_mode == WD_DECOUPLED:
        p[...] = p * T(c.decay_factor)
    p[...] = p - T(c.lr) * _sign_keep_zero(xp, direction)
    m[...] = T(c.beta2) * m + T(c.one_minus_beta2) * g


def sum_of_squares_exact(xp, grads) -> float:
    """csrc/math/sumsq.h in array form: 32 lanes per block, each accumulated in order."""
    import numpy as np

    total = 0.0
    for g in grads:
        # The exact sum runs on the host: a device scan would not add in lane order.
        g = g if isinstance(g, np.ndarray) else g.get()
        xp = np
        n = int(g.size)
        if n == 0:
            continue
        n_blocks = -(-n // NORM_BLOCK)
        rows = NORM_BLOCK // NORM_LANES if n_blocks > 1 else -(-n // NORM_LANES)
        sq = xp.zeros(n_blocks * rows * NORM_LANES, dtype=xp.float64)
        gd = g.reshape(-1).astype(xp.float64)
        sq[:n] = gd * gd  # padding squares are +0.0, which leave a lane's sum unchanged
        sq = sq.reshape(n_blocks, rows, NORM_LANES)
        # add.accumulate is sequential along its axis: lane j sums its rows in order.
        lanes = xp.add.accumulate(sq, axis=1)[:, -1, :]
        width = NORM_LANES // 2
        while width >= 1:
            lanes = lanes[:, :width] + lanes[:, width : 2 * width]
            width //= 2
        for block_sum in lanes[:, 0].tolist():  # block sums in call order
            total = total + block_sum
    return total


EXACT = {"sgd": sgd_exact, "adagrad": adagrad_exact, "rmsprop": rmsprop_exact, "adam": adam_exact,
         "lion": lion_exact}


def apply_exact(rule: str, prep, coeffs) -> None:
    fn = EXACT[rule]
    for i, p in enumerate(prep.params):
        if p.size:
            fn(prep.xp, p, prep.grads[i], [s[i] for s in prep.states], coeffs)


# --------------------------------------------------------------------------------------
# float64 mode: the textbook formulas, from the raw hyperparameters
# --------------------------------------------------------------------------------------
def sgd_float64(xp, p, g, states, h):
    lr, mom, wd = h["lr"], h["momentum"], h["weight_decay"]
    g = -g if h["maximize"] else g
    keras = h["convention"] == "keras"
    if wd and not keras:
        g = g + wd * p
    if wd and keras:
        p = p - lr * wd * p
    if mom == 0:
        return p - lr * g, []
    if keras:
        v = mom * states[0] - lr * g
        return (p + mom * v - lr * g if h["nesterov"] else p + v), [v]
    buf = g if h["step"] == 1 else mom * states[0] + (1 - h["dampening"]) * g
    d = g + mom * buf if h["nesterov"] else buf
    return p - lr * d, [buf]


def adagrad_float64(xp, p, g, states, h):
    g = -g if h["maximize"] else g
    if h["weight_decay"]:
        g = g + h["weight_decay"] * p
    clr = h["lr"] / (1 + (h["step"] - 1) * h["lr_decay"])
    s = states[0] + g * g
    return p - clr * g / (xp.sqrt(s) + h["eps"]), [s]


def rmsprop_float64(xp, p, g, states, h):
    g = -g if h["maximize"] else g
    if h["weight_decay"]:
        g = g + h["weight_decay"] * p
    a = h["alpha"]
    sq = a * states[0] + (1 - a) * g * g
    out = [sq]
    if h["centered"]:
        ga = a * states[1] + (1 - a) * g
        out.append(ga)
        avg = xp.sqrt(sq - ga * ga) + h["eps"]
    else:
        avg = xp.sqrt(sq) + h["eps"]
    if h["momentum"]:
        buf = h["momentum"] * states[len(out)] + g / avg
        out.append(buf)
        return p - h["lr"] * buf, out
    return p - h["lr"] * g / avg, out


def adam_float64(xp, p, g, states, h):
    b1, b2 = h["betas"]
    lr, wd, t = h["lr"], h["weight_decay"], h["step"]
    g = -g if h["maximize"] else g
    if wd and h["decoupled"]:
        p = p * (1 - lr * wd)
    elif wd:
        g = g + wd * p
    m = b1 * states[0] + (1 - b1) * g
    v = b2 * states[1] + (1 - b2) * g * g
    out = [m, v]
    vhat = v
    if h["amsgrad"]:
        vhat = xp.maximum(states[2], v)
        out.append(vhat)
    m_hat = m / (1 - b1**t)
    v_hat = vhat / (1 - b2**t)
    return p - lr * m_hat / (xp.sqrt(v_hat) + h["eps"]), out


def lion_float64(xp, p, g, states, h):
    b1, b2 = h["betas"]
    lr, wd = h["lr"], h["weight_decay"]
    g = -g if h["maximize"] else g
    update = xp.sign(b1 * states[0] + (1 - b1) * g)
    if wd:
        p = p - lr * wd * p
    m = b2 * states[0] + (1 - b2) * g
    return p - lr * update, [m]


FLOAT64 = {"sgd": sgd_float64, "adagrad": adagrad_float64, "rmsprop": rmsprop_float64,
           "adam": adam_float64, "lion": lion_float64}


def apply_float64(rule: str, prep, hyper: dict) -> None:
    fn = FLOAT64[rule]
    xp = prep.xp
    for i, p in enumerate(prep.params):
        if not p.size:
            continue
        f64 = [s[i].astype(xp.float64) for s in prep.states]
        new_p, new_states = fn(xp, p.astype(xp.float64), prep.grads[i].astype(xp.float64), f64, hyper)
        p[...] = new_p
        for k, s in enumerate(new_states):
            prep.states[k][i][...] = s


def sum_of_squares_float64(xp, grads) -> float:
    return math.fsum(float(xp.sum(g.astype(xp.float64) ** 2)) for g in grads)
