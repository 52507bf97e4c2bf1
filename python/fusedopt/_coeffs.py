"""Hyperparameter checks and what every rule's coefficients are built with.

Everything that is per step rather than per element (bias corrections, step sizes, decay
factors, the adaptive rate) is computed once, in double precision, by the rule's
``coefficients`` (fusedopt/rules/<rule>.py) with the checks here, and handed to the native
kernels and to the exact reference alike; each rounds it once to the compute type. That
is what lets the two agree bit for bit.
"""

from __future__ import annotations

import collections
import math

from fusedopt import _core

# Weight-decay and momentum modes, as csrc/math/modes.h numbers them (the module says).
WD_NONE, WD_COUPLED, WD_DECOUPLED = (_core.modes[k] for k in ("WD_NONE", "WD_COUPLED", "WD_DECOUPLED"))
MOM_NONE, MOM_TORCH_FIRST, MOM_TORCH, MOM_KERAS = (
    _core.modes[k] for k in ("MOM_NONE", "MOM_TORCH_FIRST", "MOM_TORCH", "MOM_KERAS"))


def state_shapes(layout: str, shape) -> tuple:
    """The reader's shapes of a param's states under a state layout (csrc/bindings/reader.h;
    None where the param keeps no such state)."""
    return _core.state_shapes(layout, tuple(int(d) for d in shape))


def step_type(name: str, rule: str):
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


def number(fn: str, name: str, value, *, high=math.inf, high_open=True):
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


def flag(fn: str, name: str, value) -> bool:
    if value is True or value is False:
        return value
    kind = type(value)
    # NumPy's bool scalar is numpy.bool_ in NumPy 1 and numpy.bool in NumPy 2.
    numpy_bool = kind.__module__ == "numpy" and kind.__name__ in ("bool_", "bool")
    if not isinstance(value, bool) and not numpy_bool:
        raise TypeError(f"{fn}: {name} must be a bool, got {kind.__name__}")
    return bool(value)


def step_count(fn: str, value) -> int:
    if type(value) is int and value >= 1:
        return value
    is_int = isinstance(value, int) or getattr(getattr(value, "dtype", None), "kind", "") in ("i", "u")
    if isinstance(value, bool) or not is_int:
        raise TypeError(f"{fn}: step must be an int (the 1-based step count), got {type(value).__name__}")
    step = int(value)
    if step < 1:
        raise ValueError(f"{fn}: step must be >= 1 (steps count from 1, as in torch), got {step}")
    return step


def betas_pair(fn: str, betas):
    try:
        b1, b2 = betas
    except (TypeError, ValueError):
        raise TypeError(f"{fn}: betas must be a pair (beta1, beta2), got {betas!r}") from None
    return (
        number(fn, "betas[0]", b1, high=1.0, high_open=True),
        number(fn, "betas[1]", b2, high=1.0, high_open=True),
    )


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
    if factors is not None and not math.isfinite(number(fn, "lr", lr) * float(factors.max())):
        raise ValueError(f"{fn}: lr * lr_factors overflows: lr is {float(lr)!r} and the largest "
                         f"factor {float(factors.max())!r}")


def rate_at(lr: float, factors, step: int) -> float:
    """The learning rate of ``step`` under per-step ``factors`` (lr_factors, or None)."""
    if factors is None:
        return lr
    # float(lr): a NumPy float32 lr would make the product float32; the table's is float64.
    return float(lr) * float(factors[min(step, len(factors)) - 1])


def adaptive_lr(lr0: float, sum_of_squares: float) -> float:
    """The seed's adaptive rate, lr_t = lr0 / (1 + ||g||^2), in double."""
    return lr0 / (1.0 + sum_of_squares)
