"""Lion against the paper's formulas, and its sign at zero and NaN.

The float64 Lion below is written from the pseudo-code of Chen et al. 2023, "Symbolic
Discovery of Optimization Algorithms" (Program 1; optax.lion is the same), independently
of fusedopt.reference:

    update = sign(beta1 * m + (1 - beta1) * g)
    p = p - lr * (update + weight_decay * p)
    m = beta2 * m + (1 - beta2) * g

The kernels run 50 steps on float32 and float64 arrays from the same start and must stay
close to it. As in tests/test_drift.py, a float32 direction that rounds to the other side
of zero than the float64 one flips a step (2*lr, not a rounding error): the params are
compared where the float64 direction stayed clear of zero, which is almost everywhere.
"""

from __future__ import annotations

import fusedopt
import fusedopt.optim
import fusedopt.reference
import numpy as np
import pytest
from conftest import CASES, DTYPES, rng_for
from test_drift import LION_NEAR_ZERO

STEPS = 50
SIZES = [1, 33, 4097]
# Relative to the largest |value|. float64: a few roundings a step, 50 steps. float32: as
# the drift table's Lion row (the rounded decay factor applied 50 times, plus roundings).
TOLERANCE = {"f32": 2e-5, "f64": 1e-13}
LION_CASES = [c for c in CASES if c.rule == "lion"]


def paper_lion(p, m, grads, *, lr, betas, weight_decay, maximize):
    """The paper's Lion in float64 over all ``grads``; returns (p, m, near) with ``near``
    the elements whose direction came within LION_NEAR_ZERO of zero at some step."""
    b1, b2 = betas
    p, m = p.astype(np.float64), m.astype(np.float64)
    near = np.zeros(p.shape, bool)
    for g in grads:
        g = g.astype(np.float64)
        if maximize:
            g = -g
        c = b1 * m + (1 - b1) * g
        near |= np.abs(c) <= LION_NEAR_ZERO
        p = p - lr * (np.sign(c) + weight_decay * p)
        m = b2 * m + (1 - b2) * g
    return p, m, near


def _rel(a, b):
    return float(np.max(np.abs(a.astype(np.float64) - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("dt", list(DTYPES))
@pytest.mark.parametrize("case", LION_CASES, ids=lambda c: c.id)
def test_matches_the_paper_for_50_steps(case, dt):
    dtype = DTYPES[dt]
    rng = rng_for("lion-paper", case.id)
    params = [rng.uniform(-2, 2, n).astype(dtype) for n in SIZES]
    grads = [[rng.uniform(-2, 2, n).astype(dtype) for n in SIZES] for _ in range(STEPS)]
    p0 = [p.copy() for p in params]
    exp_avgs = [np.zeros(n, dtype) for n in SIZES]
    for g in grads:
        fusedopt.lion_(params, g, exp_avgs, backend="native", **case.kwargs)
    for i in range(len(SIZES)):
        want_p, want_m, near = paper_lion(p0[i], np.zeros(SIZES[i]), [g[i] for g in grads],
                                          **case.kwargs)
        assert _rel(exp_avgs[i], want_m) <= TOLERANCE[dt], f"exp_avgs[{i}]"
        if dt == "f64":
            # Same operations for the direction, so the same signs: no element is left out.
            near[...] = False
        assert np.count_nonzero(near) <= 0.01 * near.size, f"params[{i}]"
        clear = ~near
        # One step the wrong way is 2*lr = 0.02 off, 500x the tolerance (|p| < 3).
        assert _rel(params[i][clear], want_p[clear]) <= TOLERANCE[dt], f"params[{i}]"


def _specials(dtype):
    """p, g, m over the values where sign matters: zeros of both signs, NaN, infinities
    and the smallest subnormal, in every combination of g and m."""
    values = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 1.0, -1.0,
                       np.finfo(dtype).smallest_subnormal, -np.finfo(dtype).smallest_subnormal],
                      dtype=dtype)
    g, m = (a.ravel() for a in np.meshgrid(values, values))
    p = np.resize(np.array([-0.0, 0.0, 0.5, -0.5], dtype=dtype), g.size)
    return p, g.copy(), m.copy()


def _bits(a):
    return a.view({4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


@pytest.mark.parametrize("dt", list(DTYPES))
@pytest.mark.parametrize("case", LION_CASES, ids=lambda c: c.id)
def test_zeros_and_nonfinite_values_match_the_reference(case, dt):
    p, g, m = _specials(DTYPES[dt])
    p_ref, m_ref = p.copy(), m.copy()
    with np.errstate(all="ignore"):
        fusedopt.lion_(p, g, m, backend="native", **case.kwargs)
        fusedopt.reference.lion_(p_ref, g, m_ref, **case.kwargs)
    # NaN where the reference has NaN, the same bits everywhere else (the sign of a NaN
    # made from two NaNs depends on the operand order the compiler picks; the contract, as
    # tests/test_nonfinite.py checks it, leaves it open).
    for got, want in ((p, p_ref), (m, m_ref)):
        assert np.array_equal(np.isnan(got), np.isnan(want))
        keep = ~np.isnan(want)
        assert np.array_equal(_bits(got)[keep], _bits(want)[keep])


@pytest.mark.parametrize("dt", list(DTYPES))
def test_sign_keeps_zeros_and_nan(dt):
    """sign(+0) = +0 and sign(-0) = -0 (p - lr*(-0) turns p = -0 into +0), sign(NaN) = NaN,
    sign(+-inf) = +-1."""
    dtype = DTYPES[dt]
    #            c = +0   c = -0  c = NaN  c = inf  c = -inf
    g = np.array([0.0, -0.0, np.nan, np.inf, -np.inf], dtype)
    p = np.array([-0.0, -0.0, 1.0, 1.0, 1.0], dtype)
    m = np.zeros_like(g)
    m[1] = -0.0  # b1*(-0) + (1-b1)*(-0) = -0
    with np.errstate(all="ignore"):
        fusedopt.lion_(p, g, m, lr=0.25, backend="native")
    want = np.array([-0.0, 0.0, np.nan, 0.75, 1.25], dtype)
    assert np.array_equal(_bits(p), _bits(want))


def test_optimizer_steps_are_the_functional_calls():
    rng = rng_for("lion-optim")
    params = [rng.uniform(-1, 1, n).astype(np.float32) for n in SIZES]
    hyper = dict(lr=1e-3, betas=(0.9, 0.99), weight_decay=0.5, maximize=True)
    opt = fusedopt.optim.Lion([p.copy() for p in params], **hyper)
    exp_avgs = [np.zeros_like(p) for p in params]
    for _ in range(5):
        grads = [rng.uniform(-1, 1, p.size).astype(np.float32) for p in params]
        opt.step(grads)
        fusedopt.lion_(params, grads, exp_avgs, **hyper)
    assert opt.step_count == 5
    assert opt.hyperparameters == hyper
    for a, b in zip(opt.params, params):
        assert np.array_equal(_bits(a), _bits(b))
    for a, b in zip(opt.state["exp_avgs"], exp_avgs):
        assert np.array_equal(_bits(a), _bits(b))


def test_defaults():
    p = np.ones(3, np.float32)
    m = np.zeros(3, np.float32)
    fusedopt.lion_(p, np.array([1.0, -1.0, 0.0], np.float32), m)
    # lr = 1e-4 (in float32), betas = (0.9, 0.99) as in the paper: m = 0.01 * g
    assert np.array_equal(p, np.float32(1) - np.float32(1e-4) * np.array([1, -1, 0], np.float32))
    assert np.array_equal(m, np.float32(0.01) * np.array([1, -1, 0], np.float32))
    assert fusedopt.optim.Lion([p]).hyperparameters == dict(lr=1e-4, betas=(0.9, 0.99),
                                                            weight_decay=0.0, maximize=False)
