"""The CUDA kernels against the exact CuPy reference and the CPU kernels, bit for bit.

Every test here needs a GPU, CuPy and the fusedopt._cuda module; where any is missing the
whole module is skipped with the reason, or fails with it if FUSEDOPT_REQUIRE_GPU=1 (as
bench/gpu_check.sh sets). Without a GPU, tests/test_cuda_plan.py checks the
launch planning and tests/test_cuda_emulated.py runs the same kernel source on the CPU.
bench/gpu_check.sh runs these on a machine with one.
"""

from __future__ import annotations

import os

import fusedopt
import fusedopt.cuda
import fusedopt.optim
import numpy as np
import pytest
from conftest import (
    CASES,
    CASES_BY_ID,
    CUDA_EMULATION,
    Case,
    Inputs,
    assert_bitwise,
    make_inputs,
    rng_for,
    run_steps,
)
from fusedopt import _arrays, _dispatch, _kernels, rules
from fusedopt import _reference_impl as _ref


def _skip_reason() -> str | None:
    reason = fusedopt.cuda.unavailable_reason()
    if reason is not None:
        return reason
    try:
        import cupy  # noqa: F401
    except ImportError:
        return "CuPy is not installed (pip install 'fusedopt[cuda]')"
    try:
        import cupy

        cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CuPy built for another CUDA major version, say
        return f"CuPy cannot use the GPU ({type(exc).__name__}: {exc})"
    return None


_REASON = _skip_reason()
if _REASON is not None and os.environ.get("FUSEDOPT_REQUIRE_GPU") == "1":
    # bench/gpu_check.sh sets this: on the machine lent for the check, a suite that skips
    # every test must not read as a pass.
    pytest.fail(f"FUSEDOPT_REQUIRE_GPU is set, but the CUDA tests cannot run: {_REASON}",
                pytrace=False)
pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(_REASON is not None, reason=f"no CUDA tests here: {_REASON}")]

if _REASON is None:
    import cupy
    from fusedopt import _cuda


# --------------------------------------------------------------------------------------
def to_device(inputs: Inputs) -> Inputs:
    put = lambda xs: [None if x is None else cupy.asarray(x) for x in xs]  # noqa: E731
    return Inputs(inputs.single, put(inputs.params), {n: put(v) for n, v in inputs.states.items()},
                  [put(g) for g in inputs.grads])


def to_host(inputs: Inputs) -> Inputs:
    get = lambda xs: [None if x is None else cupy.asnumpy(x) for x in xs]  # noqa: E731
    return Inputs(inputs.single, get(inputs.params), {n: get(v) for n, v in inputs.states.items()},
                  [get(g) for g in inputs.grads])


def check_case(case, dtype, sizes, *, steps=3, key=()):
    """Runs `steps` steps natively on the GPU, with the exact reference on the GPU, and
    natively on the CPU, from the same inputs; all three must agree bit for bit."""
    host = make_inputs(case, dtype, sizes, steps=steps, rng=rng_for(case.id, dtype, sizes, *key))
    gpu, ref = to_device(host.copy()), to_device(host.copy())
    cpu = host.copy()
    out_gpu = run_steps(case, gpu, backend="native")
    run_steps(case, ref, mode="exact")
    out_cpu = run_steps(case, cpu, backend="native")
    cupy.cuda.get_current_stream().synchronize()
    assert_bitwise(to_host(gpu), to_host(ref))
    assert_bitwise(to_host(gpu), cpu)
    if case.fn == "adaptive_sgd_":
        for g, c in zip(out_gpu, out_cpu):
            assert float(g.lr) == c.lr  # the rate is computed on the device with the same bits
            assert float(g.grad_norm) == pytest.approx(c.grad_norm, rel=1e-15)


SIZES = [1, 3, 4, 5, 7, 8, 17, 16383, 16384, 16385, 65537, 1_000_003]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_rule_bitwise_single_tensor(case, dtype):
    check_case(case, dtype, 65537 * 2 + 3)


@pytest.mark.parametrize("case", [CASES_BY_ID[i] for i in ("adam", "adamw-amsgrad-wd-max", "sgd-mom",
                                                             "sgd-keras-nesterov-wd", "adagrad-decay-wd",
                                                             "rmsprop-centered-mom-wd", "asgd-mom-wd-max",
                                                             "lion-wd-max")],
                         ids=lambda c: c.id)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_rule_bitwise_sizes(case, dtype):
    check_case(case, dtype, [0, *SIZES, 0], steps=2)


@pytest.mark.parametrize("case", [CASES_BY_ID[i] for i in ("adam-amsgrad", "sgd-nesterov", "asgd")],
                         ids=lambda c: c.id)
def test_thousands_of_odd_tensors(case):
    rng = rng_for("thousands", case.id)
    sizes = [int(n) for n in rng.integers(0, 3000, 3000) | 1]
    sizes[::97] = [0] * len(sizes[::97])  # empty tensors in between
    check_case(case, np.float32, sizes, steps=2, key=("thousands",))


# --------------------------------------------------------------------------------------
# Misaligned views: the same offset in every role (vector body with a peeled head) and
# different offsets per role (the scalar path), each against the CPU on the same data.
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("offsets", [(1, 1, 1, 1), (0, 1, 2, 3), (3, 3, 3, 3), (2, 0, 2, 2)],
                         ids=lambda o: "-".join(map(str, o)))
def test_misaligned_views(dtype, offsets):
    case = CASES_BY_ID["adam-amsgrad-wd"]
    sizes = [1, 2, 5, 16384 + 3, 100_001]
    host = make_inputs(case, dtype, sizes, steps=2, rng=rng_for("views", dtype, offsets), single=False)
    cpu = host.copy()

    def view(x, off):  # a device copy of x that starts `off` elements into a buffer
        buf = cupy.empty(x.size + 4, dtype=x.dtype)
        v = buf[off:off + x.size]
        v.set(x)
        return v

    roles = ["params", "grads", *host.states]
    off = dict(zip(roles, offsets + (offsets[-1],) * 3))
    gpu = Inputs(False, [view(p, off["params"]) for p in host.params],
                 {n: [view(a, off[n]) for a in v] for n, v in host.states.items()},
                 [[view(g, off["grads"]) for g in gs] for gs in host.grads])
    run_steps(case, gpu, backend="native")
    run_steps(case, cpu, backend="native")
    assert_bitwise(to_host(gpu), cpu)


# --------------------------------------------------------------------------------------
def test_grad_sum_of_squares_bitwise():
    rng = rng_for("sumsq")
    sizes = [0, 1, 31, 32, 33, 65535, 65536, 65537, 3 * 65536 + 17, 1_000_003]
    for dtype in (np.float32, np.float64):
        host = [(rng.standard_normal(n) * 3).astype(dtype) for n in sizes]
        dev = [cupy.asarray(g) for g in host]
        got = _cuda.grad_sum_of_squares(dev)
        assert got == fusedopt._native.core().grad_sum_of_squares(host)
        assert got == _ref.sum_of_squares_exact(np, host)
        out = cupy.full(1, -1.0)
        assert _cuda.grad_sum_of_squares(dev, out=out.data.ptr) is None
        assert float(out[0]) == got


def test_count_nonfinite():
    g = cupy.ones(200_003, dtype=cupy.float32)
    g[[0, 5, 70_000, 200_002]] = cupy.asarray([np.nan, np.inf, -np.inf, np.nan], dtype=np.float32)
    assert _cuda.count_nonfinite([g, cupy.ones(3, cupy.float32)]) == 4


def test_adaptive_sgd_stays_on_device():
    host = [np.full(1000, 0.01, np.float32), np.full(77, -0.02, np.float32)]
    params = [cupy.ones(1000, cupy.float32), cupy.ones(77, cupy.float32)]
    grads = [cupy.asarray(g) for g in host]
    rate = fusedopt.adaptive_sgd_(params, grads, lr=0.5, backend="native")
    assert isinstance(rate.lr, cupy.ndarray) and rate.lr.shape == ()  # no host round trip
    cpu_params = [np.ones(1000, np.float32), np.ones(77, np.float32)]
    cpu_rate = fusedopt.adaptive_sgd_(cpu_params, host, lr=0.5, backend="native")
    assert float(rate.lr) == cpu_rate.lr
    for p, c in zip(params, cpu_params):
        assert np.array_equal(cupy.asnumpy(p), c)


def test_device_coefficients_and_skip():
    """Coefficients read from device memory (a step a CUDA graph can replay) give the same
    bits as the same coefficients passed by value; skip != 0 writes nothing."""
    rng = rng_for("device-coeffs")
    c = rules.adam.coefficients("adam_", step=3, lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1,
                     amsgrad=False, maximize=False, decoupled=True)
    arrays = [cupy.asarray(rng.standard_normal(10_007).astype(np.float32)) for _ in range(4)]
    arrays[3] = abs(arrays[3])
    by_value = [a.copy() for a in arrays]
    assert _cuda.run("adam", [by_value[0]], [by_value[1]], [[by_value[2]], [by_value[3]]], c) is None
    numeric = [float(getattr(c, n)) for n in c.numbers]  # AdamCoeffs' numbers, then the skip word
    skipped = [a.copy() for a in arrays]
    dc = cupy.asarray(numeric + [1.0], dtype=cupy.float64)
    _cuda.Batch([skipped[0]], [skipped[1]], [[skipped[2]], [skipped[3]]]).run(
        "adam", c, device_coeffs=dc.data.ptr)
    for a, b in zip(skipped, arrays):
        assert cupy.array_equal(a, b)
    dc = cupy.asarray(numeric + [0.0], dtype=cupy.float64)
    batch = _cuda.Batch([arrays[0]], [arrays[1]], [[arrays[2]], [arrays[3]]])
    batch.run("adam", c, device_coeffs=dc.data.ptr)
    for a, b in zip(arrays, by_value):
        assert cupy.array_equal(a, b)


def test_non_default_stream():
    case = CASES_BY_ID["adam"]
    host = make_inputs(case, np.float32, [1000, 70_001], steps=1, rng=rng_for("stream"))
    cpu = host.copy()
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        gpu = to_device(host.copy())
        run_steps(case, gpu, backend="native")
    stream.synchronize()
    run_steps(case, cpu, backend="native")
    assert_bitwise(to_host(gpu), cpu)


def test_fallback_without_module(monkeypatch):
    """Where the CUDA module is missing, auto falls back to the CuPy reference once warned
    and native raises."""
    monkeypatch.setattr(fusedopt.cuda, "_cuda", None)
    monkeypatch.setattr(_dispatch, "_fallbacks", {})
    p, g = cupy.ones(10, cupy.float32), cupy.full(10, 0.5, cupy.float32)
    with pytest.warns(_kernels.FallbackWarning, match="built without its CUDA module"):
        fusedopt.sgd_(p, g, lr=0.1)
    assert cupy.all(p == cupy.float32(1) - cupy.float32(0.1) * cupy.float32(0.5))
    assert "built without" in " ".join(fusedopt.info()["fallbacks"])
    with pytest.raises(RuntimeError, match="no compiled kernel"):
        fusedopt.sgd_(p, g, lr=0.1, backend="native")


def test_host_device_mix_names_the_argument():
    with pytest.raises(ValueError, match=r"grads\[1\]"):
        fusedopt.sgd_([cupy.ones(3, cupy.float32), cupy.ones(3, cupy.float32)],
                      [cupy.ones(3, cupy.float32), np.ones(3, np.float32)], lr=0.1)


class _InterfaceOnly:
    """A foreign device array that offers only __cuda_array_interface__ (Numba's, say)."""

    def __init__(self, a):
        self.__cuda_array_interface__ = a.__cuda_array_interface__


class _DLPackOnly:
    """A foreign device array that offers only DLPack (JAX's, say)."""

    def __init__(self, a):
        self._a = a

    def __dlpack__(self, **kwargs):
        return self._a.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._a.__dlpack_device__()


@pytest.mark.parametrize("wrap", [_InterfaceOnly, _DLPackOnly], ids=["cuda-array-interface", "dlpack"])
def test_foreign_device_arrays_update_in_place(wrap):
    """Arrays that CuPy does not own, seen only through one protocol, are updated in place
    with the bits of the same call on CuPy arrays."""
    case = CASES_BY_ID["adam"]
    host = make_inputs(case, np.float32, [1000, 70_001], steps=1, rng=rng_for("foreign", wrap.__name__))
    direct, foreign = to_device(host.copy()), to_device(host.copy())
    run_steps(case, direct, backend="native")
    wrapped = Inputs(foreign.single, [wrap(a) for a in foreign.params],
                     {n: [wrap(a) for a in v] for n, v in foreign.states.items()},
                     [[wrap(g) for g in gs] for gs in foreign.grads])
    run_steps(case, wrapped, backend="native")
    cupy.cuda.get_current_stream().synchronize()
    assert_bitwise(to_host(foreign), to_host(direct))
    assert not cupy.array_equal(foreign.params[1], to_device(host.copy()).params[1])  # it moved


def test_torch_cuda_tensors_in_place():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    p = torch.ones(1000, device="cuda")
    g = torch.full((1000,), 0.5, device="cuda")
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    fusedopt.adam_(p, g, m, v, step=1, lr=0.1, backend="native")
    torch.cuda.synchronize()
    assert torch.all(p < 1) and torch.all(m != 0)


def test_torch_cuda_tensors_take_the_fast_path(monkeypatch):
    """torch CUDA tensors (params as nn.Parameter) are checked in C++ like CuPy arrays, and
    an optimizer over them steps bit for bit with the CPU; a negative-bit view is refused."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    sizes = [3, 4099]
    rng = rng_for("torch-fast")
    host = [rng.uniform(-1, 1, n).astype(np.float32) for n in sizes]
    cpu = fusedopt.optim.Adam([h.copy() for h in host], lr=1e-2)
    gpu = fusedopt.optim.Adam([torch.nn.Parameter(torch.from_numpy(h).cuda()) for h in host],
                              lr=1e-2, backend="native")
    for step in range(3):
        g = [rng.uniform(-1, 1, n).astype(np.float32) for n in sizes]
        if step == 1:
            _no_prepare(monkeypatch)
        cpu.step(g)
        gpu.step([torch.from_numpy(x).cuda() for x in g])
    for a, b in zip(gpu.params, cpu.params):
        assert np.array_equal(a.detach().cpu().numpy(), b)
    monkeypatch.undo()
    p = torch.ones(4, device="cuda")
    with pytest.raises(TypeError, match="negative or conjugate bit"):
        fusedopt.sgd_(p, torch._neg_view(torch.ones(4, device="cuda")), lr=0.1)
    assert torch.all(p == 1)


def test_over_2_31_elements():
    """One tensor past int32 indexing, against the exact CuPy reference."""
    n = 2**31 + 17
    free, _ = cupy.cuda.runtime.memGetInfo()
    if free < 48 * 2**30:
        pytest.skip(f"needs ~48 GiB of free GPU memory, {free / 2**30:.0f} GiB free")
    p = cupy.ones(n, cupy.float32)
    g = cupy.full(n, 0.25, cupy.float32)
    g[-5:] = 3.0
    ref = p.copy()
    fusedopt.sgd_(p, g, lr=0.5, backend="native")
    fusedopt.reference.sgd_(ref, g, lr=0.5)
    assert bool(cupy.array_equal(p, ref))
    assert float(p[-1]) == 1.0 - 0.5 * 3.0
    del p, g, ref
    cupy.get_default_memory_pool().free_all_blocks()


# --------------------------------------------------------------------------------------
# Optimizers on device arrays: states allocated on the device, steps bit for bit with the
# same optimizer on the CPU, state_dict round trips, and the non-finite skip.
def _optimizer_pair(cls, sizes, key, **hyper):
    rng = rng_for("optim", cls.__name__, key)
    host = [rng.uniform(-1, 1, n).astype(np.float32) for n in sizes]
    cpu = cls([p.copy() for p in host], **hyper)
    gpu = cls([cupy.asarray(p) for p in host], backend="native", **hyper)
    return rng, cpu, gpu


@pytest.mark.parametrize("cls, hyper", [
    (fusedopt.optim.Adam, dict(lr=1e-2, weight_decay=0.1, amsgrad=True)),
    (fusedopt.optim.AdamW, dict(lr=1e-2)),
    (fusedopt.optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
    (fusedopt.optim.AdaptiveSGD, dict(lr=0.5, momentum=0.9)),
    (fusedopt.optim.Adagrad, dict(lr=0.1, initial_accumulator_value=0.1)),
    (fusedopt.optim.RMSprop, dict(lr=0.01, centered=True, momentum=0.5)),
], ids=lambda v: v.__name__ if isinstance(v, type) else "")
def test_optimizer_steps_match_cpu(cls, hyper):
    sizes = [1, 5, 8193, 70_001]
    rng, cpu, gpu = _optimizer_pair(cls, sizes, "steps", **hyper)
    for _ in range(3):
        grads = [rng.uniform(-1, 1, n).astype(np.float32) / 100 for n in sizes]
        out_cpu = cpu.step(grads)
        out_gpu = gpu.step([cupy.asarray(g) for g in grads])
        if cls is fusedopt.optim.AdaptiveSGD:
            assert float(out_gpu.lr) == out_cpu.lr
    assert gpu.step_count == cpu.step_count == 3
    for name, arrays in gpu.state.items():
        assert all(isinstance(a, cupy.ndarray) for a in arrays), name
    for a, b in zip(gpu.params + sum(gpu.state.values(), []), cpu.params + sum(cpu.state.values(), [])):
        assert np.array_equal(cupy.asnumpy(a), b)


def test_optimizer_state_dict_round_trip_on_device():
    sizes = [3, 4097]
    rng, _, gpu = _optimizer_pair(fusedopt.optim.Adam, sizes, "state", lr=1e-2)
    grads = [cupy.asarray(rng.uniform(-1, 1, n).astype(np.float32)) for n in sizes]
    gpu.step(grads)
    saved = gpu.state_dict()
    params_after_1 = [p.copy() for p in gpu.params]
    gpu.step(grads)
    expected = [p.copy() for p in gpu.params]
    for p, q in zip(gpu.params, params_after_1):
        p[...] = q
    gpu.load_state_dict(saved)
    assert gpu.step_count == 1
    gpu.step(grads)
    for p, e in zip(gpu.params, expected):
        assert bool(cupy.array_equal(p, e))


def test_optimizer_skips_nonfinite_step_on_device():
    sizes = [10, 70_001]
    rng, _, gpu = _optimizer_pair(fusedopt.optim.Adam, sizes, "skip", lr=1e-2, skip_if_nonfinite=True)
    grads = [cupy.asarray(rng.uniform(-1, 1, n).astype(np.float32)) for n in sizes]
    grads[1][65_537] = cupy.float32(np.nan)
    before = [a.copy() for a in gpu.params + sum(gpu.state.values(), [])]
    status = gpu.step(grads)
    assert status.skipped and status.nonfinite == 1 and gpu.step_count == 0
    for a, b in zip(gpu.params + sum(gpu.state.values(), []), before):
        assert bool(cupy.array_equal(a, b))


# --------------------------------------------------------------------------------------
# Capturable Adam: the step count and the coefficient table on the device
# (fusedopt.cuda.StepSchedule). Its steps must have the bits of the same steps taken eagerly,
# past the end of its table too, after lr changes and skipped steps.
def _capturable_trio(cls, sizes, key, **hyper):
    rng = rng_for("capturable", cls.__name__, key)
    host = [rng.uniform(-1, 1, n).astype(np.float32) for n in sizes]
    cpu = cls([p.copy() for p in host], **hyper)
    eager = cls([cupy.asarray(p) for p in host], backend="native", **hyper)
    captured = cls([cupy.asarray(p) for p in host], capturable=True, **hyper)
    return rng, cpu, eager, captured


def _assert_same_arrays(a, b):
    for x, y in zip(a.params + sum(a.state.values(), []), b.params + sum(b.state.values(), [])):
        x = x if isinstance(x, np.ndarray) else cupy.asnumpy(x)
        y = y if isinstance(y, np.ndarray) else cupy.asnumpy(y)
        assert np.array_equal(x, y)


@pytest.mark.parametrize("cls, hyper, steps", [
    (fusedopt.optim.Adam, dict(lr=1e-2, weight_decay=0.1, amsgrad=True), 4),
    # betas whose powers underflow within 83 steps: steps past the table's last row
    (fusedopt.optim.AdamW, dict(lr=1e-2, betas=(0.5, 0.6), maximize=True), 90),
    # a warm-up and decay given ahead, longer than the betas' 83 steps, then held
    (fusedopt.optim.AdamW, dict(lr=1e-2, betas=(0.5, 0.6),
                                lr_factors=[min(t / 10, 1.0) * (1.0 - t / 200) for t in range(1, 101)]), 110),
], ids=["Adam-amsgrad", "AdamW-short-table", "AdamW-lr-factors"])
def test_capturable_steps_match_eager_steps(cls, hyper, steps):
    sizes = [1, 5, 8193, 20_001]
    rng, cpu, eager, captured = _capturable_trio(cls, sizes, "steps", **hyper)
    table_rows = captured._schedule.table.shape[0]
    assert table_rows < steps or steps < 10
    assert table_rows == max(len(hyper.get("lr_factors", [])), 83) or steps < 10
    for k in range(steps):
        grads = [rng.uniform(-1, 1, n).astype(np.float32) / 100 for n in sizes]
        if k == steps // 2:  # a schedule's change of rate rewrites the table in place
            table = captured._schedule.table
            for o in (cpu, eager, captured):
                o.lr = hyper["lr"] / 3
            assert captured._schedule.table is table
        assert captured.step([cupy.asarray(g) for g in grads]) is None
        eager.step([cupy.asarray(g) for g in grads])
        cpu.step(grads)
    assert captured.capturable and not eager.capturable
    assert captured.step_count == eager.step_count == cpu.step_count == steps
    _assert_same_arrays(captured, eager)
    _assert_same_arrays(captured, cpu)


def test_capturable_skip_and_state_dict():
    """With skip_if_nonfinite the device counts NaN and inf: such a step writes nothing and
    does not count. state_dict and load_state_dict carry the device's step count."""
    sizes = [10, 70_001]
    hyper = dict(lr=1e-2, skip_if_nonfinite=True)
    rng, _, eager, captured = _capturable_trio(fusedopt.optim.Adam, sizes, "skip", **hyper)
    good = [cupy.asarray(rng.uniform(-1, 1, n).astype(np.float32)) for n in sizes]
    bad = [g.copy() for g in good]
    bad[1][65_537] = cupy.float32(np.inf)
    before = [a.copy() for a in captured.params + sum(captured.state.values(), [])]
    assert captured.step(bad) is None
    assert captured.step_count == 0
    for a, b in zip(captured.params + sum(captured.state.values(), []), before):
        assert bool(cupy.array_equal(a, b))
    captured.step(good)
    eager.step(good)
    assert captured.step_count == 1
    _assert_same_arrays(captured, eager)

    saved = captured.state_dict()
    assert saved["step"] == 1
    params_1 = [p.copy() for p in captured.params]
    captured.step(good)  # step 2
    expected = [a.copy() for a in captured.params + sum(captured.state.values(), [])]
    captured.load_state_dict(saved)
    for p, q in zip(captured.params, params_1):
        p[...] = q
    assert captured.step_count == 1
    captured.step(good)  # step 2 again: the device's count came back with the states
    for a, b in zip(captured.params + sum(captured.state.values(), []), expected):
        assert bool(cupy.array_equal(a, b))
    eager.step(good)
    _assert_same_arrays(captured, eager)
    assert captured.step_count == eager.step_count == 2


def test_capturable_refusals():
    params = [cupy.ones(3, cupy.float32)]
    with pytest.raises(ValueError, match="0.99996"):
        fusedopt.optim.Adam(params, betas=(0.9, 0.99999), capturable=True)
    with pytest.raises(ValueError, match="backend='reference'"):
        fusedopt.optim.Adam(params, capturable=True, backend="reference")
    with pytest.raises(TypeError, match="capturable"):
        fusedopt.optim.RMSprop(params, capturable=True)
    opt = fusedopt.optim.Adam(params, lr=0.5, capturable=True)
    opt.step([cupy.ones(3, cupy.float32)])
    saved = opt.state_dict()
    assert saved["step"] == 1
    # Loads that a graph captured before could not follow, or that are bad: nothing changes,
    # not the step count on the device, nor the table, nor the host's hyperparameters.
    refused = [(dict(betas=(0.9, 0.9)), {}, "length of its coefficient table"),
               (dict(maximize=True), {}, "kernel"),
               (dict(weight_decay=0.1), {}, "kernel"),
               ({}, dict(step=2**63), "step"),
               (dict(lr=-1.0), dict(step=5), "lr")]
    table = opt._schedule.table.copy()
    for hyper, top, match in refused:
        bad = opt.state_dict()
        bad["hyperparameters"].update(hyper)
        bad.update(top)
        bad["state"]["exp_avgs"] = [cupy.full(3, 7.0, cupy.float32)]
        with pytest.raises(ValueError, match=match):
            opt.load_state_dict(bad)
        assert opt.hyperparameters == saved["hyperparameters"] and opt.step_count == 1
        assert bool(cupy.array_equal(opt._schedule.table, table))
        assert not (cupy.asnumpy(opt.state["exp_avgs"][0]) == 7.0).any()
    before = opt.params[0].copy()
    with pytest.raises(ValueError, match="grads"):
        opt.step([cupy.ones(4, cupy.float32)])
    assert opt.step_count == 1 and bool(cupy.array_equal(opt.params[0], before))
    ok = opt.state_dict()  # a load that keeps the kernel and the table's length is taken
    ok["hyperparameters"].update(lr=0.25, betas=(0.8, 0.999), weight_decay=0.0)
    ok["step"] = 7
    opt.load_state_dict(ok)
    assert opt.step_count == 7 and opt.lr == 0.25
    first, rows = rules.adam.adam_table("Adam", lr=0.25, betas=(0.8, 0.999), eps=1e-8,
                                     weight_decay=0.0, amsgrad=False, maximize=False,
                                     decoupled=False)
    assert np.array_equal(cupy.asnumpy(opt._schedule.table)[:, :-1], rows)


# --------------------------------------------------------------------------------------
# The fast path for CuPy arrays (fusedopt._cuda.Batch.strict, csrc/bindings/cuda_batch.cpp):
# plain calls never reach the Python checks, every call those checks refuse is refused by
# it too (and then worded by prepare()), and an optimizer re-reads only its gradients.
def _no_prepare(monkeypatch):
    from fusedopt import _arrays

    def refuse(*args, **kwargs):
        raise AssertionError("the call went through _arrays.prepare(), not the fast path")

    monkeypatch.setattr(_arrays, "prepare", refuse)


def _device_lists(n_tensors=3, size=5, dtype=np.float32, value=1.0):
    return [cupy.full(size + t, value, dtype) for t in range(n_tensors)]


def test_fast_path_takes_plain_cupy_calls(monkeypatch):
    p, g = _device_lists(), _device_lists(value=0.5)
    m, v, buf, s = (_device_lists(value=0.0) for _ in range(4))
    expected = [x.get() for x in p]
    _no_prepare(monkeypatch)
    fusedopt.sgd_(p, g, buf, lr=0.1, momentum=0.9)
    fusedopt.adam_(tuple(p), tuple(g), m, v, step=1)
    fusedopt.adagrad_(p, g, s, step=1)
    fusedopt.rmsprop_(p[0], g[0], v[0], lr=0.1)  # one array per role
    rate = fusedopt.adaptive_sgd_(p, g, lr=0.1)
    assert isinstance(rate.lr, cupy.ndarray)  # computed on the device, no host sync
    assert not any(np.array_equal(x.get(), e) for x, e in zip(p, expected))
    # skip_if_nonfinite: the fast path's checks, then the count, then the update or nothing
    assert fusedopt.adam_(p, g, m, v, step=2, skip_if_nonfinite=True) == fusedopt.StepStatus(False, 0)
    g[1][2] = cupy.float32(np.inf)
    before = [x.get() for x in p + m + v]
    assert fusedopt.adam_(p, g, m, v, step=3, skip_if_nonfinite=True) == fusedopt.StepStatus(True, 1)
    assert fusedopt.adaptive_sgd_(p, g, lr=0.1, skip_if_nonfinite=True).skipped
    assert all(np.array_equal(x.get(), b) for x, b in zip(p + m + v, before))


# Each of these breaks one rule of prepare(); the fast path must refuse it, and prepare()
# must then raise the error named here, with nothing written.
def _bad_calls():
    f32 = cupy.float32

    def base():
        return ([cupy.ones(6, f32), cupy.ones(7, f32)], [cupy.full(6, 0.5, f32), cupy.full(7, 0.5, f32)])

    def case(mutate):
        p, g = base()
        return mutate(p, g)

    block = cupy.ones(12, f32)
    return {
        "grad of another dtype": (TypeError, r"grads\[1\] has dtype float64",
                                  lambda: case(lambda p, g: (p, [g[0], g[1].astype(cupy.float64)]))),
        "float16 params, float64 grads": (
            TypeError, r"grads\[0\] has dtype float64.*with float16 params",
            lambda: ([cupy.ones(6, cupy.float16)], [cupy.ones(6, cupy.float64)])),
        "same size, other shape": (ValueError, r"grads\[0\] has shape \(3, 2\)",
                                   lambda: ([cupy.ones((2, 3), f32)], [cupy.ones((3, 2), f32)])),
        "non-contiguous param": (ValueError, r"params\[0\] is not C-contiguous",
                                 lambda: ([cupy.ones(12, f32)[::2]], [cupy.ones(6, f32)])),
        "a param as its own grad": (ValueError, "share memory",
                                    lambda: case(lambda p, g: (p, [p[0], g[1]]))),
        "two params in one buffer": (ValueError, "share memory",
                                     lambda: ([block[:7], block[5:]], [cupy.ones(7, f32)] * 2)),
        "fewer grads than params": (ValueError, "grads has 1 arrays but params has 2",
                                    lambda: case(lambda p, g: (p, g[:1]))),
        "a host array among device arrays": (ValueError, r"grads\[1\] is a cpu array",
                                             lambda: case(lambda p, g: (p, [g[0], np.ones(7, np.float32)]))),
        "a list of grads for one param": (TypeError, "grads is a list but params is a single array",
                                          lambda: case(lambda p, g: (p[0], [g[0]]))),
    }


@pytest.mark.parametrize("why", list(_bad_calls()) if _REASON is None else ["no GPU"])
def test_fast_path_refuses_what_prepare_refuses(why):
    error, match, make = _bad_calls()[why]
    params, grads = make()
    single = not isinstance(params, list)
    plist = [params] if single else params
    assert _cuda.Batch.strict(params, grads, []) is None
    before = [x.copy() for x in plist]
    with pytest.raises(error, match=match):
        fusedopt.sgd_(params, grads, lr=0.1, backend="native")
    for x, b in zip(plist, before):
        assert bool(cupy.array_equal(x, b))


def _bad_state_calls():
    f32 = cupy.float32

    def case(mutate):
        p = [cupy.ones(6, f32), cupy.ones(7, f32)]
        g = [cupy.full(6, 0.5, f32), cupy.full(7, 0.5, f32)]
        return p, g, mutate(p, g, [cupy.zeros(6, f32), cupy.zeros(7, f32)])

    return {
        "a buffer of another dtype": (TypeError, r"momentum_buffers\[1\] has dtype float64",
                                      lambda: case(lambda p, g, b: [b[0], b[1].astype(cupy.float64)])),
        "a buffer that is a grad": (ValueError, "share memory", lambda: case(lambda p, g, b: [g[0], b[1]])),
        "a buffer that is a param": (ValueError, "share memory", lambda: case(lambda p, g, b: [b[0], p[1]])),
        "a non-contiguous buffer": (ValueError, r"momentum_buffers\[0\] is not C-contiguous",
                                    lambda: case(lambda p, g, b: [cupy.zeros(12, f32)[::2], b[1]])),
        "a buffer of another shape": (ValueError, r"momentum_buffers\[1\] has shape \(1, 7\)",
                                      lambda: case(lambda p, g, b: [b[0], b[1].reshape(1, 7)])),
        "one buffer short": (ValueError, "momentum_buffers has 1 arrays",
                             lambda: case(lambda p, g, b: b[:1])),
    }


@pytest.mark.parametrize("why", list(_bad_state_calls()) if _REASON is None else ["no GPU"])
def test_fast_path_refuses_bad_states(why):
    error, match, make = _bad_state_calls()[why]
    params, grads, buffers = make()
    assert _cuda.Batch.strict(params, grads, [buffers]) is None
    before = [x.copy() for x in params + buffers]
    with pytest.raises(error, match=match):
        fusedopt.sgd_(params, grads, buffers, lr=0.1, momentum=0.9, backend="native")
    for x, b in zip(params + buffers, before):
        assert bool(cupy.array_equal(x, b))


def test_optimizer_rereads_only_its_gradients(monkeypatch):
    """After the first step (checked in full) an optimizer on CuPy arrays keeps its Batch
    and checks each step's gradients against it; bad gradients still get prepare()'s error
    with nothing written and the step count unchanged, and a later good step goes on."""
    sizes = [4, 4097]
    rng, cpu, gpu = _optimizer_pair(fusedopt.optim.Adam, sizes, "held", lr=1e-2)
    grads = lambda: [rng.uniform(-1, 1, n).astype(np.float32) for n in sizes]  # noqa: E731
    g = grads()
    cpu.step(g)
    gpu.step([cupy.asarray(x) for x in g])
    held = gpu._params.batch
    assert held is not None
    before = [a.copy() for a in gpu.params + sum(gpu.state.values(), [])]
    bad = {
        "a grad that is a param": ([gpu.params[0], cupy.ones(4097, cupy.float32)], "share memory"),
        "a grad that is a state": ([cupy.ones(4, cupy.float32), gpu.state["exp_avgs"][1]], "share memory"),
        "a grad of another dtype": ([cupy.ones(4, cupy.float64), cupy.ones(4097, cupy.float32)], "dtype"),
        "a grad of another size": ([cupy.ones(5, cupy.float32), cupy.ones(4097, cupy.float32)], "shape"),
        "one grad short": ([cupy.ones(4, cupy.float32)], "grads has 1 arrays"),
    }
    for why, (bad_grads, match) in bad.items():
        assert held.set_grads(bad_grads) is False, why
        with pytest.raises((TypeError, ValueError), match=match):
            gpu.step(bad_grads)
        assert gpu.step_count == 1, why
        for a, b in zip(gpu.params + sum(gpu.state.values(), []), before):
            assert bool(cupy.array_equal(a, b)), why
    _no_prepare(monkeypatch)
    for _ in range(2):
        g = grads()
        cpu.step(g)
        gpu.step([cupy.asarray(x) for x in g])
    for a, b in zip(gpu.params + sum(gpu.state.values(), []), cpu.params + sum(cpu.state.values(), [])):
        assert np.array_equal(cupy.asnumpy(a), b)


def test_optimizer_keeps_its_batch_across_steps_and_no_gradient(monkeypatch):
    """Steps after the first use the Batch kept from it (no new one is built), and the
    optimizer holds no reference to a step's gradients once the step is done."""
    import sys

    sizes = [3, 70_001]
    rng, cpu, gpu = _optimizer_pair(fusedopt.optim.AdaptiveSGD, sizes, "keep", lr=0.5, momentum=0.9)
    g = [rng.uniform(-1, 1, n).astype(np.float32) for n in sizes]
    cpu.step(g)
    gpu.step([cupy.asarray(x) for x in g])

    def no_new_batch():
        raise AssertionError("a step after the first built a new Batch")

    monkeypatch.setattr(fusedopt.cuda, "module", no_new_batch)
    for _ in range(2):
        g = [rng.uniform(-1, 1, n).astype(np.float32) for n in sizes]
        dg = [cupy.asarray(x) for x in g]
        counts = [sys.getrefcount(x) for x in dg]
        cpu.step(g)
        gpu.step(dg)
        assert [sys.getrefcount(x) for x in dg] == counts
    for a, b in zip(gpu.params + sum(gpu.state.values(), []), cpu.params + sum(cpu.state.values(), [])):
        assert np.array_equal(cupy.asnumpy(a), b)


def test_optimizer_after_load_state_dict_with_other_flags():
    """load_state_dict may change a flag that changes which states a step uses (amsgrad
    off with its max state kept); the next step must not use the Batch of the old states."""
    sizes = [5, 4099]
    rng, cpu, gpu = _optimizer_pair(fusedopt.optim.Adam, sizes, "flags", lr=1e-2, amsgrad=True)
    for _ in range(2):
        g = [rng.uniform(-1, 1, n).astype(np.float32) for n in sizes]
        cpu.step(g)
        gpu.step([cupy.asarray(x) for x in g])
        for opt in (cpu, gpu):
            saved = opt.state_dict()
            saved["hyperparameters"]["amsgrad"] = not saved["hyperparameters"]["amsgrad"]
            opt.load_state_dict(saved)
    for a, b in zip(gpu.params + sum(gpu.state.values(), []), cpu.params + sum(cpu.state.values(), [])):
        assert np.array_equal(cupy.asnumpy(a), b)


def test_optimizer_refuses_a_state_reshaped_in_place():
    """CuPy can set an array's shape in place; a held state reshaped so is refused as
    prepare() refuses it, with nothing written."""
    sizes = [6, 10]
    rng, _, gpu = _optimizer_pair(fusedopt.optim.Adam, sizes, "reshape", lr=1e-2)
    grads = [cupy.asarray(rng.uniform(-1, 1, n).astype(np.float32)) for n in sizes]
    gpu.step(grads)
    gpu.state["exp_avgs"][0].shape = (2, 3)
    before = [a.copy() for a in gpu.params + sum(gpu.state.values(), [])]
    with pytest.raises(ValueError, match=r"exp_avgs\[0\] has shape \(2, 3\)"):
        gpu.step(grads)
    assert gpu.step_count == 1
    for a, b in zip(gpu.params + sum(gpu.state.values(), []), before):
        assert bool(cupy.array_equal(a, b))


def test_adaptive_sgd_on_empty_device_tensors():
    """No element to norm or update: the rate is lr0 and the norm 0, as on the CPU (no kernel
    runs, so the device result must be written all the same)."""
    rate = fusedopt.adaptive_sgd_([cupy.zeros(0, cupy.float32)] * 2, [cupy.zeros(0, cupy.float32)] * 2,
                                  lr=0.25, backend="native")
    assert float(rate.lr) == 0.25 and float(rate.grad_norm) == 0.0


def test_fast_path_survives_a_list_changed_while_it_reads(monkeypatch):
    """The CUDA fast path calls into Python for every attribute it reads; a getter that
    empties the list being read (a finalizer could) must not leave it reading freed memory."""
    if not hasattr(cupy, "install"):  # real CuPy: its getters are C code and run no Python
        pytest.skip("needs the CuPy stand-in, whose getters are Python")
    params = [cupy.ones(4, cupy.float32) for _ in range(50)]
    grads = [cupy.ones(4, cupy.float32) for _ in range(50)]
    original = type(params[0]).shape

    def emptying(self):
        params.clear()
        grads.clear()
        return original.fget(self)

    monkeypatch.setattr(type(params[0]), "shape", property(emptying))
    assert _cuda.Batch.strict(params, grads, []) is not None  # read from its own copy


# --------------------------------------------------------------------------------------
# Streams: a call runs on the current stream of its params' library (torch's for torch
# tensors, else CuPy's), so it waits for the work that made its gradients there. Each test
# queues a long sleep on a side stream and writes the gradients behind it: a call queued on
# any other stream (the legacy default stream, which torch's side streams do not wait for)
# would read them before they are written.
SLEEP_CYCLES = 200_000_000  # about 0.1 s at 2 GHz
N_STREAM = 1 << 20


def _torch_cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    return torch


def test_torch_calls_run_on_torch_current_stream(monkeypatch):
    torch = _torch_cuda()
    from fusedopt import _native

    side = torch.cuda.Stream()
    half = torch.full((N_STREAM,), 0.5, device="cuda")
    with_inf = half.clone()
    with_inf[12345] = float("inf")
    torch.cuda.synchronize()

    def late(src):  # zeros now, src's values once the sleep on the current stream is over
        g = torch.zeros(N_STREAM, device="cuda")
        torch.cuda._sleep(SLEEP_CYCLES)
        g.copy_(src)
        return g

    def ones():
        return torch.nn.Parameter(torch.ones(N_STREAM, device="cuda"))

    with torch.cuda.stream(side):
        fast, checked, skipped, adaptive = ones(), ones(), ones(), ones()
        fusedopt.sgd_(fast, late(half), lr=1.0)
        status = fusedopt.sgd_(skipped, late(with_inf), lr=1.0, skip_if_nonfinite=True)
        rate = fusedopt.adaptive_sgd_([adaptive], [late(half)], lr=0.5)
        opt = fusedopt.optim.SGD([ones()], lr=0.25, momentum=0.5)
        for _ in range(2):  # the first step checks all, the second only the new gradients
            opt.step([late(half)])
        with monkeypatch.context() as m:  # the checked path: prepare(), then CuPy views
            m.setattr(_native, "device_batch", lambda *args: None)
            fusedopt.sgd_(checked, late(half), lr=1.0)
    side.synchronize()
    assert status.skipped and status.nonfinite == 1 and torch.all(skipped == 1)
    assert torch.all(fast == 0.5) and torch.all(checked == 0.5)
    cpu = np.ones(N_STREAM, np.float32)
    cpu_rate = fusedopt.adaptive_sgd_([cpu], [np.full(N_STREAM, 0.5, np.float32)], lr=0.5)
    assert isinstance(rate.lr, torch.Tensor) and float(rate.lr) == cpu_rate.lr
    assert np.array_equal(adaptive.detach().cpu().numpy(), cpu)
    # SGD with momentum, torch's convention: buf = g, then buf = 0.5 buf + g.
    assert torch.all(opt.params[0] == 1.0 - 0.25 * 0.5 - 0.25 * 0.75)


@pytest.mark.skipif(CUDA_EMULATION, reason="the emulation runs work when it is queued: no order to see")
def test_cupy_calls_run_on_cupy_current_stream():
    spin = cupy.RawKernel(r"""
extern "C" __global__ void spin(long long cycles) {
  const long long start = clock64();
  while (clock64() - start < cycles) {}
}""", "spin")
    with cupy.cuda.Stream(non_blocking=True) as side:
        p, q = cupy.ones(N_STREAM, cupy.float32), cupy.ones(N_STREAM, cupy.float32)
        g = cupy.zeros(N_STREAM, cupy.float32)
        spin((1,), (1,), (np.int64(SLEEP_CYCLES),))
        g.fill(0.5)
        fusedopt.sgd_(p, g, lr=1.0)
        status = fusedopt.sgd_(q, g, lr=1.0, skip_if_nonfinite=True)
    side.synchronize()
    assert not status.skipped
    assert bool((p == 0.5).all()) and bool((q == 0.5).all())


def test_torch_cuda_graph_replays_a_step():
    """A step on torch tensors captured by torch.cuda.graph (on torch's capture stream) and
    replayed gives the bits of the same steps run eagerly. SGD with momentum past its first
    step has the same coefficients every step, so the captured ones stay right."""
    torch = _torch_cuda()
    rng = rng_for("graph")
    p = torch.from_numpy(rng.uniform(-1, 1, 10_007).astype(np.float32)).cuda()
    g = torch.from_numpy(rng.uniform(-1, 1, 10_007).astype(np.float32)).cuda()
    buf = torch.from_numpy(rng.uniform(-1, 1, 10_007).astype(np.float32)).cuda()
    eager_p, eager_buf = p.clone(), buf.clone()
    hyper = dict(lr=0.1, momentum=0.9, step=2)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture, as torch asks
        for _ in range(2):
            fusedopt.sgd_(p, g, buf, **hyper)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fusedopt.sgd_(p, g, buf, **hyper)
    for _ in range(3):
        graph.replay()
    for _ in range(5):
        fusedopt.sgd_(eager_p, g, eager_buf, **hyper)
    torch.cuda.synchronize()
    assert torch.equal(p, eager_p) and torch.equal(buf, eager_buf)


def test_torch_cuda_graph_replays_capturable_adam():
    """A capturable Adam step captured by torch.cuda.graph and replayed: every replay is the
    next step, with its own bias corrections, and the bits of the same steps taken eagerly,
    also across a change of lr between replays."""
    torch = _torch_cuda()
    rng = rng_for("graph-adam")
    host = [rng.uniform(-1, 1, n).astype(np.float32) for n in (10_007, 3)]
    grads = [torch.from_numpy(rng.uniform(-1, 1, p.size).astype(np.float32)).cuda() for p in host]
    captured = fusedopt.optim.AdamW([torch.from_numpy(p).cuda() for p in host], lr=1e-2,
                                    capturable=True)
    eager = fusedopt.optim.AdamW([torch.from_numpy(p).cuda() for p in host], lr=1e-2)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture, as torch asks
        captured.step(grads)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured.step(grads)
    for k in range(4):  # steps 2 to 5; steps 4 and 5 at the new rate
        if k == 2:
            captured.lr = 3e-3
        graph.replay()
    for k in range(5):
        if k == 3:
            eager.lr = 3e-3
        eager.step(grads)
    torch.cuda.synchronize()
    assert captured.step_count == eager.step_count == 5
    for a, b in zip(captured.params + sum(captured.state.values(), []),
                    eager.params + sum(eager.state.values(), [])):
        assert bool((cupy.asarray(a) == cupy.asarray(b)).all())


@pytest.mark.skipif(CUDA_EMULATION, reason="the emulation has no stream capture")
def test_cupy_graph_replays_capturable_adam():
    """The same with CuPy arrays and CuPy's stream capture, AMSGrad, a rate schedule
    (lr_factors) and the device-side NaN/inf skip included: a replay on gradients holding an
    inf writes nothing and is not counted."""
    rng = rng_for("cupy-graph-adam")
    host = [rng.uniform(-1, 1, n).astype(np.float32) for n in (70_001, 5)]
    grads = [cupy.asarray(rng.uniform(-1, 1, p.size).astype(np.float32)) for p in host]
    hyper = dict(lr=1e-2, amsgrad=True, skip_if_nonfinite=True, lr_factors=[0.5, 1.0, 0.25])
    captured = fusedopt.optim.Adam([cupy.asarray(p) for p in host], capturable=True, **hyper)
    eager = fusedopt.optim.Adam([cupy.asarray(p) for p in host], **hyper)
    captured.step(grads)
    cupy.cuda.get_current_stream().synchronize()
    capture = cupy.cuda.Stream(non_blocking=True)
    with capture:
        capture.begin_capture()
        captured.step(grads)
        graph = capture.end_capture()
    saved = grads[1][3].copy()
    for k in range(4):  # steps 2 and 3, a skipped replay, step 4
        grads[1][3] = cupy.float32(np.inf) if k == 2 else saved
        graph.launch()
    grads[1][3] = saved
    for _ in range(4):
        eager.step(grads)
    cupy.cuda.get_current_stream().synchronize()
    assert captured.step_count == eager.step_count == 4
    _assert_same_arrays(captured, eager)


def test_verify_command_on_the_device(monkeypatch, capsys):
    """python -m fusedopt verify --device cuda: every case on the GPU is identical to the
    exact reference and to the CPU kernels on the same inputs."""
    from fusedopt import _verify

    # Smaller than the command's sizes (its CPU references take seconds), still covering
    # empty tensors, vector heads and tails, and several chunks.
    monkeypatch.setattr(_verify, "SIZES", [0, 1, 17, 1023, 20_003])
    if CUDA_EMULATION:
        # The emulation runs each block's threads as OS threads: a launch takes tens of ms on
        # two cores, and every example of every rule took three minutes. The first example
        # of each public function here (the command's loop is the same for all);
        # test_rule_bitwise_* above run every example on the emulation.
        firsts = {}
        for case in _verify.CASES:
            firsts.setdefault(case[1], case)
        monkeypatch.setattr(_verify, "CASES", list(firsts.values()))
        _cuda.take_launches()
    assert _verify.main(["--device", "cuda"]) == 0
    out = capsys.readouterr().out
    device_dtypes = [d for d in _verify.DTYPES if d.name != "bfloat16"]  # CuPy has no bfloat16
    assert f"{len(device_dtypes) * len(_verify.CASES)} passed, 0 failed" in out
    assert "vs CPU" in out and "DIFFERENT" not in out
    if CUDA_EMULATION:  # the device kernels ran, not the CPU's under another name
        assert len(_cuda.take_launches()) >= 2 * len(_verify.CASES) * _verify.STEPS


# --------------------------------------------------------------------------------------
# Storage types: 16-bit params, grads and states (tests/test_mixed_precision.py checks the
# CPU against the exact reference), on the device bit for bit with the CPU.
MIXED_COMBOS = [("bf16", "bf16", "bf16"), ("bf16", "f32", "f32"), ("f16", "f16", "f32"),
                ("f16", "f32", "bf16"), ("f32", "bf16", "f32"), ("f32", "f16", "bf16")]
MIXED_EXAMPLES = ["adam-amsgrad", "adamw", "sgd-momentum", "rmsprop-centered-momentum", "lion",
                  "adamax", "adagrad", "adaptive_sgd-momentum"]


def _mixed():
    return pytest.importorskip("test_mixed_precision")


def _to_device_array(x):
    """A device copy of a host array: CuPy's; for bfloat16, which CuPy lacks, a torch CUDA
    tensor (the host emulation's CuPy stand-in holds NumPy's ml_dtypes arrays as they are)."""
    if x.dtype.name == "bfloat16" and not CUDA_EMULATION:
        torch = pytest.importorskip("torch")
        if not torch.cuda.is_available():
            pytest.skip("bfloat16 device arrays need torch with CUDA here")
        return torch.from_numpy(x.view(np.int16).copy()).view(torch.bfloat16).cuda()
    return cupy.asarray(x)


def _to_host_array(x, dtype):
    if not _arrays.is_torch_tensor(x):
        return cupy.asnumpy(x)
    import torch

    return x.cpu().view(torch.int16).numpy().view(dtype)


@pytest.mark.parametrize("combo", MIXED_COMBOS, ids=lambda c: "p{}-g{}-s{}".format(*c))
@pytest.mark.parametrize("name", MIXED_EXAMPLES)
def test_mixed_storage_matches_cpu(name, combo):
    mp = _mixed()
    (case,) = [c for c in mp.EXAMPLES if c.id == name]
    sizes = [0, 1, 3, 4, 5, 7, 8, 17, 16383, 16385, 65537]
    host = mp.make_arrays(case, combo, sizes, rng_for("cuda mixed", name, combo))
    cpu = mp._copy(host)
    params, states, grads = host
    dev = ([_to_device_array(p) for p in params],
           {k: [_to_device_array(a) for a in v] for k, v in states.items()},
           [[_to_device_array(g) for g in step] for step in grads])
    out_dev = mp.run(case, dev, backend="native")
    out_cpu = mp.run(case, cpu, backend="native")
    cupy.cuda.get_current_stream().synchronize()
    back = ([_to_host_array(a, b.dtype) for a, b in zip(dev[0], params)],
            {k: [_to_host_array(a, b.dtype) for a, b in zip(dev[1][k], states[k])] for k in states}, [])
    mp.assert_same(back, cpu)
    if case.fn == "adaptive_sgd_":
        for g, c in zip(out_dev, out_cpu):
            assert float(g.lr) == c.lr


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize("combo", MIXED_COMBOS, ids=lambda c: "p{}-g{}-s{}".format(*c))
def test_adafactor_storage_matches_cpu(combo, rounding):
    """Adafactor's passes in 16-bit storage, vectors and (batches of) matrices, a row past a
    norm block among them: the device's bits are the CPU's (tests/test_adafactor.py checks
    the CPU against the exact reference)."""
    mp = _mixed()
    from test_adafactor import assert_all_same_bits, copied, make

    p_dt, g_dt, s_dt = (mp.DT[c] for c in combo)
    params, states, grads = make([(5,), (17, 33), (2, 3, 70), (2, 66_000)], np.float32,
                                 rng_for("cuda adafactor", combo), steps=2)
    params = [p.astype(p_dt) for p in params]
    states = {n: [None if a is None else a.astype(s_dt) for a in v] for n, v in states.items()}
    grads = [[g.astype(g_dt) for g in step] for step in grads]
    cpu = copied(params, states)
    on_dev = lambda xs: [None if x is None else _to_device_array(x) for x in xs]  # noqa: E731
    dev_p, dev_s = on_dev(params), {n: on_dev(v) for n, v in states.items()}
    hyper = dict(lr=0.02, weight_decay=0.1, maximize=True, rounding=rounding, state_rounding=rounding,
                 seed=3, backend="native")
    for step, g in enumerate(grads, start=1):
        fusedopt.adafactor_(dev_p, on_dev(g), *dev_s.values(), step=step, **hyper)
        fusedopt.adafactor_(cpu[0], g, *cpu[1].values(), step=step, **hyper)
    cupy.cuda.get_current_stream().synchronize()
    back = ([_to_host_array(a, b.dtype) for a, b in zip(dev_p, params)],
            {n: [None if a is None else _to_host_array(a, b.dtype) for a, b in zip(dev_s[n], states[n])]
             for n in states})
    assert_all_same_bits(back, cpu)


@pytest.mark.parametrize("offsets", [(1, 1, 1), (0, 1, 1), (3, 3, 2), (2, 2, 2)],
                         ids=lambda o: "-".join(map(str, o)))
def test_mixed_storage_misaligned_views(offsets):
    """float16 params and grads with float32 states: the same element offset in every role
    runs the vector body after a peeled head, different ones the scalar path."""
    mp = _mixed()
    case = Case("adam", "adam_", dict(lr=0.01, weight_decay=0.01))
    host = mp.make_arrays(case, ("f16", "f16", "f32"), [1, 2, 5, 16384 + 3, 100_001],
                          rng_for("mixed views", offsets))
    cpu = mp._copy(host)

    def view(x, off):
        buf = cupy.empty(x.size + 4, dtype=x.dtype)
        v = buf[off:off + x.size]
        v.set(x)
        return v

    op, og, os_ = offsets
    params, states, grads = host
    dev = ([view(p, op) for p in params], {k: [view(a, os_) for a in v] for k, v in states.items()},
           [[view(g, og) for g in step] for step in grads])
    mp.run(case, dev, backend="native")
    mp.run(case, cpu, backend="native")
    back = ([cupy.asnumpy(p) for p in dev[0]], {k: [cupy.asnumpy(a) for a in v] for k, v in dev[1].items()},
            [])
    mp.assert_same(back, cpu)


def test_mixed_storage_norm_and_count():
    mp = _mixed()
    rng = rng_for("mixed sumsq")
    for dtype in (np.float16, mp.BF16):
        host = [(rng.standard_normal(n) * 3).astype(np.float32).astype(dtype)
                for n in (0, 1, 33, 65537, 200_003)]
        dev = [_to_device_array(g) for g in host]
        assert _cuda.grad_sum_of_squares(dev) == fusedopt._native.core().grad_sum_of_squares(host)
        host[3][[0, 9]] = np.array([np.nan, np.inf], np.float32).astype(dtype)
        dev = [_to_device_array(g) for g in host]
        assert _cuda.count_nonfinite(dev) == 2


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_adafactor_factored_shapes(dtype):
    """Adafactor through the public call on device arrays (matrices and batches of them,
    with None where a param keeps no such state): the CPU's bits, and its optimizer too."""
    from test_adafactor import STATES, assert_all_same_bits, copied, make

    shapes = [(7,), (4, 5), (3, 70), (2, 3, 17), (300, 301)]
    params, states, grads = make(shapes, dtype, rng_for("cuda-adafactor", np.dtype(dtype).name))
    put = lambda xs: [None if x is None else cupy.asarray(x) for x in xs]  # noqa: E731
    get = lambda xs: [None if x is None else cupy.asnumpy(x) for x in xs]  # noqa: E731
    host = copied(params, states)
    dev_p, dev_s = put(params), {n: put(v) for n, v in states.items()}
    for step, g in enumerate(grads, start=1):
        fusedopt.adafactor_(dev_p, put(g), *dev_s.values(), step=step, lr=0.05, weight_decay=0.1,
                            backend="native")
        fusedopt.adafactor_(host[0], g, *host[1].values(), step=step, lr=0.05, weight_decay=0.1)
    assert_all_same_bits((get(dev_p), {n: get(dev_s[n]) for n in STATES}), host)


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize("fn", ["adam_", "lamb_"])
def test_master_weights_as_the_cpu(fn, rounding):
    """float16 params with float32 masters (CuPy has no bfloat16) through the public API:
    the CPU's bits, the elementwise kernel's and LAMB's passes alike."""
    rng = rng_for("cuda-masters", fn, rounding)
    sizes = (1, 1000, 70_001)
    masters = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    host = dict(p=[m.astype(np.float16) for m in masters], m=masters,
                s=[np.zeros(n, np.float32) for n in sizes], v=[np.zeros(n, np.float32) for n in sizes])
    dev = {k: [cupy.asarray(a) for a in v] for k, v in host.items()}
    for step in range(1, 4):
        g = [rng.standard_normal(n).astype(np.float16) for n in sizes]
        for arrays, grads in ((host, g), (dev, [cupy.asarray(x) for x in g])):
            getattr(fusedopt, fn)(arrays["p"], grads, arrays["s"], arrays["v"], step=step, lr=1e-2,
                                  master_params=arrays["m"], rounding=rounding, seed=3,
                                  backend="native")
    for k in host:
        for a, b in zip(host[k], dev[k]):
            assert np.array_equal(a.view(np.uint8), cupy.asnumpy(b).view(np.uint8)), k


def test_optimizer_master_weights_as_the_cpu():
    rng = rng_for("cuda-optim-masters")
    start = [rng.standard_normal(n).astype(np.float32).astype(np.float16) for n in (7, 5000)]
    host = [p.copy() for p in start]
    dev = [cupy.asarray(p) for p in start]
    opt_h = fusedopt.optim.AdamW(host, lr=1e-2, master_weights="float32")
    opt_d = fusedopt.optim.AdamW(dev, lr=1e-2, master_weights="float32")
    for _ in range(3):
        g = [rng.standard_normal(p.size).astype(np.float16) for p in start]
        opt_h.step(g)
        opt_d.step([cupy.asarray(x) for x in g])
    for a, b, ma, mb in zip(host, dev, opt_h.masters, opt_d.masters):
        assert np.array_equal(a.view(np.uint16), cupy.asnumpy(b).view(np.uint16))
        assert np.array_equal(ma.view(np.uint32), cupy.asnumpy(mb).view(np.uint32))
