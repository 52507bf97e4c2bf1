"""Adadelta (Zeiler 2012), as torch.optim.Adadelta (csrc/math/adadelta.h)."""

from __future__ import annotations

from fusedopt._coeffs import WD_COUPLED, WD_NONE, flag, number, step_type
from fusedopt.rules import Kernel, Rule
from fusedopt.rules._common import effective_grad

AdadeltaCoeffs = step_type("AdadeltaCoeffs", "adadelta")


def coefficients(fn, *, lr, rho, eps, weight_decay, maximize):
    lr = number(fn, "lr", lr)
    rho = number(fn, "rho", rho, high=1.0, high_open=False)
    eps = number(fn, "eps", eps)
    weight_decay = number(fn, "weight_decay", weight_decay)
    maximize = flag(fn, "maximize", maximize)
    return AdadeltaCoeffs.make(lr=lr, rho=rho, one_minus_rho=1.0 - rho, eps=eps,
                               weight_decay=weight_decay, maximize=maximize,
                               wd_mode=WD_COUPLED if weight_decay else WD_NONE)


def exact(xp, p, g, states, c):
    T = p.dtype.type
    g = effective_grad(xp, T, p, g, c.maximize, c.wd_mode, c.weight_decay)
    rho, one_minus_rho, eps = T(c.rho), T(c.one_minus_rho), T(c.eps)
    sq, acc = states
    sq[...] = rho * sq + one_minus_rho * (g * g)
    delta = (xp.sqrt(acc + eps) / xp.sqrt(sq + eps)) * g
    acc[...] = rho * acc + one_minus_rho * (delta * delta)
    p[...] = p - T(c.lr) * delta


def float64(xp, p, g, states, h):
    rho, eps = h["rho"], h["eps"]
    g = -g if h["maximize"] else g
    if h["weight_decay"]:
        g = g + h["weight_decay"] * p
    sq = rho * states[0] + (1 - rho) * g * g
    delta = xp.sqrt(states[1] + eps) / xp.sqrt(sq + eps) * g
    acc = rho * states[1] + (1 - rho) * delta * delta
    return p - h["lr"] * delta, [sq, acc]


RULE = Rule(
    name="adadelta", coefficients=coefficients, exact=exact, float64=float64,
    states=("square_avgs", "acc_deltas"), square_states=frozenset({"square_avgs", "acc_deltas"}),
    kernels=(Kernel(
        "adadelta_", dict(lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0, maximize=False),
        optimizer="Adadelta", doc="""
    Adadelta (torch.optim.Adadelta), in place. ``square_avgs`` and ``acc_deltas`` start at
    zero; there is no step count.

    ``sq = rho*sq + (1-rho)*g*g``; ``delta = sqrt(acc + eps)/sqrt(sq + eps) * g``;
    ``acc = rho*acc + (1-rho)*delta*delta``; ``p -= lr*delta``.
    """, examples={
            "adadelta": dict(lr=1.0, weight_decay=0.01),
            "adadelta-plain": dict(),
            "adadelta-maximize": dict(lr=0.5, rho=0.5, maximize=True),
        }),),
)
