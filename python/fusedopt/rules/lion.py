"""Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"; optax.lion)
(csrc/math/lion.h)."""

from __future__ import annotations

from fusedopt._coeffs import WD_DECOUPLED, WD_NONE, betas_pair, flag, number, step_type
from fusedopt.rules import Kernel, Rule
from fusedopt.rules._common import effective_grad, sign_keep_zero

LionCoeffs = step_type("LionCoeffs", "lion")


def coefficients(fn, *, lr, betas, weight_decay, maximize):
    lr = number(fn, "lr", lr)
    beta1, beta2 = betas_pair(fn, betas)
    weight_decay = number(fn, "weight_decay", weight_decay)
    maximize = flag(fn, "maximize", maximize)
    return LionCoeffs.make(lr=lr, beta1=beta1, one_minus_beta1=1.0 - beta1, beta2=beta2,
                           one_minus_beta2=1.0 - beta2, weight_decay=weight_decay,
                           decay_factor=1.0 - lr * weight_decay, maximize=maximize,
                           wd_mode=WD_DECOUPLED if weight_decay else WD_NONE)


def exact(xp, p, g, states, c):
    T = p.dtype.type
    g = effective_grad(xp, T, p, g, c.maximize, c.wd_mode, c.weight_decay)
    m = states[0]
    direction = T(c.beta1) * m + T(c.one_minus_beta1) * g
    if c.wd_mode == WD_DECOUPLED:
        p[...] = p * T(c.decay_factor)
    p[...] = p - T(c.lr) * sign_keep_zero(xp, direction)
    m[...] = T(c.beta2) * m + T(c.one_minus_beta2) * g


def float64(xp, p, g, states, h):
    b1, b2 = h["betas"]
    lr, wd = h["lr"], h["weight_decay"]
    g = -g if h["maximize"] else g
    update = xp.sign(b1 * states[0] + (1 - b1) * g)
    if wd:
        p = p - lr * wd * p
    m = b2 * states[0] + (1 - b2) * g
    return p - lr * update, [m]


RULE = Rule(
    name="lion", coefficients=coefficients, exact=exact, float64=float64, states=("exp_avgs",),
    kernels=(Kernel(
        "lion_", dict(lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, maximize=False),
        optimizer="Lion", doc="""
    Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"; optax.lion),
    in place. ``exp_avgs`` (the momentum) starts at zero; there is no step count.

    ``c = b1*m + (1-b1)*g``; ``p *= 1 - lr*weight_decay`` (decoupled, as AdamW);
    ``p -= lr * sign(c)``; ``m = b2*m + (1-b2)*g``. ``sign`` is -1 or 1 away from zero and
    keeps +0, -0 and NaN as they are. Every element moves by exactly ``lr`` (or not at all),
    so Lion wants a learning rate 3-10x smaller than AdamW's and a weight decay that much
    larger for the same effective decay ``lr*weight_decay``.
    """, examples={
            # Lion moves an element by exactly lr: where float32 rounds the direction
            # b1*m + (1-b1)*g to the other side of zero than float64, the parameter ends 2*lr
            # from the float64 formula's. lr = 1e-5 keeps such a flip inside verify's
            # tolerance (relative to the largest parameter, about 4.5 there), so only an
            # error in the rule fails.
            "lion": dict(lr=1e-5, weight_decay=1.0),
            "lion-maximize": dict(lr=1e-5, maximize=True),
        }),),
)
