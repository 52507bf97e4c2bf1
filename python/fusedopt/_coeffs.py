"""Hyperparameter checks and per-step coefficients: the one place both are computed.

Everything that is per step rather than per element (bias corrections, step sizes, decay
factors, the adaptive rate) is computed here once, in double precision, and handed to the
native kernels and to the exact reference alike; each rounds it once to the compute type.
That is what lets the two agree bit for bit.
"""

from __future__ import annotations

import collections
import functools
import math

from fusedopt import _core

# Weight-decay and momentum modes, as csrc/math/modes.h numbers them (the module says).
WD_NONE, WD_COUPLED, WD_DECOUPLED = (_core.modes[k] for k in ("WD_NONE", "WD_COUPLED", "WD_DECOUPLED"))
MOM_NONE, MOM_TORCH_FIRST, MOM_TORCH, MOM_KERAS = (
    _core.modes[k] for k in ("MOM_NONE", "MOM_TORCH_FIRST", "MOM_TORCH", "MOM_KERAS"))


def _step_type(name: str, rule: str):
    """The coefficient type of ``rule``: a NamedTuple whose fields are those of the rule's
    step in csrc/common/steps.h (its numbers, then its flags), which the bindings read by
    name. Built with keywords only (``make``), so no order is written here."""
    fields = _core.step_fields()[rule]
    cls = collections.namedtuple(name, fields)
    cls.__doc__ = f"The per-step coefficients of {rule} (csrc/common/steps.h)."
    cls.rule = rule
    cls.numbers = fields[:_core.step_numbers()[rule]]  # the rest are flags
    # A keyword-only factory made from the field list, as namedtuple makes its __new__: one
    # is built on every call, and this costs a third of the class call (0.16 against 0.44 us).
    names = ", ".join(fields)
    namespace = {"_tuple_new": tuple.__new__, "_cls": cls}
    exec(f"def make(*, {names}):\n    return _tuple_new(_cls, ({names},))", namespace)  # noqa: S102
    cls.make = staticmethod(namespace["make"])
    return cls


def _number(fn: str, name: str, value, *, high=math.inf, high_open=True):
    """``value`` as a float if it is a real number in [0, high) ([0, high] with
    high_open=False); else a TypeError or ValueError naming the argument."""
    if type(value) is float and 0.0 <= value < high:  # the common case: this runs every call
        return value
    kind = type(value)
    if kind is not float and kind is not int:
        if kind is bool or not (isinstance(value, (int, float)) or _is_real_scalar(value)):
            raise TypeError(f"{fn}: {name} must be a real number, got {kind.__name__}")
    v = float(value)
    ok = 0.0 <= v < math.inf and (v < high if high_open else v <= high)  # NaN fails them all
    if not ok:
        hi = "inf)" if high == math.inf else (f"{high})" if high_open else f"{high}]")
        raise ValueError(f"{fn}: {name} must be a finite number in [0.0, {hi}, got {value!r}")
    return v


def _is_real_scalar(value) -> bool:
    # NumPy scalars and 0-d arrays of a real dtype count as numbers.
    kind = getattr(getattr(value, "dtype", None), "kind", None)
    return kind in ("f", "i", "u") and getattr(value, "shape", None) == ()


def _flag(fn: str, name: str, value) -> bool:
    if value is True or value is False:
        return value
    kind = type(value)
    # NumPy's bool scalar is numpy.bool_ in NumPy 1 and numpy.bool in NumPy 2.
    numpy_bool = kind.__module__ == "numpy" and kind.__name__ in ("bool_", "bool")
    if not isinstance(value, bool) and not numpy_bool:
        raise TypeError(f"{fn}: {name} must be a bool, got {kind.__name__}")
    return bool(value)


def _step(fn: str, value) -> int:
    if type(value) is int and value >= 1:
        return value
    is_int = isinstance(value, int) or getattr(getattr(value, "dtype", None), "kind", "") in ("i", "u")
    if isinstance(value, bool) or not is_int:
        raise TypeError(f"{fn}: step must be an int (the 1-based step count), got {type(value).__name__}")
    step = int(value)
    if step < 1:
        raise ValueError(f"{fn}: step must be >= 1 (steps count from 1, as in torch), got {step}")
    return step


def _betas(fn: str, betas):
    try:
        b1, b2 = betas
    except (TypeError, ValueError):
        raise TypeError(f"{fn}: betas must be a pair (beta1, beta2), got {betas!r}") from None
    return (
        _number(fn, "betas[0]", b1, high=1.0, high_open=True),
        _number(fn, "betas[1]", b2, high=1.0, high_open=True),
    )


SgdCoeffs = _step_type("SgdCoeffs", "sgd")
AdagradCoeffs = _step_type("AdagradCoeffs", "adagrad")
RmspropCoeffs = _step_type("RmspropCoeffs", "rmsprop")
AdamCoeffs = _step_type("AdamCoeffs", "adam")
LionCoeffs = _step_type("LionCoeffs", "lion")


def sgd(fn, *, lr, momentum, dampening, nesterov, weight_decay, maximize, step, convention):
    lr = _number(fn, "lr", lr)
    momentum = _number(fn, "momentum", momentum)
    dampening = _number(fn, "dampening", dampening, high=1.0)
    weight_decay = _number(fn, "weight_decay", weight_decay)
    nesterov = _flag(fn, "nesterov", nesterov)
    maximize = _flag(fn, "maximize", maximize)
    step = _step(fn, step)
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
                     momentum=momentum, one_minus_dampening=1.0 - dampening, maximize=maximize,
                     wd_mode=wd_mode, momentum_mode=mode, nesterov=nesterov)


def adagrad(fn, *, step, lr, lr_decay, weight_decay, eps, maximize):
    step = _step(fn, step)
    lr = _number(fn, "lr", lr)
    lr_decay = _number(fn, "lr_decay", lr_decay)
    weight_decay = _number(fn, "weight_decay", weight_decay)
    eps = _number(fn, "eps", eps)
    maximize = _flag(fn, "maximize", maximize)
    clr = lr / (1.0 + (step - 1) * lr_decay)
    return AdagradCoeffs.make(clr=clr, weight_decay=weight_decay, eps=eps, maximize=maximize,
                         wd_mode=WD_COUPLED if weight_decay else WD_NONE)


def rmsprop(fn, *, lr, alpha, eps, weight_decay, momentum, centered, maximize):
    lr = _number(fn, "lr", lr)
    alpha = _number(fn, "alpha", alpha, high=1.0)
    eps = _number(fn, "eps", eps)
    weight_decay = _number(fn, "weight_decay", weight_decay)
    momentum = _number(fn, "momentum", momentum)
    centered = _flag(fn, "centered", centered)
    maximize = _flag(fn, "maximize", maximize)
    return RmspropCoeffs.make(lr=lr, alpha=alpha, one_minus_alpha=1.0 - alpha, eps=eps,
                         weight_decay=weight_decay, momentum=momentum, maximize=maximize,
                         wd_mode=WD_COUPLED if weight_decay else WD_NONE, centered=centered,
                         has_momentum=momentum != 0.0)


def adam(fn, *, step, lr, betas, eps, weight_decay, amsgrad, maximize, decoupled):
    step = _step(fn, step)
    lr = _number(fn, "lr", lr)
    beta1, beta2 = _betas(fn, betas)
    eps = _number(fn, "eps", eps)
    weight_decay = _number(fn, "weight_decay", weight_decay)
    amsgrad = _flag(fn, "amsgrad", amsgrad)
    maximize = _flag(fn, "maximize", maximize)
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


def lion(fn, *, lr, betas, weight_decay, maximize):
    lr = _number(fn, "lr", lr)
    beta1, beta2 = _betas(fn, betas)
    weight_decay = _number(fn, "weight_decay", weight_decay)
    maximize = _flag(fn, "maximize", maximize)
    return LionCoeffs.make(lr=lr, beta1=beta1, one_minus_beta1=1.0 - beta1, beta2=beta2,
                           one_minus_beta2=1.0 - beta2, weight_decay=weight_decay,
                           decay_factor=1.0 - lr * weight_decay, maximize=maximize,
                           wd_mode=WD_DECOUPLED if weight_decay else WD_NONE)


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


def lr_factors(fn: str, value):
    """None, or ``value`` as a read-only float64 array of the learning rate's factors by
    step (the rate of step t is lr * value[t-1], and lr * value[-1] after its end); a
    TypeError or ValueError naming lr_factors if it is not a non-empty sequence of finite
    numbers >= 0."""
    if value is None:
        return None
    import numpy as np

    what = f"{fn}: lr_factors must be a sequence of real numbers (the factors of lr at steps 1, 2, ...)"
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__len__"):
        raise TypeError(f"{what}, got {type(value).__name__}")
    try:
        given = np.asarray(value)
    except (TypeError, ValueError, OverflowError):
        raise TypeError(what) from None
    if given.dtype.kind not in "iuf":  # no strings, bools, objects (ints too large), complex
        raise TypeError(f"{what}, got elements of dtype {given.dtype}")
    if given.ndim != 1 or given.size == 0:
        raise ValueError(f"{fn}: lr_factors must be a non-empty flat sequence, got shape "
                         f"{given.shape}")
    factors = given.astype(np.float64)  # a copy: later edits of `value` change nothing here
    bad = np.flatnonzero(~(np.isfinite(factors) & (factors >= 0.0)))
    if bad.size:
        raise ValueError(f"{fn}: lr_factors must be finite numbers >= 0; lr_factors[{bad[0]}] "
                         f"is {float(factors[bad[0]])!r}")
    factors.flags.writeable = False
    return factors


def check_rates(fn: str, lr, factors) -> None:
    """That every rate lr * factor is finite (a ValueError naming lr_factors if not)."""
    if factors is not None and not math.isfinite(_number(fn, "lr", lr) * float(factors.max())):
        raise ValueError(f"{fn}: lr * lr_factors overflows: lr is {float(lr)!r} and the largest "
                         f"factor {float(factors.max())!r}")


def rate_at(lr: float, factors, step: int) -> float:
    """The learning rate of ``step`` under per-step ``factors`` (lr_factors, or None)."""
    if factors is None:
        return lr
    # float(lr): a NumPy float32 lr would make the product float32; the table's is float64.
    return float(lr) * float(factors[min(step, len(factors)) - 1])


def adam_table(fn, *, lr, betas, eps, weight_decay, amsgrad, maximize, decoupled,
               lr_factors=None):
    """Adam's coefficients for every step at once, for steps a CUDA graph replays: (the
    coefficients of step 1, whose flags pick the kernel; a float64 array whose row t-1 holds
    the numbers of :func:`adam` at step t, at the rate rate_at(lr, lr_factors, t), for
    t = 1 .. n, the last row also those of every later step). n is the number of steps over
    which the coefficients change: adam_table_steps(), or the length of lr_factors."""
    import numpy as np

    first = adam(fn, step=1, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                 amsgrad=amsgrad, maximize=maximize, decoupled=decoupled)
    lr = _number(fn, "lr", lr)
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


def adaptive_lr(lr0: float, sum_of_squares: float) -> float:
    """The seed's adaptive rate, lr_t = lr0 / (1 + ||g||^2), in double."""
    return lr0 / (1.0 + sum_of_squares)
