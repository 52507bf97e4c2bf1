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


def moment_hyperparameters(fn: str, *, step, lr, betas, eps, weight_decay, maximize) -> tuple:
    """The checked (step, lr, beta1, beta2, eps, weight_decay, maximize) of a rule with
    Adam's hyperparameters and nothing else (Adamax, LAMB)."""
    step = step_count(fn, step)
    lr = number(fn, "lr", lr)
    beta1, beta2 = betas_pair(fn, betas)
    return (step, lr, beta1, beta2, number(fn, "eps", eps), number(fn, "weight_decay", weight_decay),
            flag(fn, "maximize", maximize))


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


# --- loss scaling and clipping (every rule: csrc/math/grad_multiplier.h) -------------------
CLIP_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_'s: max_norm / (norm + 1e-6)


class GradScaling(collections.namedtuple("GradScaling", "grad_scale found_inf max_grad_norm grad_norm")):
    """A call's loss scaling and clipping, checked: grad_scale (1.0: none), found_inf (a
    bool), max_grad_norm and grad_norm (None: not given, found_inf included). Every gradient is read times
    multiplier(norm), rounded once to the compute type."""

    __slots__ = ()

    @property
    def clips(self) -> bool:
        return self.max_grad_norm is not None

    @property
    def needs_norm(self) -> bool:
        """Whether the call must compute the norm of its own gradients to clip."""
        return self.max_grad_norm is not None and self.grad_norm is None

    def unscaled_norm(self, sum_of_squares: float) -> float:
        """The L2 norm of the unscaled gradients: the given grad_norm, or that of the call's
        (sum of squares of the stored gradients, in the fixed blocking of math/sumsq.h)."""
        if self.grad_norm is not None:
            return self.grad_norm
        return math.sqrt(sum_of_squares) / self.grad_scale

    def multiplier(self, norm: float) -> float:
        """1 / grad_scale times torch's clip_grad_norm_ coefficient min(1, max / (norm +
        1e-6)) at the unscaled norm ``norm`` (NaN stays NaN: a NaN norm poisons the step as
        it does torch's; an infinite one zeroes the finite gradients)."""
        clip = 1.0
        if self.max_grad_norm is not None:
            c = self.max_grad_norm / (norm + CLIP_EPS)
            clip = c if (c < 1.0 or c != c) else 1.0
        return clip / self.grad_scale


def _one_value(fn: str, name: str, value, what: str) -> float:
    """A Python number, a NumPy scalar, or a one-element array or tensor (torch's GradScaler
    keeps its scale and found_inf as 0-d tensors) as a float; a TypeError otherwise."""
    kind = type(value)
    if kind is float or kind is int:
        return float(value)
    shape = getattr(value, "shape", None)
    dtype = str(getattr(value, "dtype", ""))
    one = shape is not None and (tuple(shape) == () or tuple(shape) == (1,))
    if isinstance(value, (int, float)) or (one and ("float" in dtype or "int" in dtype)):
        if kind is not bool:
            return float(value.item() if hasattr(value, "item") else value)
    raise TypeError(f"{fn}: {name} must be {what}, got {kind.__name__}"
                    + (f" of dtype {dtype} and shape {tuple(shape)}" if shape is not None else ""))


def grad_scaling(fn: str, grad_scale, found_inf, max_grad_norm, grad_norm):
    """The scaling arguments of a kernel checked (None where none is given): each a
    TypeError or ValueError naming it. Reading a CUDA tensor here waits for the device."""
    if grad_scale is None and found_inf is None and max_grad_norm is None and grad_norm is None:
        return None
    scale = 1.0
    if grad_scale is not None:
        scale = _one_value(fn, "grad_scale", grad_scale, "a number or a one-element array or tensor")
        if not (0.0 < scale < math.inf):
            raise ValueError(f"{fn}: grad_scale must be a finite number > 0 (the loss scale the "
                             f"gradients carry), got {scale!r}")
    found = None
    if found_inf is not None:
        if found_inf is True or found_inf is False:
            found = found_inf
        elif getattr(found_inf, "dtype", None) is not None and "bool" in str(found_inf.dtype) \
                and tuple(getattr(found_inf, "shape", (0,))) in ((), (1,)):
            found = bool(found_inf.item())
        else:
            value = _one_value(fn, "found_inf", found_inf,
                               "a bool, a number or a one-element array or tensor")
            found = value != 0.0  # NaN counts as found
    max_norm = None
    if max_grad_norm is not None:
        max_norm = _one_value(fn, "max_grad_norm", max_grad_norm, "a number")
        if not max_norm > 0.0:  # NaN fails too; inf clips nothing, as in torch
            raise ValueError(f"{fn}: max_grad_norm must be a number > 0, got {max_norm!r}")
    norm = None
    if grad_norm is not None:
        if max_norm is None:
            raise ValueError(f"{fn}: grad_norm is the norm to clip by; it needs max_grad_norm")
        norm = _one_value(fn, "grad_norm", grad_norm, "a number")
        if norm < 0.0:
            raise ValueError(f"{fn}: grad_norm must be >= 0 (an L2 norm), got {norm!r}")
    return GradScaling(scale, found, max_norm, norm)


# --- rounding of 16-bit stores (csrc/math/storage.h) ----------------------------------------
ROUNDINGS = ("nearest", "stochastic")
_MASK64 = (1 << 64) - 1
_PARAM_ROLE, _STATE_ROLES = 0b00001, 0b11100  # bits of the Batch roles (common/batch.h)


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def seed_value(fn: str, seed) -> int:
    kind = type(seed)
    integer = isinstance(seed, int) or getattr(getattr(seed, "dtype", None), "kind", "") in ("i", "u")
    if kind is not int and (kind is bool or not integer):
        raise TypeError(f"{fn}: seed must be an int, got {kind.__name__}")
    value = int(seed)
    if not 0 <= value <= _MASK64:
        raise ValueError(f"{fn}: seed must be in [0, 2**64), got {value}")
    return value


def rounding(fn: str, rounding, state_rounding, seed, step: int):
    """None (every 16-bit store to nearest even), or what the kernels take for stochastic
    rounding: (the roles it applies to, as bits; key0, key1), the key made from ``seed`` and
    ``step`` so that every step of a run draws other bits."""
    if rounding == "nearest" and state_rounding == "nearest":
        return None
    roles = 0
    for name, value, bits in (("rounding", rounding, _PARAM_ROLE),
                              ("state_rounding", state_rounding, _STATE_ROLES)):
        if not isinstance(value, str):
            raise TypeError(f"{fn}: {name} must be 'nearest' or 'stochastic', got {type(value).__name__}")
        if value not in ROUNDINGS:
            raise ValueError(f"{fn}: {name} must be 'nearest' or 'stochastic', got {value!r}")
        if value == "stochastic":
            roles |= bits
    key = _splitmix64(seed_value(fn, seed) ^ _splitmix64(step))
    return roles, key & 0xFFFFFFFF, key >> 32


def step_seed(seed: int, step: int) -> int:
    """A seed per step for the kernels that take no step count (their key is the seed
    alone): the optimizers pass this, so that no two steps draw the same bits."""
    return _splitmix64(seed ^ _splitmix64(step ^ 0x5EED))


# --- master weights of 16-bit params (csrc/common/batch.h: Master) ---------------------------
class Masters(collections.namedtuple("Masters", "form name arrays")):
    """A call's master weights: ``form`` as the modules name it ("float32": float32 arrays;
    "remainders": int16 low halves of bfloat16 params), the argument's name, its arrays."""

    __slots__ = ()

    @property
    def args(self) -> tuple:
        """(masters, form): the modules' trailing arguments for them."""
        return self.arrays, self.form


def masters(fn: str, master_params, param_remainders, rounding, *, factored: bool = False):
    """The call's :class:`Masters`, or None; the options that cannot go together refused."""
    if master_params is None and param_remainders is None:
        return None
    if master_params is not None and param_remainders is not None:
        raise ValueError(f"{fn}: pass master_params or param_remainders, not both: each one "
                         "is the params' whole float32 master")
    if factored:
        raise ValueError(f"{fn}: takes no master_params or param_remainders: its params are "
                         "float32 or float64, their own master")
    if param_remainders is not None:
        if rounding == "stochastic":
            raise ValueError(f"{fn}: rounding='stochastic' does not go with param_remainders: a "
                             "param and its remainder hold the float32 master exactly; pass "
                             "master_params= to round the params stochastically")
        return Masters("remainders", "param_remainders", param_remainders)
    return Masters("float32", "master_params", master_params)


MASTER_WEIGHTS = ("float32", "remainders")


def master_weights(name: str, value, rounding, layout: str = "same"):
    """An optimizer's ``master_weights=`` checked: None, "float32" or "remainders"."""
    if value is None:
        return None
    if value not in MASTER_WEIGHTS:
        raise ValueError(f"{name}: master_weights must be None, 'float32' or 'remainders', got "
                         f"{value!r}")
    if layout != "same":
        raise TypeError(f"{name}: takes no master_weights: its params are float32 or float64, "
                        "their own master")
    if value == "remainders" and rounding == "stochastic":
        raise ValueError(f"{name}: rounding='stochastic' does not go with "
                         "master_weights='remainders': a param and its remainder hold the float32 "
                         "master exactly; use master_weights='float32' to round stochastically")
    return value
