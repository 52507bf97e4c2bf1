"""Adafactor: its factored states, its per-tensor sums and torch parity.

The kernel is a per-tensor multi-pass driver (csrc/cpu/driver.cpp), so besides the generic
grids (which reach its vector form from its description) this file checks the factored
form: bit for bit against the exact reference on every CPU target and thread count, over
shapes that cross the norm blocks and the thread split, in every storage combination
(16-bit params, grads and states, rounded to nearest or stochastically); trajectories against
torch.optim.Adafactor(foreach=False); refusals that write nothing; NaN and empty tensors.
"""

from __future__ import annotations

import copy
import itertools

import fusedopt
import fusedopt.reference
import numpy as np
import pytest
from conftest import HAVE_TORCH, SUPPORTED_TARGETS, cpu_config, rng_for

RULE = fusedopt.rules.RULES["adafactor"]
STATES = RULE.states  # row_vars, col_vars, variances

# Vectors and 0-d tensors (a full variance), matrices and batches of matrices (row and
# column factors): rows and columns of 1, a row longer than a norm block (65,536), and
# tensors large enough to be split across threads (32,768 elements a thread).
SHAPES = [(), (1,), (7,), (33,), (1, 1), (5, 1), (1, 6), (4, 5), (3, 70), (2, 3, 17),
          (2, 1, 3, 4), (2, 70_000), (300, 301), (3, 129, 130), (100_003,)]


def _signed(rng, shape, dtype):
    """Values with |x| in [0.1, 2.0), as an array (0-d too); zeros would hide skipped work."""
    return np.asarray(rng.uniform(0.1, 2.0, shape) * rng.choice((-1.0, 1.0), shape), dtype)


def make(shapes, dtype, rng, *, steps=3, zero_states=False):
    """(params, states by argument, grads per step) for params of ``shapes``."""
    params = [_signed(rng, s, dtype) for s in shapes]
    states = {name: [] for name in STATES}
    for p in params:
        for name, shape in zip(STATES, RULE.state_shapes(p.shape)):
            value = None
            if shape is not None:
                value = (np.zeros(shape, dtype) if zero_states
                         else np.asarray(rng.uniform(0.5, 2.0, shape), dtype))
            states[name].append(value)
    grads = [[_signed(rng, s, dtype) for s in shapes] for _ in range(steps)]
    return params, states, grads


def copied(params, states):
    return ([p.copy() for p in params],
            {n: [None if a is None else a.copy() for a in v] for n, v in states.items()})


def assert_same_bits(got, want, where):
    assert got.dtype == want.dtype and got.shape == want.shape, where
    assert np.isfinite(want.astype(np.float64)).all(), f"{where}: the reference is not finite"
    bits = {2: np.uint16, 4: np.uint32, 8: np.uint64}[got.dtype.itemsize]
    same = got.view(bits) == want.view(bits)
    if not np.all(same):
        i = int(np.flatnonzero(~same)[0])
        pytest.fail(f"{where}: {int((~same).sum())} of {got.size} differ; first at {i}: "
                    f"{got.flat[i]!r} != {want.flat[i]!r}")


def assert_all_same_bits(a, b):
    (pa, sa), (pb, sb) = a, b
    for i, (x, y) in enumerate(zip(pa, pb)):
        assert_same_bits(x, y, f"params[{i}]")
    for name in STATES:
        for i, (x, y) in enumerate(zip(sa[name], sb[name])):
            assert (x is None) == (y is None)
            if x is not None:
                assert_same_bits(x, y, f"{name}[{i}]")


HYPER = [
    dict(lr=0.01),
    dict(lr=0.05, weight_decay=0.1, eps=(1e-6, 1e-2), d=2.0, beta2_decay=-0.6),
    dict(lr=0.02, maximize=True, weight_decay=0.01),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("target", SUPPORTED_TARGETS)
def test_bitwise_equal_to_the_exact_reference(target, threads, dtype):
    for k, hyper in enumerate(HYPER):
        rng = rng_for("adafactor-bitwise", np.dtype(dtype).name, k)
        params, states, grads = make(SHAPES, dtype, rng)
        ref = copied(params, states)
        with cpu_config(target, threads):
            for step, g in enumerate(grads, start=1):
                fusedopt.adafactor_(params, g, *states.values(), step=step, backend="native", **hyper)
        for step, g in enumerate(grads, start=1):
            fusedopt.reference.adafactor_(ref[0], g, *ref[1].values(), step=step, **hyper)
        assert_all_same_bits((params, states), ref)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_big_tensors_split_and_small_ones_side_by_side_give_the_reference_bits(threads):
    """Tensors of 2^20 elements or more run each pass split across threads; the others run
    whole, several at once on different threads (cpu/driver.cpp): the reference's bits."""
    shapes = [(1030, 1024), (5, 1), (3, 70), (1 << 20,), (300, 301), (7,), (2, 3, 17)]
    rng = rng_for("adafactor-big", threads)
    params, states, grads = make(shapes, np.float32, rng, steps=2)
    ref = copied(params, states)
    with cpu_config(SUPPORTED_TARGETS[-1], threads):
        for step, g in enumerate(grads, start=1):
            fusedopt.adafactor_(params, g, *states.values(), step=step, backend="native", lr=0.02)
    for step, g in enumerate(grads, start=1):
        fusedopt.reference.adafactor_(ref[0], g, *ref[1].values(), step=step, lr=0.02)
    assert_all_same_bits((params, states), ref)


# Shapes for the storage grid: vectors, matrices, a batch of them, a row longer than a norm
# block and tensors split across threads (fewer than SHAPES: the grid is larger).
STORED_SHAPES = [(7,), (33,), (4, 5), (3, 70), (2, 3, 17), (2, 70_000), (300, 301), (100_003,)]


def _stored_ids():
    try:
        from test_mixed_precision import COMBOS
    except pytest.skip.Exception:  # no ml_dtypes: no 16-bit combinations to run
        return []
    return ["p{}-g{}-s{}".format(*c) for c in COMBOS]


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize("combo", _stored_ids())
def test_16bit_storage_bitwise_equal_to_the_exact_reference(combo, rounding):
    """Every storage combination of the other rules (tests/test_mixed_precision.py): the
    arithmetic in float32, the factors read back as stored, the same bits as the exact
    reference on every target and thread count; stochastic rounding keyed by the seed."""
    from test_mixed_precision import COMBOS, DT

    p_dt, g_dt, s_dt = (DT[c] for c in COMBOS[_stored_ids().index(combo)])
    extra = dict(rounding=rounding, state_rounding=rounding, seed=11)
    for k, hyper in enumerate(HYPER):
        rng = rng_for("adafactor-16bit", combo, k)
        params, states, grads = make(STORED_SHAPES, np.float32, rng, steps=2)
        params = [p.astype(p_dt) for p in params]
        states = {n: [None if a is None else a.astype(s_dt) for a in v] for n, v in states.items()}
        grads = [[g.astype(g_dt) for g in step] for step in grads]
        ref = copied(params, states)
        for step, g in enumerate(grads, start=1):
            fusedopt.reference.adafactor_(ref[0], g, *ref[1].values(), step=step, **hyper, **extra)
        for target, threads in itertools.product(SUPPORTED_TARGETS, (1, 2, 3)):
            got = copied(params, states)
            with cpu_config(target, threads):
                for step, g in enumerate(grads, start=1):
                    fusedopt.adafactor_(got[0], g, *got[1].values(), step=step, backend="native",
                                        **hyper, **extra)
            assert_all_same_bits(got, ref)


def test_stochastic_rounding_depends_on_the_seed():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    bf16 = ml_dtypes.bfloat16
    rng = rng_for("adafactor-seed")
    params, states, grads = make([(40, 50), (300,)], np.float32, rng, steps=1)
    params = [p.astype(bf16) for p in params]
    states = {n: [None if a is None else a.astype(bf16) for a in v] for n, v in states.items()}
    runs = []
    for seed in (1, 1, 2):
        got = copied(params, states)
        fusedopt.adafactor_(got[0], grads[0], *got[1].values(), step=3, rounding="stochastic",
                            state_rounding="stochastic", seed=seed)
        runs.append([a.view(np.uint16) for a in [*got[0], got[1]["row_vars"][0], got[1]["variances"][1]]])
    assert all(np.array_equal(a, b) for a, b in zip(runs[0], runs[1]))
    assert not all(np.array_equal(a, b) for a, b in zip(runs[0], runs[2]))


def test_one_call_equals_a_call_per_tensor():
    """A list is one fused call; its tensors are independent of each other."""
    rng = rng_for("adafactor-split")
    params, states, grads = make(SHAPES[:10], np.float32, rng, steps=1)
    single = copied(params, states)
    fusedopt.adafactor_(params, grads[0], *states.values(), step=4)
    for i, g in enumerate(grads[0]):
        fusedopt.adafactor_(single[0][i], g, *(single[1][n][i] for n in STATES), step=4)
    assert_all_same_bits((params, states), single)


def test_sums_are_exact_as_documented():
    """A small matrix by hand, in float64: the row and column factors are the means of
    g*g at step 1 (beta2_t = 0), and the update is clipped to RMS d."""
    p = np.array([[1.0, -2.0, 3.0], [0.5, 0.25, -1.0]])
    g = np.array([[1.0, 2.0, 2.0], [3.0, 0.0, 4.0]])
    row, col = np.zeros((2, 1)), np.zeros((1, 3))
    p0 = p.copy()
    fusedopt.adafactor_(p, g, row, col, None, step=1, lr=0.1, eps=(1e-30, 1e-3))
    assert row.ravel().tolist() == [3.0, 25.0 / 3.0]
    assert col.ravel().tolist() == [5.0, 2.0, 10.0]
    est = row * col / row.mean()
    u = g / np.sqrt(est)
    alpha = np.sqrt(np.mean(p0 * p0)) * 0.1
    denom = max(1.0, np.sqrt(np.mean(u * u)))
    np.testing.assert_allclose(p, p0 - alpha / denom * u, rtol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_nan_propagates_as_the_reference_says(dtype):
    rng = rng_for("adafactor-nan")
    params, states, grads = make([(9,), (4, 6)], dtype, rng, steps=1)
    grads[0][0][3] = np.nan
    grads[0][1][2, 1] = np.nan
    ref = copied(params, states)
    fusedopt.adafactor_(params, grads[0], *states.values(), step=2)
    with np.errstate(invalid="ignore"):
        fusedopt.reference.adafactor_(ref[0], grads[0], *ref[1].values(), step=2)
    for got, want in zip([*params, *states["row_vars"][1:], *states["variances"][:1]],
                         [*ref[0], *ref[1]["row_vars"][1:], *ref[1]["variances"][:1]]):
        assert np.array_equal(np.isnan(got), np.isnan(want))
        assert np.array_equal(got[~np.isnan(got)], want[~np.isnan(want)])
    # A vector's NaN stays in its element (the norm is NaN, so the clipping is off, as
    # Python's max in torch); a matrix's reaches every element through the row mean.
    assert np.isnan(params[0]).sum() == 1 and np.isnan(params[1]).all()


def test_skip_if_nonfinite_writes_nothing():
    rng = rng_for("adafactor-skip")
    params, states, grads = make([(9,), (4, 6)], np.float32, rng, steps=1)
    grads[0][1][3, 2] = np.inf
    before = copied(params, states)
    status = fusedopt.adafactor_(params, grads[0], *states.values(), step=2, skip_if_nonfinite=True)
    assert status.skipped and status.nonfinite == 1
    assert_all_same_bits((params, states), before)
    opt = fusedopt.optim.Adafactor(params, skip_if_nonfinite=True)
    assert opt.step(grads[0]).skipped and opt.step_count == 0


def test_empty_tensors_are_skipped():
    rng = rng_for("adafactor-empty")
    params, states, grads = make([(0,), (0, 5), (3, 0), (2, 0, 4), (6,)], np.float32, rng, steps=1)
    before = copied(params, states)
    fusedopt.adafactor_(params, grads[0], *states.values(), step=1)
    for i in range(4):
        assert params[i].size == 0
    assert not np.array_equal(params[4], before[0][4])
    assert fusedopt.adafactor_([], [], [], [], [], step=1) is None


def _bad_cases():
    """The factored layout's own refusals, with their messages in full (the generated grid of
    tests/test_bad_input.py breaks every argument of adafactor_ besides)."""
    f32 = np.float32
    m = np.ones((3, 4), f32)
    v = np.ones(5, f32)
    row, col = np.zeros((3, 1), f32), np.zeros((1, 4), f32)
    return {
        "row-shape": (([m], [m], [np.zeros((3,), f32)], [col], [None]),
                      ValueError, r"row_vars\[0\] has shape \(3,\) but params\[0\] of shape \(3, 4\) "
                                  r"needs shape \(3, 1\)"),
        "col-transposed": (([m], [m], [row], [np.zeros((4, 1), f32)], [None]),
                           ValueError, r"col_vars\[0\] .* needs shape \(1, 4\)"),
        "variance-for-matrix": (([m], [m], [row], [col], [np.zeros((3, 4), f32)]),
                                ValueError, r"variances\[0\] must be None"),
        "missing-variance": (([m, v], [m, v], [row, None], [col, None], [None, None]),
                             ValueError, r"variances\[1\] is None, but params\[1\] of shape \(5,\) "
                                         r"needs one of shape \(5,\)"),
        "factors-for-vector": (([v], [v], [np.zeros(5, f32)], [None], [np.zeros(5, f32)]),
                               ValueError, r"row_vars\[0\] must be None"),
        "state-dtype": (([m], [m], [row.astype(np.float64)], [col], [None]),
                        TypeError, r"row_vars\[0\] has dtype float64 but params\[0\] has float32"),
        "grad-dtype": (([m], [m.astype(np.float64)], [row], [col], [None]),
                       TypeError, r"grads\[0\] has dtype float64 but params\[0\] has float32"),
        "half-states": (([m.astype(np.float16)], [m.astype(np.float16)], [row.astype(np.float16)],
                         [col.astype(np.float16)], [None]),
                        TypeError, r"row_vars\[0\] has dtype float16 but params\[0\] has float16; "
                                   r"with float16 params the states must be float32 or bfloat16"),
        "length": (([m, v], [m, v], [row], [col, None], [None, v.copy()]),
                   ValueError, r"row_vars has 1 arrays but params has 2"),
        "grad-shape": (([m], [np.ones((4, 3), f32)], [row], [col], [None]),
                       ValueError, r"grads\[0\] has shape \(4, 3\) but params\[0\] has shape \(3, 4\)"),
    }


@pytest.mark.parametrize("backend", ["native", "reference"])
@pytest.mark.parametrize("name", list(_bad_cases()))
def test_bad_input_is_refused_with_nothing_written(name, backend):
    args, error, message = _bad_cases()[name]
    # A valid tensor first in the same call: nothing is written to it either.
    arrays = [a for role in args for a in role if a is not None]
    before = [a.copy() for a in arrays]
    with pytest.raises(error, match=message):
        fusedopt.adafactor_(*args, step=1, backend=backend)
    for a, b in zip(arrays, before):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("hyper, error", [
    (dict(beta2_decay=0.1), ValueError), (dict(d=0.5), ValueError),
    (dict(eps=(None,)), TypeError), (dict(eps=(-1.0, 1e-3)), ValueError),
    (dict(lr=-1.0), ValueError), (dict(maximize=1), TypeError), (dict(step=0), ValueError),
])
def test_bad_hyperparameters_are_refused(hyper, error):
    p = np.ones(3, np.float32)
    with pytest.raises(error):
        fusedopt.adafactor_(p, p.copy(), None, None, np.zeros(3, np.float32), **{"step": 1, **hyper})
    assert (p == 1).all()


def test_optimizer_steps_as_the_functional_call():
    rng = rng_for("adafactor-optim")
    params, states, grads = make([(5,), (4, 6), (2, 3, 4)], np.float32, rng, steps=4,
                                 zero_states=True)
    own = [p.copy() for p in params]
    opt = fusedopt.optim.Adafactor(own, lr=0.02, weight_decay=0.1)
    assert [None if a is None else a.shape for a in opt.state["row_vars"]] == [None, (4, 1), (2, 3, 1)]
    for step, g in enumerate(grads, start=1):
        opt.step(g)
        fusedopt.adafactor_(params, g, *states.values(), step=step, lr=0.02, weight_decay=0.1)
    assert_all_same_bits((own, opt.state), (params, states))
    # state_dict round trip: a new optimizer goes on with the same bits.
    saved = opt.state_dict()
    again = fusedopt.optim.Adafactor([p.copy() for p in own], lr=0.02, weight_decay=0.1)
    again.load_state_dict(saved)
    opt.step(grads[0])
    again.step(grads[0])
    assert_all_same_bits((own, opt.state), (again.params, again.state))
    variances = [saved["state"]["variances"][0], np.zeros(3, np.float32), None]
    bad = dict(saved, state=dict(saved["state"], variances=variances))
    with pytest.raises(ValueError, match=r"variances\[1\] must be None"):
        again.load_state_dict(bad)


# --------------------------------------------------------------------------------------
# torch parity
# --------------------------------------------------------------------------------------
TORCH_HYPER = {
    "default": {},
    "wd": dict(weight_decay=0.1),
    "maximize": dict(maximize=True),
    "custom": dict(lr=0.05, eps=(1e-5, 1e-2), d=2.0, beta2_decay=-0.6, weight_decay=0.02),
}
TORCH_SHAPES = {"vector": [(64,)], "matrix": [(16, 24)], "3d": [(3, 8, 10)]}


def _torch_trajectory(torch, cls, shapes, hyper, steps, seed):
    """Params and states after ``steps`` steps of ``cls`` on fixed random gradients."""
    rng = rng_for("adafactor-torch", seed)
    params = [torch.nn.Parameter(torch.from_numpy(
        rng.uniform(-1.0, 1.0, s).astype(np.float32))) for s in shapes]
    grads = [[torch.from_numpy(rng.uniform(-1.0, 1.0, s).astype(np.float32)) for s in shapes]
             for _ in range(steps)]
    extra = dict(foreach=False) if cls.__module__.startswith("torch") else {}
    opt = cls(params, **hyper, **extra)
    for g in grads:
        for p, gi in zip(params, g):
            p.grad = gi.clone()
        opt.step()
    return params, opt


@pytest.mark.skipif(not HAVE_TORCH, reason="torch is not installed")
@pytest.mark.parametrize("shapes", list(TORCH_SHAPES))
@pytest.mark.parametrize("hyper", list(TORCH_HYPER))
def test_trajectory_matches_torch(shapes, hyper):
    import fusedopt.torch
    import torch

    args = (TORCH_SHAPES[shapes], TORCH_HYPER[hyper], 50, f"{shapes}-{hyper}")
    want, torch_opt = _torch_trajectory(torch, torch.optim.Adafactor, *args)
    got, opt = _torch_trajectory(torch, fusedopt.torch.Adafactor, *args)
    for p, q in zip(got, want):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=1e-5, atol=1e-6)
        st, tt = opt.state[p], torch_opt.state[q]
        assert sorted(st) == sorted(tt)
        for key in tt:
            np.testing.assert_allclose(st[key].numpy(), tt[key].numpy(), rtol=1e-5, atol=1e-12)


@pytest.mark.skipif(not HAVE_TORCH, reason="torch is not installed")
def test_torch_state_dict_loads_both_ways():
    import fusedopt.torch
    import torch

    args = ([(5,), (4, 6), (2, 3, 4)], dict(weight_decay=0.05), 3, "state-dict")
    ours, opt = _torch_trajectory(torch, fusedopt.torch.Adafactor, *args)
    theirs, torch_opt = _torch_trajectory(torch, torch.optim.Adafactor, *args)
    # Each loads the other's checkpoint (copies: torch's loading may keep the tensors it is
    # given), then both take the same step.
    opt.load_state_dict(copy.deepcopy(torch_opt.state_dict()))
    torch_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    for q, p in zip(theirs, ours):
        with torch.no_grad():
            p.copy_(q)
        g = torch.linspace(-1.0, 1.0, q.numel()).reshape(q.shape)
        p.grad, q.grad = g.clone(), g.clone()
    opt.step()
    torch_opt.step()
    for p, q in zip(ours, theirs):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=1e-5, atol=1e-7)
        assert float(opt.state[p]["step"]) == float(torch_opt.state[q]["step"]) == 4.0
    # A checkpoint whose factor has the wrong shape is refused before anything is written.
    bad = torch_opt.state_dict()
    bad["state"][1]["row_var"] = torch.zeros(4, 6)
    with pytest.raises(ValueError, match=r"row_var.*needs \(4, 1\)"):
        opt.load_state_dict(bad)
