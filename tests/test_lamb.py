"""LAMB's own checks: its per-tensor norms (csrc/math/lamb.h). The generic grids reach it
from its description (fusedopt/rules/lamb.py); here are what only a trust ratio has:
bits that must not move with the threads' split of a tensor, the ratio's special cases,
and the paper's formula over many steps."""

from __future__ import annotations

import fusedopt
import fusedopt.reference
import numpy as np
import pytest
from conftest import SUPPORTED_TARGETS, Case, cpu_config, nonzero, rng_for

NORM_BLOCK = 65536
# Sizes far apart: with 2 or 3 threads the large tensors are split across threads, inside a
# norm block and across blocks; the small ones fall inside one thread's range.
SIZES = [0, 1, 31, 33, 1000, NORM_BLOCK + 7, 3 * NORM_BLOCK + 5, 0, 17]
HYPER = dict(lr=0.01, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.02)


def _arrays(dtype, sizes, key):
    rng = rng_for("lamb", key, np.dtype(dtype).name, *sizes)
    params = [nonzero(rng, n, dtype) for n in sizes]
    m = [nonzero(rng, n, dtype) for n in sizes]
    v = [nonzero(rng, n, dtype, 0.5, 2.0, signed=False) for n in sizes]
    grads = [[nonzero(rng, n, dtype) for n in sizes] for _ in range(3)]
    return params, m, v, grads


def _run(fn, params, m, v, grads, **kwargs):
    for k, g in enumerate(grads):
        fn(params, g, m, v, step=k + 1, **HYPER, **kwargs)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("target", SUPPORTED_TARGETS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_bitwise_equal_to_the_exact_reference(dtype, target, threads):
    params, m, v, grads = _arrays(dtype, SIZES, "grid")
    want = [[a.copy() for a in arrays] for arrays in (params, m, v)]
    _run(fusedopt.reference.lamb_, *want, grads, mode="exact")
    with cpu_config(target, threads):
        _run(fusedopt.lamb_, params, m, v, grads, backend="native")
    for got_list, want_list in zip((params, m, v), want):
        for got, exp in zip(got_list, want_list):
            assert np.isfinite(exp).all()
            assert np.array_equal(got, exp)
    # Every nonempty param moved: the factor reached every tensor.
    fresh = _arrays(dtype, SIZES, "grid")[0]
    assert all(not np.array_equal(p, f) for p, f in zip(params, fresh) if p.size)


def _paper_step(p, g, m, v, t, lr, betas, eps, weight_decay):
    """One LAMB step as You et al. 2020 (Algorithm 2) write it, in float64 (no clipping,
    the identity scaling function phi)."""
    b1, b2 = betas
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g**2
    r = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
    update = r + weight_decay * p
    p_norm, u_norm = np.linalg.norm(p), np.linalg.norm(update)
    trust = p_norm / u_norm if p_norm > 0 and u_norm > 0 else 1.0
    return p - lr * trust * update, m, v


def test_fifty_steps_follow_the_papers_formula():
    sizes = [5000, 3, 70000]
    rng = rng_for("lamb", "trajectory")
    params = [nonzero(rng, n, np.float32) for n in sizes]
    m = [np.zeros(n, np.float32) for n in sizes]
    v = [np.zeros(n, np.float32) for n in sizes]
    ref = [[a.astype(np.float64) for a in arrays] for arrays in (params, m, v)]
    for t in range(1, 51):
        grads = [nonzero(rng, n, np.float32) for n in sizes]
        fusedopt.lamb_(params, grads, m, v, step=t, **HYPER, backend="native")
        for i, g in enumerate(grads):
            ref[0][i], ref[1][i], ref[2][i] = _paper_step(ref[0][i], g.astype(np.float64), ref[1][i],
                                                          ref[2][i], t, **HYPER)
    start = [nonzero(rng_for("lamb", "trajectory"), n, np.float32) for n in sizes]
    # Relative to each tensor's largest value, as tests/test_drift.py measures: an element
    # that passes near zero carries the absolute rounding error of its larger neighbours.
    for name, got_list, want_list in zip(("params", "exp_avgs", "exp_avg_sqs"), (params, m, v), ref):
        for i, (got, want) in enumerate(zip(got_list, want_list)):
            error = np.max(np.abs(got - want)) / np.max(np.abs(want))
            assert error <= 1e-5, f"{name}[{i}]: relative error {error:.3g}"
    # The steps went somewhere: 50 steps of lr 0.01 scaled by ||p||/||u|| move each param.
    assert all(np.max(np.abs(p - s)) > 1e-3 for p, s in zip(params, start))


def _one_step(p, g, m, v, **hyper):
    kwargs = dict(HYPER, **hyper)
    fusedopt.lamb_(p, g, m, v, step=1, backend="native", **kwargs)


def test_ratio_is_one_where_the_param_is_zero():
    """||p|| = 0: the ratio is 1 (not 0), so p moves by lr * u; u = m_hat / (sqrt(v_hat) + eps)
    as the header computes it (weight decay times zero adds nothing)."""
    rng = rng_for("lamb", "zero-p")
    g = nonzero(rng, 100, np.float32)
    p = np.zeros(100, np.float32)
    other = nonzero(rng, 100, np.float32)
    m, v = [np.zeros(100, np.float32) for _ in range(2)], [np.zeros(100, np.float32) for _ in range(2)]
    _one_step([p, other], [g, g.copy()], m, v)
    f = np.float32
    b1, b2 = HYPER["betas"]
    m1 = f(b1) * f(0) + f(1 - b1) * g
    v1 = f(b2) * f(0) + f(1 - b2) * (g * g)
    u = (m1 * f(1 / (1 - b1))) / (np.sqrt(v1) * f(1 / np.sqrt(1 - b2)) + f(HYPER["eps"]))
    u = u + f(HYPER["weight_decay"]) * np.zeros_like(p)
    assert np.array_equal(p, f(0) - f(HYPER["lr"]) * u)
    assert np.array_equal(m[0], m1) and np.array_equal(v[0], v1)


def test_ratio_is_one_where_the_update_is_zero():
    """||u|| = 0 (zero gradient and first moment, no weight decay): ||p|| / ||u|| would be inf
    and inf * 0 NaN; the ratio is 1 and the param stays as it was."""
    rng = rng_for("lamb", "zero-u")
    p = nonzero(rng, 50, np.float32)
    before = p.copy()
    m, v = np.zeros(50, np.float32), nonzero(rng, 50, np.float32, 0.5, 2.0, signed=False)
    _one_step(p, np.zeros(50, np.float32), m, v, weight_decay=0.0)
    assert np.array_equal(p, before)
    assert np.isfinite(v).all() and not np.any(m)


def test_nan_in_one_tensor_stays_in_that_tensor():
    """A NaN gradient makes its tensor's ||u|| NaN and so its ratio: every param of that
    tensor becomes NaN (as the reference says), and the other tensors step as if alone."""
    sizes = [40, 300, 7]
    params, m, v, grads = _arrays(np.float32, sizes, "nan")
    grads = grads[:1]
    grads[0][1][17] = np.nan
    alone = [[a[k].copy() for a in (params, m, v)] for k in (0, 2)]
    want = [[a.copy() for a in arrays] for arrays in (params, m, v)]
    with np.errstate(invalid="ignore"):
        _run(fusedopt.reference.lamb_, *want, grads, mode="exact")
    _run(fusedopt.lamb_, params, m, v, grads, backend="native")
    for got_list, want_list in zip((params, m, v), want):
        for got, exp in zip(got_list, want_list):
            assert np.array_equal(got, exp, equal_nan=True)
    assert np.isnan(params[1]).all()
    assert np.isnan(m[1][17]) and np.isfinite(np.delete(m[1], 17)).all()
    for k, (p, mk, vk) in zip((0, 2), alone):
        _run(fusedopt.lamb_, [p], [mk], [vk], [[grads[0][k]]], backend="native")
        assert np.array_equal(p, params[k]) and np.isfinite(p).all()


def test_empty_tensors():
    empty = np.zeros(0, np.float32)
    fusedopt.lamb_(empty, empty.copy(), empty.copy(), empty.copy(), step=1, backend="native")
    fusedopt.lamb_([], [], [], [], step=1, backend="native")
    params, m, v, grads = _arrays(np.float32, [0, 9, 0], "empty")
    want = [[a.copy() for a in arrays] for arrays in (params, m, v)]
    _run(fusedopt.reference.lamb_, *want, grads, mode="exact")
    _run(fusedopt.lamb_, params, m, v, grads, backend="native")
    assert all(np.array_equal(a, b) for got, exp in zip((params, m, v), want) for a, b in zip(got, exp))


def test_split_of_a_tensor_across_threads_changes_no_bits():
    """One tensor of several norm blocks next to small ones: its norms are per block, in
    block order, whichever thread ran each block. (From 2^20 elements on, cpu/driver.cpp
    splits a tensor's passes across threads; the small ones run whole, side by side.)"""
    sizes = [3, 16 * NORM_BLOCK + 11, 2, 5 * NORM_BLOCK + 1, 7]
    results = []
    for threads in (1, 2, 3):
        params, m, v, grads = _arrays(np.float32, sizes, "split")
        with cpu_config(threads=threads):
            _run(fusedopt.lamb_, params, m, v, grads, backend="native")
        results.append(params)
    for other in results[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(results[0], other))


def test_float64_reference_agrees_with_exact():
    params, m, v, grads = _arrays(np.float64, [100, 2000], "f64ref")
    exact = [[a.copy() for a in arrays] for arrays in (params, m, v)]
    _run(fusedopt.reference.lamb_, *exact, grads, mode="exact")
    _run(fusedopt.reference.lamb_, params, m, v, grads, mode="float64")
    for got_list, want_list in zip((params, m, v), exact):
        for got, want in zip(got_list, want_list):
            np.testing.assert_allclose(got, want, rtol=1e-12)


def test_torch_optimizer_steps_as_the_functional_call():
    torch = pytest.importorskip("torch")
    import fusedopt.torch as ft

    rng = rng_for("lamb", "torch")
    shapes = [(30, 7), (5,), (2, 3, 4)]
    start = [nonzero(rng, int(np.prod(s)), np.float32).reshape(s) for s in shapes]
    params = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in start]
    opt = ft.LAMB(params, lr=0.02, betas=(0.8, 0.9), weight_decay=0.05)
    mine = [a.copy() for a in start]
    m = [np.zeros_like(a) for a in start]
    v = [np.zeros_like(a) for a in start]
    for t in range(1, 4):
        grads = [nonzero(rng, a.size, np.float32).reshape(a.shape) for a in start]
        for p, g in zip(params, grads):
            p.grad = torch.from_numpy(g.copy())
        opt.step()
        fusedopt.lamb_(mine, grads, m, v, step=t, lr=0.02, betas=(0.8, 0.9), weight_decay=0.05)
    for p, a, mk, vk in zip(params, mine, m, v):
        assert np.array_equal(p.detach().numpy(), a)
        assert np.array_equal(opt.state[p]["exp_avg"].numpy(), mk)
        assert np.array_equal(opt.state[p]["exp_avg_sq"].numpy(), vk)
        assert float(opt.state[p]["step"]) == 3


def test_torch_defaults_are_the_kernels():
    pytest.importorskip("torch")
    import fusedopt.rules
    import fusedopt.torch as ft
    import torch

    keywords = fusedopt.rules.kernel("lamb_")[1].keywords
    defaults = ft.LAMB([torch.zeros(2, requires_grad=True)]).defaults
    for k in ("lr", "betas", "eps", "weight_decay", "maximize"):
        assert defaults[k] == keywords[k], k


@pytest.mark.parametrize("storage", ["f32", "bf16", "f32-bf16-states"])
def test_cuda_emulation_equals_the_cpu_across_launches(storage):
    """The CUDA kernels (run by the host emulation) against the CPU's, bit for bit: 700
    tensors, more than one launch's table holds, beside two of several norm blocks, in the
    storage the 16-bit recipes use."""
    emu = pytest.importorskip("fusedopt._cuda_emulated", reason="built without FUSEDOPT_CUDA_EMULATION=ON")
    from fusedopt.rules.lamb import coefficients
    from test_cuda_emulated import dev

    to_device = dev
    if storage != "f32":
        # bfloat16 "device" arrays: torch CPU tensors over the same memory, which the
        # emulation's reader takes as device tensors (__cuda_array_interface__ has no bfloat16).
        ml_dtypes = pytest.importorskip("ml_dtypes")
        torch = pytest.importorskip("torch")

        def to_device(arrays):
            return [torch.from_numpy(a.view(np.int16)).view(torch.bfloat16) if a.itemsize == 2
                    else torch.from_numpy(a) for a in arrays]

    sizes = [int(n) for n in rng_for("lamb", "sizes").integers(1, 40, 700)] + [2 * NORM_BLOCK + 3, 0,
                                                                                NORM_BLOCK + 1]
    params, m, v, grads = _arrays(np.float32, sizes, "emulated")
    if storage != "f32":
        bf16 = ml_dtypes.bfloat16
        m, v = [a.astype(bf16) for a in m], [a.astype(bf16) for a in v]
        if storage == "bf16":
            params = [a.astype(bf16) for a in params]
            grads = [[a.astype(bf16) for a in g] for g in grads]
    start = [a.copy() for a in params]
    gpu = [[a.copy() for a in arrays] for arrays in (params, m, v)]
    for k, g in enumerate(grads):
        c = coefficients("lamb_", step=k + 1, maximize=k == 1, **HYPER)
        fusedopt.lamb_(params, g, m, v, step=k + 1, maximize=k == 1, **HYPER, backend="native")
        assert emu.run("lamb", to_device(gpu[0]), to_device(g), [to_device(gpu[1]), to_device(gpu[2])],
                       c) is None
    for got_list, want_list in zip(gpu, (params, m, v)):
        for got, want in zip(got_list, want_list):
            assert np.array_equal(got.view(np.uint8), want.view(np.uint8))
    moved = [not np.array_equal(p.view(np.uint8), s.view(np.uint8)) for p, s in zip(params, start) if p.size]
    assert all(moved)


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize("combo", [("bf16", "bf16", "bf16"), ("f32", "bf16", "bf16"),
                                   ("bf16", "f32", "f32"), ("f16", "f16", "bf16")],
                         ids=lambda c: "p{}-g{}-s{}".format(*c))
def test_split_tensor_with_16bit_storage_gives_the_reference_bits(combo, rounding):
    """A tensor of 2^20 elements or more, its passes split across threads (cpu/driver.cpp),
    with 16-bit storage rounded to nearest or stochastically, next to small tensors run whole,
    two threads taking them in turn (enough of them for two: 2^15 elements a thread). The
    grid of tests/test_mixed_precision.py stays under 2^20."""
    mixed = pytest.importorskip("test_mixed_precision")
    case = Case("lamb", "lamb_", dict(HYPER))
    extra = {} if rounding == "nearest" else dict(rounding="stochastic", state_rounding="stochastic", seed=7)
    arrays = mixed.make_arrays(case, combo, [(1 << 20) + 5, 33, 40_000, 30_001],
                                    rng_for("lamb-split", *combo))
    expected = mixed._copy(arrays)
    mixed.run(case, expected, mode="exact", **extra)
    with cpu_config(threads=2):
        mixed.run(case, arrays, backend="native", **extra)
    mixed.assert_same(arrays, expected)
