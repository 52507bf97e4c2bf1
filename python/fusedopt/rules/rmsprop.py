"""RMSprop, as torch.optim.RMSprop: plain, centered, with momentum (csrc/math/rmsprop.h)."""

from __future__ import annotations

from fusedopt._coeffs import WD_COUPLED, WD_NONE, flag, number, step_type
from fusedopt.rules import Kernel, Rule
from fusedopt.rules._common import effective_grad

RmspropCoeffs = step_type("RmspropCoeffs", "rmsprop")


def coefficients(fn, *, lr, alpha, eps, weight_decay, momentum, centered, maximize):
    lr = number(fn, "lr", lr)
    alpha = number(fn, "alpha", alpha, high=1.0)
    eps = number(fn, "eps", eps)
    weight_decay = number(fn, "weight_decay", weight_decay)
    momentum = number(fn, "momentum", momentum)
    centered = flag(fn, "centered", centered)
    maximize = flag(fn, "maximize", maximize)
    return RmspropCoeffs.make(lr=lr, alpha=alpha, one_minus_alpha=1.0 - alpha, eps=eps,
                              weight_decay=weight_decay, momentum=momentum, maximize=maximize,
                              wd_mode=WD_COUPLED if weight_decay else WD_NONE, centered=centered,
                              has_momentum=momentum != 0.0)


def exact(xp, p, g, states, c):
    T = p.dtype.type
    g = effective_grad(xp, T, p, g, c.maximize, c.wd_mode, c.weight_decay)
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


def float64(xp, p, g, states, h):
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


RULE = Rule(
    name="rmsprop", coefficients=coefficients, exact=exact, float64=float64,
    states=("square_avgs", "grad_avgs", "momentum_buffers"),
    optional_states={"grad_avgs": ("centered", "when centered=True"),
                     "momentum_buffers": ("has_momentum", "when momentum > 0")},
    square_states=frozenset({"square_avgs"}),
    kernels=(Kernel(
        "rmsprop_", dict(lr=0.01, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                         centered=False, maximize=False),
        optimizer="RMSprop", doc="""
    RMSprop (torch.optim.RMSprop), in place.

    ``grad_avgs`` is required when ``centered``; ``momentum_buffers`` when momentum > 0.
    All states start at zero.
    """, examples={
            "rmsprop": dict(lr=0.01, weight_decay=0.01),
            "rmsprop-centered-momentum": dict(lr=0.01, momentum=0.9, centered=True),
        }),),
)
