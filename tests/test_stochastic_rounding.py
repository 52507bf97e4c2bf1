"""Stochastic rounding of bfloat16 and float16 stores (``rounding=``, ``state_rounding=``,
``seed=``; csrc/math/storage.h).

* bitwise: every rule's examples with stochastically rounded params (and states), native
  against the exact reference, on every CPU target at 1, 2 and 3 threads (sampled as the
  storage grid is; the whole product is slow), and the CUDA emulation against the CPU;
* the same seed and step give the same bits, another seed or step other bits;
* unbiased: the mean of 2^16 stochastically rounded updates of 1e-4 from 1.0 lands within
  2e-3 of the exact value after 200 steps, where rounding to nearest never moves;
* the conversions over float32 values of every exponent against a float64 model of
  "round up with the probability of the part dropped".
"""

from __future__ import annotations

import itertools

import fusedopt
import fusedopt.optim
import numpy as np
import pytest
from conftest import SUPPORTED_TARGETS, Case, cpu_config, rng_for
from test_mixed_precision import BF16, EXAMPLES, SIZES, _copy, assert_same, bits, make_arrays, run

THREADS = [1, 2, 3]
MATRIX = [(t, n) for t in SUPPORTED_TARGETS for n in THREADS]
# (params, grads, states) with a 16-bit role to round; states rounded too where bfloat16.
COMBOS = [("bf16", "bf16", "bf16"), ("bf16", "f32", "f32"), ("f16", "f16", "f32"), ("f32", "f32", "bf16")]
SR = dict(rounding="stochastic", state_rounding="stochastic", seed=1234)


def _grid(full: bool):
    for k, (case, combo) in enumerate(itertools.product(EXAMPLES, COMBOS)):
        configs = MATRIX if full else [MATRIX[k % len(MATRIX)]]
        for target, threads in configs:
            yield pytest.param(case, combo, target, threads,
                               id=f"{case.id}-p{combo[0]}-g{combo[1]}-s{combo[2]}-{target}-t{threads}")


def _check(case, combo, target, threads, sr=SR):
    arrays = make_arrays(case, combo, SIZES, rng_for("sr", case.id, combo))
    expected = _copy(arrays)
    returns = run(case, expected, mode="exact", **sr)
    with cpu_config(target, threads):
        got = run(case, arrays, backend="native", **sr)
    assert_same(arrays, expected)
    assert got == returns


@pytest.mark.parametrize(("case", "combo", "target", "threads"), list(_grid(False)))
def test_bitwise(case, combo, target, threads):
    _check(case, combo, target, threads)


@pytest.mark.slow
@pytest.mark.parametrize(("case", "combo", "target", "threads"), list(_grid(True)))
def test_bitwise_full_product(case, combo, target, threads):
    _check(case, combo, target, threads)


# The fused bfloat16 layouts of the CPU loop, with the params, the states or both rounded
# stochastically (each its own compiled loop, or the staged one).
FUSED_COMBOS = [("bf16", "bf16", "bf16"), ("bf16", "bf16", "f32")]
ROUNDINGS = {"params": dict(rounding="stochastic", seed=99),
             "states": dict(state_rounding="stochastic", seed=99),
             "both": SR}


@pytest.mark.parametrize(("case", "combo", "which", "target", "threads"), [
    pytest.param(case, combo, which, *MATRIX[k % len(MATRIX)],
                 id=f"{case.id}-p{combo[0]}-g{combo[1]}-s{combo[2]}-{which}-{MATRIX[k % len(MATRIX)][0]}"
                    f"-t{MATRIX[k % len(MATRIX)][1]}")
    for k, (case, combo, which) in enumerate(itertools.product(EXAMPLES, FUSED_COMBOS, ROUNDINGS))])
def test_bitwise_fused_layouts(case, combo, which, target, threads):
    _check(case, combo, target, threads, ROUNDINGS[which])


def _adam_step(p, seed=1234, step=1, **kw):
    g = np.linspace(-1, 1, p.size).astype(np.float32)
    m, v = np.zeros(p.size, np.float32), np.zeros(p.size, np.float32)
    fusedopt.adam_(p, g, m, v, lr=1e-3, step=step, rounding="stochastic", seed=seed, **kw)
    return p


def test_same_seed_same_bits_other_seed_other_bits():
    start = np.ones(100_003, np.float32).astype(BF16)
    a = _adam_step(start.copy())
    with cpu_config(SUPPORTED_TARGETS[0], 3):
        b = _adam_step(start.copy())
    assert np.array_equal(bits(a), bits(b))
    for other in (_adam_step(start.copy(), seed=1235), _adam_step(start.copy(), step=2)):
        differ = np.count_nonzero(bits(a) != bits(other))
        assert 0.2 * a.size < differ < 0.8 * a.size  # about half the roundings go the other way


@pytest.mark.parametrize("name", ["bf16", "f16"])
def test_unbiased_where_nearest_never_moves(name):
    """2^16 params at 1.0, each stepped by -1e-4 a step (SGD, lr 1e-4, gradient 1): the
    spacing of bfloat16 near 1 is 2^-7 (float16's 2^-10), so nearest rounding never moves
    them; stochastic rounding moves them by the update on average."""
    dtype = BF16 if name == "bf16" else np.dtype(np.float16)
    n, steps = 2**16, 200
    nearest = np.ones(n, dtype)
    stochastic = np.ones(n, dtype)
    g = np.ones(n, np.float32)
    for step in range(1, steps + 1):
        fusedopt.sgd_(nearest, g, lr=1e-4, step=step)
        fusedopt.sgd_(stochastic, g, lr=1e-4, step=step, rounding="stochastic", seed=7)
    assert np.all(nearest.astype(np.float32) == 1.0)
    exact = 1.0 - steps * 1e-4
    assert abs(float(stochastic.astype(np.float64).mean()) - exact) < 2e-3


def _probe(rng) -> np.ndarray:
    """float32 values of every exponent (both signs), with random mantissas."""
    e = np.repeat(np.arange(-150, 128), 40)
    x = rng.uniform(1, 2, e.size) * np.exp2(e.astype(np.float64))
    x = np.concatenate([x, -x]).astype(np.float32)
    return x[np.isfinite(x)]


@pytest.mark.parametrize("name", ["bf16", "f16"])
def test_conversion_rounds_to_a_neighbour_with_the_right_probability(name):
    """Each value lands on one of its two neighbours in the 16-bit grid; over 64 draws the
    frequency of the upper one follows the dropped part (checked in aggregate)."""
    from fusedopt import _storage

    dtype = BF16 if name == "bf16" else np.dtype(np.float16)
    x = _probe(rng_for("probe", name))
    x = x[np.abs(x.astype(np.float64)) < (65504.0 if name == "f16" else 3e38)]
    down = x.astype(np.float64)
    rounded = []
    for draw in range(64):
        r = _storage.random_bits(np, draw, 99, 0, 0, x.size)
        rounded.append(_storage._stochastic_bits(np, dtype, x, r).view(dtype).astype(np.float64))
    mag = np.abs(np.array(rounded))  # signs never change: compare magnitudes
    x_mag = np.abs(down)
    # The two neighbours of |x| in the 16-bit grid (equal where |x| is in it).
    if name == "bf16":
        cut = (np.abs(x).view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)
        lo = cut.astype(np.float64)
        hi = np.where(lo == x_mag, lo, (cut.view(np.uint32) + np.uint32(0x10000)).view(np.float32))
    else:
        near = np.abs(x).astype(np.float16)
        with np.errstate(over="ignore"):
            other = np.where(near.astype(np.float64) <= x_mag, np.nextafter(near, np.float16(np.inf)),
                             np.nextafter(near, np.float16(0)))
        lo = np.minimum(near, other).astype(np.float64)
        hi = np.maximum(near, other).astype(np.float64)
        lo = np.where(near.astype(np.float64) == x_mag, x_mag, lo)
        hi = np.where(near.astype(np.float64) == x_mag, x_mag, hi)
    hi = hi.astype(np.float64)
    assert np.all((mag == lo) | (mag == hi))  # every draw is a neighbour
    assert np.all(hi[lo == hi] == x_mag[lo == hi])  # representable values never move
    # Unbiased in aggregate: the share of draws rounding up follows the dropped part.
    moved = lo != hi
    assert moved.sum() > x.size // 2
    frac = (x_mag[moved] - lo[moved]) / (hi[moved] - lo[moved])
    up = (mag[:, moved] == hi[moved]).mean(axis=0)
    assert abs(float(up.mean() - frac.mean())) < 0.01


def test_native_conversions_match_the_reference_model_on_every_target():
    """SGD with lr=1 and maximize from zero params writes p = g: each float32 gradient comes
    back rounded stochastically to the params' storage, by the kernels and by NumPy alike."""
    x = _probe(rng_for("probe-native"))
    for dtype in (BF16, np.dtype(np.float16)):
        want = np.zeros(x.size, dtype)
        fusedopt.reference.sgd_(want, x, lr=1.0, maximize=True, rounding="stochastic", seed=5,
                                step=3)
        for target in SUPPORTED_TARGETS:
            got = np.zeros(x.size, dtype)
            with cpu_config(target, 2):
                fusedopt.sgd_(got, x, lr=1.0, maximize=True, rounding="stochastic", seed=5, step=3)
            assert np.array_equal(bits(got), bits(want)), (dtype, target)


def test_float32_storage_ignores_rounding():
    p = np.ones(1000, np.float32)
    q = p.copy()
    g = np.full(1000, 0.3, np.float32)
    fusedopt.sgd_(p, g, lr=1e-3, rounding="stochastic", seed=3)
    fusedopt.sgd_(q, g, lr=1e-3)
    assert np.array_equal(p, q)


@pytest.mark.parametrize("kwargs,error,name", [
    (dict(rounding="up"), ValueError, "rounding"),
    (dict(rounding=1), TypeError, "rounding"),
    (dict(state_rounding="random"), ValueError, "state_rounding"),
    (dict(rounding="stochastic", seed=-1), ValueError, "seed"),
    (dict(rounding="stochastic", seed=2**64), ValueError, "seed"),
    (dict(rounding="stochastic", seed=1.5), TypeError, "seed"),
    (dict(rounding="stochastic", seed=True), TypeError, "seed"),
])
def test_bad_rounding_arguments(kwargs, error, name):
    p = np.ones(5, np.float32).astype(BF16)
    before = p.copy()
    with pytest.raises(error, match=f"sgd_: {name}"):
        fusedopt.sgd_(p, np.ones(5, np.float32), lr=0.1, **kwargs)
    assert np.array_equal(bits(p), bits(before))


def test_optimizer_steps_reproduce_and_resume():
    """fusedopt.optim with stochastic rounding: two runs give the same bits, and a run
    restored from a state_dict goes on with the bits of the one that never stopped."""
    rng = rng_for("optim-sr")
    grads = [[rng.standard_normal(n).astype(np.float32) for n in (300, 7000)] for _ in range(6)]

    def make():
        return [np.ones(n, np.float32).astype(BF16) for n in (300, 7000)]

    for cls in (fusedopt.optim.Adam, fusedopt.optim.Lion):
        a, b = make(), make()
        oa = cls(a, lr=1e-3, rounding="stochastic", seed=11)
        ob = cls(b, lr=1e-3, rounding="stochastic", seed=11)
        for k, g in enumerate(grads):
            oa.step(g)
            if k == 2:
                saved = ob.state_dict()
                ob = cls(b, lr=1e-3, rounding="stochastic", seed=11)
                ob.load_state_dict(saved)
            ob.step(g)
        for x, y in zip(a, b):
            assert np.array_equal(bits(x), bits(y)), cls.__name__
        c = make()
        oc = cls(c, lr=1e-3, rounding="stochastic", seed=12)
        for g in grads:
            oc.step(g)
        assert not np.array_equal(bits(c[1]), bits(a[1]))


def test_emulated_device_rounds_as_the_cpu(monkeypatch):
    """The CUDA kernels (under the host emulation, where torch CPU tensors stand for CUDA
    ones) round with the CPU's bits."""
    emu = pytest.importorskip("fusedopt._cuda_emulated")
    torch = pytest.importorskip("torch")
    from test_cuda_emulated import recording

    def dev(arrays):  # the same memory, as bfloat16 torch tensors
        return [torch.from_numpy(a.view(np.uint16)).view(torch.bfloat16) for a in arrays]

    case = Case("adam-sr", "adam_", dict(lr=1e-2))
    arrays = make_arrays(case, ("bf16", "bf16", "bf16"), SIZES + [65537, 8193], rng_for("emu-sr"))
    cpu = _copy(arrays)
    gpu = _copy(arrays)
    for k in range(2):
        with recording(monkeypatch) as rec:
            case.call(cpu[0], cpu[2][k], cpu[1], k + 1, backend="native", **SR)
        rule, coeffs, multiplier, rounding = rec.calls[0]
        assert rounding is not None
        states = [dev(v) for v in gpu[1].values()]
        assert emu.run(rule, dev(gpu[0]), dev(gpu[2][k]), states, coeffs, grad_multiplier=multiplier,
                       rounding=rounding) is None
    assert_same(gpu, cpu)
