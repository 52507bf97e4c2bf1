"""Adam, AdamW and AMSGrad, as torch.optim.Adam and AdamW (csrc/math/adam.h); and the
table of every step's coefficients that a capturable optimizer keeps on the device."""

from __future__ import annotations

import functools
import math

from fusedopt._coeffs import (
    WD_COUPLED,
    WD_DECOUPLED,
    WD_NONE,
    betas_pair,
    check_rates,
    flag,
    number,
    step_count,
    step_type,
)
from fusedopt.rules import REQUIRED, Kernel, Rule
from fusedopt.rules._common import effective_grad, max_propagate_nan, update_moments

AdamCoeffs = step_type("AdamCoeffs", "adam")


def coefficients(fn, *, step, lr, betas, eps, weight_decay, amsgrad, maximize, decoupled):
    step = step_count(fn, step)
    lr = number(fn, "lr", lr)
    beta1, beta2 = betas_pair(fn, betas)
    eps = number(fn, "eps", eps)
    weight_decay = number(fn, "weight_decay", weight_decay)
    amsgrad = flag(fn, "amsgrad", amsgrad)
    maximize = flag(fn, "maximize", maximize)
    if weight_decay == 0.0:
        wd_mode = WD_NONE
    else:
        wd_mode = WD_DECOUPLED if decoupled else WD_COUPLED
    step_size, inv_sqrt_bc2, decay_factor = _adam_by_step(lr, weight_decay, beta1**step, beta2**step,
                                                          math.sqrt)
    return AdamCoeffs.make(beta1=beta1, one_minus_beta1=1.0 - beta1, beta2=beta2,
                           one_minus_beta2=1.0 - beta2, step_size=step_size,
                           inv_sqrt_bc2=inv_sqrt_bc2, eps=eps, weight_decay=weight_decay,
                           decay_factor=decay_factor, maximize=maximize, wd_mode=wd_mode,
                           amsgrad=amsgrad)


def _adam_by_step(lr, weight_decay, beta1_t, beta2_t, sqrt) -> tuple:
    """Adam's numbers that change with the step (and the rate): step_size, inv_sqrt_bc2 and
    decay_factor from beta1^t and beta2^t, for one step (floats, sqrt=math.sqrt) or for many
    at once (float64 NumPy arrays, sqrt=numpy.sqrt). Each operation is one IEEE double
    operation either way, so a row of the table has the bits of the one step."""
    return lr / (1.0 - beta1_t), 1.0 / sqrt(1.0 - beta2_t), 1.0 - lr * weight_decay


# Where a table of coefficients by step can stop: once beta^t <= 2^-60 (pow is within an
# ulp of that, and far below 2^-54, half the spacing of doubles under 1.0), 1 - beta^t is
# exactly 1.0 in double, at that step and every later one, so their coefficients are equal.
_UNDERFLOW_LOG2 = 60
MAX_TABLE_STEPS = 1 << 20  # 80 MiB of Adam rows: beta2 up to about 0.99996


def adam_table_steps(fn: str, beta1: float, beta2: float) -> int:
    """How many steps' coefficients differ: from this step on, every step has this step's."""
    n = 1
    for b in (beta1, beta2):
        if b > 0.0:
            n = max(n, math.ceil(_UNDERFLOW_LOG2 * math.log(2.0) / -math.log(b)) + 1)
    if n > MAX_TABLE_STEPS:
        raise ValueError(f"{fn}: with betas ({beta1}, {beta2}) the coefficients change for {n:,} "
                         f"steps; capturable=True keeps them all on the device and takes at most "
                         f"{MAX_TABLE_STEPS:,} (beta2 up to about 0.99996)")
    return n


@functools.lru_cache(maxsize=4)
def _powers(beta1: float, beta2: float, n: int):
    """beta1^t and beta2^t for t = 1..n, read-only float64 arrays, one by one as adam() takes
    them (Python's float ** int is C's pow; NumPy's power may take another algorithm). The
    slow part of a table (0.4 s for a million steps), so kept for the next (a change of
    lr rebuilds the table)."""
    import numpy as np

    out = []
    for b in (beta1, beta2):
        powers = np.array([b**t for t in range(1, n + 1)], dtype=np.float64)
        powers.flags.writeable = False
        out.append(powers)
    return tuple(out)


def adam_table(fn, *, lr, betas, eps, weight_decay, amsgrad, maximize, decoupled,
               lr_factors=None):
    """Adam's coefficients for every step at once, for steps a CUDA graph replays: (the
    coefficients of step 1, whose flags pick the kernel; a float64 array whose row t-1 holds
    the numbers of :func:`coefficients` at step t, at the rate rate_at(lr, lr_factors, t), for
    t = 1 .. n, the last row also those of every later step). n is the number of steps over
    which the coefficients change: adam_table_steps(), or the length of lr_factors."""
    import numpy as np

    first = coefficients(fn, step=1, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                 amsgrad=amsgrad, maximize=maximize, decoupled=decoupled)
    lr = number(fn, "lr", lr)
    n = adam_table_steps(fn, first.beta1, first.beta2)
    if lr_factors is not None:
        if len(lr_factors) > MAX_TABLE_STEPS:
            raise ValueError(f"{fn}: lr_factors has {len(lr_factors):,} steps; capturable=True "
                             f"keeps every step's coefficients on the device and takes at most "
                             f"{MAX_TABLE_STEPS:,}")
        n = max(n, len(lr_factors))
        factors = np.full(n, lr_factors[-1])
        factors[:len(lr_factors)] = lr_factors
        check_rates(fn, lr, lr_factors)
        lr = lr * factors  # each rate as rate_at() computes it: one IEEE double product
    beta1_t, beta2_t = _powers(first.beta1, first.beta2, n)
    step_size, inv_sqrt_bc2, decay_factor = _adam_by_step(lr, first.weight_decay, beta1_t, beta2_t,
                                                          np.sqrt)
    numbers = dict(first._asdict(), step_size=step_size, inv_sqrt_bc2=inv_sqrt_bc2,
                   decay_factor=decay_factor)
    # Columns in the order of the rule's numbers: the device reads a row as its coefficients.
    table = np.empty((len(beta1_t), len(AdamCoeffs.numbers)), dtype=np.float64)
    for k, name in enumerate(AdamCoeffs.numbers):
        table[:, k] = numbers[name]
    return first, table


def exact(xp, p, g, states, c):
    T = p.dtype.type
    g = effective_grad(xp, T, p, g, c.maximize, c.wd_mode, c.weight_decay)
    if c.wd_mode == WD_DECOUPLED:
        p[...] = p * T(c.decay_factor)
    m, v = states[0], states[1]
    update_moments(T, c, g, m, v)
    vhat = v
    if c.amsgrad:
        vmax = states[2]
        vmax[...] = max_propagate_nan(xp, vmax, v)
        vhat = vmax
    denom = xp.sqrt(vhat) * T(c.inv_sqrt_bc2) + T(c.eps)
    p[...] = p - T(c.step_size) * (m / denom)



def float64(xp, p, g, states, h):
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




_KEYWORDS = dict(step=REQUIRED, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, maximize=False)

RULE = Rule(
    name="adam", coefficients=coefficients, exact=exact, float64=float64,
    states=("exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"),
    optional_states={"max_exp_avg_sqs": ("amsgrad", "when amsgrad=True")},
    square_states=frozenset({"exp_avg_sqs", "max_exp_avg_sqs"}),
    kernels=(
        Kernel("adam_", _KEYWORDS, fixed=dict(decoupled=False), optimizer="Adam", doc="""
    Adam (torch.optim.Adam), in place, with coupled (L2) weight decay. ``step`` counts
    from 1 and is the step being taken. ``max_exp_avg_sqs`` is required when ``amsgrad``.

    ``m = b1*m + (1-b1)*g``; ``v = b2*v + (1-b2)*g*g``;
    ``p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)``.
    """, examples={
            "adam": dict(lr=0.01, weight_decay=0.01),
            "adam-amsgrad": dict(lr=0.01, amsgrad=True),
            "adam-maximize": dict(lr=0.01, maximize=True),
        }),
        Kernel("adamw_", dict(_KEYWORDS, weight_decay=1e-2), fixed=dict(decoupled=True),
               optimizer="AdamW", doc="""
    AdamW (torch.optim.AdamW), in place: as :func:`adam_`, with decoupled weight decay
    ``p *= 1 - lr*weight_decay`` applied before the update.
    """, examples={"adamw": dict(lr=0.01, weight_decay=0.1)}),
    ),
)
