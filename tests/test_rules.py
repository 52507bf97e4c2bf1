"""The bitwise grid: native kernels against the exact reference, for every rule and option.

Each test runs STEPS steps (step 1, 2, 3: torch-convention momentum takes its first-step
path and then its later-step path) on random nonzero params, states and gradients, once
natively and once on the exact reference, and asserts that params and every state have
the same bits (``assert_bitwise`` compares the raw bits, so -0.0 vs +0.0 or NaN payloads
would also count as differences). Return values (adaptive_sgd_'s rate and norm) must be
equal too.

What runs where, to keep the suite fast on two cores:

* ``test_bitwise``: every case of ``conftest.CASES`` (all option combinations that pick a
  different compiled path), float32 and float64, every size of SIZES plus a list of mixed
  sizes, on the default target (the best this CPU supports) at the default thread count
  (ids without a suffix, e.g. ``adam-amsgrad-wd-f32-n4097``). For a representative subset
  of sizes, MATRIX_SIZES (a vector tail only, a vector body plus a tail, the prime near 10^5,
  2^20+3 and the mixed list), the same case also runs on every CPU target this machine
  supports at 1, 2 and 3 threads (ids like ``adam-amsgrad-wd-f32-n4097-avx2-t3``). A call
  only splits across threads above 32768 elements per thread (csrc/cpu/driver.cpp), so
  the small sizes there check the targets' vector bodies and tails, the large ones the
  thread split.
* ``test_many_tiny_tensors``: lists of thousands of tiny tensors (sizes 0..110, more than
  3 * 32768 elements in all), so thread ranges start and end inside tensors, for one
  case per rule with the most states, across the target x thread matrix.
* ``test_adaptive_norm_bits``: adaptive_sgd_'s global norm and rate, identical bits on
  every target and at 1, 2 and 3 threads, and equal to the reference.
* ``test_subnormals_are_not_flushed``: no flush-to-zero, on every target.
* ``test_first_torch_momentum_step_ignores_old_buffers``: torch momentum's first step
  ignores whatever the buffer held, NaN included.

Each reference trajectory is computed once and reused across the targets and thread
counts of one case (the parametrization keeps them adjacent).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import (
    CASES,
    CASES_BY_ID,
    DTYPES,
    SUPPORTED_TARGETS,
    assert_bitwise,
    cpu_config,
    make_inputs,
    rng_for,
    run_steps,
)

STEPS = 3
PRIME = 100_003  # the prime near 10^5
BIG = 2**20 + 3
SIZES = [0, 1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 1023, 4097, PRIME, BIG]
# Mixed sizes, empty tensors included; more than 3 * 32768 elements, so 3 threads split it.
MIXED = [0, 1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 1023, 4097, PRIME, 0, 31, 5]
MATRIX_SIZES = [17, 4097, PRIME, BIG, "list"]
THREADS = [1, 2, 3]
MIN_ELEMENTS_PER_THREAD = 32768  # csrc/cpu/driver.cpp: kMinElementsPerThread


def _size_id(size) -> str:
    return "list" if size == "list" else f"n{size}"


def _sizes(size):
    return MIXED if size == "list" else size


# --------------------------------------------------------------------------------------
_cache: dict = {}


def _reference(case, dt: str, size, sizes=None):
    """(fresh copy of the initial inputs, inputs after the reference steps, returns),
    computed once per (case, dtype, size) and kept while the tests of that key run."""
    key = (case.id, dt, str(size))
    if key not in _cache:
        _cache.clear()
        inputs = make_inputs(case, DTYPES[dt], _sizes(size) if sizes is None else sizes,
                             steps=STEPS, rng=rng_for(*key))
        expected = inputs.copy()
        returns = run_steps(case, expected, mode="exact")
        _check_moved(inputs, expected)
        _cache[key] = (inputs, expected, returns)
    inputs, expected, returns = _cache[key]
    return inputs.copy(), expected, returns


def _check_moved(before, after):
    """The data must make the kernel write: nearly every parameter moves."""
    for p0, p1 in zip(before.params, after.params):
        if p0.size:
            moved = np.count_nonzero(p0 != p1) / p0.size
            assert moved > 0.9, f"only {moved:.1%} of params moved; the test data is too weak"


def _check_native(case, dt, size, sizes=None):
    inputs, expected, ref_returns = _reference(case, dt, size, sizes)
    returns = run_steps(case, inputs, backend="native")
    assert_bitwise(inputs, expected)
    assert returns == ref_returns


# --------------------------------------------------------------------------------------
def _bitwise_params():
    for case in CASES:
        for dt in DTYPES:
            for size in [*SIZES, "list"]:
                name = f"{case.id}-{dt}-{_size_id(size)}"
                yield pytest.param(case, dt, size, None, None, id=name)
                if size in MATRIX_SIZES:
                    for target in SUPPORTED_TARGETS:
                        for threads in THREADS:
                            yield pytest.param(case, dt, size, target, threads,
                                               id=f"{name}-{target}-t{threads}")


@pytest.mark.parametrize(("case", "dt", "size", "target", "threads"), list(_bitwise_params()))
def test_bitwise(case, dt, size, target, threads):
    """target/threads None: the default target and thread count."""
    with cpu_config(target, threads):
        _check_native(case, dt, size)


# --------------------------------------------------------------------------------------
TINY_CASES = ["sgd-mom-wd", "sgd-keras-nesterov-wd-max", "asgd-mom-wd-max", "adagrad-decay-wd",
              "rmsprop-centered-mom-wd-max", "adam-amsgrad-wd", "adamw-amsgrad-max"]
TINY_COUNT = 2000


def _tiny_sizes():
    sizes = rng_for("tiny sizes").integers(0, 111, TINY_COUNT).tolist()
    assert sum(sizes) > 3 * MIN_ELEMENTS_PER_THREAD
    return sizes


@pytest.mark.parametrize(
    ("case_id", "dt", "target", "threads"),
    [pytest.param(c, dt, target, threads, id=f"{c}-{dt}-tiny{TINY_COUNT}-{target}-t{threads}")
     for c in TINY_CASES for dt in DTYPES for target in SUPPORTED_TARGETS for threads in THREADS])
def test_many_tiny_tensors(case_id, dt, target, threads):
    with cpu_config(target, threads):
        _check_native(CASES_BY_ID[case_id], dt, f"tiny{TINY_COUNT}", sizes=_tiny_sizes())


# --------------------------------------------------------------------------------------
NORM_SIZES = {"n100003": PRIME, "n1048579": BIG, "list": MIXED, "tiny": None}


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("size_id", NORM_SIZES)
def test_adaptive_norm_bits(size_id, dt):
    """The global norm is summed in a fixed blocking and order: the same bits on every
    target and thread count, and the bits of the exact reference."""
    case = CASES_BY_ID["asgd-mom-wd-max"]
    sizes = _tiny_sizes() if NORM_SIZES[size_id] is None else NORM_SIZES[size_id]
    inputs = make_inputs(case, DTYPES[dt], sizes, steps=1, rng=rng_for("norm", size_id, dt),
                         single=False)
    expected = inputs.copy()
    (ref,) = run_steps(case, expected, mode="exact")
    results = {}
    for target in SUPPORTED_TARGETS:
        for threads in THREADS:
            with cpu_config(target, threads):
                got = inputs.copy()
                (results[f"{target}-t{threads}"],) = run_steps(case, got, backend="native")
                assert_bitwise(got, expected)
    wrong = {k: (r.lr.hex(), r.grad_norm.hex()) for k, r in results.items()
             if (r.lr.hex(), r.grad_norm.hex()) != (ref.lr.hex(), ref.grad_norm.hex())}
    assert not wrong, f"reference {(ref.lr.hex(), ref.grad_norm.hex())}, differing: {wrong}"
    # And the figures are the right ones: the norm to within float64 summation error,
    # the rate lr0 / (1 + ||g||^2).
    exact = math.sqrt(math.fsum((g.astype(np.float64) ** 2).sum() for g in inputs.grads[0]))
    assert ref.grad_norm == pytest.approx(exact, rel=1e-13)
    assert ref.lr == pytest.approx(case.kwargs["lr"] / (1 + exact**2), rel=1e-12)



# --------------------------------------------------------------------------------------
SUBNORMAL_CASES = ["sgd-nesterov-wd", "sgd-keras-mom-wd", "adagrad-wd", "rmsprop-centered-mom",
                   "adam-amsgrad-wd", "adamw-max"]
SUBNORMAL_SCALE = {"f32": 1e-39, "f64": 1e-309}  # below the smallest normal number


@pytest.mark.parametrize("target", SUPPORTED_TARGETS)
@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("case_id", SUBNORMAL_CASES)
def test_subnormals_are_not_flushed(case_id, dt, target):
    """No flush-to-zero: subnormal params, states and gradients give the reference's bits."""
    case = CASES_BY_ID[case_id]
    dtype = DTYPES[dt]
    inputs = make_inputs(case, dtype, 4097, steps=STEPS, rng=rng_for("subnormal", case_id, dt))
    tiny = dtype(SUBNORMAL_SCALE[dt])
    for a in [*inputs.written().values(), *(g for step in inputs.grads for g in step)]:
        a *= tiny
    expected = inputs.copy()
    run_steps(case, expected, mode="exact")
    # Some results must still be subnormal for the test to say anything.
    smallest_normal = np.finfo(dtype).tiny
    assert any(np.any((a != 0) & (np.abs(a) < smallest_normal))
               for a in expected.written().values())
    with cpu_config(target, 1):
        run_steps(case, inputs, backend="native")
    assert_bitwise(inputs, expected)


@pytest.mark.parametrize("target", SUPPORTED_TARGETS)
@pytest.mark.parametrize("case_id", ["sgd-mom", "sgd-mom-damp-wd-max", "sgd-nesterov",
                                     "asgd-mom-wd-max"])
def test_first_torch_momentum_step_ignores_old_buffers(case_id, target):
    """On step 1 torch sets the buffer to the gradient: whatever the buffer held, NaN
    included, must not reach the result."""
    case = CASES_BY_ID[case_id]
    inputs = make_inputs(case, np.float32, MIXED, steps=1, rng=rng_for("first step", case_id))
    expected = inputs.copy()
    run_steps(case, expected, mode="exact")
    for buf in inputs.states["momentum_buffers"]:
        buf[...] = np.nan
    with cpu_config(target, 3):
        run_steps(case, inputs, backend="native")
    assert_bitwise(inputs, expected)
