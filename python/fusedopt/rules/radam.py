"""RAdam (Liu et al. 2020), as torch.optim.RAdam, with both forms of weight decay
(csrc/math/radam.h)."""

from __future__ import annotations

import math

from fusedopt._coeffs import (
    WD_COUPLED,
    WD_DECOUPLED,
    WD_NONE,
    betas_pair,
    flag,
    number,
    step_count,
    step_type,
)
from fusedopt.rules import REQUIRED, Kernel, Rule
from fusedopt.rules._common import effective_grad, update_moments

RadamCoeffs = step_type("RadamCoeffs", "radam")


def rectification(beta2: float, step: int):
    """(whether step is rectified, r_t): torch's test rho_t > 5 and its factor, in double."""
    bc2 = 1.0 - beta2**step
    rho_inf = 2.0 / (1.0 - beta2) - 1.0
    rho_t = rho_inf - 2.0 * step * beta2**step / bc2
    if not rho_t > 5.0:
        return False, 1.0
    return True, math.sqrt((rho_t - 4.0) * (rho_t - 2.0) * rho_inf
                           / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))


def coefficients(fn, *, step, lr, betas, eps, weight_decay, decoupled_weight_decay, maximize):
    step = step_count(fn, step)
    lr = number(fn, "lr", lr)
    beta1, beta2 = betas_pair(fn, betas)
    eps = number(fn, "eps", eps)
    weight_decay = number(fn, "weight_decay", weight_decay)
    decoupled = flag(fn, "decoupled_weight_decay", decoupled_weight_decay)
    maximize = flag(fn, "maximize", maximize)
    rectified, r = rectification(beta2, step)
    bc1 = 1.0 - beta1**step
    step_size = lr * r * math.sqrt(1.0 - beta2**step) / bc1 if rectified else lr / bc1
    if weight_decay == 0.0:
        wd_mode = WD_NONE
    else:
        wd_mode = WD_DECOUPLED if decoupled else WD_COUPLED
    return RadamCoeffs.make(beta1=beta1, one_minus_beta1=1.0 - beta1, beta2=beta2,
                            one_minus_beta2=1.0 - beta2, step_size=step_size, eps=eps,
                            weight_decay=weight_decay, decay_factor=1.0 - lr * weight_decay,
                            maximize=maximize, wd_mode=wd_mode, rectified=rectified)


def exact(xp, p, g, states, c):
    T = p.dtype.type
    g = effective_grad(xp, T, p, g, c.maximize, c.wd_mode, c.weight_decay)
    if c.wd_mode == WD_DECOUPLED:
        p[...] = p * T(c.decay_factor)
    m, v = states
    update_moments(T, c, g, m, v)
    if c.rectified:
        p[...] = p - T(c.step_size) * (m / (xp.sqrt(v) + T(c.eps)))
    else:
        p[...] = p - T(c.step_size) * m


def float64(xp, p, g, states, h):
    b1, b2 = h["betas"]
    lr, wd, t = h["lr"], h["weight_decay"], h["step"]
    g = -g if h["maximize"] else g
    if wd and h["decoupled_weight_decay"]:
        p = p * (1 - lr * wd)
    elif wd:
        g = g + wd * p
    m = b1 * states[0] + (1 - b1) * g
    v = b2 * states[1] + (1 - b2) * g * g
    m_hat = m / (1 - b1**t)
    rectified, r = rectification(b2, t)
    if rectified:
        return p - lr * m_hat * r * math.sqrt(1 - b2**t) / (xp.sqrt(v) + h["eps"]), [m, v]
    return p - lr * m_hat, [m, v]


RULE = Rule(
    name="radam", coefficients=coefficients, exact=exact, float64=float64,
    states=("exp_avgs", "exp_avg_sqs"), square_states=frozenset({"exp_avg_sqs"}),
    kernels=(Kernel(
        "radam_", dict(step=REQUIRED, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                       decoupled_weight_decay=False, maximize=False),
        optimizer="RAdam", doc="""
    RAdam (torch.optim.RAdam), in place: Adam whose adaptive rate is switched on, and
    rectified, once the variance of its estimate is tractable (``rho_t > 5``, decided per
    step on the host as torch decides it); before that, SGD with momentum. ``step`` counts
    from 1; ``exp_avgs`` and ``exp_avg_sqs`` start at zero. ``decoupled_weight_decay=True``
    decays ``p *= 1 - lr*weight_decay`` as AdamW does (torch's RAdamW).

    ``m = b1*m + (1-b1)*g``; ``v = b2*v + (1-b2)*g*g``; rectified:
    ``p -= lr*r_t*sqrt(1-b2^t)/(1-b1^t) * m/(sqrt(v) + eps)``, else ``p -= lr/(1-b1^t) * m``.
    """, examples={
            # rho_t passes 5 at step 6 for these betas: verify's 6 steps take both forms.
            "radam": dict(lr=0.01, betas=(0.9, 0.9), weight_decay=0.01),
            "radam-plain": dict(lr=0.01, betas=(0.9, 0.9)),
            "radamw-maximize": dict(lr=0.01, betas=(0.8, 0.9), weight_decay=0.1,
                                    decoupled_weight_decay=True, maximize=True),
        }),),
)
