"""Array kinds and backend semantics.

Bad input is the grid's (test_bad_input.py); here is what it does not cover: a call whose
every array has an unsupported dtype, device arrays seen through CuPy's attributes,
__cuda_array_interface__ or DLPack, the backends and the reference's mode=, return values,
torch CPU tensors, the optimizers' state blocks, and Adam's coefficient table.

A bad call must raise TypeError or ValueError whose message names the argument (and the
list index, for lists), and must leave every array as it was: the tests take full copies of
every array involved (the bases of views too) before the call and compare bits afterwards.
"""

from __future__ import annotations

import re

import fusedopt
import fusedopt.optim
import fusedopt.reference
import numpy as np
import pytest
from conftest import CASES_BY_ID, HAVE_TORCH, assert_bitwise, make_inputs, rng_for, run_steps

# One case per public function, with every state it can take.
FULL = ["sgd-mom", "asgd-mom-wd-max", "adagrad-decay-wd", "rmsprop-centered-mom-wd",
        "adam-amsgrad-wd", "adamw-amsgrad-wd", "lion-wd-max"]
SIZES = [5, 64, 3]  # a list of three tensors; the bad one is always index 1


def _inputs(case_id, dtype=np.float32, sizes=SIZES, single=False):
    case = CASES_BY_ID[case_id]
    return case, make_inputs(case, dtype, sizes, steps=1, rng=rng_for("basics", case_id),
                             single=single)


def _arrays_in(obj):
    """Every NumPy array in obj (nested lists, tuples, dicts), with the bases of views."""
    if isinstance(obj, np.ndarray):
        yield obj
        if isinstance(obj.base, np.ndarray):
            yield from _arrays_in(obj.base)
    elif isinstance(obj, (list, tuple)):
        for x in obj:
            yield from _arrays_in(x)
    elif isinstance(obj, dict):
        for x in obj.values():
            yield from _arrays_in(x)


def _bits(a):
    return np.frombuffer(np.ascontiguousarray(a).tobytes(), np.uint8)


def assert_rejected(exc, match, call, *args, **kwargs):
    """call(*args, **kwargs) raises exc with a message matching `match` (a regex), and no
    array in args or kwargs changed."""
    snapshot = [(a, _bits(a)) for a in _arrays_in([args, kwargs])]
    with pytest.raises(exc, match=match):
        call(*args, **kwargs)
    for a, before in snapshot:
        assert np.array_equal(_bits(a), before), "an array was written by a rejected call"


def _call_args(case, params, grads, states, step=1):
    kwargs = dict(case.kwargs, **states, backend="native")
    if case.takes_step:
        kwargs["step"] = step
    return getattr(fusedopt, case.fn), (params, grads), kwargs


def _name(s: str) -> str:
    """A regex for an argument name as the message must show it: params[1] -> params\\[1\\]."""
    return rf"\b{re.escape(s)}(?![\w\[])"


def _reject(case, inputs, exc, match, *, params=None, grads=None, states=None, **hyper):
    p, g, s = inputs.args(0)
    fn, args, kwargs = _call_args(case, p if params is None else params,
                                  g if grads is None else grads, s if states is None else states)
    kwargs.update(hyper)
    assert_rejected(exc, match, fn, *args, **kwargs)


# --------------------------------------------------------------------------------------
# Arrays: every one in an unsupported dtype, and device arrays
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float16, np.int32, np.complex64])
@pytest.mark.parametrize("case_id", FULL)
def test_unsupported_dtype(case_id, dtype):
    case, inputs = _inputs(case_id)
    cast = lambda xs: [x.astype(dtype) for x in xs]  # noqa: E731
    p, g, s = inputs.args(0)
    _reject(case, inputs, TypeError, _name("params[0]") + ".*" + np.dtype(dtype).name,
            params=cast(p), grads=cast(g), states={n: cast(v) for n, v in s.items()})


class _CupyFlags:
    """CuPy 14's ndarray.flags: c_contiguous, f_contiguous and owndata, and no writeable."""

    __slots__ = ("c_contiguous", "f_contiguous", "owndata")

    def __init__(self):
        self.c_contiguous, self.f_contiguous, self.owndata = True, True, True


class _CupyLikeArray:
    """What the checks read of a CuPy array, with CuPy's own attributes and no others."""

    def __init__(self, a: np.ndarray):
        self.dtype, self.shape, self.size, self.strides = a.dtype, a.shape, a.size, a.strides
        self.nbytes, self.itemsize, self.flags = a.nbytes, a.itemsize, _CupyFlags()
        self._c_contiguous = a.flags.c_contiguous  # the field CuPy's C code keeps
        self.data = type("MemoryPointer", (), {"ptr": a.ctypes.data, "device_id": 0})()


_CupyLikeArray.__module__ = "cupy._core.core"


def test_device_arrays_need_no_writeable_flag():
    """CuPy arrays have no read-only flag; the checks must not ask for one (CuPy 14.2 raises
    AttributeError for flags.writeable)."""
    arrays = [np.ones(5, np.float32) for _ in range(3)]
    prep = fusedopt._arrays.prepare("sgd_", [_CupyLikeArray(arrays[0])], [_CupyLikeArray(arrays[1])],
                                    [("momentum_buffers", [_CupyLikeArray(arrays[2])])])
    assert prep.device == "cuda" and prep.n_tensors == 1


@pytest.mark.parametrize("read_only", [True, False])
def test_read_only_bit_of_a_foreign_device_array(read_only):
    """Objects that only offer __cuda_array_interface__ say whether they may be written: the
    reader refuses a read-only one where the kernel writes, and takes one as a gradient."""
    a, b = np.ones(4, np.float32), np.ones(4, np.float32)

    def foreign(x, ro):
        class Foreign:
            __cuda_array_interface__ = {"shape": (4,), "typestr": "<f4", "version": 3,
                                        "data": (x.ctypes.data, ro)}
        return Foreign()

    refusal = fusedopt._core.read([foreign(a, read_only)], [foreign(b, False)], [])
    assert (refusal is not None and refusal[0] == "read_only") is read_only
    assert fusedopt._core.read([foreign(a, False)], [foreign(b, read_only)], []) is None
    # CuPy arrays are writable: they have no such bit
    assert fusedopt._core.read([_CupyLikeArray(a)], [_CupyLikeArray(b)], []) is None


class _DLPackProducer:
    """A DLPack producer that only says where it lives (its capsule is never asked for)."""

    def __init__(self, device):
        self._device = device

    def __dlpack__(self, **kwargs):
        raise AssertionError("the capsule must not be taken to classify the array")

    def __dlpack_device__(self):
        if isinstance(self._device, Exception):
            raise self._device
        return self._device


@pytest.mark.parametrize("device, on_cuda", [((2, 0), True), ((13, 1), True), ((1, 0), False),
                                             ((10, 0), False), (RuntimeError("lost"), False)],
                         ids=["cuda", "cuda-managed", "cpu", "rocm", "raises"])
def test_dlpack_producers_are_told_apart_by_their_device(device, on_cuda):
    """Only CUDA (or CUDA managed) DLPack producers take the GPU path; one that cannot say
    where it lives is not taken for a device array."""
    assert fusedopt._arrays._dlpack_on_cuda(_DLPackProducer(device)) is on_cuda


def test_dlpack_device_without_a_capsule_is_not_an_array():
    no_capsule = type("DeviceOnly", (), {"__dlpack_device__": lambda self: (2, 0)})()
    assert fusedopt._arrays._dlpack_on_cuda(no_capsule) is False


def test_dlpack_device_array_without_cupy_names_the_argument():
    try:
        import cupy  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("CuPy is installed: its from_dlpack would take the array")
    p = np.ones(3, np.float32)
    with pytest.raises(TypeError, match=r"grads.*DLPack device array.*CuPy is not installed"):
        fusedopt.sgd_(p, _DLPackProducer((2, 0)), lr=0.1)
    assert np.all(p == 1)


# --------------------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["reference", "auto"])
@pytest.mark.parametrize("case_id", FULL)
def test_backend_reference_and_auto(case_id, backend):
    """backend='reference' is the exact reference; 'auto' is the native kernel here (it
    must not fall back: a FallbackWarning would fail the test under filterwarnings=error)."""
    case, inputs = _inputs(case_id)
    expected = inputs.copy()
    if backend == "reference":
        ref_returns = run_steps(case, expected, mode="exact")
    else:
        ref_returns = run_steps(case, expected, backend="native")
    returns = run_steps(case, inputs, backend=backend)
    assert returns == ref_returns
    assert_bitwise(inputs, expected)


def test_reference_module_takes_mode_not_backend():
    case, inputs = _inputs("adam")
    p, g, s = inputs.args(0)
    assert_rejected(TypeError, "mode", fusedopt.reference.adam_, p, g, **s, step=1,
                    backend="native")
    assert_rejected(ValueError, _name("mode"), fusedopt.reference.adam_, p, g, **s, step=1,
                    mode="float32")


@pytest.mark.parametrize("case_id", FULL)
def test_return_values(case_id):
    case, inputs = _inputs(case_id)
    (ret,) = run_steps(case, inputs, backend="native")
    if case.fn == "adaptive_sgd_":
        assert isinstance(ret, fusedopt.AdaptiveRate) and ret.lr > 0 and ret.grad_norm > 0
    else:
        assert ret is None


@pytest.mark.skipif(not HAVE_TORCH, reason="torch is not importable")
@pytest.mark.parametrize("case_id", FULL)
def test_torch_cpu_tensors_in_place(case_id):
    import torch

    case, inputs = _inputs(case_id)
    expected = inputs.copy()
    ref = run_steps(case, expected, backend="native")
    params = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in inputs.params]
    grads = [torch.from_numpy(a.copy()) for a in inputs.grads[0]]
    states = {n: [torch.from_numpy(a.copy()) for a in v] for n, v in inputs.states.items()}
    ptrs = [t.data_ptr() for t in params]
    assert case.call(params, grads, states, 1, backend="native") == ref[0]
    assert [t.data_ptr() for t in params] == ptrs
    got = inputs.copy()
    got.params = [t.detach().numpy() for t in params]
    got.states = {n: [t.numpy() for t in v] for n, v in states.items()}
    assert_bitwise(got, expected)


@pytest.mark.skipif(not HAVE_TORCH, reason="torch is not importable")
@pytest.mark.parametrize("case_id", FULL)
def test_torch_cpu_tensor_one_per_role(case_id):
    """One tensor per role (not lists), as with NumPy arrays: the CPU module's fast path
    must refuse a tensor quietly (it once raised pybind11's argument-type error), and the
    checked path then runs it."""
    import torch

    case, inputs = _inputs(case_id, sizes=[37], single=True)
    expected = inputs.copy()
    ref = run_steps(case, expected, backend="native")
    params = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in inputs.params]
    states = {n: [torch.from_numpy(a.copy()) for a in v] for n, v in inputs.states.items()}
    assert len(params) == 1
    assert case.call(params[0], torch.from_numpy(inputs.grads[0][0]),
                     {n: v[0] for n, v in states.items()}, 1, backend="native") == ref[0]
    got = inputs.copy()
    got.params = [t.detach().numpy() for t in params]
    got.states = {n: [t.numpy() for t in v] for n, v in states.items()}
    assert_bitwise(got, expected)


@pytest.mark.skipif(not HAVE_TORCH, reason="torch is not importable")
def test_torch_tensor_subclasses_are_torch_tensors():
    """A torch.Tensor subclass defined outside torch is a torch tensor (it was refused, as
    its type's module is not torch's); on a GPU that also puts its calls on torch's stream."""
    import torch

    class Scaled(torch.Tensor):
        pass

    p = torch.ones(5).as_subclass(Scaled)
    g = torch.full((5,), 0.5).as_subclass(Scaled)
    fusedopt.sgd_([p], [g], lr=1.0)
    fusedopt.sgd_(p, g, lr=1.0)
    assert torch.all(p == 0.0)


@pytest.mark.skipif(not HAVE_TORCH, reason="torch is not importable")
@pytest.mark.parametrize("kind", ["float8_e4m3fn", "int32", "negative-view"])  # (bfloat16: a storage type)
def test_torch_tensors_numpy_cannot_view(kind):
    """A tensor NumPy cannot view in place is a TypeError naming the argument."""
    import torch

    params = [torch.ones(4), torch.ones(4)]
    grads = [torch.full((4,), 0.5), torch.full((4,), 0.5)]
    if kind == "negative-view":
        params[1] = torch.ones(4)._neg_view()  # a lazily negated view, as torch.neg can make
        match = _name("params[1]")
    else:
        dtype = getattr(torch, kind)
        params = [t.to(dtype) for t in params]
        grads = [t.to(dtype) for t in grads]
        match = _name("params[0]") + ".*" + kind
    before = [t.clone() for t in params]
    with pytest.raises(TypeError, match=match):
        fusedopt.sgd_(params, grads, lr=0.1)
    assert all(torch.equal(a, b) for a, b in zip(params, before))


@pytest.mark.parametrize("cls, kwargs, fill", [
    (fusedopt.optim.Adam, dict(lr=1e-3, amsgrad=True), 0.0),
    (fusedopt.optim.Adagrad, dict(lr=1e-2, initial_accumulator_value=0.5), 0.5),
])
def test_optimizer_states_are_cut_from_one_block_per_role(cls, kwargs, fill):
    """fusedopt.optim keeps each state role of all params in one block (the pieces of a
    model's small tensors then stream like one array): every piece shaped like its param,
    C-contiguous, writable, filled with the initial value, 64-byte padded, none overlapping."""
    shapes = [(3,), (2, 5), (0,), (), (17,), (4, 1, 3)]
    params = [np.ones(s, np.float64) for s in shapes]
    opt = cls(params, **kwargs)
    for name, arrays in opt.state.items():
        assert len({id(a.base) for a in arrays}) == 1, name
        for a, p in zip(arrays, params):
            assert a.shape == p.shape and a.dtype == p.dtype, name
            assert a.flags.c_contiguous and a.flags.writeable, name
            assert np.all(a == fill), name
        pieces = [a for a in arrays if a.size]  # an empty view's address means nothing
        starts = [a.__array_interface__["data"][0] for a in pieces]
        ends = [s + a.nbytes for s, a in zip(starts, pieces)]
        assert all(e <= s for e, s in zip(ends, starts[1:])), name
        assert all((s - starts[0]) % 64 == 0 for s in starts), name
    opt.step([np.full(s, 0.25) for s in shapes])  # steps through the carved states
    assert all(np.all(p < 1.0) for p in params)


def test_cpu_calls_never_ask_for_a_gpu(monkeypatch):
    """A NumPy call that the CPU fast path refuses (a bad one here; torch CPU tensors
    too) reaches the Python checks without asking CUDA anything: finding a GPU starts the
    CUDA driver, which costs a CPU-only process memory and can break its later forks."""
    import fusedopt.cuda

    def asked(*args, **kwargs):
        raise AssertionError("a call on host arrays asked for the GPU")

    monkeypatch.setattr(fusedopt.cuda, "unavailable_reason", asked)
    p, wrong = np.ones(4, np.float32), np.ones(4, np.float64)
    with pytest.raises(TypeError, match="dtype"):
        fusedopt.sgd_(p, wrong, lr=0.1)
    with pytest.raises(TypeError, match="dtype"):
        fusedopt.adam_(p, wrong, np.zeros(4, np.float32), np.zeros(4, np.float32), step=1,
                       skip_if_nonfinite=True)
    with pytest.raises(TypeError, match="dtype"):
        fusedopt.adaptive_sgd_([p], [wrong], lr=0.1)
    if HAVE_TORCH:
        import torch

        fusedopt.sgd_(torch.ones(4), torch.ones(4), lr=0.1)


@pytest.mark.parametrize("betas, decoupled", [((0.9, 0.999), False), ((0.5, 0.6), True),
                                              ((0.0, 0.99), False), ((0.0, 0.0), True)])
def test_adam_coefficient_table_rows_are_the_steps_coefficients(betas, decoupled):
    """A capturable Adam's table (fusedopt._coeffs.adam_table): row t-1 has the bits of
    adam() at step t, and the last row those of every later step too."""
    from fusedopt import rules

    hyper = dict(lr=3e-3, betas=betas, eps=1e-8, weight_decay=0.05, amsgrad=False,
                 maximize=True, decoupled=decoupled)
    first, table = rules.adam.adam_table("adam_", **hyper)
    n = len(table)
    assert n == rules.adam.adam_table_steps("adam_", *betas)
    assert first == rules.adam.coefficients("adam_", step=1, **hyper)
    for t in sorted({1, 2, 3, n // 2 + 1, n - 1, n, n + 1, 10 * n, 10**9} - {0}):
        c = rules.adam.coefficients("adam_", step=t, **hyper)
        row = table[min(t, n) - 1]
        assert [float(x) for x in row] == list(c[:9]), t
        assert np.array_equal(row.view(np.uint64), np.array(c[:9], np.float64).view(np.uint64))
    if n > 2:  # the table is not longer than it needs to be by much: its rows still change
        assert not np.array_equal(table[n // 2], table[-1])


@pytest.mark.parametrize("cls", [fusedopt.optim.Adam, fusedopt.optim.AdamW])
def test_lr_factors_are_a_schedule_given_ahead(cls):
    """lr_factors: step t runs at lr * lr_factors[t-1], the last factor after the end;
    the same bits as setting lr before each step, and kept by state_dict."""
    rng = rng_for("lr-factors", cls.__name__)
    factors = [0.25, 0.5, 1.0, 0.75]
    host = [rng.uniform(-1, 1, n).astype(np.float32) for n in (7, 300)]
    scheduled = cls([p.copy() for p in host], lr=0.01, lr_factors=factors)
    by_hand = cls([p.copy() for p in host], lr=0.01)
    factors[0] = 100.0  # the optimizer keeps a copy
    for t in range(1, 8):
        grads = [rng.uniform(-1, 1, p.size).astype(np.float32) for p in host]
        by_hand.lr = 0.01 * [0.25, 0.5, 1.0, 0.75][min(t, 4) - 1]
        scheduled.step(grads)
        by_hand.step(grads)
        for a, b in zip(scheduled.params, by_hand.params):
            assert np.array_equal(a, b), t
    assert scheduled.lr == 0.01
    saved = scheduled.state_dict()
    assert list(saved["hyperparameters"]["lr_factors"]) == [0.25, 0.5, 1.0, 0.75]
    other = cls([p.copy() for p in host], lr=0.01)
    other.load_state_dict(saved)
    assert list(other.hyperparameters["lr_factors"]) == [0.25, 0.5, 1.0, 0.75]
    assert other.state_dict()["hyperparameters"] == saved["hyperparameters"]  # tuples compare
    old = dict(saved, hyperparameters={k: v for k, v in saved["hyperparameters"].items()
                                       if k != "lr_factors"})
    other.load_state_dict(old)  # a state_dict saved before lr_factors existed
    assert other.hyperparameters["lr_factors"] is None
    big = cls([p.copy() for p in host], lr=0.01, lr_factors=[1.0, 1e10])
    with pytest.raises(ValueError, match="lr_factors"):  # a rate that overflows
        big.lr = 1e300
    assert big.lr == 0.01


def test_lr_factors_with_a_float32_lr():
    """A NumPy float32 lr: eager rates are double products, as the table's are."""
    from fusedopt import _coeffs, rules

    lr, factors = np.float32(1e-3), _coeffs.lr_factors("f", np.linspace(0.1, 1.0, 50))
    hyper = dict(betas=(0.5, 0.6), eps=1e-8, weight_decay=0.0, amsgrad=False, maximize=False,
                 decoupled=False)
    _, table = rules.adam.adam_table("adam_", lr=lr, lr_factors=factors, **hyper)
    for t in range(1, 60):
        c = rules.adam.coefficients("adam_", step=t, lr=_coeffs.rate_at(lr, factors, t), **hyper)
        assert table[min(t, len(table)) - 1][4] == c.step_size, t


def test_adam_coefficient_table_follows_lr_factors():
    """With lr_factors the table's row t-1 has adam()'s bits at step t and rate
    lr * lr_factors[t-1]; it runs to the longer of the schedule and the betas' steps."""
    from fusedopt import _coeffs, rules

    hyper = dict(betas=(0.5, 0.6), eps=1e-8, weight_decay=0.05, amsgrad=False, maximize=False,
                 decoupled=True)
    for n_factors in (5, 200):
        factors = _coeffs.lr_factors("f", np.linspace(0.1, 1.3, n_factors))
        _, table = rules.adam.adam_table("adam_", lr=3e-3, lr_factors=factors, **hyper)
        assert len(table) == max(n_factors, rules.adam.adam_table_steps("adam_", 0.5, 0.6))
        for t in (1, 2, n_factors, n_factors + 1, len(table), len(table) + 5):
            c = rules.adam.coefficients("adam_", step=t, lr=_coeffs.rate_at(3e-3, factors, t), **hyper)
            row = table[min(t, len(table)) - 1]
            assert np.array_equal(row.view(np.uint64), np.array(c[:9], np.float64).view(np.uint64)), t


# --------------------------------------------------------------------------------------
# The one reader against objects that misreport themselves
@pytest.mark.skipif(not HAVE_TORCH, reason="torch is not importable")
def test_torch_subclass_that_misreports_its_shape_is_refused():
    """A subclass's shape is Python code: one that claims more elements than the tensor has
    must not send the kernel past the tensor's end."""
    import torch

    class Lying(torch.Tensor):
        @property
        def shape(self):
            return torch.Size([1024])

    guard = torch.zeros(4096)
    p = guard[:4].as_subclass(Lying)
    g = torch.ones(8)[:4].as_subclass(Lying)
    assert fusedopt._core.read([p], [g], [])[0] == "not_array"
    with pytest.raises(TypeError, match=r"params\[0\].*numel"):
        fusedopt.sgd_([p], [g], lr=1.0)
    assert torch.count_nonzero(guard) == 0


def test_masked_device_array_is_refused():
    a = np.ones(4, np.float32)

    class Masked:
        __cuda_array_interface__ = {"shape": (4,), "typestr": "<f4", "version": 3,
                                    "data": (a.ctypes.data, False), "mask": object()}

    assert fusedopt._core.read([Masked()], [Masked()], [])[0] == "not_array"


def test_coefficients_of_another_rule_are_refused():
    """A coefficient object is read by the field names of the rule it is run as, whatever
    type was read before: an SGD object run as Adam is an error, before and after SGD runs."""
    from fusedopt import rules

    p, g = np.ones(4, np.float32), np.ones(4, np.float32)
    m, v = np.zeros(4, np.float32), np.zeros(4, np.float32)
    sgd = rules.sgd.coefficients("sgd_", lr=0.1, momentum=0.0, dampening=0.0, nesterov=False,
                      weight_decay=0.0, maximize=False, step=1, convention="torch")
    for _ in range(2):
        with pytest.raises(AttributeError, match="beta1"):
            fusedopt._core.run("adam", [p], [g], [[m], [v]], sgd)
        assert fusedopt._core.run("sgd", [p], [g], [], sgd) is None


@pytest.mark.skipif(not HAVE_TORCH, reason="torch is not importable")
def test_torch_types_are_not_cached_from_a_half_imported_module(monkeypatch):
    """A read while torch is still being imported (on another thread) sees a module without
    Tensor yet; the reader must look again later rather than keep "no torch" for good."""
    import sys
    import types

    import torch

    half = types.ModuleType("torch")  # what sys.modules holds while torch/__init__ runs
    monkeypatch.setitem(sys.modules, "torch", half)
    a = np.ones(3, np.float32)
    assert fusedopt._core.read([a], [a.copy()], []) is None
    half.Tensor, half.float32, half.float64 = torch.Tensor, torch.float32, torch.float64
    assert fusedopt._core.read([torch.ones(3)], [torch.ones(3)], []) is None


@pytest.mark.skipif(not HAVE_TORCH, reason="torch is not importable")
def test_torch_tensors_are_read_through_their_c_slots():
    """torch.Tensor and nn.Parameter are read through torch's own C getters and methods,
    looked up once; a subclass, whose attributes may be Python code, by name."""
    import torch

    class Sub(torch.Tensor):
        pass

    assert fusedopt._core._torch_direct(torch.ones(2))
    assert fusedopt._core._torch_direct(torch.nn.Parameter(torch.ones(2)))
    assert not fusedopt._core._torch_direct(torch.ones(2).as_subclass(Sub))
    assert not fusedopt._core._torch_direct(np.ones(2, np.float32))


@pytest.mark.skipif(not HAVE_TORCH, reason="torch is not importable")
def test_torch_tensors_are_read_through_torchs_c_functions():
    """With this torch, the reader reads torch.Tensor and nn.Parameter through torch's C
    functions (fusedopt.info() says so), and what it reads is each tensor's own: views at
    an offset, 0-d, empty and 16-bit tensors update the elements they hold and nothing
    else; a negative view, a strided view, a meta tensor and an integer tensor get the
    refusals the methods gave."""
    import torch

    assert fusedopt.info()["torch_reader"] == {"c_functions": True, "reason": ""}
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        base = torch.zeros(4, 16, dtype=dtype)
        expected = base.clone()
        views = [base[1], base[2, 3:11], base[3, 5], base[0, 7:7], torch.nn.Parameter(base[0, 2:6])]
        for k, v in enumerate(views):
            g = torch.full(v.shape, float(k + 1), dtype=dtype)
            fusedopt.sgd_([v], [g], lr=1.0)
        expected[1] -= 1
        expected[2, 3:11] -= 2
        expected[3, 5] -= 3
        expected[0, 2:6] -= 5
        assert torch.equal(base, expected), dtype
    p = torch.zeros(8)
    g = torch.ones(8)
    refusals = {"unreachable": [torch._neg_view(p), torch.empty(8, device="meta")],
                "not_contiguous": [torch.zeros(16)[::2]], "dtype": [torch.zeros(8, dtype=torch.int32)]}
    for rule, arrays in refusals.items():
        for a in arrays:
            assert fusedopt._core.read([a], [g], [])[:3] == (rule, 0, 0), (rule, a)
            assert fusedopt._core.read([p], [a], [])[:3] == (rule, 1, 0), (rule, a)
    assert torch.count_nonzero(p) == 0


@pytest.mark.skipif(not HAVE_TORCH, reason="torch is not importable")
@pytest.mark.parametrize("n", [1000, 70000])  # run holding the GIL, and without it
def test_a_tensor_repointed_by_python_code_during_the_read_keeps_its_old_memory_alive(n):
    """_core.run takes the storages of plain torch tensors only if it must (a large call
    that releases the GIL), and before the read of any array that could run Python code.
    Here a subclass's shape property, read after a plain tensor, points that tensor at new
    memory and drops the last reference to the old: the step still writes memory it holds
    (the old storage; under the sanitizers a use after free would be reported), the
    tensor's new memory is untouched, and so is a tensor allocated right after the old
    memory was given up (where the allocator hands the same block out again, a step that
    let it go would write there), and the subclass's own elements are updated."""
    import torch

    class Repointing(torch.Tensor):
        victim = None
        allocated_after = None

        @property
        def shape(self):
            if Repointing.victim is not None:
                Repointing.victim.data = torch.full((n,), 7.0)
                Repointing.victim = None
                Repointing.allocated_after = torch.zeros(n)
            return super().shape

    victim = torch.zeros(n)
    Repointing.victim = victim
    other = torch.zeros(n).as_subclass(Repointing)
    grads = [torch.ones(n), torch.ones(n)]
    fusedopt.sgd_([victim, other], grads, lr=0.5)
    assert Repointing.victim is None  # the property ran, during the read
    assert torch.equal(victim, torch.full((n,), 7.0))
    assert torch.equal(Repointing.allocated_after, torch.zeros(n))
    assert torch.equal(other.as_subclass(torch.Tensor), torch.full((n,), -0.5))


@pytest.mark.skipif(not HAVE_TORCH, reason="torch is not importable")
@pytest.mark.parametrize("cls", ["Tensor", "Parameter"])
def test_torch_type_with_a_replaced_method_is_read_by_name(monkeypatch, cls):
    """A torch.Tensor (or nn.Parameter) whose is_neg was replaced after the reader looked
    torch up is read by name from then on, as the attribute now says; and through the C
    slots again once the type is as it was."""
    import torch

    def p():
        return torch.nn.Parameter(torch.ones(3)) if cls == "Parameter" else torch.ones(3)

    assert fusedopt._core.read([p()], [torch.ones(3)], []) is None
    owner = torch.nn.Parameter if cls == "Parameter" else torch.Tensor
    monkeypatch.setattr(owner, "is_neg", lambda self: True)
    assert not fusedopt._core._torch_direct(p())
    assert fusedopt._core.read([p()], [torch.ones(3)], [])[:3] == ("unreachable", 0, 0)
    monkeypatch.undo()
    assert fusedopt._core._torch_direct(p())
    assert fusedopt._core.read([p()], [torch.ones(3)], []) is None


@pytest.mark.skipif(not HAVE_TORCH, reason="torch is not importable")
def test_torch_type_with_a_replaced_shape_is_checked_as_a_subclass(monkeypatch):
    """A torch.Tensor read by name gets a subclass's checks: a shape property put on the
    type that claims more elements than the tensor has is refused, not run past its end."""
    import torch

    guard = torch.zeros(4096)
    p, g = guard[:4], torch.ones(8)[:4]
    monkeypatch.setattr(torch.Tensor, "shape", property(lambda self: torch.Size([1024])))
    assert fusedopt._core.read([p], [g], [])[0] == "not_array"
    with pytest.raises(TypeError, match=r"params\[0\]"):
        fusedopt.sgd_([p], [g], lr=1.0)
    assert torch.count_nonzero(guard) == 0
    monkeypatch.undo()
    fusedopt.sgd_([p], [g], lr=1.0)
    assert torch.all(p == -1.0) and torch.count_nonzero(guard[4:]) == 0


@pytest.mark.skipif(not HAVE_TORCH, reason="torch is not importable")
def test_torch_facts_are_read_after_is_neg():
    """torch's is_neg() releases the GIL, and another thread may point the tensor at other
    memory meanwhile: the shape, pointer and storage are read after it, so that they are
    of one tensor. Here a subclass's is_neg stands for that thread."""
    import torch

    class Moved(torch.Tensor):
        def is_neg(self):
            self.data = torch.zeros(4)
            return False

    p, g = torch.zeros(8).as_subclass(Moved), torch.ones(4)
    assert fusedopt._core.read([p], [g], []) is None
    fusedopt.sgd_([p], [g], lr=1.0)
    assert p.shape == (4,) and torch.all(p == -1.0)


def test_numpy_bool_flags_are_bools():
    """np.True_ is a bool to the flags (its type is numpy.bool in NumPy 2, numpy.bool_ in 1)."""
    p, g = np.ones(4, np.float32), np.full(4, 0.5, np.float32)
    assert fusedopt.sgd_(p, g, lr=0.5, skip_if_nonfinite=np.True_) == fusedopt.StepStatus(False, 0)
    assert np.all(p == 0.75)
    with pytest.raises(TypeError, match="skip_if_nonfinite must be a bool"):
        fusedopt.sgd_(p, g, lr=0.5, skip_if_nonfinite=np.int8(1))
