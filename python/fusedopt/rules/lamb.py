"""LAMB (You et al. 2020; Apex's FusedLAMB, optax's lamb): Adam's moments and a step scaled
per tensor by the trust ratio ||p|| / ||u|| (csrc/math/lamb.h)."""

from __future__ import annotations

import math

import numpy as np

from fusedopt._coeffs import WD_DECOUPLED, WD_NONE, moment_hyperparameters, step_type
from fusedopt.rules import REQUIRED, Kernel, Rule
from fusedopt.rules._common import sum_of_squares_exact, update_moments

LambCoeffs = step_type("LambCoeffs", "lamb")


def coefficients(fn, **hyper):
    step, lr, beta1, beta2, eps, weight_decay, maximize = moment_hyperparameters(fn, **hyper)
    return LambCoeffs.make(beta1=beta1, one_minus_beta1=1.0 - beta1, beta2=beta2,
                           one_minus_beta2=1.0 - beta2, inv_bc1=1.0 / (1.0 - beta1**step),
                           inv_sqrt_bc2=1.0 / math.sqrt(1.0 - beta2**step), eps=eps,
                           weight_decay=weight_decay, lr=lr, maximize=maximize,
                           wd_mode=WD_DECOUPLED if weight_decay != 0.0 else WD_NONE)


def tensor_factor(c, p_sq: float, u_sq: float) -> float:
    """LambRule::tensor_factor: lr * ||p|| / ||u|| in double, 1 for the ratio where either
    sum of squares is 0."""
    ratio = 1.0 if p_sq == 0.0 or u_sq == 0.0 else math.sqrt(p_sq) / math.sqrt(u_sq)
    return c.lr * ratio


def exact(xp, p, g, states, c, as_stored):
    T = p.dtype.type
    g = -g if c.maximize else g
    m, v = states
    update_moments(T, c, g, m, v)
    m[...] = as_stored(0, m)  # pass 2 of the kernel reads them back from storage
    v[...] = as_stored(1, v)
    u = (m * T(c.inv_bc1)) / (xp.sqrt(v) * T(c.inv_sqrt_bc2) + T(c.eps))
    if c.wd_mode == WD_DECOUPLED:
        u = u + T(c.weight_decay) * p
    factor = tensor_factor(c, sum_of_squares_exact(xp, [p]), sum_of_squares_exact(xp, [u]))
    with np.errstate(over="ignore"):  # a factor past the compute type's range rounds to inf
        factor = T(factor)
    p[...] = p - factor * u


def float64(xp, p, g, states, h):
    b1, b2 = h["betas"]
    t = h["step"]
    g = -g if h["maximize"] else g
    m = b1 * states[0] + (1 - b1) * g
    v = b2 * states[1] + (1 - b2) * g * g
    u = (m / (1 - b1**t)) / (xp.sqrt(v / (1 - b2**t)) + h["eps"]) + h["weight_decay"] * p
    p_norm = float(xp.sqrt(xp.sum(p * p)))
    u_norm = float(xp.sqrt(xp.sum(u * u)))
    ratio = p_norm / u_norm if p_norm > 0 and u_norm > 0 else 1.0
    return p - h["lr"] * ratio * u, [m, v]


RULE = Rule(
    name="lamb", coefficients=coefficients, exact=exact, float64=float64,
    states=("exp_avgs", "exp_avg_sqs"), square_states=frozenset({"exp_avg_sqs"}),
    trust_ratio=True,
    kernels=(Kernel(
        "lamb_", dict(step=REQUIRED, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01,
                      maximize=False),
        optimizer="LAMB", doc="""
    LAMB (You et al. 2020), in place: Adam's moments with bias correction, decoupled weight
    decay inside the update, and each tensor's step scaled by its trust ratio. ``step``
    counts from 1; ``exp_avgs`` and ``exp_avg_sqs`` start at zero. The defaults are Apex's
    FusedLAMB (lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01); optax's lamb
    differs only in weight_decay=0.0. No gradient clipping is applied.

    ``m = b1*m + (1-b1)*g``; ``v = b2*v + (1-b2)*g*g``;
    ``u = m/(1-b1^t) / (sqrt(v)/sqrt(1-b2^t) + eps) + weight_decay*p``;
    per tensor ``ratio = ||p|| / ||u||`` (1 where either norm is 0);
    ``p -= lr*ratio*u``. The norms are summed in the fixed blocking of the global gradient
    norm, so the result has the same bits for any thread count.
    """, examples={
            "lamb": dict(lr=0.01, weight_decay=0.01),
            "lamb-plain": dict(lr=0.01, weight_decay=0.0),
            "lamb-maximize": dict(lr=0.01, betas=(0.8, 0.9), maximize=True),
        }),),
)
