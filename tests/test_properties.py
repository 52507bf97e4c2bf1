"""Property-based tests (Hypothesis): random rules, hyperparameters, dtypes, sizes, list
lengths and layouts, valid and invalid.

Every draw either raises TypeError or ValueError with nothing written, or equals the exact
reference bit for bit and the float64 reference within a tolerance. Which of the two must
happen is predicted independently of fusedopt's checks (from NumPy's own flags and
np.may_share_memory), so a check that lets a bad call through, or refuses a good one, fails.

Profiles: ``fusedopt-ci`` (default, 200 examples per test) and ``fusedopt-thorough``
(5,000), chosen with FUSEDOPT_HYPOTHESIS_PROFILE. No example database is written.
"""

from __future__ import annotations

import math
import os

import fusedopt
import fusedopt.optim
import fusedopt.reference
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

_COMMON = dict(deadline=None, database=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("fusedopt-ci", max_examples=200, **_COMMON)
settings.register_profile("fusedopt-thorough", max_examples=5000, **_COMMON)
PROFILE = settings.get_profile(os.environ.get("FUSEDOPT_HYPOTHESIS_PROFILE", "fusedopt-ci"))

# (function, state arguments in positional order, which are optional and what enables them)
RULES = {
    "sgd_": ("momentum_buffers",),
    "adaptive_sgd_": ("momentum_buffers",),
    "adagrad_": ("state_sums",),
    "rmsprop_": ("square_avgs", "grad_avgs", "momentum_buffers"),
    "adam_": ("exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"),
    "adamw_": ("exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"),
}
POSITIVE = {"state_sums", "square_avgs", "exp_avg_sqs", "max_exp_avg_sqs"}
SMALL = {"grad_avgs"}
TOLERANCE = {np.float32: (2e-5, 1e-6), np.float64: (1e-11, 1e-13)}  # (rtol, atol) vs float64
BAD_NUMBERS = [-0.1, math.nan, math.inf]


# --------------------------------------------------------------------------------------
# Hyperparameters: (kwargs, valid?)
# --------------------------------------------------------------------------------------
def _rarely(draw, percent):
    """True in about `percent`% of draws. The window sits mid-range: Hypothesis favours the
    ends of an integer range, which would make 'rare' common."""
    return 500 <= draw(st.integers(0, 999)) < 500 + 10 * percent


def _maybe_bad(draw, good, percent=2):
    """A value from `good`, or (rarely) a bad one; returns (value, is_valid)."""
    if _rarely(draw, percent):
        return draw(st.sampled_from(BAD_NUMBERS)), False
    return draw(good), True


def _unit(lo, hi):
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


@st.composite
def hyperparameters(draw, fn):
    ok = True
    kw = {}

    def put(name, good, bad_values=None):
        nonlocal ok
        if bad_values is not None and _rarely(draw, 3):
            kw[name] = draw(st.sampled_from(bad_values))
            ok = False
            return
        value, valid = _maybe_bad(draw, good)
        kw[name] = value
        ok = ok and valid

    put("lr", _unit(0.0, 0.1))
    put("weight_decay", st.sampled_from([0.0, 0.0, 1e-2, 0.1]))
    kw["maximize"] = draw(st.booleans())
    if fn in ("sgd_", "adaptive_sgd_"):
        put("momentum", st.sampled_from([0.0, 0.0, 0.5, 0.9]))
        put("dampening", st.sampled_from([0.0, 0.0, 0.1]), bad_values=[1.5])
        kw["nesterov"] = _rarely(draw, 25)
        kw["convention"] = draw(st.sampled_from(["torch", "torch", "keras"]))
        if isinstance(kw["momentum"], float) and kw["nesterov"]:
            ok = ok and kw["momentum"] > 0 and kw["dampening"] == 0
        if kw["convention"] == "keras":
            ok = ok and kw["dampening"] == 0
    elif fn == "adagrad_":
        put("lr_decay", st.sampled_from([0.0, 0.01, 0.1]))
        put("eps", st.sampled_from([1e-10, 1e-8, 1e-3]))
    elif fn == "rmsprop_":
        put("alpha", _unit(0.5, 0.999), bad_values=[1.5])
        put("eps", st.sampled_from([1e-8, 1e-6, 1e-3]))
        put("momentum", st.sampled_from([0.0, 0.0, 0.9]))
        kw["centered"] = draw(st.booleans())
    else:
        b1, v1 = _maybe_bad(draw, _unit(0.0, 0.95))
        b2, v2 = _maybe_bad(draw, _unit(0.5, 0.999))
        if _rarely(draw, 2):
            b1, v1 = 1.0, False
        kw["betas"] = (b1, b2)
        ok = ok and v1 and v2
        put("eps", st.sampled_from([1e-8, 1e-6, 1e-3]))
        kw["amsgrad"] = draw(st.booleans())
    if fn != "rmsprop_":
        if _rarely(draw, 2):
            kw["step"] = draw(st.sampled_from([0, -2]))
            ok = False
        else:
            kw["step"] = draw(st.integers(1, 10_000))
    return kw, ok


def needed_states(fn, kw):
    if fn in ("sgd_", "adaptive_sgd_"):
        return ["momentum_buffers"] if _truthy(kw.get("momentum")) else []
    if fn == "adagrad_":
        return ["state_sums"]
    if fn == "rmsprop_":
        return (["square_avgs"] + (["grad_avgs"] if kw.get("centered") else [])
                + (["momentum_buffers"] if _truthy(kw.get("momentum")) else []))
    return ["exp_avgs", "exp_avg_sqs"] + (["max_exp_avg_sqs"] if kw.get("amsgrad") else [])


def _truthy(x):
    return x is not None and (isinstance(x, float) and (x != 0.0))


# --------------------------------------------------------------------------------------
# Arrays
# --------------------------------------------------------------------------------------
GOOD_DTYPES = [np.float32, np.float64]
# float16 is a storage type now (tests/test_mixed_precision.py covers it); uint16 has its
# size and is refused.
BAD_DTYPES = [np.int32, np.uint16, np.complex64, np.bool_, object]
LAYOUTS = ["contiguous"] * 12 + ["strided", "transposed", "negative", "read-only", "aliased",
                                 "unaligned", "broadcast"]


def _values(rng, shape, dtype, role):
    if role in SMALL:
        x = rng.uniform(0.01, 0.3, shape)
    else:
        x = rng.uniform(0.1, 2.0, shape)
    if role not in POSITIVE:
        x = x * rng.choice((-1.0, 1.0), shape)
    return np.asarray(x).astype(dtype)


def _relayout(a, layout, rng):
    """The same values in another memory layout (or a read-only copy)."""
    if layout == "strided":
        buf = np.zeros(a.shape[:-1] + (2 * a.shape[-1],) if a.ndim else (2,), a.dtype)
        v = buf[..., ::2] if a.ndim else buf[::2].reshape(())
    elif layout == "transposed":
        v = np.zeros(a.shape[::-1], a.dtype).T
    elif layout == "negative":
        if a.ndim == 0:
            return a.copy()
        v = np.zeros(a.shape, a.dtype)[(slice(None, None, -1),) * a.ndim]
    elif layout == "unaligned":
        if a.dtype.hasobject:
            return a  # an array of references cannot be a view of raw bytes
        raw = np.zeros(a.nbytes + 1, np.uint8)
        v = raw[1:].view(a.dtype).reshape(a.shape)
    elif layout == "broadcast":
        if a.ndim == 0 or a.shape[0] == 0:
            return a
        return np.broadcast_to(a[:1], a.shape)
    elif layout == "read-only":
        v = a.copy()
        v.setflags(write=False)
        return v
    else:
        return a
    v[...] = a
    return v


@st.composite
def calls(draw):
    fn = draw(st.sampled_from(sorted(RULES)))
    kw, hyper_ok = draw(hyperparameters(fn))
    n = 0 if _rarely(draw, 5) else draw(st.integers(1, 4))
    single = n == 1 and draw(st.booleans())
    shapes = []
    for _ in range(n):
        kind = draw(st.integers(0, 9))
        if kind == 0:
            shapes.append(())  # 0-d
        elif kind <= 2:
            shapes.append((draw(st.integers(0, 6)), draw(st.integers(0, 6))))
        elif kind == 3:
            shapes.append((draw(st.sampled_from([63, 64, 65, 4097, 70001])),))
        else:
            shapes.append((draw(st.integers(0, 300)),))
    if _rarely(draw, 5):
        dtype = draw(st.sampled_from(BAD_DTYPES))
    else:
        dtype = draw(st.sampled_from(GOOD_DTYPES))
    roles = ["params", "grads"] + needed_states(fn, kw)
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    scale = 1.0
    if fn == "adaptive_sgd_":
        scale = 1.0 / math.sqrt(max(1, sum(int(np.prod(s)) for s in shapes)))
    arrays = {}
    for r in roles:
        out = []
        for s in shapes:
            a = _values(rng, s, np.float64, r) * (scale if r == "grads" else 1.0)
            out.append(np.asarray(a).astype(dtype) if dtype is not object
                       else np.asarray(a).astype(object))
        arrays[r] = out
    # one array (rarely two) of a different dtype
    if n and dtype in GOOD_DTYPES and _rarely(draw, 5):
        r = draw(st.sampled_from(roles))
        i = draw(st.integers(0, n - 1))
        arrays[r][i] = arrays[r][i].astype(np.float64 if dtype is np.float32 else np.float32)
    # layouts
    if n:
        for _ in range(draw(st.sampled_from([0, 0, 0, 1, 1, 2]))):
            r = draw(st.sampled_from(roles))
            i = draw(st.integers(0, n - 1))
            layout = draw(st.sampled_from(LAYOUTS))
            if layout == "aliased":
                r2 = draw(st.sampled_from(roles))
                i2 = draw(st.integers(0, n - 1))
                if arrays[r2][i2].shape == arrays[r][i].shape:
                    arrays[r][i] = arrays[r2][i2]
            else:
                arrays[r][i] = _relayout(arrays[r][i], layout, rng)
    drop = None
    optional = {"momentum_buffers", "grad_avgs", "max_exp_avg_sqs"} & set(roles[2:])
    if optional and _rarely(draw, 3):
        drop = draw(st.sampled_from(sorted(optional)))
    return fn, kw, hyper_ok, roles, arrays, single, drop


def predict_valid(fn, kw, hyper_ok, roles, arrays, drop):
    """Whether fusedopt must accept the call, from first principles."""
    if not hyper_ok or drop is not None:
        return False
    flat = [(r, a) for r in roles for a in arrays[r]]
    if not flat:
        return True
    dtype = arrays["params"][0].dtype
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        return False
    for r, a in flat:
        if a.dtype != dtype or not a.flags.c_contiguous:
            return False
        if a.size and a.__array_interface__["data"][0] % a.dtype.itemsize:
            return False
        if r != "grads" and not a.flags.writeable:
            return False
    n = len(arrays["params"])
    for r in roles:
        for i in range(n):
            if arrays[r][i].shape != arrays["params"][i].shape:
                return False
    for k, (r1, a) in enumerate(flat):
        for r2, b in flat[k + 1:]:
            if (r1 != "grads" or r2 != "grads") and a.size and b.size and \
                    np.may_share_memory(a, b):
                return False
    return True


def _args(fn, roles, arrays, single, drop):
    args = []
    for r in ["params", "grads", *RULES[fn]]:
        if r not in roles or r == drop:
            args.append(None)  # unused, or an optional state that is needed but missing
            continue
        v = arrays[r]
        args.append(v[0] if single else v)
    return args


def _bits(a):
    return a.view({4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


def _copies(arrays):
    return {r: [a.copy() for a in v] for r, v in arrays.items()}


@PROFILE
@given(calls())
def test_any_call_raises_cleanly_or_matches_the_references(draw):
    fn, kw, hyper_ok, roles, arrays, single, drop = draw
    valid = predict_valid(fn, kw, hyper_ok, roles, arrays, drop)
    event("valid call" if valid else "invalid call")
    before = [(a, a.copy()) for r in roles for a in arrays[r]]
    exact = _copies(arrays)
    wide = _copies(arrays)
    try:
        result = getattr(fusedopt, fn)(*_args(fn, roles, arrays, single, drop), **kw)
    except (TypeError, ValueError) as exc:
        assert not valid, f"a valid call was refused: {exc}"
        assert str(exc)
        for a, b in before:
            assert a.dtype == b.dtype
            assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), "written before raising"
        return
    assert valid, "an invalid call was accepted"
    if not arrays["params"]:
        return
    # inputs are finite and well-conditioned: no NaN, inf or division by zero may appear
    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        ref = getattr(fusedopt.reference, fn)(*_args(fn, roles, exact, single, None), **kw)
        getattr(fusedopt.reference, fn)(*_args(fn, roles, wide, single, None), mode="float64",
                                        **kw)
    if fn == "adaptive_sgd_":
        assert result == ref
    rtol, atol = TOLERANCE[arrays["params"][0].dtype.type]
    for r in roles:
        if r == "grads":
            continue
        for i, a in enumerate(arrays[r]):
            assert np.array_equal(_bits(a), _bits(exact[r][i])), f"{r}[{i}] != exact reference"
            np.testing.assert_allclose(a, wide[r][i], rtol=rtol, atol=atol,
                                       err_msg=f"{r}[{i}] vs float64 reference")


# --------------------------------------------------------------------------------------
# Optimizers: random sequences of good, bad and non-finite steps
# --------------------------------------------------------------------------------------
OPTIMIZERS = {
    "SGD": dict(lr=0.05, momentum=0.9), "SGD-keras": dict(lr=0.05, momentum=0.9,
                                                          convention="keras"),
    "AdaptiveSGD": dict(lr=0.5, momentum=0.5), "Adagrad": dict(lr=0.05),
    "RMSprop": dict(lr=0.01, centered=True, momentum=0.5), "Adam": dict(lr=0.01, amsgrad=True),
    "AdamW": dict(lr=0.01), "Lion": dict(lr=0.01, weight_decay=0.1),
}


@st.composite
def optimizer_runs(draw):
    name = draw(st.sampled_from(sorted(OPTIMIZERS)))
    sizes = draw(st.lists(st.integers(0, 200), min_size=1, max_size=3))
    events = draw(st.lists(st.sampled_from(["good"] * 4 + ["nonfinite", "bad-dtype",
                                                         "bad-shape", "short", "alias"]),
                           min_size=1, max_size=8))
    skip = draw(st.booleans())
    seed = draw(st.integers(0, 2**32 - 1))
    return name, sizes, events, skip, seed


@PROFILE
@given(optimizer_runs())
def test_optimizer_sequences_match_the_reference_optimizer(run):
    name, sizes, events, skip, seed = run
    cls = getattr(fusedopt.optim, name.split("-")[0])
    rng = np.random.default_rng(seed)
    params = [rng.uniform(-1, 1, n).astype(np.float32) for n in sizes]
    native = cls([p.copy() for p in params], skip_if_nonfinite=skip, **OPTIMIZERS[name])
    ref = cls([p.copy() for p in params], skip_if_nonfinite=skip, backend="reference",
              **OPTIMIZERS[name])
    total = max(1, sum(sizes))
    expected_steps = 0
    for kind in events:
        grads = [(rng.uniform(-1, 1, n) / math.sqrt(total)).astype(np.float32) for n in sizes]
        if kind == "nonfinite":
            if not any(sizes):
                continue
            t = next(i for i, n in enumerate(sizes) if n)
            grads[t][rng.integers(sizes[t])] = rng.choice([np.nan, np.inf, -np.inf])
        if kind in ("good", "nonfinite"):
            with np.errstate(all="ignore"):
                a = native.step(grads)
                b = ref.step(grads)
            if kind == "good" or not skip:
                expected_steps += 1
            else:
                assert a.skipped and b.skipped and a.nonfinite == b.nonfinite == 1
        else:
            if kind == "bad-dtype":
                grads[0] = grads[0].astype(np.float64)
            elif kind == "bad-shape":
                grads[0] = np.zeros(sizes[0] + 1, np.float32)
            elif kind == "short":
                grads = grads[:-1]
            else:
                if not sizes[0]:
                    continue
                grads[0] = native.params[0]
            snapshot = [x.copy() for x in native.params] + [
                x.copy() for v in native.state.values() for x in v]
            with pytest.raises((TypeError, ValueError)):
                native.step(grads)
            after = native.params + [x for v in native.state.values() for x in v]
            for x, y in zip(after, snapshot):
                assert np.array_equal(x, y, equal_nan=True)
        assert native.step_count == ref.step_count == expected_steps
    for x, y in zip(native.params, ref.params):
        _assert_same(x, y)
    for k in native.state:
        for x, y in zip(native.state[k], ref.state[k]):
            _assert_same(x, y)


def _assert_same(x, y):
    """Equal, NaN equal to NaN, and the same bits wherever the value is not NaN."""
    assert np.array_equal(x, y, equal_nan=True)
    keep = ~np.isnan(y)
    assert np.array_equal(_bits(x)[keep], _bits(y)[keep])
