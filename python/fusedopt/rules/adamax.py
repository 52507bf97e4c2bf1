"""Adamax (Kingma & Ba 2015, section 7.1), as torch.optim.Adamax (csrc/math/adamax.h)."""

from __future__ import annotations

from fusedopt._coeffs import WD_COUPLED, WD_NONE, moment_hyperparameters, step_type
from fusedopt.rules import REQUIRED, Kernel, Rule
from fusedopt.rules._common import effective_grad, max_propagate_nan

AdamaxCoeffs = step_type("AdamaxCoeffs", "adamax")


def coefficients(fn, **hyper):
    step, lr, beta1, beta2, eps, weight_decay, maximize = moment_hyperparameters(fn, **hyper)
    return AdamaxCoeffs.make(clr=lr / (1.0 - beta1**step), beta1=beta1, one_minus_beta1=1.0 - beta1,
                             beta2=beta2, eps=eps, weight_decay=weight_decay, maximize=maximize,
                             wd_mode=WD_COUPLED if weight_decay else WD_NONE)


def exact(xp, p, g, states, c):
    T = p.dtype.type
    g = effective_grad(xp, T, p, g, c.maximize, c.wd_mode, c.weight_decay)
    m, u = states
    m[...] = T(c.beta1) * m + T(c.one_minus_beta1) * g
    u[...] = max_propagate_nan(xp, T(c.beta2) * u, xp.abs(g) + T(c.eps))
    p[...] = p - T(c.clr) * (m / u)


def float64(xp, p, g, states, h):
    b1, b2 = h["betas"]
    g = -g if h["maximize"] else g
    if h["weight_decay"]:
        g = g + h["weight_decay"] * p
    m = b1 * states[0] + (1 - b1) * g
    u = xp.maximum(b2 * states[1], xp.abs(g) + h["eps"])
    return p - h["lr"] / (1 - b1 ** h["step"]) * m / u, [m, u]


RULE = Rule(
    name="adamax", coefficients=coefficients, exact=exact, float64=float64,
    states=("exp_avgs", "exp_infs"), square_states=frozenset({"exp_infs"}),
    kernels=(Kernel(
        "adamax_", dict(step=REQUIRED, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                        maximize=False),
        optimizer="Adamax", doc="""
    Adamax (torch.optim.Adamax), in place: Adam with the infinity norm. ``step`` counts
    from 1; ``exp_avgs`` and ``exp_infs`` start at zero.

    ``m = b1*m + (1-b1)*g``; ``u = max(b2*u, |g| + eps)``; ``p -= lr/(1-b1^t) * m / u``.
    """, examples={
            "adamax": dict(lr=0.01, weight_decay=0.01),
            "adamax-plain": dict(lr=0.01),
            "adamax-decay-maximize": dict(lr=0.01, weight_decay=0.1, maximize=True),
            "adamax-maximize": dict(lr=0.01, betas=(0.8, 0.99), maximize=True),
        }),),
)
