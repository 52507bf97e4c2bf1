"""Storage types: bfloat16 and float16 params, grads and states, float32 arithmetic.

Every rule's examples (fusedopt.rules.examples()) run on every storage combination the
reader accepts (COMBOS), natively and on the exact reference (which widens to float32,
runs the rule's exact and rounds back to nearest even), and must agree bit for bit. The
arrays of one call are a list of sizes that straddle the vector widths (SIZES), so vector
bodies, tails and thread ranges all meet 16-bit roles.

What runs where, to stay quick on two cores: every (example, combination) on the default
target at 3 threads, plus one more (target, threads) of the matrix per pair, rotating, so
every target and thread count is sampled over the grid; the whole product is marked slow.
The conversions themselves are checked over every float16 and bfloat16 value and over
float32 values of every exponent, on every target (F16C and the integer path), against
NumPy's and ml_dtypes' own conversions.
"""

from __future__ import annotations

import itertools

import fusedopt
import fusedopt.optim
import fusedopt.reference
import fusedopt.rules
import numpy as np
import pytest
from conftest import HAVE_TORCH, SUPPORTED_TARGETS, Case, cpu_config, nonzero, rng_for

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)
DT = {"f32": np.dtype(np.float32), "f64": np.dtype(np.float64), "bf16": BF16,
      "f16": np.dtype(np.float16)}

# (params, grads, states): what the reader accepts besides one dtype for everything.
_GRADS = {"f32": ("f32", "bf16", "f16"), "bf16": ("bf16", "f32"), "f16": ("f16", "f32")}
COMBOS = [(p, g, s) for p, grads in _GRADS.items() for g in grads for s in ("f32", "bf16")
          if (p, g, s) != ("f32", "f32", "f32")]
SIZES = [0, 1, 7, 8, 9, 15, 16, 17, 31, 33, 1000, 70001]
THREADS = [1, 2, 3]
MATRIX = [(t, n) for t in SUPPORTED_TARGETS for n in THREADS]
STEPS = 2
_SQUARE = set().union(*(r.square_states for r in fusedopt.rules.RULES.values()))
# Factored rules (Adafactor) keep states of other shapes: tests/test_adafactor.py runs COMBOS.
EXAMPLES = [Case(name, fn, dict(hyper))
            for name, fn, hyper, _, _ in fusedopt.rules.examples(factored=False)]


def _combo_id(combo) -> str:
    return "p{}-g{}-s{}".format(*combo)


def bits(a: np.ndarray) -> np.ndarray:
    return a.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


def _cast(x64: np.ndarray, dtype) -> np.ndarray:
    return x64.astype(np.float32).astype(dtype) if dtype.itemsize == 2 else x64.astype(dtype)


def make_arrays(case: Case, combo, sizes, rng, steps=STEPS):
    """Nonzero params, states (squares positive; RMSprop's grad average small) and one list
    of gradients per step, in the combination's dtypes."""
    p_dt, g_dt, s_dt = (DT[c] for c in combo)
    params = [_cast(nonzero(rng, n, np.float64), p_dt) for n in sizes]
    states = {}
    for name in case.states:
        if name in _SQUARE:
            states[name] = [_cast(nonzero(rng, n, np.float64, 0.5, 2.0, signed=False), s_dt) for n in sizes]
        elif name == "grad_avgs":
            states[name] = [_cast(nonzero(rng, n, np.float64, 0.01, 0.3), s_dt) for n in sizes]
        else:
            states[name] = [_cast(nonzero(rng, n, np.float64), s_dt) for n in sizes]
    scale = 1.0 / np.sqrt(max(sum(sizes), 1)) if case.fn == "adaptive_sgd_" else 1.0
    grads = [[_cast(nonzero(rng, n, np.float64) * scale, g_dt) for n in sizes] for _ in range(steps)]
    return params, states, grads


def _copy(arrays):
    params, states, grads = arrays
    return ([p.copy() for p in params], {k: [a.copy() for a in v] for k, v in states.items()},
            [[g.copy() for g in step] for step in grads])


def run(case: Case, arrays, **extra) -> list:
    params, states, grads = arrays
    return [case.call(params, g, states, k + 1, **extra) for k, g in enumerate(grads)]


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """The same bits, but for the sign and payload of NaNs: C++ compilers may fold
    ``p - lr * (-g)`` into ``p + lr * g`` (IEEE equal, NaN's sign aside), NumPy does not."""
    nan_a, nan_b = np.isnan(a.astype(np.float32)), np.isnan(b.astype(np.float32))
    return bool(np.array_equal(nan_a, nan_b) and np.array_equal(bits(a)[~nan_a], bits(b)[~nan_b]))


def assert_same(actual, expected):
    (p1, s1, _), (p2, s2, _) = actual, expected
    named = [(f"params[{i}]", a, b) for i, (a, b) in enumerate(zip(p1, p2))]
    named += [(f"{k}[{i}]", a, b) for k in s1 for i, (a, b) in enumerate(zip(s1[k], s2[k]))]
    for name, a, b in named:
        assert a.dtype == b.dtype and a.shape == b.shape, name
        if not same_bits(a, b):
            i = int(np.flatnonzero(bits(a) != bits(b))[0])
            pytest.fail(f"{name} ({a.dtype}): {np.count_nonzero(bits(a) != bits(b))} of {a.size} "
                        f"differ; first at {i}: {a.flat[i]!r} != {b.flat[i]!r}")


_cache: dict = {}


def _reference(case: Case, combo):
    """(fresh inputs, inputs after the reference's steps, its returns), once per pair."""
    key = (case.id, combo)
    if key not in _cache:
        _cache.clear()
        arrays = make_arrays(case, combo, SIZES, rng_for("mixed", *key))
        expected = _copy(arrays)
        returns = run(case, expected, mode="exact")
        written = [*arrays[0], *itertools.chain(*arrays[1].values())]
        after = [*expected[0], *itertools.chain(*expected[1].values())]
        moved = sum(int(np.count_nonzero(bits(a) != bits(b))) for a, b in zip(written, after))
        # (bfloat16 params move only where an update reaches half their spacing, 2^-9 near 1)
        assert moved > sum(SIZES) // 20, "the test data hardly moves anything"
        _cache[key] = (arrays, expected, returns)
    arrays, expected, returns = _cache[key]
    return _copy(arrays), expected, returns


def _grid(full: bool):
    for k, (case, combo) in enumerate(itertools.product(EXAMPLES, COMBOS)):
        configs = MATRIX if full else [(None, 3), MATRIX[k % len(MATRIX)]]
        for target, threads in configs:
            yield pytest.param(case, combo, target, threads,
                               id=f"{case.id}-{_combo_id(combo)}-{target or 'default'}-t{threads}")


def _check(case, combo, target, threads):
    arrays, expected, returns = _reference(case, combo)
    with cpu_config(target, threads):
        got = run(case, arrays, backend="native")
    assert_same(arrays, expected)
    assert got == returns


@pytest.mark.parametrize(("case", "combo", "target", "threads"), list(_grid(False)))
def test_bitwise(case, combo, target, threads):
    _check(case, combo, target, threads)


@pytest.mark.slow
@pytest.mark.parametrize(("case", "combo", "target", "threads"), list(_grid(True)))
def test_bitwise_full_product(case, combo, target, threads):
    _check(case, combo, target, threads)


# --------------------------------------------------------------------------------------
# The conversions, through the kernels: SGD with maximize=True and lr=1 from zero params
# writes p = 0 + g, so a float32 gradient comes back rounded to the params' storage, and a
# 16-bit one comes back as it was (widened, and rounded again: exact).
_COPY = dict(lr=1.0, maximize=True)


def _copied(grad: np.ndarray, param_dtype, target: str) -> np.ndarray:
    p = np.zeros(grad.shape, param_dtype)
    with cpu_config(target, 1):
        fusedopt.sgd_(p, grad, lr=1.0, maximize=True, backend="native")
    return p


def _float32_probe() -> np.ndarray:
    """float32 values of every exponent, with random mantissas, the boundaries of float16
    and bfloat16 rounding (overflow, subnormal, ties), inf and quiet NaNs of both signs."""
    rng = rng_for("float32 probe")
    u = rng.integers(0, 2**32, 1 << 18, dtype=np.uint64).astype(np.uint32)
    halves = (np.arange(1 << 16, dtype=np.uint32) << 16)  # every bfloat16 value, exactly
    ties = halves | np.uint32(0x8000)  # every bfloat16 tie
    special = np.array([65504.0, 65519.996, 65520.0, 65536.0, 2.0**-24, 2.0**-25, 2.0**-25 * 1.0000001,
                        3 * 2.0**-26, 2.0**-14, 2.0**-14 * (1 - 2.0**-11), 3.3895314e38, 3.4028235e38,
                        np.inf, -np.inf], np.float32)
    negative = special.view(np.uint32) | np.uint32(1 << 31)
    out = np.concatenate([u, halves, ties, special.view(np.uint32), negative])
    out = out.view(np.float32)
    nan = np.isnan(out)
    out[nan] = np.copysign(np.float32(np.nan), out[nan])  # quiet NaNs (a signaling one comes back quiet)
    out[out == 0] = 0.0  # 0 + (-0.0) is +0.0: the copy cannot carry a negative zero
    return out


@pytest.mark.parametrize("target", SUPPORTED_TARGETS)
def test_float32_to_float16_and_bfloat16_rounding(target):
    x = _float32_probe()
    with np.errstate(over="ignore"):
        want16 = x.astype(np.float16)
    got16 = _copied(x, np.float16, target)
    assert np.array_equal(bits(got16), bits(want16)), "float16 rounding differs from NumPy's"
    got_bf = _copied(x, BF16, target)
    want_bf = x.astype(BF16)
    finite = ~np.isnan(x)
    assert np.array_equal(bits(got_bf)[finite], bits(want_bf)[finite]), "bfloat16 differs from ml_dtypes'"
    # NaN: the top of the payload kept, made quiet (ml_dtypes drops the payload)
    assert np.array_equal(bits(got_bf)[~finite] & 0x7FFF, ((bits(x)[~finite] >> 16) | 0x40) & 0x7FFF)
    # and the exact reference rounds the same way
    p16, pbf = np.zeros_like(got16), np.zeros_like(got_bf)
    fusedopt.reference.sgd_(p16, x, mode="exact", **_COPY)
    fusedopt.reference.sgd_(pbf, x, mode="exact", **_COPY)
    assert same_bits(p16, got16) and same_bits(pbf, got_bf)


@pytest.mark.parametrize("target", SUPPORTED_TARGETS)
@pytest.mark.parametrize("name", ["f16", "bf16"])
def test_every_16_bit_value_round_trips(name, target):
    """Every value widens exactly and rounds back to itself (quiet NaNs included); and a
    16-bit gradient into float32 params is its value widened (NumPy's, ml_dtypes')."""
    dtype = DT[name]
    every = np.arange(1 << 16, dtype=np.uint16)
    quiet = (every & 0x7C00 != 0x7C00) | (every & 0x0200 != 0) | (every & 0x03FF == 0)
    if name == "bf16":
        quiet = (every & 0x7F80 != 0x7F80) | (every & 0x0040 != 0) | (every & 0x007F == 0)
    x = every[quiet & (every != 0x8000)].view(dtype)  # (0 + -0.0 is +0.0)
    assert same_bits(_copied(x, dtype, target), x)
    widened = _copied(x, np.float32, target)
    assert same_bits(widened, x.astype(np.float32))
    nan = np.isnan(x.astype(np.float32))  # NaN payloads widen into the top of float32's
    assert np.array_equal(bits(widened)[nan] & 0x7FFFFFFF,
                          (bits(x)[nan].astype(np.uint32) << (16 if name == "bf16" else 13)) & 0x7FFFE000
                          | (0x7F800000 | 0x400000))


# --------------------------------------------------------------------------------------
ADAM = Case("adam", "adam_", dict(lr=0.01, weight_decay=0.01))


@pytest.mark.parametrize("target", SUPPORTED_TARGETS)
def test_nan_inf_and_overflow(target):
    """A NaN or inf gradient propagates as in the reference; an update past the largest
    float16/bfloat16 value stores inf, as IEEE rounding says."""
    for combo in [("bf16", "bf16", "bf16"), ("f16", "f16", "f32"), ("f32", "f16", "bf16"),
                  ("f16", "f32", "bf16")]:
        arrays = make_arrays(ADAM, combo, [1000, 17], rng_for("nonfinite", combo), steps=1)
        g = arrays[2][0][0]
        g[:4] = np.array([np.nan, np.inf, -np.inf, -np.nan], np.float32).astype(g.dtype)
        expected = _copy(arrays)
        with np.errstate(all="ignore"):  # the reference computes with NaN and inf on purpose
            run(ADAM, expected, mode="exact")
        with cpu_config(target, 2):
            run(ADAM, arrays, backend="native")
        assert_same(arrays, expected)
        assert np.isnan(arrays[0][0][:4].astype(np.float32)).all()
    # overflow: SGD pushes the largest finite values past the top
    for dtype in (np.float16, BF16):
        top = np.float32(np.finfo(np.float16).max if dtype == np.float16 else ml_dtypes.finfo(BF16).max)
        p = np.full(33, top, np.float32).astype(dtype)
        g = np.full(33, -top * np.float32(0.5), np.float32)
        ref = p.copy()
        with cpu_config(target, 1):
            fusedopt.sgd_(p, g, lr=0.5, backend="native")
        with np.errstate(all="ignore"):
            fusedopt.reference.sgd_(ref, g, lr=0.5, mode="exact")
        assert np.isposinf(p.astype(np.float32)).all() and np.array_equal(bits(p), bits(ref))


def test_norm_and_nonfinite_count_of_16_bit_grads():
    """adaptive_sgd_'s global norm over bfloat16/float16 gradients squares their float32
    values in the fixed blocking: the reference's bits at every thread count;
    skip_if_nonfinite counts their NaN and inf and writes nothing."""
    case = Case("asgd", "adaptive_sgd_", dict(lr=0.5, momentum=0.9))
    for combo in [("bf16", "bf16", "bf16"), ("f32", "f16", "f32")]:
        arrays = make_arrays(case, combo, [70001, 3, 0, 65537], rng_for("norm", combo), steps=1)
        expected = _copy(arrays)
        (ref,) = run(case, expected, mode="exact")
        for threads in THREADS:
            got = _copy(arrays)
            with cpu_config(None, threads):
                (r,) = run(case, got, backend="native")
            assert (r.lr.hex(), r.grad_norm.hex()) == (ref.lr.hex(), ref.grad_norm.hex())
            assert_same(got, expected)
        params, states, grads = arrays
        grads[0][3][[5, 70]] = np.array([np.inf, np.nan], np.float32).astype(grads[0][3].dtype)
        before = _copy(arrays)
        status = fusedopt.adam_(params, grads[0], [np.zeros_like(p, DT[combo[2]]) for p in params],
                                [np.zeros_like(p, DT[combo[2]]) for p in params], step=1,
                                skip_if_nonfinite=True)
        assert status.skipped and status.nonfinite == 2
        assert_same(arrays, before)


# --------------------------------------------------------------------------------------
_BAD = [
    # (params, grads, states), the argument named, what the message says
    (("f64", "f64", "bf16"), "exp_avgs", "with float64 params the states must be float64"),
    (("f64", "f32", "f64"), "grads", "with float64 params the grads must be float64"),
    (("f32", "f64", "f32"), "grads", "grads must be float32 or bfloat16 or float16"),
    (("bf16", "f16", "f32"), "grads", "grads must be float32 or bfloat16"),
    (("f16", "bf16", "f32"), "grads", "grads must be float32 or float16"),
    (("f32", "f32", "f16"), "exp_avgs", "states must be float32 or bfloat16"),
    (("bf16", "bf16", "f64"), "exp_avgs", "states must be float32 or bfloat16"),
]


@pytest.mark.parametrize(("combo", "arg", "says"), _BAD, ids=[_combo_id(c) for c, _, _ in _BAD])
def test_refused_combinations_name_the_argument(combo, arg, says):
    arrays = make_arrays(ADAM, combo, [5, 6], rng_for("refusal", combo), steps=1)
    before = _copy(arrays)
    with pytest.raises(TypeError, match=rf"adam_: {arg}\[0\] has dtype .*{says}"):
        run(ADAM, arrays)
    with pytest.raises(TypeError, match=rf"{arg}\[0\]"):
        run(ADAM, arrays, mode="exact")
    assert_same(arrays, before)


def test_refused_mixtures_inside_an_argument():
    arrays = make_arrays(ADAM, ("bf16", "bf16", "bf16"), [5, 6], rng_for("mixture"), steps=1)
    params, states, grads = arrays
    before = _copy(arrays)
    states["exp_avg_sqs"] = [s.astype(np.float32) for s in states["exp_avg_sqs"]]
    with pytest.raises(TypeError, match=r"exp_avg_sqs\[0\] has dtype float32 but exp_avgs\[0\] has "
                                        r"bfloat16; every state of one call shares one dtype"):
        run(ADAM, arrays)
    states["exp_avg_sqs"] = before[1]["exp_avg_sqs"]
    grads[0][1] = grads[0][1].astype(np.float32)
    with pytest.raises(TypeError, match=r"grads\[1\] has dtype float32 but grads\[0\] has bfloat16"):
        run(ADAM, arrays)
    assert_same(arrays, before)


# --------------------------------------------------------------------------------------
@pytest.mark.skipif(not HAVE_TORCH, reason="torch is not installed")
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_torch_16_bit_tensors_in_place(dtype):
    """torch bfloat16/float16 CPU tensors are updated where they lie (no copy), with the
    bits of the same step on NumPy arrays."""
    import torch

    tdt = getattr(torch, dtype)
    rng = rng_for("torch", dtype)
    host = [nonzero(rng, n, np.float32) for n in (7, 1000, 33)]
    params = [torch.nn.Parameter(torch.from_numpy(h).to(tdt)) for h in host]
    grads = [torch.from_numpy(nonzero(rng, h.size, np.float32)).to(tdt) for h in host]
    m = [torch.zeros_like(p, dtype=torch.bfloat16) for p in params]
    v = [torch.zeros_like(p, dtype=torch.bfloat16) for p in params]
    npdt = BF16 if dtype == "bfloat16" else np.float16
    ref = ([h.astype(npdt) for h in host],
           {"exp_avgs": [np.zeros(h.size, BF16) for h in host],
            "exp_avg_sqs": [np.zeros(h.size, BF16) for h in host]},
           [[(g.view(torch.int16).numpy().view(npdt) if dtype == "bfloat16" else g.numpy()).copy()
             for g in grads]])
    addresses = [p.data_ptr() for p in params]
    with torch.no_grad():
        fusedopt.adam_(params, grads, m, v, step=1, lr=0.01, weight_decay=0.01, backend="native")
    run(ADAM, ref, mode="exact")
    assert [p.data_ptr() for p in params] == addresses
    for p, r in zip(params, ref[0]):
        assert np.array_equal(p.detach().view(torch.int16).numpy().view(np.uint16), bits(r))
    for t, r in zip(m, ref[1]["exp_avgs"]):
        assert np.array_equal(t.view(torch.int16).numpy().view(np.uint16), bits(r))
    # the reference takes the same tensors
    again = [p.detach().clone() for p in params]
    fusedopt.reference.adam_(again, grads, [x.clone() for x in m], [x.clone() for x in v], step=2,
                             lr=0.01, mode="exact")
    assert not all(torch.equal(a, p) for a, p in zip(again, params))


# --------------------------------------------------------------------------------------
def test_optimizer_state_dtype():
    params = [nonzero(rng_for("opt"), n, np.float32).astype(BF16) for n in (3, 100)]
    opt = fusedopt.optim.Adam([p.copy() for p in params], lr=0.01)
    assert opt.state_dtype == np.float32  # the default for 16-bit params
    assert all(s.dtype == np.float32 for s in opt.state_dict()["state"]["exp_avgs"])
    low = fusedopt.optim.Adam([p.copy() for p in params], lr=0.01, state_dtype="bfloat16")
    assert low.state_dtype == BF16
    grads = [nonzero(rng_for("opt grads"), p.size, np.float32).astype(BF16) for p in params]
    for o in (opt, low):
        o.step(grads)
    # the functional call on the same arrays, with the same bits
    ref = ([p.copy() for p in params], {"exp_avgs": [np.zeros(p.size, BF16) for p in params],
                                        "exp_avg_sqs": [np.zeros(p.size, BF16) for p in params]},
           [grads])
    run(Case("adam", "adam_", dict(lr=0.01)), ref, mode="exact")
    assert all(np.array_equal(bits(a), bits(b)) for a, b in zip(low.params, ref[0]))
    assert fusedopt.optim.Adam([np.zeros(3, np.float32)], lr=0.1).state_dtype == np.float32
    with pytest.raises(TypeError, match="state_dtype bfloat16 does not go with float64 params"):
        fusedopt.optim.Adam([np.zeros(3)], lr=0.1, state_dtype="bfloat16")
    with pytest.raises(TypeError, match="state_dtype float16 does not go with bfloat16 params"):
        fusedopt.optim.SGD(params, lr=0.1, momentum=0.9, state_dtype=np.float16)


def test_float64_reference_mode_takes_16_bit_arrays():
    """The float64 reference (the drift baseline) widens 16-bit arrays to float64 and
    rounds back: within a rounding of the exact mode's results."""
    arrays = make_arrays(ADAM, ("bf16", "f32", "bf16"), [1000], rng_for("f64 mode"), steps=1)
    exact, f64 = _copy(arrays), _copy(arrays)
    run(ADAM, exact, mode="exact")
    run(ADAM, f64, mode="float64")
    a, b = exact[0][0].astype(np.float64), f64[0][0].astype(np.float64)
    assert np.allclose(a, b, rtol=2**-7, atol=0)


@pytest.mark.skipif(not HAVE_TORCH, reason="torch is not installed")
def test_torch_adapter_steps_a_bfloat16_model():
    """fusedopt.torch.AdamW on a bfloat16 model keeps torch's state layout (states in the
    params' dtype) and steps with the bits of the functional call on the same tensors."""
    import fusedopt.torch as ft
    import torch

    torch.manual_seed(0)
    model = torch.nn.Linear(33, 17).to(torch.bfloat16)
    params = [p.detach().clone() for p in model.parameters()]
    states = [[torch.zeros_like(p) for p in params] for _ in range(2)]
    opt = ft.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    x = torch.randn(8, 33, dtype=torch.bfloat16)
    for step in (1, 2):
        opt.zero_grad()
        model(x).float().square().mean().backward()
        grads = [p.grad.clone() for p in model.parameters()]
        opt.step()
        fusedopt.adamw_(params, grads, *states, step=step, lr=1e-2, weight_decay=0.1)
    assert all(torch.equal(a.view(torch.int16), b.view(torch.int16))
               for a, b in zip(model.parameters(), params))
    assert {v.dtype for s in opt.state.values() for k, v in s.items() if k != "step"} == {torch.bfloat16}
