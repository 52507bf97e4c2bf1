"""The CUDA kernels, run on the CPU by the host emulation, against the CPU kernels bit for bit.

fusedopt._cuda_emulated is the CUDA backend (csrc/cuda/: kernels, launch planning, parameter
tables, bindings) compiled by the host compiler against stand-ins for the CUDA headers
(csrc/cuda_emulation/). Its "device arrays" are host memory behind __cuda_array_interface__.
This checks what a GPU test checks about indexing and order (chunk spans, peeled heads and
tails, grid-stride loops over many chunks, tables split across launches, the norm's fixed
order, device-side coefficients) on every machine; tests/test_cuda.py checks the real device.

Each call takes its coefficients from the public API: the CPU call of the same step runs
first with the CPU module wrapped so that it records the coefficient tuple it was given, and
the emulated kernel gets exactly that tuple.

The module is built only with FUSEDOPT_CUDA_EMULATION=ON (CI does); elsewhere this skips.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import fusedopt
import numpy as np
import pytest
from conftest import CASES, CASES_BY_ID, CUDA_EMULATION, Inputs, assert_bitwise, make_inputs, rng_for
from fusedopt import _coeffs, _dispatch, _native, rules

emu = pytest.importorskip(
    "fusedopt._cuda_emulated",
    reason="fusedopt was built without FUSEDOPT_CUDA_EMULATION=ON (the CUDA kernels on the CPU)")



class HostAsDevice:
    """A NumPy array presented as a CUDA device array (the emulation's device memory is
    host memory)."""

    def __init__(self, a: np.ndarray):
        self.a = a

    @property
    def __cuda_array_interface__(self):
        return {"shape": self.a.shape, "typestr": self.a.dtype.str, "data": (self.a.ctypes.data, False),
                "strides": self.a.strides if not self.a.flags.c_contiguous else None, "version": 3}


def dev(arrays):
    return [None if a is None else HostAsDevice(a) for a in arrays]  # None: a state not kept


class _RecordingCore:
    """The CPU module, recording the rule and coefficients of every kernel it runs."""

    def __init__(self, core):
        self._core = core
        self.calls = []

    def __getattr__(self, name):
        return getattr(self._core, name)

    def run(self, rule, params, grads, states, coeffs, grad_multiplier=1.0, rounding=None, *master):
        refusal = self._core.run(rule, params, grads, states, coeffs, grad_multiplier, rounding, *master)
        if refusal is None:
            self.calls.append((rule, coeffs, grad_multiplier, rounding))
        return refusal

    def Call(self, *args, **kwargs):  # noqa: N802 - the module's class
        return _RecordingCall(self, self._core.Call(*args, **kwargs))


class _RecordingCall:
    def __init__(self, recorder, call):
        self._recorder, self._call = recorder, call

    def __getattr__(self, name):
        return getattr(self._call, name)

    def run(self, rule, coeffs, grad_multiplier=1.0, rounding=None):
        self._recorder.calls.append((rule, coeffs, grad_multiplier, rounding))
        return self._call.run(rule, coeffs, grad_multiplier=grad_multiplier, rounding=rounding)


@contextlib.contextmanager
def recording(monkeypatch):
    rec = _RecordingCore(_native.core())
    with monkeypatch.context() as m:
        m.setattr(_dispatch, "_core", rec)
        yield rec


@contextlib.contextmanager
def device_shape(multiprocessors, blocks_per_multiprocessor):
    old = emu.set_device_shape(multiprocessors, blocks_per_multiprocessor)
    try:
        yield
    finally:
        emu.set_device_shape(*old)


def emulated_step(case, inputs: Inputs, k: int, rule: str, coeffs, grad_multiplier=1.0, rounding=None):
    """Step k of `case` on the emulated device with the coefficients (and the gradients'
    multiplier) the CPU call used."""
    params, grads, states = dev(inputs.params), dev(inputs.grads[k]), [dev(v) for v in inputs.states.values()]
    if case.fn == "adaptive_sgd_":
        # The whole adaptive step on the device: the norm, the rate, then SGD reading the
        # rate from device memory. The base coefficients are the call's at lr0.
        lr0 = case.kwargs["lr"]
        base = coeffs._replace(lr=lr0, decay_factor=1.0 - lr0 * coeffs.weight_decay)
        result = np.full(2, np.nan)
        emu.Batch(params, grads, states).adaptive_sgd(base, result=result.ctypes.data)
        return result
    assert emu.run(rule, params, grads, states, coeffs, grad_multiplier=grad_multiplier,
                   rounding=rounding) is None
    return None


def check_case(monkeypatch, case, dtype, sizes, *, steps=3, key=(), **scaling):
    """Runs `steps` steps on the CPU and on the emulated device from the same inputs; every
    array must agree bit for bit (and the adaptive rate and norm with them). ``scaling``:
    loss scaling and clipping arguments of the CPU call, whose multiplier the device gets."""
    host = make_inputs(case, dtype, sizes, steps=steps, rng=rng_for("emulated", case.id, dtype, sizes, *key))
    cpu, gpu = host.copy(), host.copy()
    for k in range(steps):
        with recording(monkeypatch) as rec:
            out = case.call(*cpu.args(k), k + 1, backend="native", **scaling)
        assert len(rec.calls) == 1, rec.calls
        result = emulated_step(case, gpu, k, *rec.calls[0])
        if result is not None:
            assert result[1] == _native.core().grad_sum_of_squares(host.grads[k])
            assert result[0] == out.lr, "the rate computed on the device has other bits"
    assert_bitwise(gpu, cpu)


SIZES = [0, 1, 3, 4, 5, 17, 8191, 8192, 8193, 16384 + 3, 65537, 0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_rule_bitwise(monkeypatch, case, dtype):
    check_case(monkeypatch, case, dtype, SIZES)


@pytest.mark.parametrize("case", [CASES_BY_ID[i] for i in ("adam-amsgrad-wd", "sgd-keras-nesterov-wd",
                                                           "lion-wd-max", "rmsprop-centered-mom-wd")],
                         ids=lambda c: c.id)
def test_scaled_and_clipped_bitwise(monkeypatch, case):
    """Loss scaling and clipping reach the device as the gradients' multiplier: the same
    bits as the CPU, whose multiplier here is neither 1 nor a power of two."""
    check_case(monkeypatch, case, np.float32, SIZES, grad_scale=3.0, max_grad_norm=0.25)


@pytest.mark.parametrize("shape", [(1, 1), (3, 1), (64, 16)],
                         ids=["1-block", "3-blocks", "limit-above-chunks"])
@pytest.mark.parametrize("case", [CASES_BY_ID[i] for i in ("adam-amsgrad-wd", "sgd-nesterov",
                                                           "asgd-mom-wd-max", "rmsprop-centered-mom-wd",
                                                           "adagrad-decay")],
                         ids=lambda c: c.id)
def test_grid_shapes(monkeypatch, case, shape):
    """One block walking every chunk, a few blocks each walking several, and a grid limit
    above the chunk count (the planner then launches one block per chunk, never more)."""
    sizes = [200_003, 5, 70_001]
    emu.take_launches()
    with device_shape(*shape):
        check_case(monkeypatch, case, np.float32, sizes, steps=1, key=shape)
    [(grid, _, _)] = _update_launches(case, emu.take_launches())
    limit = shape[0] * shape[1]
    chunks = sum(emu.chunk_count(n, 0) for n in sizes)  # plus at most one per peeled head
    assert grid == limit if limit < chunks else chunks <= grid <= chunks + len(sizes)


@contextlib.contextmanager
def chunk_elements(n):
    old = emu.set_chunk_elements(n)
    try:
        yield
    finally:
        emu.set_chunk_elements(old)


@pytest.mark.parametrize("chunk", [2048, 4096, 65536])
@pytest.mark.parametrize("case", [CASES_BY_ID[i] for i in ("adam-amsgrad-wd", "sgd-nesterov",
                                                           "asgd-mom-wd-max")], ids=lambda c: c.id)
def test_chunk_sizes_give_the_same_bits(monkeypatch, case, chunk):
    """The chunk size (tunable for benchmarks, _cuda.set_chunk_elements) changes how the
    work is cut, never the results; the launches are planned with it."""
    sizes = [1, 2047, 2048, 2049, 6147, 0, 70_001, 131_075]
    emu.take_launches()
    with chunk_elements(chunk), device_shape(64, 8):
        check_case(monkeypatch, case, np.float32, sizes, steps=1, key=("chunk", chunk))
    [(grid, _, _)] = _update_launches(case, emu.take_launches())
    chunks = sum(emu.chunk_count(n, 0, chunk) for n in sizes)  # plus at most one per peeled head
    assert chunks <= grid <= chunks + len(sizes)
    assert emu.chunk_elements() == emu.CHUNK_ELEMENTS


def test_chunk_size_must_be_a_multiple_of_a_block_pass():
    for bad in (0, -2048, 1000, 2049):
        with pytest.raises(ValueError, match="multiple of 2048"):
            emu.set_chunk_elements(bad)
    assert emu.chunk_elements() == emu.CHUNK_ELEMENTS


@pytest.mark.parametrize("case", [CASES_BY_ID[i] for i in ("adam-amsgrad", "sgd", "asgd", "rmsprop-mom")],
                         ids=lambda c: c.id)
def test_thousands_of_odd_tensors(monkeypatch, case):
    """More tensors than one launch's table holds: the call is split over several launches."""
    rng = rng_for("thousands", case.id)
    sizes = [int(n) for n in rng.integers(0, 300, 2500) | 1]
    sizes[::97] = [0] * len(sizes[::97])  # empty tensors take no slot
    emu.take_launches()
    check_case(monkeypatch, case, np.float32, sizes, steps=1, key=("thousands",))
    roles = 2 + len(case.states)
    per_launch = emu.update_capacity(roles)
    expected = -(-sum(1 for n in sizes if n) // per_launch)
    assert len(_update_launches(case, emu.take_launches())) == expected > 1


def _update_launches(case, launches):
    """The update kernels' launches of one step of `case`. Adaptive SGD launches the norm's
    block sums, then its final sum (the one 32-thread launch), then the update."""
    if case.fn != "adaptive_sgd_":
        return launches
    finishes = [i for i, (_, threads, _) in enumerate(launches) if threads == 32]
    assert len(finishes) == 1, launches
    return launches[finishes[0] + 1:]


# --------------------------------------------------------------------------------------
# Misaligned views: the same offset from a 16-byte boundary in every role (vectors with a
# peeled head) and different offsets per role (the scalar path).
def _aligned_view(x: np.ndarray, offset: int) -> np.ndarray:
    """A copy of x that starts `offset` elements past a 16-byte boundary and ends where its
    buffer ends, so that under ASan (tools/sanitize.sh) a read past the end is a report."""
    for pad in range(16 // x.itemsize + offset + 1):
        buf = np.empty(x.size + pad, dtype=x.dtype)
        if (buf.ctypes.data + pad * x.itemsize) % 16 == offset * x.itemsize % 16:
            v = buf[pad:]
            v[...] = x
            return v
    raise AssertionError("no padding gives that offset")


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("offsets", [(1, 1, 1, 1), (3, 3, 3, 3), (0, 1, 2, 3), (2, 0, 2, 2), (1, 0, 1, 1)],
                         ids=lambda o: "-".join(map(str, o)))
def test_misaligned_views(monkeypatch, dtype, offsets):
    case = CASES_BY_ID["adam-amsgrad-wd"]
    sizes = [1, 2, 5, 8192 + 3, 16384 + 3, 100_001]
    host = make_inputs(case, dtype, sizes, steps=2, rng=rng_for("views", dtype, offsets), single=False)
    roles = ["params", "grads", *host.states]
    off = dict(zip(roles, offsets + (offsets[-1],) * 3))
    views = Inputs(False, [_aligned_view(p, off["params"]) for p in host.params],
                   {n: [_aligned_view(a, off[n]) for a in v] for n, v in host.states.items()},
                   [[_aligned_view(g, off["grads"]) for g in gs] for gs in host.grads])
    heads = {emu.vector_head([p.ctypes.data, g.ctypes.data,
                              *(s[i].ctypes.data for s in views.states.values())], p.itemsize)
             for i, (p, g) in enumerate(zip(views.params, views.grads[0]))}
    # The case exercises the path it names: vectors if every role sits at the same offset
    # from a 16-byte boundary, scalars if not.
    same = len({o * np.dtype(dtype).itemsize % 16 for o in offsets}) == 1
    assert (heads == {emu.SCALAR_ONLY}) != same
    cpu = host.copy()
    for k in range(2):
        with recording(monkeypatch) as rec:
            case.call(*cpu.args(k), k + 1, backend="native")
        emulated_step(case, views, k, *rec.calls[0])
    assert_bitwise(views, cpu)


# --------------------------------------------------------------------------------------
# Reductions
@pytest.mark.parametrize("shape", [(1, 1), (4, 2), (100, 8)], ids=["limit-1", "limit-8", "limit-800"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_grad_sum_of_squares_bitwise(dtype, shape):
    rng = rng_for("sumsq", dtype)
    sizes = [0, 1, 31, 32, 33, 65535, 65536, 65537, 3 * 65536 + 17, 0, 400_003]
    host = [(rng.standard_normal(n) * 3).astype(dtype) for n in sizes]
    expected = _native.core().grad_sum_of_squares(host)
    with device_shape(*shape):
        assert emu.grad_sum_of_squares(dev(host)) == expected
        out = np.full(1, -1.0)
        assert emu.grad_sum_of_squares(dev(host), out=out.ctypes.data) is None
        assert out[0] == expected
        zero = np.full(1, -1.0)
        emu.grad_sum_of_squares(dev([np.empty(0, dtype)]), out=zero.ctypes.data)
        assert zero[0] == 0.0


def test_norm_order_matters_and_is_kept():
    """Block sums of very different sizes, where adding them in any other order than the
    CPU's (call order) changes the rounding of the total."""
    rng = rng_for("sumsq-order")
    host = [np.full(65536, 3e3, np.float32)] + [rng.standard_normal(65536 + 7 * k).astype(np.float32)
                                                 for k in range(40)]
    expected = _native.core().grad_sum_of_squares(host)
    block_sums = [_native.core().grad_sum_of_squares([g[i:i + 65536]])
                  for g in host for i in range(0, g.size, 65536)]
    assert sum(reversed(block_sums)) != expected  # the input is order-sensitive
    with device_shape(4, 2):
        assert emu.grad_sum_of_squares(dev(host)) == expected


def test_many_norm_blocks_over_several_launches():
    """More gradients than the norm's table holds, each a few norm blocks long."""
    rng = rng_for("sumsq-many")
    sizes = [int(n) for n in rng.integers(1, 3 * 65536, emu.norm_capacity() + 40)]
    host = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    emu.take_launches()
    assert emu.grad_sum_of_squares(dev(host)) == _native.core().grad_sum_of_squares(host)
    assert len(emu.take_launches()) == 3  # two launches of block sums, then the final sum


@pytest.mark.parametrize("shape", [(1, 1), (4, 2)], ids=["1-block", "8-blocks"])
def test_count_nonfinite(shape):
    g = np.ones(200_003, dtype=np.float32)
    where = [0, 5, 8191, 65535, 65536, 70_000, 200_002]
    g[where] = [np.nan, np.inf, -np.inf, np.nan, np.inf, -np.inf, np.nan]
    with device_shape(*shape):
        assert emu.count_nonfinite(dev([g, np.ones(3, np.float32), np.empty(0, np.float32)])) == 7
        assert emu.count_nonfinite(dev([np.ones(70_000)])) == 0


def test_adaptive_rate_of_nonfinite_gradient_propagates():
    """A NaN gradient gives a NaN rate on the device as on the host; the step still runs."""
    g = np.full(1000, 0.01, np.float32)
    g[17] = np.nan
    p_emu, p_cpu = np.ones(1000, np.float32), np.ones(1000, np.float32)
    base = rules.sgd.coefficients("adaptive_sgd_", lr=0.5, momentum=0.0, dampening=0.0, nesterov=False,
                       weight_decay=0.0, maximize=False, step=1, convention="torch")
    result = np.zeros(2)
    emu.Batch(dev([p_emu]), dev([g]), []).adaptive_sgd(base, result=result.ctypes.data)
    rate = fusedopt.adaptive_sgd_([p_cpu], [g], lr=0.5, backend="native")
    assert np.isnan(result[0]) and np.isnan(rate.lr)
    assert np.array_equal(p_emu, p_cpu, equal_nan=True) and np.isnan(p_emu).all()


# --------------------------------------------------------------------------------------
# Coefficients in device memory (a step a CUDA graph can replay)
def test_device_coefficients_and_skip():
    """Coefficients read from device memory give the bits of the same coefficients passed
    by value, whatever the by-value ones say; skip != 0 writes nothing."""
    rng = rng_for("device-coeffs")
    c = rules.adam.coefficients("adam_", step=3, lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1,
                     amsgrad=False, maximize=False, decoupled=True)
    wrong = c._replace(step_size=0.0, beta1=0.0)  # by-value numbers the kernel must ignore
    arrays = [rng.standard_normal(10_007).astype(np.float32) for _ in range(4)]
    arrays[3] = np.abs(arrays[3])
    by_value = [a.copy() for a in arrays]
    states = [dev([by_value[2]]), dev([by_value[3]])]
    assert emu.run("adam", dev([by_value[0]]), dev([by_value[1]]), states, c) is None
    numeric = [float(getattr(c, n)) for n in c.numbers]  # AdamCoeffs' numbers, then the skip word
    skipped = [a.copy() for a in arrays]
    dc = np.array(numeric + [1.0])
    emu.Batch(dev([skipped[0]]), dev([skipped[1]]), [dev([skipped[2]]), dev([skipped[3]])]).run(
        "adam", wrong, device_coeffs=dc.ctypes.data)
    for a, b in zip(skipped, arrays):
        assert np.array_equal(a, b)
    dc = np.array(numeric + [0.0])
    emu.Batch(dev([arrays[0]]), dev([arrays[1]]), [dev([arrays[2]]), dev([arrays[3]])]).run(
        "adam", wrong, device_coeffs=dc.ctypes.data)
    for a, b in zip(arrays, by_value):
        assert np.array_equal(a, b)
    assert not np.array_equal(arrays[0], skipped[0])


def test_select_coeffs_counts_steps_and_clamps_to_the_last_row():
    """Batch.select_coeffs, what a capturable step runs before its update: the step count
    goes up by one and that step's row is copied, the last row for every later step; a
    nonzero NaN/inf count sets the skip word instead and leaves the count."""
    doubles = emu.DEVICE_COEFFS_DOUBLES["adam"]
    assert doubles == 10  # AdamCoeffs' 9 numbers and the skip word
    table = np.arange(3 * doubles, dtype=np.float64).reshape(3, doubles)
    table[:, -1] = 0.0
    step = np.zeros(1, np.int64)
    out = np.full(doubles, -1.0)
    nonfinite = np.zeros(1, np.uint64)
    arrays = [np.ones(4, np.float32) for _ in range(4)]
    batch = emu.Batch(dev(arrays[:1]), dev(arrays[1:2]), [dev(arrays[2:3]), dev(arrays[3:])])
    kw = dict(table=table.ctypes.data, n_entries=3, step=step.ctypes.data, out=out.ctypes.data)
    for t in range(1, 6):
        batch.select_coeffs("adam", **kw, nonfinite=nonfinite.ctypes.data)
        assert step[0] == t and np.array_equal(out, table[min(t, 3) - 1])
    nonfinite[0] = 2
    batch.select_coeffs("adam", **kw, nonfinite=nonfinite.ctypes.data)
    assert step[0] == 5 and out[-1] == 1.0 and np.array_equal(out[:-1], table[2, :-1])
    for bad, match in [(dict(kw, n_entries=0), "at least one"), (dict(kw, step=0), "device addresses")]:
        with pytest.raises(ValueError, match=match):
            batch.select_coeffs("adam", **bad)
    with pytest.raises(ValueError, match="no rule named 'adamw'"):
        batch.select_coeffs("adamw", **kw)
    assert step[0] == 5
    # The count into device memory, which the selection reads: no wait for the device.
    arrays[1][2] = np.nan
    assert batch.count_nonfinite(out=nonfinite.ctypes.data) is None and nonfinite[0] == 1


# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_states", [0, 1, 2, 3])
def test_traffic_matches_cpu(n_states):
    rng = rng_for("traffic", n_states)
    sizes = [3, 8192 + 5, 40_001]
    make = lambda: [rng.standard_normal(n).astype(np.float32) for n in sizes]  # noqa: E731
    params, grads, states = make(), make(), [make() for _ in range(n_states)]
    cpu = [[a.copy() for a in params], [[a.copy() for a in s] for s in states]]
    emu.Batch(dev(params), dev(grads), [dev(s) for s in states]).traffic()
    _native.core().Call(cpu[0], grads, cpu[1]).traffic()
    for a, b in zip(params + sum(states, []), cpu[0] + sum(cpu[1], [])):
        assert np.array_equal(a, b)


def test_empty_calls_launch_nothing():
    emu.take_launches()
    assert emu.run("sgd", [], [], [], CASE_SGD) is None
    assert emu.run("sgd", dev([np.empty(0, np.float32)] * 2), dev([np.empty(0, np.float32)] * 2), [],
                   CASE_SGD) is None
    assert emu.grad_sum_of_squares(dev([np.empty(0, np.float32)])) == 0.0
    assert emu.take_launches() == []


CASE_SGD = rules.sgd.coefficients("sgd_", lr=0.1, momentum=0.0, dampening=0.0, nesterov=False,
                                      weight_decay=0.0,
                       maximize=False, step=1, convention="torch")


# --------------------------------------------------------------------------------------
# The bindings' own checks (memory safety of a direct call into the private module)
def test_bindings_refuse_mismatched_arrays():
    """The module's own reader (the one both modules compile) refuses what would read or
    write out of bounds, naming the rule, role and index, with nothing written."""
    p, g = np.ones(10, np.float32), np.ones(10, np.float32)
    before = p.copy()
    with pytest.raises(ValueError, match=r"\('shape', 1, 1,"):
        emu.Batch(dev([p, p[:5].copy()]), dev([g, g[:4].copy()]), [])
    with pytest.raises(ValueError, match=r"\('dtype_combination', 1, 0,"):
        emu.Batch(dev([p]), dev([np.ones(10, np.float64)]), [])
    with pytest.raises(ValueError, match=r"\('dtype_mismatch', 1, 1,"):
        emu.Batch(dev([p, p.copy()]), dev([g, np.ones(10, np.float16)]), [])
    with pytest.raises(ValueError, match=r"\('not_contiguous', 1, 0,"):
        emu.Batch(dev([p]), dev([np.ones(20, np.float32)[::2]]), [])
    with pytest.raises(ValueError, match=r"\('mixed_memory', 1, 0,"):
        emu.Batch(dev([p]), [g], [])
    with pytest.raises(ValueError, match=r"\('length', 1,"):
        emu.Batch(dev([p]), dev([g, g]), [])
    assert emu.run("sgd", dev([p]), dev([g, g]), [], CASE_SGD)[0] == "length"
    with pytest.raises(ValueError, match="need 1 state lists"):
        emu.run("sgd", dev([p]), dev([g]), [],
                CASE_SGD._replace(momentum=0.9, momentum_mode=_coeffs.MOM_TORCH))
    assert np.array_equal(p, before)


class _OnGpu(HostAsDevice):
    """A device array that says which GPU it is on as CuPy's arrays do (data.device_id),
    without being a cupy.ndarray (a subclass of one, say)."""

    def __init__(self, a, device_id):
        super().__init__(a)
        self.data = types.SimpleNamespace(ptr=a.ctypes.data, device_id=device_id)
        self.size, self.itemsize, self._c_contiguous = a.size, a.itemsize, a.flags.c_contiguous


def test_bindings_refuse_arrays_of_two_gpus():
    p, g = np.ones(10, np.float32), np.ones(10, np.float32)
    with pytest.raises(ValueError, match=r"\('other_gpu', 1, 0, 0, 0\)"):
        emu.Batch([_OnGpu(p, 0)], [_OnGpu(g, 1)], [])
    assert emu.run("sgd", [_OnGpu(p, 0)], [_OnGpu(g, 1)], [], CASE_SGD)[0] == "other_gpu"
    assert np.array_equal(p, np.ones(10, np.float32))


# --------------------------------------------------------------------------------------
# tests/test_cuda.py on the emulation: the public API's GPU path end to end (array checks,
# fallbacks, the device-side adaptive rate, bindings, kernels), with tests/host_cupy.py as
# CuPy. It replaces modules for the whole process, so it runs in processes of its own: in
# GPU_SUITE_SHARDS parts (every n-th test, conftest.py), which pytest-xdist's workers share.
GPU_SUITE_SHARDS = 6


@pytest.mark.long
@pytest.mark.parametrize("shard", range(GPU_SUITE_SHARDS))
def test_gpu_test_suite_on_the_emulation(shard):
    tests = Path(__file__).resolve().parent
    env = dict(os.environ, FUSEDOPT_TEST_CUDA_EMULATION="1",
               FUSEDOPT_TEST_SHARD=f"{shard}/{GPU_SUITE_SHARDS}")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          str(tests / "test_cuda.py")],
                         cwd=tests.parent, env=env, capture_output=True, text=True, timeout=900)
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else ""
    assert run.returncode == 0, f"{summary}\n{run.stdout[-6000:]}\n{run.stderr[-3000:]}"
    passed = int(re.search(r"(\d+) passed", summary).group(1))
    assert passed >= 150 // GPU_SUITE_SHARDS, summary  # the suite really ran, not skipped


def test_host_cupy_names_are_cupy_names():
    """Everything the stand-in offers exists in the real CuPy (run where CuPy is installed,
    as on the GPU machines), so the GPU path cannot pass here by using a name CuPy lacks."""
    if CUDA_EMULATION:
        pytest.skip("cupy is the stand-in in this process")
    cupy = pytest.importorskip("cupy")
    import host_cupy

    helpers = {"install", "annotations", "types", "np", "NDArrayOperatorsMixin"}
    assert [n for n in dir(host_cupy) if not n.startswith("_") and n not in helpers
            and not hasattr(cupy, n)] == []
    assert [n for n in dir(host_cupy.ndarray) if not n.startswith("_") and not hasattr(cupy.ndarray, n)] == []
    assert hasattr(cupy.ndarray, "_c_contiguous")  # the one private field the fast path reads
    assert [n for n in host_cupy._Flags.__slots__ if not hasattr(cupy._core.flags.Flags, n)] == []
    assert all(hasattr(cupy.cuda, n) for n in dir(host_cupy.cuda) if not n.startswith("_"))


# --------------------------------------------------------------------------------------
# The fast path for torch tensors (Batch.strict reads them through their own C methods;
# prepare() would go through CuPy). On the emulation, whose device memory is host memory,
# CPU tensors stand in for CUDA ones; a real build refuses them (get_device() is -1).
_ADAM = rules.adam.coefficients("adam_", step=1, lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1,
                     amsgrad=False, maximize=False, decoupled=False)


def _torch_case(torch, sizes, key):
    rng = rng_for("torch-fast-path", key)
    host = [rng.uniform(-1, 1, n).astype(np.float32) for n in sizes]
    grads = [rng.uniform(-1, 1, n).astype(np.float32) for n in sizes]
    params = [torch.nn.Parameter(torch.from_numpy(h.copy())) for h in host]
    return host, grads, params, [torch.from_numpy(g) for g in grads]


def test_fast_path_takes_torch_tensors_bitwise(monkeypatch):
    torch = pytest.importorskip("torch")
    import host_cupy

    sizes = [1, 5, 8193, 20_001]
    host, grads, params, tgrads = _torch_case(torch, sizes, "bitwise")
    # States of the other library: prepare() lets torch and CuPy arrays share a call.
    monkeypatch.setitem(sys.modules, "cupy", host_cupy)
    m = [host_cupy.zeros(n, np.float32) for n in sizes]
    v = [torch.zeros(n) for n in sizes]
    batch = emu.Batch.strict(params, tgrads, [m, v])
    assert batch is not None
    batch.run("adam", _ADAM)
    cpu_p, cpu_m, cpu_v = [h.copy() for h in host], [np.zeros(n, np.float32) for n in sizes], \
        [np.zeros(n, np.float32) for n in sizes]
    assert _native.core().run("adam", cpu_p, grads, [cpu_m, cpu_v], _ADAM) is None
    got = [p.detach().numpy() for p in params] + [a.get() for a in m] + [a.numpy() for a in v]
    for a, b in zip(got, cpu_p + cpu_m + cpu_v):
        assert np.array_equal(a, b)


def test_fast_path_refuses_torch_tensors_prepare_refuses(monkeypatch):
    torch = pytest.importorskip("torch")
    import host_cupy

    monkeypatch.setitem(sys.modules, "cupy", host_cupy)

    class Sub(torch.Tensor):
        pass

    p, g = torch.ones(6), torch.ones(6)
    block = torch.ones(12)
    refused = {
        "non-contiguous": ([torch.ones(4, 6).t()], [torch.ones(6, 4)]),
        "negative bit": ([p], [torch._neg_view(torch.ones(6))]),
        "float16 states": ([torch.ones(6, dtype=torch.float16)], [torch.ones(6, dtype=torch.float16)],
                           [[torch.ones(6, dtype=torch.float16)]]),
        "grad of another dtype": ([p], [torch.ones(6, dtype=torch.float64)]),
        "same size, other shape": ([torch.ones(2, 3)], [torch.ones(3, 2)]),
        "a param as its own grad": ([p], [p]),
        "two params in one storage": ([block[:7], block[5:]], [torch.ones(7), torch.ones(7)]),
        "a NumPy array among tensors": ([p], [np.ones(6, np.float32)]),
    }
    for why, (params, grads, *states) in refused.items():
        assert emu.Batch.strict(params, grads, states[0] if states else []) is None, why
    assert emu.Batch.strict([p], [g], []) is not None
    # A subclass is a torch tensor to the reader, as it was to the checked path.
    assert emu.Batch.strict([p.as_subclass(Sub)], [g], []) is not None


def test_held_torch_batch_sees_a_param_swap_its_memory(monkeypatch):
    """A torch tensor can be changed in place (.data =, set_(), t_()): a kept Batch then
    refuses the next grads, and the caller checks the whole call again."""
    torch = pytest.importorskip("torch")
    import host_cupy

    monkeypatch.setitem(sys.modules, "cupy", host_cupy)
    _, _, params, tgrads = _torch_case(torch, [7, 300], "swap")
    states = [[torch.zeros(7), torch.zeros(300)]]
    batch = emu.Batch.strict(params, tgrads, states)
    assert batch.set_grads(tgrads)
    params[1].data = torch.zeros(300)
    assert not batch.set_grads(tgrads)
    fresh = emu.Batch.strict(params, tgrads, states)
    assert fresh is not None and fresh.set_grads(tgrads)
    with torch.no_grad():
        params[0].set_(torch.zeros(7))
    assert not fresh.set_grads(tgrads)
    # Re-typed or restrided over the same memory: the pointer is the held one, the rest not.
    square = [torch.zeros(4, 4), torch.zeros(3)]
    grads = [torch.zeros(4, 4), torch.zeros(3)]
    for change in (lambda t: t.t_(), lambda t: setattr(t, "data", t.data.view(torch.int32))):
        held = emu.Batch.strict(square, grads, [])
        assert held.set_grads(grads)
        change(square[0])
        assert not held.set_grads(grads)
        square[0] = torch.zeros(4, 4)


def test_torch_tensors_need_no_cupy(monkeypatch):
    """The reader takes torch CUDA tensors through torch's own methods: the CUDA kernels run
    on them without CuPy (only the CuPy reference needs it)."""
    torch = pytest.importorskip("torch")
    monkeypatch.delitem(sys.modules, "cupy", raising=False)
    assert emu.Batch.strict([torch.ones(3)], [torch.ones(3)], []) is not None
    param = torch.nn.Parameter(torch.ones(3))
    assert emu.Batch.strict([param], [torch.nn.Parameter(torch.ones(3), requires_grad=False)], []) is not None


def test_real_cupy_arrays_on_the_emulation():
    """Real CuPy arrays (CuPy builds them over host memory without a driver) through the
    fast path: CuPy's own fields read as the stand-in's are, and the update is bitwise the
    CPU's. Runs where CuPy is installed (bench/cuda_host_cost.py's setting)."""
    if CUDA_EMULATION:
        pytest.skip("cupy is the stand-in in this process")
    cupy = pytest.importorskip("cupy")
    keep = []

    def wrap(a):
        keep.append(a)
        memory = cupy.cuda.UnownedMemory(a.ctypes.data, a.nbytes, a, device_id=0)
        return cupy.ndarray(a.shape, dtype=a.dtype, memptr=cupy.cuda.MemoryPointer(memory, 0))

    rng = rng_for("real-cupy")
    sizes = [1, 7, 8193, 20_001]
    host = [rng.uniform(-1, 1, n).astype(np.float32) for n in sizes]
    grads = [rng.uniform(-1, 1, n).astype(np.float32) for n in sizes]
    on_device = [[h.copy() for h in host], *([np.zeros(n, np.float32) for n in sizes] for _ in range(2))]
    on_cpu = [[a.copy() for a in role] for role in on_device]
    p, m, v = ([wrap(a) for a in role] for role in on_device)
    batch = emu.Batch.strict(p, [wrap(g) for g in grads], [m, v])
    assert batch is not None
    batch.run("adam", _ADAM)
    _native.core().adam(on_cpu[0], grads, on_cpu[1:], 0, *_ADAM)
    for a, b in zip(sum(on_device, []), sum(on_cpu, [])):
        assert np.array_equal(a, b)
    x = wrap(np.ones(12, np.float32))
    assert emu.Batch.strict([x[::2]], [wrap(np.ones(6, np.float32))], []) is None  # non-contiguous
    assert emu.Batch.strict([x], [x], []) is None  # a param as its own grad
    assert emu.Batch.strict([x], [wrap(np.ones(12))], []) is None  # float64 grad


def test_batch_keeps_the_memory_of_a_swapped_torch_tensor(monkeypatch):
    """A torch tensor pointed at other memory between the check and the launch (.data =;
    another thread could, while the count runs without the GIL) leaves the Batch with the
    old memory, which the Batch keeps alive: 16 MiB, which the allocator would otherwise
    hand back to the system, so that writing it crashed."""
    torch = pytest.importorskip("torch")
    import gc

    import host_cupy

    monkeypatch.setitem(sys.modules, "cupy", host_cupy)
    param, grad = torch.nn.Parameter(torch.zeros(1 << 22)), torch.ones(1 << 22)
    batch = emu.Batch.strict([param], [grad], [])
    param.data = torch.zeros(8)
    gc.collect()
    batch.run("sgd", CASE_SGD)
    assert torch.all(param.data == 0)  # the new memory was not touched


# --------------------------------------------------------------------------------------
# Streams. A call runs on the current stream of its params' library: torch's for torch
# tensors, CuPy's otherwise. The emulation runs everything at once, so these tests turn on
# the bindings' stream lookup (off by default: torch's CPU build and CuPy without a driver
# cannot name a current stream), stand in for both libraries' current streams, and read
# the stream each launch was queued on.
CUPY_STREAM, TORCH_STREAM, TORCH_RAW_STREAM = 0x5A00, 0x7B00, 0x9C00
_ADAPTIVE_BASE = rules.sgd.coefficients("adaptive_sgd_", lr=0.5, momentum=0.0, dampening=0.0, nesterov=False,
                             weight_decay=0.0, maximize=False, step=1, convention="torch")


@pytest.fixture
def streams(monkeypatch):
    """Stream lookup on, host_cupy as CuPy inside a stream of its own (CUPY_STREAM), and
    torch's current stream on GPU d reported as TORCH_STREAM + d."""
    torch = pytest.importorskip("torch")
    import host_cupy

    monkeypatch.setitem(sys.modules, "cupy", host_cupy)
    monkeypatch.delattr(torch._C, "_cuda_getCurrentRawStream", raising=False)  # CPU builds lack it
    monkeypatch.setattr(torch.cuda, "current_stream",
                        lambda device=None: types.SimpleNamespace(cuda_stream=TORCH_STREAM + (device or 0)))
    old = emu.set_stream_lookup(True)
    emu.take_launches()
    try:
        with host_cupy.cuda.Stream(ptr=CUPY_STREAM):
            yield torch, host_cupy
    finally:
        emu.set_stream_lookup(old)


def _launch_streams():
    return {stream for _, _, stream in emu.take_launches()}


def test_cupy_calls_run_on_cupy_current_stream(streams):
    _, host_cupy = streams
    p, g, m = (host_cupy.asarray(np.full(5000, x, np.float32)) for x in (1.0, 0.5, 0.0))
    batch = emu.Batch.strict([p], [g], [[m]])
    assert not batch.torch_params
    momentum = rules.sgd.coefficients("sgd_", lr=0.1, momentum=0.9, dampening=0.0, nesterov=False,
                                          weight_decay=0.0,
                           maximize=False, step=2, convention="torch")
    batch.run("sgd", momentum)
    assert batch.count_nonfinite() == 0
    lr, _ = fusedopt.cuda.adaptive_sgd(emu.Batch.strict([p], [g], []), _ADAPTIVE_BASE, p)
    assert isinstance(lr, host_cupy.ndarray)
    assert _launch_streams() == {CUPY_STREAM}
    with host_cupy.cuda.Stream(ptr=CUPY_STREAM + 1):  # the current one, not the first seen
        batch.run("sgd", momentum)
    batch.run("sgd", momentum, stream=0x1234)  # a stream named by the caller wins
    assert [s for _, _, s in emu.take_launches()] == [CUPY_STREAM + 1, 0x1234]
    # Where CuPy was never imported: the legacy default stream (CuPy's default too).
    del sys.modules["cupy"]  # the fixture puts it back
    p, g = HostAsDevice(np.ones(9, np.float32)), HostAsDevice(np.ones(9, np.float32))
    emu.Batch([p], [g], []).run("sgd", CASE_SGD)
    assert _launch_streams() == {0}


def test_torch_params_run_on_torch_current_stream(streams, monkeypatch):
    """torch params: torch's stream, even with CuPy states and a CuPy stream current; the
    raw-stream function of torch's CUDA builds is preferred where it exists."""
    torch, host_cupy = streams
    params = [torch.nn.Parameter(torch.ones(3000)), torch.nn.Parameter(torch.ones(7))]
    grads = [torch.full((3000,), 0.5), torch.full((7,), 0.5)]
    states = [[host_cupy.zeros(3000, np.float32), torch.zeros(7)]]
    batch = emu.Batch.strict(params, grads, states)
    assert batch.torch_params
    momentum = rules.sgd.coefficients("sgd_", lr=0.1, momentum=0.9, dampening=0.0, nesterov=False,
                                      weight_decay=0.0,
                           maximize=False, step=2, convention="torch")
    batch.run("sgd", momentum)
    assert batch.count_nonfinite() == 0
    batch.drop_grads()
    assert batch.set_grads(grads)  # an optimizer's held Batch keeps its stream rule
    batch.run("sgd", momentum)
    assert _launch_streams() == {TORCH_STREAM}
    # The params decide: CuPy params with torch grads run on CuPy's stream.
    emu.Batch.strict([host_cupy.ones(10, np.float32)], [torch.ones(10)], []).run("sgd", CASE_SGD)
    assert _launch_streams() == {CUPY_STREAM}
    monkeypatch.setattr(torch._C, "_cuda_getCurrentRawStream", lambda device: TORCH_RAW_STREAM + device,
                        raising=False)
    batch.run("sgd", momentum)
    assert _launch_streams() == {TORCH_RAW_STREAM}


def test_adaptive_rate_of_torch_params_comes_back_as_torch_tensors(streams):
    """The device-side rate and norm come back in the params' library, computed on its
    stream, with the host path's bits."""
    torch, _ = streams
    rng = rng_for("torch-adaptive")
    host = rng.uniform(-1, 1, 4099).astype(np.float32)
    grad = rng.uniform(-1, 1, 4099).astype(np.float32)
    param = torch.nn.Parameter(torch.from_numpy(host.copy()))
    lr, norm = fusedopt.cuda.adaptive_sgd(emu.Batch.strict([param], [torch.from_numpy(grad)], []),
                                          _ADAPTIVE_BASE, param)
    assert isinstance(lr, torch.Tensor) and lr.dtype == torch.float64 and lr.dim() == 0
    assert _launch_streams() == {TORCH_STREAM}
    cpu = host.copy()
    rate = fusedopt.adaptive_sgd_([cpu], [grad], lr=0.5, backend="native")
    assert float(lr) == rate.lr and float(norm) == rate.grad_norm
    assert np.array_equal(param.detach().numpy(), cpu)


def test_checked_calls_on_torch_params_enter_torch_stream(streams):
    """fusedopt.cuda.params_stream: CuPy's current stream is torch's while a checked call
    on torch params runs (prepare() saw their GPU), and is left alone otherwise."""
    _, host_cupy = streams
    with fusedopt.cuda.params_stream(1):
        assert host_cupy.cuda.get_current_stream().ptr == TORCH_STREAM + 1
    assert host_cupy.cuda.get_current_stream().ptr == CUPY_STREAM
    with fusedopt.cuda.params_stream(None):
        assert host_cupy.cuda.get_current_stream().ptr == CUPY_STREAM


# --------------------------------------------------------------------------------------
# A Batch kept across steps (an optimizer's): what it holds and what it reads again
class _Reallocating:
    """A device array (interface only) whose owner can move it to other memory."""

    def __init__(self, a):
        self.a = a

    @property
    def __cuda_array_interface__(self):
        return {"shape": self.a.shape, "typestr": self.a.dtype.str, "version": 3,
                "data": (self.a.ctypes.data, False), "strides": None}


def test_held_batch_reads_a_bare_interface_array_again():
    """Nothing about a bare __cuda_array_interface__ array says it moved: a kept Batch must
    not reuse its pointer, and the caller then reads the whole call again."""
    p = _Reallocating(np.zeros(4, np.float32))
    batch = emu.Batch.strict([p], [_Reallocating(np.ones(4, np.float32))], [])
    assert batch is not None
    assert not batch.set_grads([_Reallocating(np.ones(4, np.float32))])


def test_drop_grads_lets_go_of_the_first_steps_gradients():
    import gc
    import weakref

    torch = pytest.importorskip("torch")
    params = [torch.nn.Parameter(torch.zeros(5))]
    grads = [torch.ones(5)]
    batch = emu.Batch.strict(params, grads, [])
    first = weakref.ref(grads[0])
    batch.drop_grads()
    del grads
    gc.collect()
    assert first() is None
    assert batch.set_grads([torch.ones(5)])


def test_batch_without_grads_takes_no_param_as_a_grad():
    p, s = dev([np.ones(4, np.float32)]), dev([np.zeros(4, np.float32)])
    batch = emu.Batch.strict(p, None, [s])
    assert batch is not None
    assert not batch.set_grads(p)
    assert not batch.set_grads(s)


@pytest.mark.long
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_adafactor_factored_shapes(dtype):
    """Adafactor's matrices and batches of matrices (the grid above reaches its vectors):
    the device's passes against the CPU's, bit for bit, over tests/test_adafactor.py's
    shapes (rows longer than a norm block, rows and columns of one)."""
    from test_adafactor import SHAPES, STATES, assert_all_same_bits, copied, make

    hyper = dict(lr=0.02, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0, weight_decay=0.1, maximize=True)
    params, states, grads = make(SHAPES, dtype, rng_for("emulated-adafactor", np.dtype(dtype).name))
    device = copied(params, states)
    for step, g in enumerate(grads, start=1):
        fusedopt.adafactor_(params, g, *states.values(), step=step, backend="native", **hyper)
        coeffs = rules.adafactor.coefficients("adafactor_", step=step, **hyper)
        device_states = [dev(device[1][n]) for n in STATES]
        assert emu.run("adafactor", dev(device[0]), dev(g), device_states, coeffs) is None
    assert_all_same_bits(device, (params, states))
