"""The CUDA module without a GPU: it imports, reports why it cannot run, checks its inputs,
and its launch planning (csrc/cuda/plan.h, the same code the kernels run) covers every
element exactly once, with aligned vector spans, for tensors past 2^31 elements too.

These run wherever fusedopt._cuda is built, GPU or not.
"""

from __future__ import annotations

import bisect

import fusedopt
import fusedopt.cuda
import numpy as np
import pytest
from fusedopt import _dispatch, _native, rules

if not fusedopt.cuda.is_built():
    pytest.skip(f"no CUDA planning tests: {fusedopt.cuda.unavailable_reason()}",
                allow_module_level=True)

from fusedopt import _cuda  # noqa: E402

CHUNK = _cuda.CHUNK_ELEMENTS
SCALAR = _cuda.SCALAR_ONLY


# --------------------------------------------------------------------------------------
# The module and what it says about itself
# --------------------------------------------------------------------------------------
def test_info_says_built_and_why_not_available():
    info = fusedopt.info()["cuda"]
    assert info["built"] is True
    assert info["runtime_linking"] == "static"
    assert info["cuda_runtime"].count(".") == 1
    assert "fmad=false" in info["numerics"]
    assert info["architectures"]
    if info["available"]:
        assert "device" in info
    else:
        assert info["reason"] == fusedopt.cuda.unavailable_reason()
        known = ("no CUDA driver", "no CUDA device", "the CUDA driver supports", "GPU ",
                 "CUDA could not start")
        assert info["reason"].startswith(known), info["reason"]


def test_reason_when_not_built(monkeypatch):
    monkeypatch.setattr(fusedopt.cuda, "_cuda", None)
    assert not fusedopt.cuda.is_available()
    assert "built without its CUDA module" in fusedopt.cuda.unavailable_reason()


class _FakePrep:
    device = "cuda"
    fn = "sgd_"


def test_auto_falls_back_once_and_native_raises(monkeypatch):
    """The generic fallback of the dispatch for device arrays no compiled kernel can take."""
    reason = "no CUDA device (simulated)"
    monkeypatch.setattr(fusedopt.cuda, "unavailable_reason", lambda prep=None: reason)
    monkeypatch.setattr(_dispatch, "_fallbacks", {})
    assert _native.unavailable("cuda") == reason
    with pytest.warns(_dispatch.FallbackWarning, match="simulated"):
        assert _dispatch._use_native("sgd_", _FakePrep(), "auto") is False
    assert _dispatch._use_native("sgd_", _FakePrep(), "auto") is False  # warned once only
    assert fusedopt.info()["fallbacks"] == {reason: "sgd_"}
    with pytest.raises(RuntimeError, match="simulated"):
        _dispatch._use_native("sgd_", _FakePrep(), "native")


# --------------------------------------------------------------------------------------
# Input checks that need no device: fake __cuda_array_interface__ objects
# --------------------------------------------------------------------------------------
class FakeDeviceArray:
    def __init__(self, n, ptr=0x7F0000000000, typestr="<f4", strides=None):
        self.__cuda_array_interface__ = {"data": (ptr, False), "shape": (n,), "typestr": typestr,
                                         "strides": strides, "version": 3}


SGD = rules.sgd.coefficients("sgd_", lr=0.1, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0,
                  maximize=False, step=1, convention="torch")


def test_empty_call_needs_no_device():
    assert _cuda.run("sgd", [], [], [], SGD) is None
    assert _cuda.run("sgd", [FakeDeviceArray(0)], [FakeDeviceArray(0)], [], SGD) is None
    assert _cuda.grad_sum_of_squares([FakeDeviceArray(0)]) == 0.0


@pytest.mark.parametrize("bad, rule", [
    (FakeDeviceArray(5), "shape"),
    (FakeDeviceArray(4, typestr="<f8"), "dtype_combination"),  # float64 grads, float32 params
    (FakeDeviceArray(4, strides=(8,)), "not_contiguous"),
    (np.ones(4, np.float32), "mixed_memory"),
    (FakeDeviceArray(4, ptr=0), "null_data"),
])
def test_bindings_reassert_what_memory_safety_rests_on(bad, rule):
    """The module's reader (the one both modules compile) refuses, naming the rule."""
    assert _cuda.run("sgd", [FakeDeviceArray(4)], [bad], [], SGD)[:3] == (rule, 1, 0)
    with pytest.raises(ValueError, match=rule):
        _cuda.Batch([FakeDeviceArray(4)], [bad], [])


def test_state_count_is_checked():
    a, b, c = (FakeDeviceArray(4, ptr=0x7F0000000000 + 0x1000 * k) for k in range(3))
    adam = rules.adam.coefficients("adam_", step=1, lr=1e-3, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.0,
                        amsgrad=False, maximize=False, decoupled=False)
    with pytest.raises(ValueError, match="need 2 state lists"):
        _cuda.run("adam", [a], [b], [[c]], adam)


@pytest.mark.skipif(fusedopt.cuda.is_available(), reason="a usable GPU is present")
def test_kernel_call_without_device_raises_cleanly():
    a, g = FakeDeviceArray(4), FakeDeviceArray(4, ptr=0x7F0000001000)
    with pytest.raises(RuntimeError, match="CUDA error"):
        _cuda.run("sgd", [a], [g], [], SGD)


# --------------------------------------------------------------------------------------
# Vector heads
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("itemsize", [4, 8])
def test_vector_head(itemsize):
    base = 0x7F0000000000
    for off in range(0, 16, itemsize):
        addrs = [base + off] * 5
        assert _cuda.vector_head(addrs, itemsize) == ((16 - off) % 16) // itemsize
    assert _cuda.vector_head([base, base + itemsize], itemsize) == SCALAR  # roles disagree
    assert _cuda.vector_head([base + 2, base + 2], itemsize) == SCALAR  # not element-aligned
    assert _cuda.vector_head([base + 16 * 7, base + 16 * 1000], itemsize) == 0


# --------------------------------------------------------------------------------------
# Chunks of one tensor
# --------------------------------------------------------------------------------------
def check_tensor_chunks(n, head, itemsize, chunk=CHUNK):
    """Chunk spans tile [0, n) in order; vector spans are whole vectors on 16-byte
    boundaries; scalar edges only at the tensor's start and end."""
    vec = 16 // itemsize
    count = _cuda.chunk_count(n, head, chunk)
    if n == 0:
        assert count == 0
        return
    pos = 0
    for k in range(count):
        lo, vlo, vhi, hi = _cuda.chunk_span(n, head, itemsize, k, chunk)
        assert lo == pos and lo <= vlo <= vhi <= hi and hi > lo
        assert hi - lo <= chunk + (head if k == 0 and head > 0 else 0)
        assert (vhi - vlo) % vec == 0
        if head == SCALAR:
            assert vlo == vhi
        else:
            assert vlo == vhi or (vlo - head) % vec == 0  # element vlo sits on a boundary
            if k > 0:
                assert vlo == lo
            if k < count - 1:
                assert vhi == hi
            assert hi - vhi < vec or vlo == vhi  # a ragged end shorter than one vector
        pos = hi
    assert pos == n


EDGE_SIZES = [0, 1, 2, 3, 4, 5, 7, 8, 9, 31, 32, 33, CHUNK - 1, CHUNK, CHUNK + 1, CHUNK + 3,
              2 * CHUNK + 7, 65537, 1_000_003]


@pytest.mark.parametrize("itemsize", [4, 8])
@pytest.mark.parametrize("n", EDGE_SIZES)
def test_chunks_tile_each_tensor(n, itemsize):
    for head in [SCALAR, *range(16 // itemsize)]:
        check_tensor_chunks(n, head, itemsize)


def test_chunks_past_2_31_elements():
    """Planned, not allocated: the spans are 64-bit and the last chunk ends at n."""
    for n, head in [(2**31 + 5, 3), (2**31 - 1, SCALAR), (2**32 + 1, 1)]:
        check_tensor_chunks(n, head, 4)
    n = 2**40 + 12345
    count = _cuda.chunk_count(n, 2, CHUNK)
    assert count == -(-(n - 2) // CHUNK)
    lo, vlo, vhi, hi = _cuda.chunk_span(n, 2, 4, count - 1, CHUNK)
    assert hi == n and lo == 2 + (count - 1) * CHUNK and lo > 2**31
    assert _cuda.chunk_count(2**33, SCALAR, _cuda.NORM_BLOCK) == 2**33 // 65536


# --------------------------------------------------------------------------------------
# Launches of a call
# --------------------------------------------------------------------------------------
def check_plan(sizes, heads, capacity, max_grid, chunk=CHUNK):
    plans = _cuda.plan_launches(sizes, heads, chunk=chunk, capacity=capacity, max_grid=max_grid)
    nonempty = [t for t, n in enumerate(sizes) if n > 0]
    assert [t for p in plans for t in p["tensors"]] == nonempty  # call order, empties skipped
    offset = 0
    for p in plans:
        starts = p["chunk_start"]
        assert 1 <= len(p["tensors"]) <= capacity and len(starts) == len(p["tensors"]) + 1
        assert p["chunk_offset"] == offset and starts[0] == 0 and p["n_chunks"] == starts[-1]
        rounds = -(-p["n_chunks"] // max_grid)  # grid-stride rounds, evened out over the blocks
        assert p["grid"] <= max_grid and p["grid"] == -(-p["n_chunks"] // rounds)
        for s, t in enumerate(p["tensors"]):
            head = heads[t] if heads is not None else SCALAR
            assert starts[s + 1] - starts[s] == _cuda.chunk_count(sizes[t], head, chunk)
        offset += p["n_chunks"]
    return plans


def test_plan_of_a_thousand_odd_tensors():
    rng = np.random.default_rng(7)
    sizes = [int(n) for n in rng.integers(0, 200_000, 1000) | 1]
    sizes[::50] = [0] * len(sizes[::50])
    heads = [int(h) for h in rng.integers(-1, 4, 1000)]
    capacity = _cuda.update_capacity(4)
    plans = check_plan(sizes, heads, capacity, max_grid=132 * 6)
    assert len(plans) == -(-980 // capacity)
    assert max(len(p["tensors"]) for p in plans) - min(len(p["tensors"]) for p in plans) <= 1
    # The grid-stride loop of every block visits each chunk exactly once, and the slot
    # lookup (the kernels' binary search) agrees with a plain one.
    for p in plans:
        seen = np.zeros(p["n_chunks"], np.int64)
        for b in range(p["grid"]):
            seen[b::p["grid"]] += 1
        assert (seen == 1).all()
        starts = p["chunk_start"]
        for c in range(0, p["n_chunks"], 7):
            assert _cuda.locate(starts, c) == bisect.bisect_right(starts, c) - 1


def test_plan_past_2_31_elements():
    sizes = [2**31 + 5, 0, 3, 2**33 + 1, 1]
    heads = [1, SCALAR, 0, 3, SCALAR]
    plans = check_plan(sizes, heads, capacity=2, max_grid=1000)
    assert [p["tensors"] for p in plans] == [[0, 2], [3, 4]]
    last = plans[-1]
    assert last["chunk_start"][1] == -(-(2**33 + 1 - 3) // CHUNK)
    assert _cuda.locate(last["chunk_start"], last["n_chunks"] - 1) == 1
    assert _cuda.locate(last["chunk_start"], last["chunk_start"][1] - 1) == 0


def test_norm_plan_is_the_cpu_blocking():
    """The norm's chunks are the fixed blocks of math/sumsq.h, numbered in call order, so
    the partial sums land where the in-order final sum expects them."""
    block = _cuda.NORM_BLOCK
    sizes = [65536 * 3 + 1, 0, 5, 65536, 2**31 + 7]
    plans = check_plan(sizes, None, capacity=2, max_grid=64, chunk=block)
    expected = [-(-n // block) for n in sizes if n]
    got = []
    for p in plans:
        got += [b - a for a, b in zip(p["chunk_start"], p["chunk_start"][1:])]
    assert got == expected
    assert sum(p["n_chunks"] for p in plans) == sum(expected)


def test_plan_rejects_bad_arguments():
    with pytest.raises(ValueError):
        _cuda.plan_launches([1], None, capacity=0, max_grid=1)
    with pytest.raises(ValueError):
        _cuda.plan_launches([-1], None, capacity=1, max_grid=1)
    with pytest.raises(ValueError):
        _cuda.plan_launches([1, 2], [0], capacity=1, max_grid=1)


# --------------------------------------------------------------------------------------
# Kernel parameter space
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_roles", [2, 3, 4, 5])
def test_tables_fit_the_parameter_space(n_roles):
    assert _cuda.update_param_bytes(n_roles) <= _cuda.PARAM_LIMIT
    assert _cuda.norm_param_bytes() <= _cuda.PARAM_LIMIT
    if _cuda.PARAM_LIMIT > 4096:
        # The large parameter space is what lets a 1,000-tensor list take two launches.
        assert _cuda.update_capacity(n_roles) >= 500
        assert _cuda.update_param_bytes(n_roles) > 4096
