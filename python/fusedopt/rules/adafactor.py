"""Adafactor (Shazeer & Stern 2018), as torch.optim.Adafactor (csrc/math/adafactor.h).

Not elementwise: a param of two or more dims keeps row and column factors of its second
moment, of torch's shapes ``[..., R, 1]`` and ``[..., 1, C]``, a param of fewer dims a full
``variance``; every step needs sums over each tensor. Its states are read with the
factored layout (``state_layout``) and it runs by passes of its own in the drivers.
"""

from __future__ import annotations

import math

import numpy as np

from fusedopt._coeffs import WD_DECOUPLED, WD_NONE, flag, number, step_count, step_type
from fusedopt._storage import compute_dtype
from fusedopt.rules import REQUIRED, Kernel, Rule
from fusedopt.rules._common import block_sums, max_propagate_nan, sums_in_order

AdafactorCoeffs = step_type("AdafactorCoeffs", "adafactor")


def _beta2_decay(fn, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{fn}: beta2_decay must be a real number, got {type(value).__name__}")
    v = float(value)
    if not -math.inf < v <= 0.0:
        raise ValueError(f"{fn}: beta2_decay must be a finite number <= 0.0, got {value!r}")
    return v


def _eps_pair(fn, eps) -> tuple:
    try:
        eps1, eps2 = eps
    except (TypeError, ValueError):
        raise TypeError(f"{fn}: eps must be a pair (eps1 or None, eps2), got {eps!r}") from None
    # NaN stands for None in the coefficients: the machine epsilon of the compute type.
    eps1 = math.nan if eps1 is None else number(fn, "eps[0]", eps1)
    return eps1, number(fn, "eps[1]", eps2)


def coefficients(fn, *, step, lr, beta2_decay, eps, d, weight_decay, maximize):
    step = step_count(fn, step)
    lr = number(fn, "lr", lr)
    beta2_decay = _beta2_decay(fn, beta2_decay)
    eps1, eps2 = _eps_pair(fn, eps)
    d = number(fn, "d", d)
    if d < 1.0:
        raise ValueError(f"{fn}: d (the clipping threshold) must be >= 1.0, got {d!r}")
    weight_decay = number(fn, "weight_decay", weight_decay)
    maximize = flag(fn, "maximize", maximize)
    # As torch computes them from the step as a float: x ** y is C's pow either way.
    one_minus_beta2_t = float(step) ** beta2_decay
    return AdafactorCoeffs.make(
        beta2_t=1.0 - one_minus_beta2_t, one_minus_beta2_t=one_minus_beta2_t,
        rho=min(lr, 1.0 / float(step) ** 0.5), eps1=eps1, eps2=eps2, d=d,
        decay_factor=1.0 - lr * weight_decay, maximize=maximize,
        wd_mode=WD_DECOUPLED if weight_decay else WD_NONE)


def _eps1(c, T) -> float:
    """math::adafactor_eps1: eps1 in double, NaN meaning T's machine epsilon."""
    return float(np.finfo(T).eps) if math.isnan(c.eps1) else c.eps1


def _on_host(x):
    """A (CuPy) device array's values as a NumPy array: the sums here add in a fixed order,
    which a device scan would not keep (as the global norm's reference does)."""
    return np.asarray(x) if isinstance(x, (np.ndarray, np.generic)) else x.get()


def _sumsq(x) -> float:
    """cpu/driver.cpp's sum of a tensor's squares: its blocks (math/sumsq.h) in order."""
    flat = _on_host(x).reshape(1, -1).astype(np.float64)
    return float(sums_in_order(np, block_sums(np, flat * flat))[0])


def _alpha(c, param_sumsq, n) -> float:
    """math::adafactor_alpha and adafactor_denom, with Python's max as torch's (NaN loses)."""
    return max(c.eps2, math.sqrt(param_sumsq) / math.sqrt(n)) * c.rho


def _denom(c, update_sumsq, n) -> float:
    return max(1.0, math.sqrt(update_sumsq) / (math.sqrt(n) * c.d))


def exact(xp, p, g, states, c, as_stored):
    T = p.dtype.type
    n = p.size
    eps1 = _eps1(c, T)
    beta2_t, one_minus = T(c.beta2_t), T(c.one_minus_beta2_t)
    g = -g if c.maximize else g
    alpha = _alpha(c, _sumsq(p), n)
    row_var, col_var, variance = states
    if p.ndim >= 2:
        R, C = p.shape[-2:]
        sq = _on_host(g).reshape(-1, R, C).astype(np.float64) ** 2
        row_sums = sums_in_order(np, block_sums(np, sq.reshape(-1, C))).reshape(-1, R)
        col_sums = np.add.accumulate(sq, axis=1)[:, -1, :]  # each column in row order
        row = row_var.reshape(-1, R)
        col = col_var.reshape(-1, C)
        row[...] = beta2_t * row + one_minus * xp.asarray((row_sums / C).astype(T))
        col[...] = beta2_t * col + one_minus * xp.asarray((col_sums / R).astype(T))
        # The kernel's later passes read the factors back from storage (16 bits, if so).
        row_var[...] = as_stored(0, row_var)  # row and col are views of them
        col_var[...] = as_stored(1, col_var)
        row_total = np.add.accumulate(_on_host(row).astype(np.float64), axis=1)[:, -1]  # in row order
        row_mean = max_propagate_nan(xp, xp.asarray((row_total / R).astype(T)), T(eps1))
        # 1 / sqrt(max(row * col / row_mean, eps1^2)) taken apart per row and per column
        # (math/adafactor.h, pass 3); where the product is NaN, so is the roots' product.
        eps1_sq = T(eps1 * eps1)
        with np.errstate(divide="ignore", invalid="ignore"):
            scaled = col / row_mean[:, None]
            row_root, col_root = T(1) / xp.sqrt(row), T(1) / xp.sqrt(scaled)
            inverse = xp.where(row[:, :, None] * scaled[:, None, :] < eps1_sq, T(1) / xp.sqrt(eps1_sq),
                               row_root[:, :, None] * col_root[:, None, :])
        u = g * inverse.reshape(p.shape)
    else:
        variance[...] = beta2_t * variance + one_minus * (g * g)
        variance[...] = as_stored(2, variance)
        u = g * (T(1) / xp.sqrt(max_propagate_nan(xp, variance, T(eps1 * eps1))))
    scale = T(alpha / _denom(c, _sumsq(u), n))
    if c.wd_mode == WD_DECOUPLED:
        p[...] = p * T(c.decay_factor)
    p[...] = p - scale * u


def float64(xp, p, g, states, h):
    """torch's formula in float64; eps1=None is the machine epsilon of the compute type
    (float32 for 16-bit params, as the kernels compute)."""
    t = float(h["step"])
    eps1, eps2 = h["eps"]
    if eps1 is None:
        eps1 = float(np.finfo(compute_dtype(np, h["param_dtype"])).eps)
    g = -g if h["maximize"] else g
    w = t ** h["beta2_decay"]
    alpha = max(eps2, float(xp.sqrt(xp.sum(p * p)) / math.sqrt(p.size))) * min(h["lr"], 1 / t ** 0.5)
    if h["weight_decay"]:
        p = p * (1 - h["lr"] * h["weight_decay"])
    if p.ndim >= 2:
        row = states[0] + w * ((g * g).mean(axis=-1, keepdims=True) - states[0])
        col = states[1] + w * ((g * g).mean(axis=-2, keepdims=True) - states[1])
        estimate = (row * col) / xp.maximum(row.mean(axis=-2, keepdims=True), eps1)
        new_states = [row, col]
    else:
        variance = states[2] + w * (g * g - states[2])
        estimate = variance
        new_states = [None, None, variance]
    u = g / xp.sqrt(xp.maximum(estimate, eps1 * eps1))
    denom = max(1.0, float(xp.sqrt(xp.sum(u * u))) / (math.sqrt(p.size) * h["d"]))
    return p - (alpha / denom) * u, new_states


RULE = Rule(
    name="adafactor", coefficients=coefficients, exact=exact, float64=float64,
    states=("row_vars", "col_vars", "variances"), state_layout="factored",
    square_states=frozenset({"row_vars", "col_vars", "variances"}),
    kernels=(Kernel(
        "adafactor_", dict(step=REQUIRED, lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0,
                           weight_decay=0.0, maximize=False),
        optimizer="Adafactor", doc="""
    Adafactor (torch.optim.Adafactor), in place. ``step`` counts from 1. Per param, as
    torch keeps them: a param of two or more dims ``[..., R, C]`` takes ``row_vars[i]`` of
    shape ``[..., R, 1]`` and ``col_vars[i]`` of shape ``[..., 1, C]`` (and None in
    ``variances``); a param of fewer dims takes None, None and ``variances[i]`` of its own
    shape. States start at zero. Storage as every rule's: bfloat16 or float16 params with
    their own dtype's or float32 grads, states float32 or bfloat16 (float64 throughout for
    float64 params), arithmetic in float32; the factors are read back as stored.

    ``beta2_t = 1 - t^beta2_decay``; ``rho = min(lr, 1/sqrt(t))``;
    ``alpha = max(eps2, RMS(p)) * rho``; row and column means of ``g*g`` update the
    factors, ``est = row*col / max(mean(row), eps1)`` (or the full variance);
    ``u = g / sqrt(max(est, eps1^2))``; ``p *= 1 - lr*weight_decay``;
    ``p -= alpha / max(1, RMS(u)/d) * u``. ``eps1=None`` is the machine epsilon of the
    compute type (torch's is the params' dtype's, which is its compute type: for bfloat16
    and float16 params fusedopt computes in float32 and takes float32's).
    """, examples={
            "adafactor": dict(lr=0.01),
            "adafactor-decay": dict(lr=0.02, weight_decay=0.1, eps=(1e-6, 1e-3)),
            "adafactor-maximize": dict(beta2_decay=-0.5, d=2.0, maximize=True),
        }),),
)
