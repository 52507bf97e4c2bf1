"""SGD with heavy-ball or Nesterov momentum, torch's and Keras's conventions, and the
adaptive rate lr_t = lr0 / (1 + ||g||^2) (csrc/math/sgd.h)."""

from __future__ import annotations

from fusedopt._coeffs import (
    MOM_KERAS,
    MOM_NONE,
    MOM_TORCH,
    MOM_TORCH_FIRST,
    WD_COUPLED,
    WD_DECOUPLED,
    WD_NONE,
    flag,
    number,
    step_count,
    step_type,
)
from fusedopt.rules import REQUIRED, Kernel, Rule
from fusedopt.rules._common import effective_grad

SgdCoeffs = step_type("SgdCoeffs", "sgd")


def coefficients(fn, *, lr, momentum, dampening, nesterov, weight_decay, maximize, step, convention):
    lr = number(fn, "lr", lr)
    momentum = number(fn, "momentum", momentum)
    dampening = number(fn, "dampening", dampening, high=1.0)
    weight_decay = number(fn, "weight_decay", weight_decay)
    nesterov = flag(fn, "nesterov", nesterov)
    maximize = flag(fn, "maximize", maximize)
    step = step_count(fn, step)
    if convention not in ("torch", "keras"):
        raise ValueError(f"{fn}: convention must be 'torch' or 'keras', got {convention!r}")
    if nesterov and momentum == 0.0:
        raise ValueError(f"{fn}: nesterov=True needs momentum > 0")
    if nesterov and dampening != 0.0:
        raise ValueError(f"{fn}: nesterov=True needs dampening == 0 (as in torch)")
    if convention == "keras" and dampening != 0.0:
        raise ValueError(f"{fn}: dampening is not part of the Keras convention; leave it at 0")
    if momentum == 0.0:
        mode = MOM_NONE
    elif convention == "keras":
        mode = MOM_KERAS
    else:
        mode = MOM_TORCH_FIRST if step == 1 else MOM_TORCH
    if weight_decay == 0.0:
        wd_mode = WD_NONE
    else:
        wd_mode = WD_DECOUPLED if convention == "keras" else WD_COUPLED
    return SgdCoeffs.make(lr=lr, weight_decay=weight_decay, decay_factor=1.0 - lr * weight_decay,
                          momentum=momentum, one_minus_dampening=1.0 - dampening,
                          maximize=maximize, wd_mode=wd_mode, momentum_mode=mode,
                          nesterov=nesterov)


def exact(xp, p, g, states, c):
    T = p.dtype.type
    g = effective_grad(xp, T, p, g, c.maximize, c.wd_mode, c.weight_decay)
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


def float64(xp, p, g, states, h):
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


_KEYWORDS = dict(lr=REQUIRED, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0,
                 maximize=False, step=1, convention="torch")
_OPTIMIZER_DEFAULTS = dict(_KEYWORDS, lr=1e-3)
del _OPTIMIZER_DEFAULTS["step"]

RULE = Rule(
    name="sgd", coefficients=coefficients, exact=exact, float64=float64,
    states=("momentum_buffers",),
    optional_states={"momentum_buffers": ("momentum_mode", "when momentum > 0")},
    kernels=(
        Kernel("sgd_", _KEYWORDS, optimizer="SGD", optimizer_defaults=_OPTIMIZER_DEFAULTS, doc="""
    SGD with optional heavy-ball or Nesterov momentum, in place.

    ``convention="torch"`` follows torch.optim.SGD: coupled weight decay, and on ``step == 1``
    the momentum buffer is set to the gradient (its previous contents are ignored).
    ``convention="keras"`` follows Keras/TensorFlow: ``v = momentum*v - lr*g; p += v``
    (Nesterov: ``p += momentum*v - lr*g``), buffers starting at zero, and decoupled weight
    decay ``p *= 1 - lr*weight_decay``. ``momentum_buffers`` is required when momentum > 0.
    The exact operation order is in csrc/math/sgd.h and the README.
    """, examples={
            "sgd": dict(lr=0.05, weight_decay=0.01),
            "sgd-momentum": dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01),
            "sgd-nesterov": dict(lr=0.05, momentum=0.9, nesterov=True),
            "sgd-keras": dict(lr=0.05, momentum=0.9, convention="keras"),
            "sgd-keras-nesterov": dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01,
                                       convention="keras"),
            "sgd-maximize": dict(lr=0.05, momentum=0.5, maximize=True),
        }),
        Kernel("adaptive_sgd_", _KEYWORDS, adaptive=True, optimizer="AdaptiveSGD",
               optimizer_defaults=_OPTIMIZER_DEFAULTS, doc="""
    SGD at the adaptive rate ``lr_t = lr / (1 + ||g||^2)``, in place.

    ``||g||`` is the L2 norm of every gradient of the call together (before weight decay),
    summed in a fixed blocking and order, so it has the same bits for any thread count.
    ``lr`` is the base rate lr0; every other argument is as in :func:`sgd_`. Returns the
    rate used and the norm (an :class:`AdaptiveRate`).
    """, examples={
            "adaptive_sgd": dict(lr=0.5),
            "adaptive_sgd-momentum": dict(lr=0.5, momentum=0.9, weight_decay=0.01),
        }),
    ),
)
