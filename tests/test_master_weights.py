"""Master weights of 16-bit params: ``master_params=`` (float32 arrays) and
``param_remainders=`` (int16 low halves of bfloat16 params).

* bitwise: every rule's examples with bfloat16 and float16 params, both forms, nearest and
  stochastic rounding (remainders: nearest only), native against the exact reference, on
  every CPU target at 1, 2 and 3 threads (sampled as the storage grid is; the whole
  product is slow);
* the remainder form's master equals the float32 master of a ``master_params=`` run bit
  for bit over 100 steps, its params follow the encoding's rule, the other form's round
  to nearest even;
* a master run is a float32 run: its masters equal the params of a plain float32 run;
* the float64 reference stays near the exact one;
* bad input, refused by name with nothing written.
"""

from __future__ import annotations

import itertools

import fusedopt
import fusedopt.reference
import numpy as np
import pytest
from conftest import SUPPORTED_TARGETS, Case, cpu_config, nonzero, rng_for
from fusedopt import _storage
from test_mixed_precision import BF16, EXAMPLES, SIZES, _copy, assert_same, bits, make_arrays, same_bits

THREADS = [1, 2, 3]
MATRIX = [(t, n) for t in SUPPORTED_TARGETS for n in THREADS]
# (params, grads, states) of 16-bit params, and the master forms each takes.
COMBOS = [("bf16", "bf16", "f32"), ("bf16", "f32", "bf16"), ("f16", "f16", "f32")]
FORMS = {"float32": "master_params", "remainders": "param_remainders"}
SR = dict(rounding="stochastic", state_rounding="stochastic", seed=99)


def _cases():
    for combo, form, rounding in itertools.product(COMBOS, FORMS, ("nearest", "stochastic")):
        if form == "remainders" and (combo[0] != "bf16" or rounding == "stochastic"):
            continue
        yield combo, form, rounding


GRID = list(_cases())


def with_masters(arrays, form: str, rng):
    """The arrays with float32 masters that are not their params' values: the params are
    rounded from them (to nearest even; split, for remainders). Returns (params, states,
    grads, masters)."""
    params, states, grads = arrays
    masters = []
    for p in params:
        m = (p.astype(np.float32) * (1 + nonzero(rng, p.size, np.float64, 1e-4, 1e-3))).astype(np.float32)
        if form == "float32":
            p.view(np.uint16)[...] = _storage._bfloat16_bits(np, m) if p.dtype == BF16 else \
                m.astype(np.float16).view(np.uint16)
            masters.append(m)
        else:
            r = np.zeros(p.size, np.int16)
            _storage.split_master(np, m, p, r)
            masters.append(r)
    return params, states, grads, masters


def copy4(arrays):
    params, states, grads = _copy(arrays[:3])
    return params, states, grads, [m.copy() for m in arrays[3]]


def run(case: Case, arrays, form: str, **extra) -> list:
    params, states, grads, masters = arrays
    return [case.call(params, g, states, k + 1, **{FORMS[form]: masters}, **extra)
            for k, g in enumerate(grads)]


def assert_same4(actual, expected):
    assert_same(actual[:3], expected[:3])
    for i, (a, b) in enumerate(zip(actual[3], expected[3])):
        assert a.dtype == b.dtype, f"masters[{i}]"
        assert same_bits(a, b) if a.dtype == np.float32 else np.array_equal(a, b), f"masters[{i}]"


def _grid(full: bool):
    for k, (case, (combo, form, rounding)) in enumerate(itertools.product(EXAMPLES, GRID)):
        configs = MATRIX if full else [MATRIX[k % len(MATRIX)]]
        for target, threads in configs:
            yield pytest.param(case, combo, form, rounding, target, threads,
                               id=f"{case.id}-p{combo[0]}-g{combo[1]}-s{combo[2]}-{form}-{rounding}"
                                  f"-{target}-t{threads}")


def _check(case, combo, form, rounding, target, threads):
    rng = rng_for("masters", case.id, combo, form)
    arrays = with_masters(make_arrays(case, combo, SIZES, rng), form, rng)
    before = copy4(arrays)
    expected = copy4(arrays)
    extra = SR if rounding == "stochastic" else {}
    returns = run(case, expected, form, mode="exact", **extra)
    with cpu_config(target, threads):
        got = run(case, arrays, form, backend="native", **extra)
    assert_same4(arrays, expected)
    assert got == returns
    moved = sum(int(np.count_nonzero(bits(a) != bits(b))) for a, b in zip(arrays[3], before[3]))
    assert moved > sum(SIZES) // 4, "the masters hardly moved"


@pytest.mark.parametrize(("case", "combo", "form", "rounding", "target", "threads"), list(_grid(False)))
def test_bitwise(case, combo, form, rounding, target, threads):
    _check(case, combo, form, rounding, target, threads)


@pytest.mark.slow
@pytest.mark.parametrize(("case", "combo", "form", "rounding", "target", "threads"), list(_grid(True)))
def test_bitwise_full_product(case, combo, form, rounding, target, threads):
    _check(case, combo, form, rounding, target, threads)


def _adam_pair(steps: int):
    """Adam on bfloat16 params from the same float32 masters, as master_params= and as
    param_remainders=, over ``steps`` steps; both runs' arrays after each step."""
    rng = rng_for("remainder-vs-master")
    n = 50_001
    m32 = nonzero(rng, n, np.float32)
    p_a, p_b = np.zeros(n, BF16), np.zeros(n, BF16)
    master, remainder = m32.copy(), np.zeros(n, np.int16)
    p_a.view(np.uint16)[...] = _storage._bfloat16_bits(np, m32)
    _storage.split_master(np, m32, p_b, remainder)
    sa = [np.zeros(n, np.float32) for _ in range(2)]
    sb = [np.zeros(n, np.float32) for _ in range(2)]
    for step in range(1, steps + 1):
        g = (rng.standard_normal(n) * 0.1).astype(np.float32).astype(BF16)
        fusedopt.adamw_(p_a, g, *sa, step=step, lr=1e-3, weight_decay=0.01, master_params=master)
        fusedopt.adamw_(p_b, g, *sb, step=step, lr=1e-3, weight_decay=0.01, param_remainders=remainder)
        yield p_a, master, p_b, remainder


def test_remainders_hold_the_master_of_a_master_params_run():
    for arrays in _adam_pair(100):
        p_a, master, p_b, remainder = arrays
        joined = _storage.join_master(np, p_b, remainder)
        assert np.array_equal(joined.view(np.uint32), master.view(np.uint32))
    u = master.view(np.uint32)
    # The remainder form's params: the high half, up by one where bit 15 of the low half is set.
    high = (u >> 16) + ((u >> 15) & 1)
    assert np.array_equal(bits(p_b), (high & 0xFFFF).astype(np.uint16))
    assert np.array_equal(remainder.view(np.uint16), (u & 0xFFFF).astype(np.uint16))
    # The master form's params: the master to nearest, ties to even.
    assert np.array_equal(bits(p_a), _storage._bfloat16_bits(np, master))
    assert np.count_nonzero((u & 0xFFFF) != 0) > u.size // 2  # the masters are not bfloat16 values


@pytest.mark.parametrize("case", EXAMPLES, ids=lambda c: c.id)
def test_a_master_run_is_a_float32_run(case):
    """The master of a bfloat16 (or float16) param steps exactly as a float32 param does."""
    rng = rng_for("master-is-float32", case.id)
    sizes = [1, 33, 4099]
    f32 = make_arrays(case, ("f32", "f32", "f32"), sizes, rng, steps=3)
    params32, states32, grads = f32
    for dtype in (BF16, np.dtype(np.float16)):
        masters = [p.copy() for p in params32]
        params = [p.astype(dtype) for p in params32]
        states = {k: [a.copy() for a in v] for k, v in states32.items()}
        for k, g in enumerate(grads):
            case.call(params, g, states, k + 1, master_params=masters, backend="native")
        plain = _copy(f32)
        for k, g in enumerate(plain[2]):
            case.call(plain[0], g, plain[1], k + 1, backend="native")
        for m, p32, p in zip(masters, plain[0], params):
            assert same_bits(m, p32)
            assert same_bits(p, p32.astype(dtype))
        for name in states:
            for a, b in zip(states[name], plain[1][name]):
                assert same_bits(a, b), name


def test_float64_reference_stays_near_the_exact_one():
    case = Case("adam", "adam_", dict(lr=1e-3))
    for form in FORMS:
        rng = rng_for("f64", form)
        arrays = with_masters(make_arrays(case, ("bf16", "f32", "f32"), [5000], rng, steps=5), form, rng)
        drift = copy4(arrays)
        run(case, arrays, form, mode="exact")
        run(case, drift, form, mode="float64")
        a = _storage.master_value(np, form, arrays[0][0], arrays[3][0])
        b = _storage.master_value(np, form, drift[0][0], drift[3][0])
        assert np.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_torch_tensors_take_masters_in_place():
    torch = pytest.importorskip("torch")
    rng = rng_for("torch-masters")
    m = nonzero(rng, 1000, np.float32)
    g = nonzero(rng, 1000, np.float32)
    p_np, master_np = m.astype(BF16), m.copy()
    p_t = torch.from_numpy(m.copy()).to(torch.bfloat16)
    master_t = torch.from_numpy(m.copy())
    state_np, state_t = np.zeros(1000, np.float32), torch.zeros(1000)
    fusedopt.lion_(p_np, g, state_np, lr=1e-2, master_params=master_np)
    fusedopt.lion_(p_t, torch.from_numpy(g), state_t, lr=1e-2, master_params=master_t)
    assert np.array_equal(master_t.numpy(), master_np)
    assert np.array_equal(p_t.view(torch.int16).numpy().view(np.uint16), bits(p_np))
    r_np, r_t = np.zeros(1000, np.int16), torch.zeros(1000, dtype=torch.int16)
    _storage.split_master(np, m, p_np, r_np)
    p_t.view(torch.int16).copy_(torch.from_numpy(p_np.view(np.int16)))
    r_t.copy_(torch.from_numpy(r_np))
    fusedopt.lion_(p_np, g, state_np, lr=1e-2, param_remainders=r_np)
    fusedopt.lion_(p_t, torch.from_numpy(g), state_t, lr=1e-2, param_remainders=r_t)
    assert np.array_equal(r_t.numpy(), r_np)
    assert np.array_equal(p_t.view(torch.int16).numpy().view(np.uint16), bits(p_np))


# --------------------------------------------------------------------------------------
# Bad input: refused with the argument and list index named, nothing written.
# --------------------------------------------------------------------------------------
def _bad_call(params_dtype=BF16):
    n = 16
    wide = np.float64 if params_dtype == np.float64 else np.float32  # grads and states
    p = [np.ones(n, np.float32).astype(params_dtype), np.ones(n, np.float32).astype(params_dtype)]
    g = [np.full(n, 0.5, wide), np.full(n, 0.5, wide)]
    m = [np.zeros(n, wide), np.zeros(n, wide)]
    return p, g, m


def _masters(dtype=np.float32, n=16):
    return [np.ones(n, np.float32).astype(dtype), np.ones(n, np.float32).astype(dtype)]


def _bad_cases():
    yield "float32 params", np.float32, dict(master_params=_masters()), TypeError, \
        r"master_params\[0\] goes with bfloat16 or float16 params, but params\[0\] has float32"
    yield "float64 params", np.float64, dict(master_params=_masters()), TypeError, \
        r"master_params\[0\] goes with bfloat16 or float16 params"
    yield "remainders of float16", np.float16, dict(param_remainders=_masters(np.int16)), TypeError, \
        r"param_remainders\[0\] goes with bfloat16 params, but params\[0\] has float16; pass float32"
    yield "remainders of float32", np.float32, dict(param_remainders=_masters(np.int16)), TypeError, \
        r"param_remainders\[0\] goes with bfloat16 params"
    yield "both", BF16, dict(master_params=_masters(), param_remainders=_masters(np.int16)), ValueError, \
        "pass master_params or param_remainders, not both"
    yield "stochastic remainders", BF16, dict(param_remainders=_masters(np.int16), rounding="stochastic"), \
        ValueError, "rounding='stochastic' does not go with param_remainders"
    yield "float64 master", BF16, dict(master_params=_masters(np.float64)), TypeError, \
        r"master_params\[0\] has dtype float64; master_params are float32 arrays"
    yield "bfloat16 master", BF16, dict(master_params=[_masters()[0], _masters(BF16)[1]]), TypeError, \
        r"master_params\[1\] has dtype bfloat16; master_params are float32 arrays"
    yield "uint16 remainder", BF16, dict(param_remainders=_masters(np.uint16)), TypeError, \
        r"param_remainders\[0\] has dtype uint16; param_remainders are int16 arrays"
    yield "float32 remainder", BF16, dict(param_remainders=_masters()), TypeError, \
        r"param_remainders\[0\] has dtype float32; param_remainders are int16 arrays"
    yield "shape", BF16, dict(master_params=[_masters()[0], np.zeros(15, np.float32)]), ValueError, \
        r"master_params\[1\] has shape \(15,\) but params\[1\] has shape \(16,\)"
    yield "remainder shape", BF16, dict(param_remainders=[np.zeros((4, 4), np.int16)] * 2), ValueError, \
        r"param_remainders\[0\] has shape \(4, 4\)"
    yield "strided", BF16, dict(master_params=[np.zeros(32, np.float32)[::2], _masters()[1]]), ValueError, \
        r"master_params\[0\] is not C-contiguous"
    unaligned = np.zeros(16 * 4 + 2, np.uint8)[2:].view(np.float32)
    yield "misaligned", BF16, dict(master_params=[_masters()[0], unaligned]), ValueError, \
        r"master_params\[1\] is not aligned"
    readonly = _masters()
    readonly[1].flags.writeable = False
    yield "read-only", BF16, dict(master_params=readonly), ValueError, \
        r"master_params\[1\] is read-only"
    yield "length", BF16, dict(master_params=_masters()[:1]), ValueError, \
        "master_params has 1 arrays but params has 2"
    yield "not a list", BF16, dict(master_params=np.zeros(16, np.float32)), TypeError, \
        "master_params must be a list"
    yield "int16 grads", BF16, dict(grads=[np.zeros(16, np.int16)] * 2), TypeError, \
        r"grads\[0\] has dtype int16"


@pytest.mark.parametrize(("params_dtype", "kwargs", "error", "match"),
                         [c[1:] for c in _bad_cases()], ids=[c[0] for c in _bad_cases()])
@pytest.mark.parametrize("backend", ["native", "reference"])
def test_bad_input(params_dtype, kwargs, error, match, backend):
    p, g, m = _bad_call(params_dtype)
    kwargs = dict(kwargs)  # shared by the backends' runs
    g = kwargs.pop("grads", g)
    before = [a.copy() for a in p + m]
    arrays = [x for v in kwargs.values() if isinstance(v, list) for x in v]
    arrays_before = [a.copy() for a in arrays]
    with pytest.raises(error, match=match):
        fusedopt.lion_(p, g, m, lr=0.1, backend=backend, **kwargs)
    for a, b in zip(p + m + arrays, before + arrays_before):
        assert a.tobytes() == b.tobytes()


def test_overlap_with_another_array_is_refused():
    p, g, m = _bad_call()
    masters = [m[0], np.zeros(16, np.float32)]  # master 0 is exp_avgs[0]
    with pytest.raises(ValueError, match=r"share memory"):
        fusedopt.lion_(p, g, m, lr=0.1, master_params=masters)
    shared = np.zeros(32, np.float32)
    with pytest.raises(ValueError, match=r"master_params\[1\] and master_params\[0\] share memory|"
                                         r"master_params\[0\] and master_params\[1\] share memory"):
        fusedopt.lion_(p, g, m, lr=0.1, master_params=[shared[:16], shared[8:24]])
    grads = [np.zeros(16, np.float32), np.zeros(16, np.float32)]
    with pytest.raises(ValueError, match=r"share memory"):
        fusedopt.lion_(p, grads, m, lr=0.1, master_params=[grads[0], np.zeros(16, np.float32)])


def test_adafactor_refuses_master_weights_by_name():
    p = np.ones((4, 4), np.float32)
    with pytest.raises(ValueError, match="adafactor_: takes no master_params or param_remainders"):
        fusedopt.adafactor_([p], [p.copy()], [np.zeros((4, 1), np.float32)], [np.zeros((1, 4), np.float32)],
                            [None], step=1, lr=0.01, master_params=[p.copy()])


# --------------------------------------------------------------------------------------
# fusedopt.optim and fusedopt.torch: master_weights=
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("form", ["float32", "remainders"])
def test_optimizer_masters_follow_a_float32_run_and_resume(form):
    rng = rng_for("optim-masters", form)
    sizes = (300, 7000)
    start = [nonzero(rng, n, np.float32) for n in sizes]
    grads = [[rng.standard_normal(n).astype(np.float32) for n in sizes] for _ in range(6)]
    f32 = [p.copy() for p in start]
    o32 = fusedopt.optim.AdamW(f32, lr=1e-2)
    a = [p.astype(BF16) for p in start]
    oa = fusedopt.optim.AdamW(a, lr=1e-2, master_weights=form)
    assert oa.masters is None and oa.master_weights == form
    b = [p.copy() for p in a]
    ob = fusedopt.optim.AdamW(b, lr=1e-2, master_weights=form)
    for k, g in enumerate(grads):
        o32.step(g)
        oa.step(g)
        if k == 2:
            saved = ob.state_dict()
            ob = fusedopt.optim.AdamW(b, lr=1e-2, master_weights=form)
            ob.load_state_dict(saved)
        ob.step(g)
    # The masters start from the bfloat16 params: the float32 run from those values too.
    f32b = [p.astype(BF16).astype(np.float32) for p in start]
    o32b = fusedopt.optim.AdamW(f32b, lr=1e-2)
    for g in grads:
        o32b.step(g)
    for p_a, m_a, p_b, m_b, want in zip(a, oa.masters, b, ob.masters, f32b):
        assert np.array_equal(_storage.master_value(np, form, p_a, m_a).view(np.uint32), want.view(np.uint32))
        assert np.array_equal(bits(p_a), bits(p_b)) and np.array_equal(m_a.view(np.uint8), m_b.view(np.uint8))
    assert not np.array_equal(f32b[1], f32[1])  # the start differs from float32's by rounding
    with pytest.raises(ValueError, match="master_weights"):
        fusedopt.optim.AdamW([p.copy() for p in a], lr=1e-2).load_state_dict(oa.state_dict())


@pytest.mark.parametrize(("params", "kwargs", "error", "match"), [
    (np.float32, dict(master_weights="float32"), TypeError, "for bfloat16 and float16 params"),
    (np.float16, dict(master_weights="remainders"), TypeError, "for bfloat16 params"),
    (BF16, dict(master_weights="float64"), ValueError, "master_weights must be None"),
    (BF16, dict(master_weights="remainders", rounding="stochastic"), ValueError, "does not go with"),
])
def test_optimizer_refuses_bad_master_weights(params, kwargs, error, match):
    with pytest.raises(error, match=f"AdamW: .*{match}"):
        fusedopt.optim.AdamW([np.ones(8, np.float32).astype(params)], lr=1e-2, **kwargs)


@pytest.mark.parametrize("form", ["float32", "remainders"])
def test_torch_adamw_with_master_weights_follows_float32(form):
    torch = pytest.importorskip("torch")
    import fusedopt.torch as ft

    torch.manual_seed(0)
    model32 = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    with torch.no_grad():  # the float32 run starts from the bfloat16 values
        for p in model32.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    model16 = [p.detach().to(torch.bfloat16).requires_grad_() for p in model32.parameters()]
    opt32 = ft.AdamW(model32.parameters(), lr=1e-2)
    opt16 = ft.AdamW(model16, lr=1e-2, master_weights=form)
    key = "master_param" if form == "float32" else "param_remainder"
    x, y = torch.randn(64, 8), torch.randn(64, 1)
    for step in range(20):
        loss = torch.nn.functional.mse_loss(model32(x), y)
        opt32.zero_grad()
        loss.backward()
        for p32, p16 in zip(model32.parameters(), model16):
            g16 = p32.grad.to(torch.bfloat16)
            p32.grad = g16.float()  # both runs read the same gradient values
            p16.grad = g16
        opt32.step()
        opt16.step()
        if step == 10:  # through a state_dict into a new optimizer
            saved = opt16.state_dict()
            assert all(key in s for s in saved["state"].values())
            torch.optim.AdamW(model16, lr=1e-2).load_state_dict(saved)  # torch ignores the extra key
            opt16 = ft.AdamW(model16, lr=1e-2, master_weights=form)
            opt16.load_state_dict(saved)
    for p32, p16 in zip(model32.parameters(), model16):
        master = opt16.state[p16][key]
        p = p16.detach().view(torch.int16).numpy().view(BF16)
        joined = _storage.master_value(np, form, p, master.numpy())
        assert np.array_equal(joined.view(np.uint32), p32.detach().numpy().view(np.uint32))
        if form == "float32":
            assert torch.equal(p16.detach(), p32.detach().to(torch.bfloat16))


def _emulated_grid():
    """Each rule's examples with one (combo, form, rounding) of GRID in turn, and Adam's and
    LAMB's with all of them."""
    for k, case in enumerate(EXAMPLES):
        entries = GRID if case.id in ("adam", "lamb") else [GRID[k % len(GRID)]]
        for combo, form, rounding in entries:
            yield pytest.param(case, combo, form, rounding,
                               id=f"{case.id}-p{combo[0]}-g{combo[1]}-s{combo[2]}-{form}-{rounding}")


@pytest.mark.parametrize(("case", "combo", "form", "rounding"), list(_emulated_grid()))
def test_emulated_device_takes_masters_as_the_cpu(monkeypatch, case, combo, form, rounding):
    """The CUDA kernels (under the host emulation, where torch CPU tensors stand for CUDA
    ones) read and write masters with the CPU's bits."""
    emu = pytest.importorskip("fusedopt._cuda_emulated")
    torch = pytest.importorskip("torch")
    from test_cuda_emulated import recording

    def dev(arrays):  # the same memory, as torch tensors
        return [torch.from_numpy(a.view(np.int16)).view(torch.bfloat16) if a.dtype == BF16
                else torch.from_numpy(a) for a in arrays]

    rng = rng_for("emulated-masters", case.id, combo, form)
    arrays = with_masters(make_arrays(case, combo, SIZES + [8193], rng), form, rng)
    cpu, gpu = copy4(arrays), copy4(arrays)
    extra = SR if rounding == "stochastic" else {}
    for k in range(2):
        with recording(monkeypatch) as rec:
            case.call(cpu[0], cpu[2][k], cpu[1], k + 1, backend="native", **{FORMS[form]: cpu[3]}, **extra)
        for rule, coeffs, multiplier, rounded in rec.calls:
            batch = emu.Batch(dev(gpu[0]), dev(gpu[2][k]), [dev(v) for v in gpu[1].values()], "same",
                              dev(gpu[3]), form)
            batch.run(rule, coeffs, grad_multiplier=multiplier, rounding=rounded)
        assert len(rec.calls) == 1
    assert_same4(gpu, cpu)
