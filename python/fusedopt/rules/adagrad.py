"""Adagrad, as torch.optim.Adagrad (csrc/math/adagrad.h)."""

from __future__ import annotations

from fusedopt._coeffs import WD_COUPLED, WD_NONE, flag, number, step_count, step_type
from fusedopt.rules import REQUIRED, Kernel, Rule
from fusedopt.rules._common import effective_grad

AdagradCoeffs = step_type("AdagradCoeffs", "adagrad")


def coefficients(fn, *, step, lr, lr_decay, weight_decay, eps, maximize):
    step = step_count(fn, step)
    lr = number(fn, "lr", lr)
    lr_decay = number(fn, "lr_decay", lr_decay)
    weight_decay = number(fn, "weight_decay", weight_decay)
    eps = number(fn, "eps", eps)
    maximize = flag(fn, "maximize", maximize)
    clr = lr / (1.0 + (step - 1) * lr_decay)
    return AdagradCoeffs.make(clr=clr, weight_decay=weight_decay, eps=eps, maximize=maximize,
                              wd_mode=WD_COUPLED if weight_decay else WD_NONE)


def exact(xp, p, g, states, c):
    T = p.dtype.type
    g = effective_grad(xp, T, p, g, c.maximize, c.wd_mode, c.weight_decay)
    s = states[0]
    s[...] = s + g * g
    std = xp.sqrt(s) + T(c.eps)
    p[...] = p - T(c.clr) * (g / std)


def float64(xp, p, g, states, h):
    g = -g if h["maximize"] else g
    if h["weight_decay"]:
        g = g + h["weight_decay"] * p
    clr = h["lr"] / (1 + (h["step"] - 1) * h["lr_decay"])
    s = states[0] + g * g
    return p - clr * g / (xp.sqrt(s) + h["eps"]), [s]


RULE = Rule(
    name="adagrad", coefficients=coefficients, exact=exact, float64=float64,
    states=("state_sums",), square_states=frozenset({"state_sums"}),
    kernels=(Kernel(
        "adagrad_", dict(step=REQUIRED, lr=0.01, lr_decay=0.0, weight_decay=0.0, eps=1e-10,
                         maximize=False),
        optimizer="Adagrad", doc="""
    Adagrad (torch.optim.Adagrad), in place. ``step`` counts from 1.

    ``clr = lr / (1 + (step-1)*lr_decay)``; ``sum += g*g``; ``p -= clr * g / (sqrt(sum) + eps)``.
    """, examples={"adagrad": dict(lr=0.05, lr_decay=0.01, weight_decay=0.01)}),),
)
