"""The bad-input grid: every public function and optimizer class, every argument.

Each case starts from a valid call (lists of three tensors, or single arrays), breaks one
thing, and asserts that the call raises the documented TypeError or ValueError, that the
message names the argument (with the list index where there is one), and that every array
involved is bit-for-bit unchanged afterwards (full copies are taken before the call).

The grid is generated from tables below; ``python tests/test_bad_input.py`` prints its size
by category. The functional cases run twice: through the kernel (``fusedopt.X``) and
through the public reference (``fusedopt.reference.X``), which share the checks but not the
code that writes.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import re
from dataclasses import dataclass
from typing import Callable

import fusedopt
import fusedopt.optim
import fusedopt.reference
import fusedopt.rules
import numpy as np
import pytest

# --------------------------------------------------------------------------------------
# The functions and their valid calls
# --------------------------------------------------------------------------------------
SHAPES = [(5,), (3, 4), (5,)]  # tensor 1 is 2-D (for transposes); 0 and 2 share a shape
SINGLE_SHAPE = (3, 4)
BAD = 1  # the list index a case breaks (the message must name it)


@dataclass(frozen=True)
class Spec:
    name: str  # the cases' ids; the function's name too, unless `function` says otherwise
    states: tuple  # state arguments, in positional order; all used by `hyper`
    hyper: dict  # valid hyperparameters that use every state
    positive_states: tuple = ()  # states that must stay >= 0 (squares)
    optional: tuple = ()  # states that are None unless an option asks for them
    small_states: tuple = ()  # states kept small (centered RMSprop: sq - ga**2 > 0)
    function: str = ""  # where two specs call one function (Adafactor's matrices and vectors)
    shapes: tuple = tuple(SHAPES)  # the params' shapes in the list layout
    single_shape: tuple = SINGLE_SHAPE
    # (state, param shape) -> the state's shape, or None where such a param keeps none of
    # that state; unset: every state has its param's shape
    state_shape: Callable | None = None

    @property
    def roles(self):
        return ("params", "grads") + self.states

    @property
    def fn(self) -> str:
        return self.function or self.name

    def shape_of(self, role, param_shape):
        if role in ("params", "grads") or self.state_shape is None:
            return param_shape
        return self.state_shape(role, param_shape)

    @property
    def mutated_roles(self):
        """The roles whose arrays the cases break: those present in the valid call (a
        factored rule's matrices keep no `variances`, its vectors no row or column factors)."""
        return tuple(r for r in self.roles
                     if self.shape_of(r, self.single_shape) is not None
                     and all(self.shape_of(r, s) is not None for s in self.shapes))

    def kernel(self):
        return getattr(fusedopt, self.fn)

    def reference(self):
        return getattr(fusedopt.reference, self.fn)


_SGD_HYPER = dict(lr=0.1, momentum=0.9, dampening=0.0, weight_decay=0.01, step=2)
SPECS = {
    s.name: s
    for s in [
        Spec("sgd_", ("momentum_buffers",), _SGD_HYPER, optional=("momentum_buffers",)),
        Spec("adaptive_sgd_", ("momentum_buffers",), _SGD_HYPER,
             optional=("momentum_buffers",)),
        Spec("adagrad_", ("state_sums",),
             dict(step=3, lr=0.1, lr_decay=0.01, weight_decay=0.01, eps=1e-10), ("state_sums",)),
        Spec("rmsprop_", ("square_avgs", "grad_avgs", "momentum_buffers"),
             dict(lr=0.01, alpha=0.9, eps=1e-8, weight_decay=0.01, momentum=0.9, centered=True),
             ("square_avgs",), optional=("grad_avgs", "momentum_buffers"),
             small_states=("grad_avgs",)),
        Spec("adam_", ("exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"),
             dict(step=3, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, amsgrad=True),
             ("exp_avg_sqs", "max_exp_avg_sqs"), optional=("max_exp_avg_sqs",)),
        Spec("adamw_", ("exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"),
             dict(step=3, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, amsgrad=True),
             ("exp_avg_sqs", "max_exp_avg_sqs"), optional=("max_exp_avg_sqs",)),
        Spec("lion_", ("exp_avgs",), dict(lr=1e-4, betas=(0.9, 0.99), weight_decay=0.1)),
    ]
}


def _described_spec(rule, kernel) -> Spec:
    """The spec of a rule not listed above, from its description (fusedopt/rules/): its
    first example with weight decay, every state, a step past the first."""
    hyper = dict(next(iter(kernel.examples.values())), weight_decay=0.01)
    if kernel.takes_step:
        hyper["step"] = 3
    return Spec(kernel.name, rule.states, hyper, tuple(s for s in rule.states if s in rule.square_states),
                optional=tuple(rule.optional_states))




def _factored_shape(role, shape):
    """Adafactor's states, as torch keeps them: a param [..., R, C] of two or more dims
    takes row factors [..., R, 1] and column factors [..., 1, C]; one of fewer dims a full
    variance of its own shape."""
    if len(shape) >= 2:
        return {"row_vars": shape[:-1] + (1,), "col_vars": shape[:-2] + (1, shape[-1])}.get(role)
    return shape if role == "variances" else None


for _rule, _kernel in fusedopt.rules.KERNELS.values():
    if _kernel.name in SPECS:
        continue
    if _rule.state_layout == "same":
        SPECS[_kernel.name] = _described_spec(_rule, _kernel)
    elif _rule.state_layout == "factored":
        # Twice: matrices (row and column factors; tensors 0 and 2 share a shape, tensor 1
        # is 2-D as in SHAPES) and vectors (a full variance).
        _spec = _described_spec(_rule, _kernel)
        SPECS[_kernel.name] = dataclasses.replace(
            _spec, shapes=((2, 5), (3, 4), (2, 5)), state_shape=_factored_shape)
        SPECS[_kernel.name + "vectors"] = dataclasses.replace(
            _spec, name=_kernel.name + "vectors", function=_kernel.name,
            shapes=((5,), (12,), (5,)), single_shape=(12,), state_shape=_factored_shape)

# Optimizer classes with the options that create every state.
OPTIMIZERS = {
    "SGD": (fusedopt.optim.SGD, dict(lr=0.1, momentum=0.9, weight_decay=0.01)),
    "AdaptiveSGD": (fusedopt.optim.AdaptiveSGD, dict(lr=0.1, momentum=0.9)),
    "Adagrad": (fusedopt.optim.Adagrad, dict(lr=0.1, lr_decay=0.01)),
    "RMSprop": (fusedopt.optim.RMSprop, dict(lr=0.01, momentum=0.9, centered=True)),
    "Adam": (fusedopt.optim.Adam, dict(lr=1e-3, amsgrad=True, weight_decay=0.01)),
    "AdamW": (fusedopt.optim.AdamW, dict(lr=1e-3, amsgrad=True)),
    "Lion": (fusedopt.optim.Lion, dict(lr=1e-4, weight_decay=0.1)),
}
OPT_FUNCTION = {"SGD": "sgd_", "AdaptiveSGD": "adaptive_sgd_", "Adagrad": "adagrad_",
                "RMSprop": "rmsprop_", "Adam": "adam_", "AdamW": "adamw_", "Lion": "lion_"}
for _rule, _kernel in fusedopt.rules.KERNELS.values():
    if _kernel.optimizer and _kernel.optimizer not in OPTIMIZERS and _kernel.name in SPECS:
        _hyper = {k: v for k, v in SPECS[_kernel.name].hyper.items() if k != "step"}
        OPTIMIZERS[_kernel.optimizer] = (getattr(fusedopt.optim, _kernel.optimizer), _hyper)
        OPT_FUNCTION[_kernel.optimizer] = _kernel.name


def _values(rng, shape, dtype, positive=False, small=False):
    x = rng.uniform(0.01, 0.3, shape) if small else rng.uniform(0.1, 2.0, shape)
    if not positive:
        x *= rng.choice((-1.0, 1.0), shape)
    return x.astype(dtype)


def valid_arrays(spec: Spec, single: bool, dtype=np.float32, seed=0) -> dict:
    """role -> list of arrays (lists layout) or role -> array (single layout); None for a
    state that a param of that shape does not keep."""
    rng = np.random.default_rng(seed)
    def make(r, param_shape):
        shape = spec.shape_of(r, param_shape)
        if shape is None:
            return None
        return _values(rng, shape, dtype, r in spec.positive_states, r in spec.small_states)
    if single:
        return {r: make(r, spec.single_shape) for r in spec.roles}
    return {r: [make(r, s) for s in spec.shapes] for r in spec.roles}


# --------------------------------------------------------------------------------------
# Array mutations: each returns a replacement for an array with the same values where it can
# --------------------------------------------------------------------------------------
def strided(a):
    buf = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
    v = buf[..., ::2]
    v[...] = a
    return v


def transposed(a):
    v = np.zeros(a.shape[::-1], a.dtype).T
    v[...] = a
    return v


def negative_strides(a):
    v = np.zeros_like(a)[(slice(None, None, -1),) * min(a.ndim, 2)]
    v[...] = a
    return v


def broadcast(a):
    return np.broadcast_to(a[0], a.shape)  # stride 0 along the first axis, read-only


def fortran(a):
    return np.asfortranarray(a)


def unaligned(a):
    raw = np.zeros(a.nbytes + 1, np.uint8)
    v = raw[1:].view(a.dtype).reshape(a.shape)
    v[...] = a
    return v


def read_only(a):
    a = a.copy()
    a.setflags(write=False)
    return a


def _breaks_layout(f, shape) -> bool:
    """Whether layout `f` makes an array of `shape` one the kernels refuse: a (3, 1) row
    factor in Fortran order or transposed is still C-contiguous (NumPy ignores the stride
    of a dimension of 1), and so is a vector transposed or in Fortran order."""
    try:
        v = f(np.zeros(shape, np.float32))
    except (IndexError, ValueError):
        return False
    return not (v.flags.c_contiguous and v.flags.aligned)


LAYOUTS = {"strided": strided, "transposed": transposed, "negative-strides": negative_strides,
           "broadcast-stride0": broadcast, "fortran-order": fortran, "unaligned": unaligned}

# (float16 and bfloat16 are storage types in their combinations: tests/test_mixed_precision.py
# has the refused ones.)
BAD_DTYPES = {
    "int32": np.int32, "int64": np.int64, "float16-bigendian": np.dtype(">f2"), "complex64": np.complex64,
    "object": object, "bool": np.bool_, "uint8": np.uint8, "longdouble": np.longdouble,
    "float32-bigendian": np.dtype(">f4"),
}


class FakeDeviceArray:
    """A stand-in for a GPU array: only __cuda_array_interface__, pointing nowhere."""

    def __init__(self, shape, typestr="<f4"):
        self.__cuda_array_interface__ = {"shape": shape, "typestr": typestr, "data": (0, False),
                                         "version": 3, "strides": None}


try:
    import cupy  # noqa: F401

    HAVE_CUPY = True
except ImportError:
    HAVE_CUPY = False


# --------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    id: str
    target: str  # a Spec name or an optimizer name
    kind: str  # "call", "construct", "step", "lr", "load"
    mutate: Callable  # (arrays: dict, hyper: dict) -> None, in place
    exc: type
    names: tuple  # strings the message must contain
    single: bool = False
    needs_no_cupy: bool = False
    category: str = ""
    pattern: str = ""  # a regex the message must also match (names whole, in this order)


def _name(s: str) -> str:
    """A regex for an argument name as the message must show it, whole (lr, not lr_decay;
    params, not params[0]): params[1] -> params\\[1\\]."""
    return rf"\b{re.escape(s)}(?![\w\[])"


def _shared(*labels) -> str:
    """A regex for a message naming these arrays whole, in this order, then "share"."""
    return ".*".join(_name(x) for x in labels) + ".*share"


def _label(role, single, i=BAD):
    return role if single else f"{role}[{i}]"


def _get(arrays, role, i):
    v = arrays[role]
    return v[i] if isinstance(v, list) else v  # single layout: the array itself


def _put(arrays, role, i, value):
    if isinstance(arrays[role], list):
        arrays[role][i] = value
    else:
        arrays[role] = value


def _set(role, value, i=BAD):
    def mutate(arrays, hyper):
        _put(arrays, role, i, value(_get(arrays, role, i)) if callable(value) else value)
    return mutate


def _set_role(role, value):
    def mutate(arrays, hyper):
        arrays[role] = value(arrays[role]) if callable(value) else value
    return mutate


def _set_hyper(**kw):
    def mutate(arrays, hyper):
        hyper.update(kw)
    return mutate


def _alias(dst, src, i=BAD, j=BAD):
    """dst[i] becomes src[j] itself or, where their shapes differ (a factored state and its
    param), the two become views of one buffer from its start (_overlap)."""
    def mutate(arrays, hyper):
        if _get(arrays, src, j).shape == _get(arrays, dst, i).shape:
            _put(arrays, dst, i, _get(arrays, src, j))
        else:
            _overlap(src, j, dst, i, 0)(arrays, hyper)
    return mutate


def _overlap(role_a, i, role_b, j, shift):
    """role_a[i] and role_b[j] become views of one buffer, role_b[j] starting `shift`
    elements into role_a[i] (or at its last element, where role_a[i] is shorter)."""
    def mutate(arrays, hyper):
        a, b = _get(arrays, role_a, i), _get(arrays, role_b, j)
        shift_ = min(shift, a.size - 1)
        buf = np.zeros(shift_ + max(a.size, b.size) + a.size, a.dtype)
        va = buf[: a.size].reshape(a.shape)
        vb = buf[shift_: shift_ + b.size].reshape(b.shape)
        va[...] = a
        vb[...] = b
        _put(arrays, role_a, i, va)
        _put(arrays, role_b, j, vb)
    return mutate


def _array_cases(spec: Spec, single: bool) -> list[Case]:
    out = []
    lay = "single" if single else "list"

    def add(cat, detail, mutate, exc, *names, no_cupy=False, pattern=""):
        out.append(Case(f"{spec.name}-{cat}-{lay}-{detail}", spec.name, "call", mutate, exc,
                        names, single, no_cupy, cat, pattern))

    i = 0 if single else BAD
    param_shape = spec.single_shape if single else spec.shapes[BAD]
    for role in spec.mutated_roles:
        lab = _label(role, single)
        shape = spec.shape_of(role, param_shape)
        at = "" if single else "[1]"
        # wrong Python types: for the whole argument, and for one element of a list
        for tname, value in {"str": "abc", "float": 3.0, "dict": {"a": 1}}.items():
            add("type", f"{role}-{tname}", _set_role(role, lambda xs, v=value: v), TypeError,
                role)
            if not single:
                add("type", f"{role}[1]-{tname}", _set(role, value), TypeError, lab)
        add("type", f"{role}{at}-python-list-of-floats", _set(role, lambda a: a.tolist(), i),
            TypeError, role, pattern=_name(lab) if role == "grads" and not single else "")
        # (a factored rule's single state as None: "this param keeps none", a shape matter)
        none_means_absent = single and spec.state_shape is not None and role in spec.states
        add("type", f"{role}-None", _set_role(role, lambda xs: None),
            ValueError if role in spec.optional or none_means_absent else TypeError, role,
            pattern=_name(role) if role in spec.states else "")
        if role == "momentum_buffers" and spec.name in ("sgd_", "adaptive_sgd_"):
            def keras_without_buffers(arrays, hyper):
                hyper["convention"] = "keras"
                arrays["momentum_buffers"] = None
            add("type", f"{role}-None-keras", keras_without_buffers, ValueError, role,
                pattern=_name(role))
        add("type", f"{role}{at}-numpy-scalar",
            _set(role, lambda a: a.dtype.type(a.flat[0]), i), TypeError, lab)
        if not single:
            add("type", f"{role}-iterator", _set_role(role, lambda xs: iter(xs)),
                TypeError, role)
            if role != "params":
                add("type", f"{role}-single-among-lists", _set_role(role, lambda xs: xs[1]),
                    TypeError, role, pattern=_name(role) if role == "grads" else "")
        elif role != "params":
            add("type", f"{role}-list-among-single", _set_role(role, lambda a: [a]),
                TypeError, role, pattern=_name(role) if role == "grads" else "")
        # unsupported dtypes (params broken: every role of that tensor follows so that the
        # dtype, not a mismatch with its param, is what is wrong)
        for dname, dt in BAD_DTYPES.items():
            add("dtype", f"{role}{at}-{dname}",
                _set(role, lambda a, dt=dt: a.astype(dt), i), TypeError, lab, str(np.dtype(dt)))
        # mixed dtypes: one float64 array among float32 ones, and a whole role in float64
        add("mixed-dtype", f"{role}{at}-float64",
            _set(role, lambda a: a.astype(np.float64), i), TypeError, lab, "float64",
            pattern=_name(lab) + ".*float64" if role != "params" and not single else "")
        if not single and role != "params":
            add("mixed-dtype", f"{role}-all-float64",
                _set_role(role, lambda xs: [a.astype(np.float64) for a in xs]), TypeError,
                f"{role}[0]", "float64")
        if not single:
            # tensor 1 entirely float64 (all its roles), tensors 0 and 2 float32
            def whole_tensor(arrays, hyper):
                for r in spec.mutated_roles:
                    arrays[r][BAD] = arrays[r][BAD].astype(np.float64)
            if role == "params":
                add("mixed-dtype", "tensor1-all-roles-float64", whole_tensor, TypeError,
                    "params[1]", "float64")
        # shapes
        if role != "params":
            for sname, wrong in {"4x3": (4, 3), "3x5": (3, 5), "flat12": (12,),
                                 "3x4x1": (3, 4, 1)}.items():
                if wrong == shape:  # (a vector's variance of 12)
                    continue
                add("shape", f"{role}{at}-{sname}",
                    _set(role, lambda a, s=wrong: np.resize(a, s), i), ValueError, lab,
                    _label("params", single, i),
                    pattern="" if single else _name(lab) + ".*shape")
        else:
            add("shape", f"params{at}-4x3",
                _set(role, lambda a: np.resize(a, (4, 3)), i), ValueError,
                _label("params", single, i))
        # layouts: non-contiguous and misaligned
        for lname, f in LAYOUTS.items():
            if not _breaks_layout(f, shape):
                continue
            word = "aligned" if lname == "unaligned" else "contiguous"
            add("layout", f"{role}{at}-{lname}", _set(role, f, i), ValueError, lab, word,
                pattern=_name(lab) + ".*" + word
                if lname in ("strided", "fortran-order", "unaligned") and not single else "")
        # read-only (gradients may be read-only: see test_read_only_grads_are_fine)
        if role != "grads":
            add("read-only", f"{role}{at}", _set(role, read_only, i),
                ValueError, lab, "read-only",
                pattern="" if single else _name(lab) + ".*read-only")
        # a device array among host arrays: the reader reads its interface itself (CuPy or
        # not) and refuses the mix of memories
        add("device", f"{role}{at}-cuda-array-interface",
            _set(role, lambda a: FakeDeviceArray(a.shape), i), ValueError, lab)
        if not single:
            # list lengths: one short, one long, empty
            add("length", f"{role}-short", _set_role(role, lambda xs: xs[:-1]), ValueError,
                role if role != "params" else "grads",
                pattern=_name(role) + ".*2.*3" if role != "params" else "")
            add("length", f"{role}-long", _set_role(role, lambda xs: xs + [xs[0].copy()]),
                ValueError, role if role != "params" else "grads")
            add("length", f"{role}-empty", _set_role(role, lambda xs: []), ValueError,
                role if role != "params" else "grads")

    # aliasing: written arrays must have memory of their own
    states = [s for s in spec.states if s in spec.mutated_roles]
    written = ["params", *states]
    add("alias", "params-is-grads", _alias("grads", "params", i, i), ValueError,
        _label("params", single, i), _label("grads", single, i), "share memory",
        pattern=_shared(_label("params", single, i), _label("grads", single, i)))
    for s in states:
        add("alias", f"{s}-is-params", _alias(s, "params", i, i), ValueError,
            _label("params", single, i), _label(s, single, i), "share memory",
            pattern="" if single else _shared("params[1]", f"{s}[1]"))
        add("alias", f"{s}-is-grads", _alias(s, "grads", i, i), ValueError,
            _label("grads", single, i), _label(s, single, i), "share memory")
    for a, b in itertools.combinations(states, 2):
        add("alias", f"{b}-is-{a}", _alias(b, a, i, i), ValueError,
            _label(a, single, i), _label(b, single, i), "share memory",
            pattern="" if single else _shared(f"{a}[1]", f"{b}[1]"))
    for r in written:
        add("alias", f"{r}-overlaps-grads-partially", _overlap(r, i, "grads", i, 3), ValueError,
            _label(r, single, i), _label("grads", single, i), "share memory")
    if not single:
        for r in written:
            add("alias", f"{r}[2]-is-{r}[0]", _alias(r, r, 2, 0), ValueError, f"{r}[0]",
                f"{r}[2]", "share memory")
            add("alias", f"{r}[0]-overlaps-{r}[2]", _overlap(r, 0, r, 2, 3), ValueError,
                f"{r}[0]", f"{r}[2]", "share memory",
                pattern=_shared("params[0]", "params[2]") if r == "params" else "")
        for s in states:
            add("alias", f"{s}[0]-overlaps-params[1]", _overlap(s, 0, "params", 1, 4),
                ValueError, f"{s}[0]", "params[1]", "share memory")
            add("alias", f"params[0]-overlaps-{s}[1]", _overlap("params", 0, s, 1, 4),
                ValueError, "params[0]", f"{s}[1]", "share memory")
        add("alias", "grads[2]-overlaps-params[0]", _overlap("params", 0, "grads", 2, 2),
            ValueError, "params[0]", "grads[2]", "share memory")
    return out


def _hyper_values(spec: Spec) -> list[tuple[str, object, type, str]]:
    """(id, kwargs, expected error, name in the message) for bad hyperparameters."""
    out = []

    def nonneg(name, *, upper=None, upper_open=False):
        bad = {"negative": -0.1, "nan": float("nan"), "inf": float("inf"),
               "-inf": float("-inf"), "np.float32-nan": np.float32("nan")}
        if upper is not None:
            bad["above-range"] = upper + 0.5
            if upper_open:
                bad["at-upper-bound"] = float(upper)
        for k, v in bad.items():
            out.append((f"{name}-{k}", {name: v}, ValueError, name))
        for k, v in {"str": "0.1", "None": None, "bool": True, "complex": 1j,
                     "list": [0.1], "1-element-array": np.array([0.1]),
                     "np.bool_": np.bool_(True)}.items():
            out.append((f"{name}-{k}", {name: v}, TypeError, name))

    def flag(name):
        for k, v in {"int": 1, "str": "yes", "None": None, "float": 1.0}.items():
            out.append((f"{name}-{k}", {name: v}, TypeError, name))

    def step():
        for k, v in {"zero": 0, "negative": -1, "np.int64-zero": np.int64(0)}.items():
            out.append((f"step-{k}", {"step": v}, ValueError, "step"))
        for k, v in {"float": 2.0, "fraction": 1.5, "str": "2", "None": None, "bool": True,
                     "np.float64": np.float64(2.0)}.items():
            out.append((f"step-{k}", {"step": v}, TypeError, "step"))

    nonneg("lr")
    nonneg("weight_decay")
    flag("maximize")
    flag("skip_if_nonfinite")
    if spec.name in ("sgd_", "adaptive_sgd_"):
        nonneg("momentum")
        nonneg("dampening", upper=1.0)
        flag("nesterov")
        step()
        out += [
            ("nesterov-without-momentum", dict(nesterov=True, momentum=0.0), ValueError,
             "nesterov"),
            ("nesterov-with-dampening", dict(nesterov=True, dampening=0.1), ValueError,
             "dampening"),
            ("keras-with-dampening", dict(convention="keras", dampening=0.1), ValueError,
             "dampening"),
            ("momentum-without-buffers", dict(momentum=0.5, _drop="momentum_buffers"),
             ValueError, "momentum_buffers"),
        ]
        for k, v in {"pytorch": "pytorch", "TORCH": "TORCH", "tf": "tf", "None": None,
                     "int": 1}.items():
            out.append((f"convention-{k}", {"convention": v}, ValueError, "convention"))
    if spec.name == "adagrad_":
        nonneg("lr_decay")
        nonneg("eps")
        step()
    if spec.name == "rmsprop_":
        nonneg("alpha", upper=1.0)
        nonneg("eps")
        nonneg("momentum")
        flag("centered")
        out += [
            ("centered-without-grad_avgs", dict(_drop="grad_avgs"), ValueError, "grad_avgs"),
            ("momentum-without-buffers", dict(_drop="momentum_buffers"), ValueError,
             "momentum_buffers"),
        ]
    if spec.name in ("adam_", "adamw_"):
        nonneg("eps")
        flag("amsgrad")
        step()
        out.append(("amsgrad-without-max_exp_avg_sqs", dict(_drop="max_exp_avg_sqs"),
                    ValueError, "max_exp_avg_sqs"))
    described = spec.fn not in WHOLE_NAMES  # a rule known here by its description only
    if described:
        keywords = fusedopt.rules.kernel(spec.fn)[1].keywords
        for name in ("eps", "lr_decay", "momentum"):
            if name in keywords and not isinstance(keywords[name], tuple):
                nonneg(name)
        if "step" in keywords:
            step()
        if isinstance(keywords.get("eps"), tuple):  # Adafactor's (eps1 or None, eps2)
            for k, v in {"eps1-negative": (-1e-30, 1e-3), "eps2-negative": (None, -1e-3),
                         "eps2-nan": (None, float("nan")), "eps1-inf": (float("inf"), 1e-3)}.items():
                out.append((f"eps-{k}", {"eps": v}, ValueError, "eps"))
            for k, v in {"scalar": 1e-3, "one-value": (1e-30,), "three-values": (None, 1e-3, 1.0),
                         "None": None, "eps2-None": (1e-30, None), "str-pair": ("a", "b")}.items():
                out.append((f"eps-{k}", {"eps": v}, TypeError, "eps"))
        if "beta2_decay" in keywords:  # Adafactor's schedule: 1 - t^beta2_decay, <= 0
            for k, v in {"positive": 0.1, "nan": float("nan"), "-inf": float("-inf")}.items():
                out.append((f"beta2_decay-{k}", {"beta2_decay": v}, ValueError, "beta2_decay"))
            for k, v in {"str": "-0.8", "None": None, "bool": False}.items():
                out.append((f"beta2_decay-{k}", {"beta2_decay": v}, TypeError, "beta2_decay"))
        if "d" in keywords:  # Adafactor's clipping threshold, >= 1
            for k, v in {"below-one": 0.5, "nan": float("nan"), "negative": -1.0}.items():
                out.append((f"d-{k}", {"d": v}, ValueError, "d"))
            for k, v in {"str": "1", "None": None}.items():
                out.append((f"d-{k}", {"d": v}, TypeError, "d"))
    if spec.name in ("adam_", "adamw_", "lion_") or (described and "betas" in keywords):
        for k, v in {"beta1-one": (1.0, 0.999), "beta2-one": (0.9, 1.0),
                     "beta1-negative": (-0.1, 0.999), "beta2-negative": (0.9, -1e-3),
                     "beta1-nan": (float("nan"), 0.999), "beta2-inf": (0.9, float("inf")),
                     "beta1-above-one": (1.5, 0.999)}.items():
            out.append((f"betas-{k}", {"betas": v}, ValueError, "betas"))
        for k, v in {"one-value": (0.9,), "three-values": (0.9, 0.99, 0.9), "scalar": 0.9,
                     "None": None, "str-pair": ("a", "b"), "bool-pair": (True, 0.999)}.items():
            out.append((f"betas-{k}", {"betas": v}, TypeError, "betas"))
    return out


# Hyperparameter cases whose message must also show the argument whole (lr, not lr_decay),
# and for betas the element that is wrong: case id -> the name as it must appear.
WHOLE_NAMES = {
    "sgd_": {"lr-negative": "lr", "lr-nan": "lr", "lr-str": "lr", "momentum-negative": "momentum",
             "dampening-above-range": "dampening", "nesterov-with-dampening": "dampening",
             "nesterov-without-momentum": "nesterov", "weight_decay-negative": "weight_decay",
             "maximize-str": "maximize", "convention-tf": "convention", "step-zero": "step",
             "keras-with-dampening": "dampening"},
    "adaptive_sgd_": {"lr-inf": "lr"},
    "adagrad_": {"lr_decay-negative": "lr_decay", "eps-negative": "eps", "step-zero": "step"},
    "rmsprop_": {"alpha-above-range": "alpha", "eps-nan": "eps", "centered-int": "centered"},
    "adam_": {"betas-beta1-one": "betas[0]", "betas-beta2-negative": "betas[1]",
              "betas-scalar": "betas", "step-zero": "step", "step-fraction": "step",
              "eps-negative": "eps", "skip_if_nonfinite-int": "skip_if_nonfinite"},
    "adamw_": {"weight_decay-negative": "weight_decay", "amsgrad-str": "amsgrad"},
    "lion_": {"betas-beta1-one": "betas[0]", "betas-beta2-inf": "betas[1]",
              "weight_decay-negative": "weight_decay", "maximize-int": "maximize"},
}


def _hyper_cases(spec: Spec) -> list[Case]:
    out = []
    whole = WHOLE_NAMES.get(spec.fn, {})
    if spec.fn not in WHOLE_NAMES:  # described rules: each name whole (d, not "d" in "and")
        whole = {hid: name for hid, _, _, name in _hyper_values(spec) if name not in ("betas", "eps")}
    for hid, kw, exc, name in _hyper_values(spec):
        kw = dict(kw)
        drop = kw.pop("_drop", None)

        def mutate(arrays, hyper, kw=kw, drop=drop):
            hyper.update(kw)
            if drop is not None:
                arrays[drop] = None
        out.append(Case(f"{spec.name}-hyper-{hid}", spec.name, "call", mutate, exc, (name,),
                        category="hyper", pattern=_name(whole[hid]) if hid in whole else ""))
    for k, v in {"cuda": "cuda", "Native": "Native", "bogus": "bogus", "None": None,
                 "int": 0}.items():
        # the message shows the value it refuses
        pattern = _name("backend") + ".*bogus" if k == "bogus" else ""
        out.append(Case(f"{spec.name}-hyper-backend-{k}", spec.name, "call",
                        _set_hyper(backend=v), ValueError, ("backend",), category="hyper",
                        pattern=pattern))
    for k, v in {"float32": "float32", "EXACT": "EXACT", "None": None}.items():
        out.append(Case(f"{spec.name}-hyper-mode-{k}", spec.name, "call", _set_hyper(mode=v),
                        ValueError, ("mode",), category="hyper"))
    return out


def function_cases() -> list[Case]:
    out = []
    for spec in SPECS.values():
        out += _array_cases(spec, single=False)
        out += _array_cases(spec, single=True)
        if not spec.function:  # one function's hyperparameters once
            out += _hyper_cases(spec)
    return out


FUNCTION_CASES = function_cases()


def _impls(case: Case):
    """Which public entry points run a function case: the kernel, the reference, or both;
    array cases also run the kernel with skip_if_nonfinite=True, whose fast path checks the
    arrays apart from the update (fusedopt._dispatch.run: the module's Call)."""
    if "-hyper-backend-" in case.id:
        return ["kernel"]
    if "-hyper-mode-" in case.id:
        return ["reference"]
    if case.category == "hyper":
        return ["kernel", "reference"]
    return ["kernel", "kernel-skip", "reference"]


FUNCTION_PARAMS = [pytest.param(c, impl, id=f"{c.id}-{impl}",
                                marks=[pytest.mark.skipif(
                                    c.needs_no_cupy and HAVE_CUPY,
                                    reason="CuPy is installed: a fake device array would be "
                                           "handed to it; the real mixed-device case needs a "
                                           "GPU (tests/test_cuda*.py)")])
                   for c in FUNCTION_CASES for impl in _impls(c)]


# --------------------------------------------------------------------------------------
# Snapshots
# --------------------------------------------------------------------------------------
def _arrays_in(obj, out):
    if isinstance(obj, np.ndarray):
        out.append(obj)
    elif isinstance(obj, (list, tuple)):
        for x in obj:
            _arrays_in(x, out)
    elif isinstance(obj, dict):
        for x in obj.values():
            _arrays_in(x, out)
    return out


def snapshot(*objs):
    arrays = []
    for o in objs:
        _arrays_in(o, arrays)
    return [(a, a.copy()) for a in arrays]


def assert_unchanged(snap):
    for k, (a, before) in enumerate(snap):
        assert a.dtype == before.dtype and a.shape == before.shape
        equal_nan = a.dtype.kind in "fc"
        assert np.array_equal(a, before, equal_nan=equal_nan), f"array {k} was written"


def assert_message(exc_info, names):
    msg = str(exc_info.value)
    for name in names:
        assert name in msg, f"message {msg!r} does not name {name!r}"


def assert_same_bits(actual, expected, what):
    """The bits of the expected array (NaN payloads and the sign of zero included), which
    is finite, so that the comparison says something."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, what
    assert np.isfinite(expected).all(), f"{what}: the reference produced non-finite values"
    assert actual.tobytes() == expected.tobytes(), f"{what} differs from the reference"


# --------------------------------------------------------------------------------------
# Functional kernels
# --------------------------------------------------------------------------------------
def _invoke(spec: Spec, impl: str, arrays: dict, hyper: dict):
    hyper = dict(hyper)
    fn = spec.reference() if impl == "reference" else spec.kernel()
    if impl == "kernel-skip":
        hyper["skip_if_nonfinite"] = True
    if impl != "reference":
        hyper.pop("mode", None)
    else:
        hyper.pop("backend", None)
    args = []
    for r in spec.roles:
        v = arrays[r]
        args.append(v)
    return fn(*args, **hyper)


@pytest.mark.parametrize("case, impl", FUNCTION_PARAMS)
def test_function_bad_input(case: Case, impl: str):
    spec = SPECS[case.target]
    arrays = valid_arrays(spec, case.single)
    hyper = dict(spec.hyper)
    case.mutate(arrays, hyper)
    snap = snapshot(arrays, hyper)
    assert snap, "the case must involve arrays"
    with pytest.raises(case.exc) as exc_info:
        _invoke(spec, impl, arrays, hyper)
    assert exc_info.type is case.exc, f"{exc_info.type.__name__}: {exc_info.value}"
    assert_message(exc_info, case.names)
    if case.pattern:
        assert re.search(case.pattern, str(exc_info.value)), \
            f"message {str(exc_info.value)!r} does not match {case.pattern!r}"
    assert_unchanged(snap)


@pytest.mark.parametrize("single", [False, True], ids=["list", "single"])
@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("impl", ["kernel", "reference"])
def test_the_valid_call_writes(name, single, impl):
    """The starting point of every case is valid and writes every param and state, so
    'unchanged' above means the bad input stopped the call."""
    spec = SPECS[name]
    arrays = valid_arrays(spec, single)
    before = {r: snapshot(arrays[r]) for r in spec.roles}
    _invoke(spec, impl, arrays, spec.hyper)
    for role, pairs in before.items():
        assert pairs or role not in spec.mutated_roles
        for a, b in pairs:
            if role == "grads":
                assert np.array_equal(a, b)
            else:
                assert not np.array_equal(a, b), f"{role} was not written"


def _reference_result(spec: Spec, arrays: dict, hyper: dict, returned: list | None = None):
    """The reference's arrays after the call on copies; what it returned goes to `returned`."""
    expected = {r: [None if a is None else a.copy() for a in v] for r, v in arrays.items()}
    value = spec.reference()(*[expected[r] for r in spec.roles], **hyper)
    if returned is not None:
        returned.append(value)
    return expected


@pytest.mark.parametrize("name", list(SPECS))
def test_read_only_grads_are_fine(name):
    """Gradients may be read-only: the call returns and writes what the reference does."""
    spec = SPECS[name]
    arrays = valid_arrays(spec, single=False)
    arrays["grads"] = [read_only(g) for g in arrays["grads"]]
    returned = []
    expected = _reference_result(spec, arrays, spec.hyper, returned)
    assert spec.kernel()(*[arrays[r] for r in spec.roles], **spec.hyper) == returned[0]
    _assert_same_arrays(spec, arrays, expected)


def _assert_same_arrays(spec, arrays, expected, roles=None):
    for r in roles or spec.roles:
        for k, (a, e) in enumerate(zip(arrays[r], expected[r])):
            if e is None:
                assert a is None
                continue
            assert np.array_equal(a, e)
            assert_same_bits(a, e, f"{r}[{k}]")


@pytest.mark.parametrize("how", ["one-array", "overlapping-views"])
@pytest.mark.parametrize("name", list(SPECS))
def test_shared_grads_are_fine(name, how):
    """Gradients are only read: two tensors may share one gradient array, or parts of one."""
    spec = SPECS[name]
    arrays = valid_arrays(spec, single=False)
    grads = arrays["grads"]
    if how == "one-array":
        grads[2] = grads[0]
    else:  # grads[2] starts 3 elements into grads[0] (the two have one shape)
        n, shape = grads[0].size, grads[0].shape
        buf = np.concatenate([grads[0].ravel(), grads[2].ravel()[n - 3:]])
        grads[0], grads[2] = buf[:n].reshape(shape), buf[3:].reshape(shape)
        assert np.shares_memory(grads[0], grads[2])
    expected = _reference_result(spec, arrays, spec.hyper)
    spec.kernel()(*[arrays[r] for r in spec.roles], **spec.hyper)
    _assert_same_arrays(spec, arrays, expected, [r for r in spec.roles if r != "grads"])


@pytest.mark.parametrize("impl", ["kernel", "reference"])
@pytest.mark.parametrize("name", list(SPECS))
def test_empty_lists_are_a_no_op(name, impl):
    spec = SPECS[name]
    empty = {r: [] for r in spec.roles}
    result = _invoke(spec, impl, empty, spec.hyper)
    if name == "adaptive_sgd_":
        assert result.skipped is False and result.grad_norm == 0.0
    else:
        assert result is None
    status = _invoke(spec, impl, empty, dict(spec.hyper, skip_if_nonfinite=True))
    assert status.skipped is False and status.nonfinite == 0
    # hyperparameters are still checked on an empty call
    with pytest.raises(ValueError, match="lr"):
        _invoke(spec, impl, empty, dict(spec.hyper, lr=-1.0))


@pytest.mark.parametrize("shape0", [(0,), (3, 0), (0, 0, 2)], ids=["0", "3x0", "0x0x2"])
@pytest.mark.parametrize("name", list(SPECS))
def test_zero_size_arrays_are_a_no_op(name, shape0):
    spec = SPECS[name]

    def zeros(r):
        shape = spec.shape_of(r, shape0)
        return None if shape is None else np.zeros(shape, np.float32)
    arrays = valid_arrays(spec, single=False)
    for r in spec.roles:
        arrays[r][0] = zeros(r)
    expected = _reference_result(spec, arrays, spec.hyper)
    spec.kernel()(*[arrays[r] for r in spec.roles], **spec.hyper)
    for r in spec.roles:
        assert arrays[r][0] is None or arrays[r][0].shape == spec.shape_of(r, shape0)
        for a, e in zip(arrays[r], expected[r]):
            assert (a is None and e is None) or np.array_equal(a, e)
    # only zero-size arrays: nothing to do, nothing raised, single arrays and lists, and the
    # adaptive rate of a zero norm is lr itself
    for impl in ("kernel", "reference"):
        for zero in ({r: zeros(r) for r in spec.roles},
                     {r: [zeros(r) for _ in range(2)] for r in spec.roles}):
            result = _invoke(spec, impl, zero, spec.hyper)
            if name == "adaptive_sgd_":
                assert result.grad_norm == 0.0 and result.lr == spec.hyper["lr"]
            for r in spec.roles:
                for a in zero[r] if isinstance(zero[r], list) else [zero[r]]:
                    assert a is None or a.shape == spec.shape_of(r, shape0)


def _copy(a, shape=None):
    return None if a is None else (a.copy() if shape is None else a.reshape(shape).copy())


@pytest.mark.parametrize("dt", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", list(SPECS))
def test_zero_d_arrays_are_size_one_tensors(name, dt):
    spec = SPECS[name]
    arrays = valid_arrays(spec, single=False, dtype=dt)
    for r in spec.roles:  # tensor 1 becomes 0-d (of a factored rule: a vector's states)
        if spec.shape_of(r, ()) is None:
            arrays[r][1] = None
        else:
            v = arrays[r][1]
            arrays[r][1] = np.asarray(v.flat[0] if v is not None else dt(0.5))
    as_1d = {r: [_copy(a, -1 if k == 1 else None) for k, a in enumerate(v)] for r, v in arrays.items()}
    spec.kernel()(*[arrays[r] for r in spec.roles], **spec.hyper)
    spec.reference()(*[as_1d[r] for r in spec.roles], **spec.hyper)
    for r in spec.roles:
        assert arrays[r][1] is None or arrays[r][1].shape == ()
        for a, e in zip(arrays[r], as_1d[r]):
            assert (a is None and e is None) or np.array_equal(a.reshape(e.shape), e)
    assert not np.array_equal(arrays["params"][1],
                              valid_arrays(spec, False, dtype=dt)["params"][1].flat[0])
    # a single 0-d array per argument: the return value and bits of the call on shape (1,)
    single = {r: _copy(v[1]) for r, v in arrays.items()}
    as_one = {r: _copy(a, 1) for r, a in single.items()}
    returned = spec.kernel()(*[as_one[r] for r in spec.roles], **spec.hyper)
    assert spec.kernel()(*[single[r] for r in spec.roles], **spec.hyper) == returned
    for r in spec.roles:
        if single[r] is not None:
            assert single[r].shape == ()
            assert_same_bits(single[r].reshape(1), as_one[r], r)
    assert not np.array_equal(single["params"], arrays["params"][1])


# --------------------------------------------------------------------------------------
# Optimizer classes
# --------------------------------------------------------------------------------------
def _opt_params(seed=1, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return [_values(rng, s, dtype) for s in SHAPES]


def _opt_grads(seed=2, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return [_values(rng, s, dtype) for s in SHAPES]


def _construct_cases(opt: str) -> list[Case]:
    out = []

    def add(detail, mutate, exc, *names):
        out.append(Case(f"{opt}-construct-{detail}", opt, "construct", mutate, exc, names))

    def params(value):
        def mutate(arrays, hyper):
            arrays["params"] = value(arrays["params"]) if callable(value) else value
        return mutate

    add("params-empty-list", params([]), ValueError, "params")
    add("params-empty-tuple", params(()), ValueError, "params")
    add("params-str", params("abc"), TypeError, "params")
    add("params-None", params(None), TypeError, "params")
    add("params[1]-pylist", _set("params", lambda a: a.tolist()), TypeError, "params[1]")
    add("params[1]-numpy-scalar", _set("params", lambda a: np.float32(1.0)), TypeError,
        "params[1]")
    for dname, dt in BAD_DTYPES.items():
        add(f"params[1]-{dname}", _set("params", lambda a, dt=dt: a.astype(dt)), TypeError,
            "params[1]")
        add(f"params-all-{dname}", params(lambda xs, dt=dt: [a.astype(dt) for a in xs]),
            TypeError, "params[0]")
    add("params[1]-float64-mixed", _set("params", lambda a: a.astype(np.float64)), TypeError,
        "params[1]")
    for lname, f in LAYOUTS.items():
        add(f"params[1]-{lname}", _set("params", f), ValueError, "params[1]")
    add("params[1]-read-only", _set("params", read_only), ValueError, "params[1]", "read-only")
    add("params[2]-is-params[0]", _alias("params", "params", 2, 0), ValueError, "params[0]",
        "params[2]")
    add("params[0]-overlaps-params[2]", _overlap("params", 0, "params", 2, 3), ValueError,
        "params[0]", "params[2]")
    add("params[0]-overlaps-params[1]", _overlap("params", 0, "params", 1, 4), ValueError,
        "params[0]", "params[1]")
    c = Case(f"{opt}-construct-params[1]-cuda-array-interface", opt, "construct",
             _set("params", lambda a: FakeDeviceArray(a.shape)), ValueError, ("params[1]",))
    out.append(c)
    spec = SPECS[OPT_FUNCTION[opt]]
    for hid, kw, exc, name in _hyper_values(spec):
        if "_drop" in kw or set(kw) & {"step", "skip_if_nonfinite"}:
            continue
        add(f"hyper-{hid}", _set_hyper(**kw), exc, name)
    for k, v in {"int": 1, "str": "yes", "None": None}.items():
        add(f"hyper-skip_if_nonfinite-{k}", _set_hyper(skip_if_nonfinite=v), TypeError,
            "skip_if_nonfinite")
    for k, v in {"cuda": "cuda", "None": None}.items():
        add(f"hyper-backend-{k}", _set_hyper(backend=v), ValueError, "backend")
    add("hyper-unknown-keyword", _set_hyper(learning_rate=0.1), TypeError, "learning_rate")
    for k, v in {"int": 1, "str": "yes", "None": None}.items():
        add(f"hyper-capturable-{k}", _set_hyper(capturable=v), TypeError, "capturable")
    if opt in ("Adam", "AdamW"):  # host arrays: nothing for a CUDA graph to capture
        add("hyper-capturable-host-arrays", _set_hyper(capturable=True), ValueError,
            "capturable", "device arrays")
        for k, v, exc in [("str", "0.5", TypeError), ("int", 5, TypeError), ("dict", {1: 2.0}, TypeError),
                          ("strings", ["a"], TypeError), ("empty", [], ValueError),
                          ("2-D", [[1.0]], ValueError), ("negative", [1.0, -0.5], ValueError),
                          ("nan", [float("nan")], ValueError), ("inf", [1.0, float("inf")], ValueError),
                          ("bools", [True, False], TypeError), ("numeric-str", ["0.5"], TypeError),
                          ("huge-int", [1.0, 2**2000], TypeError), ("complex", [1j], TypeError)]:
            add(f"hyper-lr_factors-{k}", _set_hyper(lr_factors=v), exc, "lr_factors")
        add("hyper-lr_factors-rate-overflows", _set_hyper(lr=1e300, lr_factors=[1.0, 1e10]),
            ValueError, "lr_factors")
    else:  # lr_factors is Adam's; the others have the same coefficients every step
        add("hyper-lr_factors-other-rule", _set_hyper(lr_factors=[1.0]), TypeError, "lr_factors")
        add("hyper-capturable-other-rule", _set_hyper(capturable=True), TypeError,
            "capturable", "Adam")
    if opt == "Adagrad":
        for k, v in {"negative": -0.1, "nan": float("nan")}.items():
            add(f"hyper-initial_accumulator_value-{k}", _set_hyper(initial_accumulator_value=v),
                ValueError, "initial_accumulator_value")
        add("hyper-initial_accumulator_value-str", _set_hyper(initial_accumulator_value="0"),
            TypeError, "initial_accumulator_value")
    return out


def _step_cases(opt: str) -> list[Case]:
    out = []

    def add(detail, mutate, exc, *names):
        out.append(Case(f"{opt}-step-{detail}", opt, "step", mutate, exc, names))

    add("grads-str", _set_role("grads", lambda xs: "abc"), TypeError, "grads")
    add("grads-None", _set_role("grads", lambda xs: None), TypeError, "grads")
    add("grads[1]-pylist", _set("grads", lambda a: a.tolist()), TypeError, "grads[1]")
    add("grads[1]-str", _set("grads", "abc"), TypeError, "grads[1]")
    for dname, dt in BAD_DTYPES.items():
        add(f"grads[1]-{dname}", _set("grads", lambda a, dt=dt: a.astype(dt)), TypeError,
            "grads[1]")
    add("grads[1]-float64", _set("grads", lambda a: a.astype(np.float64)), TypeError,
        "grads[1]")
    for sname, shape in {"4x3": (4, 3), "flat12": (12,), "3x5": (3, 5)}.items():
        add(f"grads[1]-shape-{sname}", _set("grads", lambda a, s=shape: np.resize(a, s)),
            ValueError, "grads[1]")
    add("grads-short", _set_role("grads", lambda xs: xs[:-1]), ValueError, "grads")
    add("grads-long", _set_role("grads", lambda xs: xs + [xs[0]]), ValueError, "grads")
    add("grads-empty", _set_role("grads", lambda xs: []), ValueError, "grads")
    for lname, f in LAYOUTS.items():
        add(f"grads[1]-{lname}", _set("grads", f), ValueError, "grads[1]")
    add("grads[1]-is-params[1]", _alias("grads", "params"), ValueError, "grads[1]",
        "params[1]")
    add("grads[0]-overlaps-params[0]", _overlap("params", 0, "grads", 0, 2), ValueError,
        "grads[0]", "params[0]")  # needs a param that is a view: see test_optimizer_bad_step
    # a state of the param's shape: a factored rule's vectors' (tensor 0), the others' any
    k = 0 if fusedopt.rules.kernel(OPT_FUNCTION[opt])[0].state_layout == "factored" else BAD
    add(f"grads[{k}]-is-state", _alias("grads", "__state__", k, k), ValueError, f"grads[{k}]")
    c = Case(f"{opt}-step-grads[1]-cuda-array-interface", opt, "step",
             _set("grads", lambda a: FakeDeviceArray(a.shape)), ValueError, ("grads[1]",))
    out.append(c)
    return out


def _lr_cases(opt: str) -> list[Case]:
    out = []
    for k, v, exc in [("negative", -1.0, ValueError), ("nan", float("nan"), ValueError),
                      ("inf", float("inf"), ValueError), ("str", "0.1", TypeError),
                      ("None", None, TypeError), ("bool", True, TypeError)]:
        out.append(Case(f"{opt}-lr-setter-{k}", opt, "lr", _set_hyper(lr=v), exc, ("lr",)))
    return out


def _load_cases(opt: str) -> list[Case]:
    out = []

    def add(detail, edit, exc, *names):
        out.append(Case(f"{opt}-load-{detail}", opt, "load", edit, exc, names))

    def sd(fn):
        def mutate(state, hyper):  # `state` is the state_dict, edited in place
            fn(state)
        return mutate

    add("not-a-dict", None, TypeError, "dict")
    add("wrong-optimizer", sd(lambda s: s.update(optimizer="Other")), ValueError, "Other")
    for k, v in {"negative": -1, "bool": True, "float": 1.0, "None": None}.items():
        add(f"step-{k}", sd(lambda s, v=v: s.update(step=v)), ValueError, "step")
    add("hyper-lr-negative", sd(lambda s: s["hyperparameters"].update(lr=-1.0)), ValueError,
        "lr")
    add("hyper-lr-str", sd(lambda s: s["hyperparameters"].update(lr="x")), TypeError, "lr")
    if opt in ("Adam", "AdamW"):
        add("hyper-lr_factors-negative", sd(lambda s: s["hyperparameters"].update(lr_factors=[-1.0])),
            ValueError, "lr_factors")
    add("hyper-extra-key", sd(lambda s: s["hyperparameters"].update(foo=1)), ValueError,
        "hyperparameters")
    add("hyper-missing-key", sd(lambda s: s["hyperparameters"].pop("lr")), ValueError,
        "hyperparameters")
    add("state-missing", sd(lambda s: s["state"].popitem()), ValueError, "states")
    add("state-extra", sd(lambda s: s["state"].update(extra=[])), ValueError, "states")

    def first_state(fn):
        def edit(s):
            name = sorted(s["state"])[0]
            s["state"][name] = fn(s["state"][name])
        return sd(edit)

    add("state-short-list", first_state(lambda xs: xs[:-1]), ValueError, "list")
    add("state-not-a-list", first_state(lambda xs: xs[0]), ValueError, "list")
    add("state[1]-wrong-shape", first_state(lambda xs: [xs[0], np.resize(xs[1], (4, 3)), xs[2]]),
        ValueError, "[1]", "shape")
    add("state[1]-float64", first_state(lambda xs: [xs[0], xs[1].astype(np.float64), xs[2]]),
        ValueError, "[1]", "dtype")
    add("state[1]-pylist", first_state(lambda xs: [xs[0], xs[1].tolist(), xs[2]]),
        ValueError, "[1]")
    # a later state being bad must not let earlier ones be written
    add("last-state[2]-wrong-shape",
        sd(lambda s: s["state"][sorted(s["state"])[-1]].__setitem__(2, np.zeros(7, np.float32))),
        ValueError, "[2]")
    return out


OPTIMIZER_CASES = [c for opt in OPTIMIZERS for c in
                   _construct_cases(opt) + _step_cases(opt) + _lr_cases(opt) + _load_cases(opt)]
OPTIMIZER_PARAMS = [pytest.param(c, id=c.id, marks=[pytest.mark.skipif(
    c.needs_no_cupy and HAVE_CUPY, reason="CuPy is installed: the fake device array would be "
                                          "handed to it")]) for c in OPTIMIZER_CASES]


def _aliasable_state(o):
    """The optimizer's first state list whose arrays have their params' shapes (Adafactor's
    row and column factors do not)."""
    for xs in o.state.values():
        if xs[0] is not None and all(x is None or x.shape == p.shape for x, p in zip(xs, o.params)):
            return xs
    raise AssertionError("no state shaped like its param")


def _make_opt(opt: str, params=None):
    cls, kw = OPTIMIZERS[opt]
    o = cls(params if params is not None else _opt_params(), **kw)
    for seed in (3, 4):  # two good steps: states are nonzero, step_count is 2
        o.step(_opt_grads(seed))
    return o


def _opt_snapshot(o):
    return snapshot(o.params, o.state), o.step_count, dict(o.hyperparameters)


def _assert_opt_unchanged(o, snap):
    arrays, step, hyper = snap
    assert_unchanged(arrays)
    assert o.step_count == step
    assert repr(o.hyperparameters) == repr(hyper)


@pytest.mark.parametrize("case", OPTIMIZER_PARAMS)
def test_optimizer_bad_input(case: Case):
    cls, kw = OPTIMIZERS[case.target]
    if case.kind == "construct":
        arrays = {"params": _opt_params()}
        hyper = dict(kw)
        case.mutate(arrays, hyper)
        snap = snapshot(arrays)
        with pytest.raises(case.exc) as exc_info:
            cls(arrays["params"], **hyper)
        assert exc_info.type is case.exc, f"{exc_info.type.__name__}: {exc_info.value}"
        assert_message(exc_info, case.names)
        assert_unchanged(snap)
        return

    if case.kind == "step":
        params = _opt_params()
        if "overlaps-params" in case.id:
            buf = np.zeros(params[0].size + 2 + params[0].size, np.float32)
            view = buf[: params[0].size]
            view[...] = params[0]
            params[0] = view
        o = _make_opt(case.target, params)
        grads = _opt_grads(5)
        arrays = {"grads": grads, "params": o.params, "__state__": _aliasable_state(o)}
        if "overlaps-params" in case.id:
            size = params[0].size
            grads[0] = buf[2: 2 + size]
        else:
            case.mutate(arrays, {})
        snap = _opt_snapshot(o)
        grads_snap = snapshot(arrays["grads"])
        with pytest.raises(case.exc) as exc_info:
            o.step(arrays["grads"])
        assert exc_info.type is case.exc, f"{exc_info.type.__name__}: {exc_info.value}"
        assert_message(exc_info, case.names)
        _assert_opt_unchanged(o, snap)
        assert_unchanged(grads_snap)
        o.step(_opt_grads(6))  # still usable
        assert o.step_count == 3
        return

    o = _make_opt(case.target)
    if case.kind == "lr":
        snap = _opt_snapshot(o)
        value = {}
        case.mutate({}, value)
        with pytest.raises(case.exc) as exc_info:
            o.lr = value["lr"]
        assert exc_info.type is case.exc
        assert_message(exc_info, case.names)
        _assert_opt_unchanged(o, snap)
        return

    assert case.kind == "load"
    state = o.state_dict() if case.mutate is not None else "not a dict"
    if case.mutate is not None:
        case.mutate(state, None)
    # the optimizer's own arrays move on after the state_dict was taken
    o.step(_opt_grads(7))
    snap = _opt_snapshot(o)
    with pytest.raises(case.exc) as exc_info:
        o.load_state_dict(state)
    assert exc_info.type is case.exc, f"{exc_info.type.__name__}: {exc_info.value}"
    assert_message(exc_info, case.names)
    _assert_opt_unchanged(o, snap)


@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_optimizer_load_state_dict_round_trip(opt):
    """The positive control of the load cases: an unedited state_dict restores."""
    o = _make_opt(opt)
    saved = o.state_dict()
    o.step(_opt_grads(7))
    o.load_state_dict(saved)
    assert o.step_count == saved["step"]
    for name, arrays in o.state.items():
        for a, b in zip(arrays, saved["state"][name]):
            assert np.array_equal(a, b)


# --------------------------------------------------------------------------------------
# The grid's size
# --------------------------------------------------------------------------------------
def grid_size() -> dict:
    counts = collections.Counter()
    for p in FUNCTION_PARAMS:
        case = p.values[0]
        counts[f"function:{case.category}"] += 1
        assert case.category, case.id
    for c in OPTIMIZER_CASES:
        counts[f"optimizer:{c.kind}"] += 1
    counts["total"] = sum(counts.values())
    return dict(counts)


def test_grid_size():
    """The grid is as large as the README says (update both together)."""
    sizes = grid_size()
    assert sizes["total"] == len(FUNCTION_PARAMS) + len(OPTIMIZER_CASES)
    assert sizes["total"] >= 2000
    ids = [p.id for p in FUNCTION_PARAMS] + [c.id for c in OPTIMIZER_CASES]
    assert len(set(ids)) == len(ids), "case ids must be unique"
    assert all(re.fullmatch(r"[\w\[\].\-+]+", i) for i in ids)


if __name__ == "__main__":
    for k, v in sorted(grid_size().items()):
        print(f"{k:28s} {v}")


# --------------------------------------------------------------------------------------
# The private module re-checks what memory safety rests on
# --------------------------------------------------------------------------------------
def _core_calls():
    from fusedopt import _core, rules

    p = np.ones(100, np.float32)
    g = np.ones(100, np.float32)
    s = np.ones(100, np.float32)
    raw = np.zeros(401, np.uint8)
    unaligned = raw[1:].view(np.float32)
    adam = rules.adam.coefficients("adam_", step=1, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                        amsgrad=False, maximize=False, decoupled=False)
    sgd = rules.sgd.coefficients("sgd_", lr=0.1, momentum=0.9, dampening=0.0, nesterov=False,
                      weight_decay=0.0, maximize=False, step=2, convention="torch")
    rmsprop = rules.rmsprop.coefficients("rmsprop_", lr=0.1, alpha=0.9, eps=1e-8, weight_decay=0.0,
                              momentum=0.9, centered=True, maximize=False)
    adagrad = rules.adagrad.coefficients("adagrad_", step=1, lr=0.1, lr_decay=0.0, weight_decay=0.0,
                              eps=1e-8, maximize=False)
    return {
        # fewer state lists than the flags need: the loop would dereference a null pointer
        "adam-no-states": lambda: _core.run("adam", [p], [g], [], adam),
        "adam-amsgrad-two-states": lambda: _core.run("adam", [p], [g], [[s], [s.copy()]],
                                                     adam._replace(amsgrad=True)),
        "sgd-momentum-no-buffer": lambda: _core.run("sgd", [p], [g], [], sgd),
        "rmsprop-centered-momentum-one-state": lambda: _core.run("rmsprop", [p], [g], [[s]],
                                                                 rmsprop),
        "adagrad-no-state": lambda: _core.run("adagrad", [p], [g], [], adagrad),
        # a flag out of its mode's range would select no kernel
        "sgd-bad-weight-decay-mode": lambda: _core.run("sgd", [p], [g], [[s]], sgd._replace(wd_mode=7)),
        "count_nonfinite-unaligned": lambda: _core.count_nonfinite([unaligned]),
        "plan_ranges-zero-threads": lambda: _core._plan_ranges(10, 0),
    }


@pytest.mark.parametrize("name", list(_core_calls()))
def test_private_module_refuses_unsafe_calls(name):
    """Direct calls into fusedopt._core that the Python layer never makes, each of which
    used to crash or would read or write out of bounds or misaligned: a clean error."""
    call = _core_calls()[name]
    with pytest.raises(ValueError):
        call()


def test_private_module_reader_refuses_what_memory_safety_rests_on():
    """The reader behind the private module's run() refuses, with nothing written, the
    calls that would read or write out of bounds or misaligned: it answers with the rule."""
    from fusedopt import _core, rules

    c = rules.sgd.coefficients("sgd_", lr=0.1, momentum=0.0, dampening=0.0, nesterov=False,
                    weight_decay=0.0, maximize=False, step=1, convention="torch")
    p, g = np.ones(100, np.float32), np.ones(100, np.float32)
    unaligned = np.zeros(401, np.uint8)[1:].view(np.float32)
    unaligned[...] = 1.0
    cases = {
        "misaligned": ([unaligned], [g]),
        "shape": ([p], [g[:50]]),
        "dtype_combination": ([p], [g.astype(np.float64)]),
        "dtype_mismatch": ([p, p.copy()], [g, g.astype(np.float16)]),
    }
    for rule, (params, grads) in cases.items():
        before = [a.copy() for a in params]
        refusal = _core.run("sgd", params, grads, [], c)
        assert refusal is not None and refusal[0] == rule, (rule, refusal)
        assert all(np.array_equal(a, b) for a, b in zip(params, before))


def test_private_module_takes_arrays_only_in_lists_or_tuples():
    """A 2-D array is a sequence whose rows are made anew on each read: a pointer read from
    one would outlive it (such calls crashed). The reader never iterates anything but a list
    or tuple: a 2-D array is one tensor, and any other container of state lists is a clean
    TypeError with nothing written."""
    from fusedopt import _core, rules

    rows, grads = np.ones((4, 8), np.float32), np.ones((4, 8), np.float32)
    c = rules.sgd.coefficients("sgd_", lr=0.5, momentum=0.0, dampening=0.0, nesterov=False,
                    weight_decay=0.0, maximize=False, step=1, convention="torch")
    assert _core.run("sgd", rows, grads, [], c) is None  # one tensor of shape (4, 8)
    assert np.all(rows == 0.5)

    class FreshStates:  # a sequence whose items are made anew on each read
        def __len__(self):
            return 1

        def __getitem__(self, i):
            if i:
                raise IndexError(i)
            return [np.zeros(8, np.float32)]

    with pytest.raises(TypeError, match="list or tuple"):
        _core.run("sgd", [rows[0]], [grads[0]], FreshStates(), c._replace(momentum=0.9, momentum_mode=2))
    assert np.all(rows == 0.5)

    class FreshItems(list):  # a list whose indexing makes a new array on each read
        def __getitem__(self, i):
            return np.ones(1 << 22, np.float32)

    assert _core.count_nonfinite(FreshItems([np.full(8, np.inf, np.float32)])) == 8


def test_fast_path_takes_one_array_per_role_and_refuses_mixes():
    """The reader behind the fast path (fusedopt._dispatch.run) takes the arguments as the
    caller passed them: every role one array, or every role a list. A mix is refused with
    nothing written."""
    from fusedopt import _core, rules

    c = rules.sgd.coefficients("sgd_", lr=0.5, momentum=0.9, dampening=0.0, nesterov=False,
                    weight_decay=0.0, maximize=False, step=2, convention="torch")
    p, g, buf = (np.full(8, 2.0, np.float32) for _ in range(3))
    before = [p.copy(), buf.copy()]
    refused = {
        "params single, grads a list": (p, [g], [buf]),
        "params a list, grads single": ([p], g, [[buf]]),
        "a state a list among single arrays": (p, g, [[buf]]),
        "a state single among lists": ([p], [g], [buf]),
    }
    for why, args in refused.items():
        assert _core.run("sgd", *args, c) is not None, why
        np.testing.assert_array_equal(p, before[0])
        np.testing.assert_array_equal(buf, before[1])
    assert _core.run("sgd", p, g, [buf], c) is None
    assert not np.array_equal(p, before[0])
    p2, g2, buf2 = before[0].copy(), g.copy(), before[1].copy()
    assert _core.run("sgd", [p2], (g2,), [[buf2]], c) is None
    np.testing.assert_array_equal(p2, p)
