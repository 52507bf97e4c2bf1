"""NAdam (Dozat 2016), as torch.optim.NAdam, with its momentum schedule and both forms of
weight decay (csrc/math/nadam.h)."""

from __future__ import annotations

import math
import threading

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

NadamCoeffs = step_type("NadamCoeffs", "nadam")


def _mu(beta1: float, momentum_decay: float, t: int) -> float:
    """The momentum of step t: beta1 * (1 - 0.5 * 0.96^(t * momentum_decay))."""
    return beta1 * (1.0 - 0.5 * 0.96 ** (t * momentum_decay))


# The product mu_1 ... mu_t of the last call for each (beta1, momentum_decay), so that a
# run of steps extends it by one factor a call instead of multiplying from step 1 (the
# same products, in the same order). Few settings are in use at once; the oldest goes.
_products: dict = {}  # (beta1, momentum_decay) -> (t, product)
_MAX_SETTINGS = 16
_product_lock = threading.Lock()


def mu_product_before(beta1: float, momentum_decay: float, step: int) -> float:
    """mu_1 * ... * mu_{step-1}: torch's mu_product state as the step finds it."""
    key = (beta1, momentum_decay)
    t, product = _products.get(key, (0, 1.0))
    if t > step - 1:
        t, product = 0, 1.0
    while t < step - 1 and product != 0.0:  # once it underflows to 0 it stays 0
        t += 1
        product *= _mu(beta1, momentum_decay, t)
    with _product_lock:
        if key not in _products and len(_products) >= _MAX_SETTINGS:
            del _products[next(iter(_products))]
        _products[key] = (max(t, step - 1) if product == 0.0 else t, product)
    return product


def coefficients(fn, *, step, lr, betas, eps, weight_decay, momentum_decay, decoupled_weight_decay,
                 maximize, mu_product):
    step = step_count(fn, step)
    lr = number(fn, "lr", lr)
    beta1, beta2 = betas_pair(fn, betas)
    eps = number(fn, "eps", eps)
    weight_decay = number(fn, "weight_decay", weight_decay)
    momentum_decay = number(fn, "momentum_decay", momentum_decay)
    decoupled = flag(fn, "decoupled_weight_decay", decoupled_weight_decay)
    maximize = flag(fn, "maximize", maximize)
    if mu_product is None:
        mu_product = mu_product_before(beta1, momentum_decay, step)
    else:
        mu_product = number(fn, "mu_product", mu_product, high=1.0, high_open=False)
    mu, mu_next = _mu(beta1, momentum_decay, step), _mu(beta1, momentum_decay, step + 1)
    product = mu_product * mu
    if weight_decay == 0.0:
        wd_mode = WD_NONE
    else:
        wd_mode = WD_DECOUPLED if decoupled else WD_COUPLED
    return NadamCoeffs.make(
        beta1=beta1, one_minus_beta1=1.0 - beta1, beta2=beta2, one_minus_beta2=1.0 - beta2,
        inv_sqrt_bc2=1.0 / math.sqrt(1.0 - beta2**step), eps=eps, weight_decay=weight_decay,
        decay_factor=1.0 - lr * weight_decay, grad_step=lr * (1.0 - mu) / (1.0 - product),
        momentum_step=lr * mu_next / (1.0 - product * mu_next), maximize=maximize, wd_mode=wd_mode)


def exact(xp, p, g, states, c):
    T = p.dtype.type
    g = effective_grad(xp, T, p, g, c.maximize, c.wd_mode, c.weight_decay)
    if c.wd_mode == WD_DECOUPLED:
        p[...] = p * T(c.decay_factor)
    m, v = states
    update_moments(T, c, g, m, v)
    d = xp.sqrt(v) * T(c.inv_sqrt_bc2) + T(c.eps)
    p[...] = p - T(c.grad_step) * (g / d)
    p[...] = p - T(c.momentum_step) * (m / d)


def float64(xp, p, g, states, h):
    b1, b2 = h["betas"]
    lr, wd, t, psi = h["lr"], h["weight_decay"], h["step"], h["momentum_decay"]
    g = -g if h["maximize"] else g
    if wd and h["decoupled_weight_decay"]:
        p = p * (1 - lr * wd)
    elif wd:
        g = g + wd * p
    mu = [b1 * (1 - 0.5 * 0.96 ** (i * psi)) for i in range(1, t + 2)]
    before = h["mu_product"] if h["mu_product"] is not None else math.prod(mu[:t - 1])
    m = b1 * states[0] + (1 - b1) * g
    v = b2 * states[1] + (1 - b2) * g * g
    denom = xp.sqrt(v / (1 - b2**t)) + h["eps"]
    m_bar = (1 - mu[t - 1]) * g / (1 - before * mu[t - 1]) + mu[t] * m / (1 - before * mu[t - 1] * mu[t])
    return p - lr * m_bar / denom, [m, v]


RULE = Rule(
    name="nadam", coefficients=coefficients, exact=exact, float64=float64,
    states=("exp_avgs", "exp_avg_sqs"), square_states=frozenset({"exp_avg_sqs"}),
    kernels=(Kernel(
        "nadam_", dict(step=REQUIRED, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                       momentum_decay=4e-3, decoupled_weight_decay=False, maximize=False,
                       mu_product=None),
        optimizer="NAdam", optimizer_defaults=dict(lr=2e-3, betas=(0.9, 0.999), eps=1e-8,
                                                   weight_decay=0.0, momentum_decay=4e-3,
                                                   decoupled_weight_decay=False, maximize=False),
        doc="""
    NAdam (torch.optim.NAdam), in place: Adam with Nesterov momentum on a schedule
    ``mu_t = b1 * (1 - 0.5 * 0.96^(t * momentum_decay))``. ``step`` counts from 1;
    ``exp_avgs`` and ``exp_avg_sqs`` start at zero. ``decoupled_weight_decay=True`` decays
    ``p *= 1 - lr*weight_decay`` as AdamW does (torch's NAdamW).

    ``mu_product`` is ``mu_1 * ... * mu_{step-1}``, the product torch keeps per parameter;
    None computes it from ``step`` with these betas and momentum_decay (pass it if they
    changed during the run). ``fusedopt.optim.NAdam`` computes it from the step;
    ``fusedopt.torch.NAdam`` keeps it per param as torch does.

    ``m = b1*m + (1-b1)*g``; ``v = b2*v + (1-b2)*g*g``; ``d = sqrt(v/(1-b2^t)) + eps``;
    ``p -= lr*(1-mu_t)/(1-mu_1..mu_t) * g/d + lr*mu_{t+1}/(1-mu_1..mu_{t+1}) * m/d``.
    """, examples={
            "nadam": dict(lr=0.01, weight_decay=0.01),
            "nadam-plain": dict(lr=0.01),
            "nadamw-maximize": dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True,
                                    maximize=True),
        }),),
)
