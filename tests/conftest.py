"""Shared helpers: the table of rule cases, random nonzero inputs, CPU target/thread control.

The test modules import from here (``from conftest import ...``); pytest puts this folder
on sys.path when it collects them.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import zlib
from dataclasses import dataclass, field

import fusedopt
import fusedopt.reference
import fusedopt.rules
import numpy as np
import pytest

# FUSEDOPT_TEST_CUDA_EMULATION=1: the CUDA tests run on the emulated kernels, with host
# memory standing in for the device (tests/host_cupy.py); every other test module is left
# out, since they take CuPy to be absent or real.
CUDA_EMULATION = os.environ.get("FUSEDOPT_TEST_CUDA_EMULATION") == "1"
if CUDA_EMULATION:
    import fusedopt._cuda_emulated
    import host_cupy

    host_cupy.install(fusedopt._cuda_emulated)


def pytest_ignore_collect(collection_path, config):
    if CUDA_EMULATION and collection_path.suffix == ".py" and collection_path.name != "test_cuda.py":
        return True
    return None


# FUSEDOPT_TEST_SHARD="i/n": run only every n-th collected test, starting at the i-th (from
# 0), so that one long run of a test module in a process of its own (test_cuda.py on the
# emulation) can be split into n processes that pytest-xdist's workers share out.
TEST_SHARD = os.environ.get("FUSEDOPT_TEST_SHARD", "")


def pytest_collection_modifyitems(config, items):
    # The long tests first: pytest-xdist hands out tests in this order, and a long one
    # handed out last would leave the other workers idle while it runs.
    items.sort(key=lambda item: item.get_closest_marker("long") is None)
    if not TEST_SHARD:
        return
    index, count = (int(x) for x in TEST_SHARD.split("/"))
    if not 0 <= index < count:
        raise pytest.UsageError(f"FUSEDOPT_TEST_SHARD={TEST_SHARD}: wants i/n with 0 <= i < n")
    keep = [item for k, item in enumerate(items) if k % count == index]
    config.hook.pytest_deselected(items=[item for k, item in enumerate(items) if k % count != index])
    items[:] = keep


SEED = 20240229
DTYPES = {"f32": np.float32, "f64": np.float64}

SUPPORTED_TARGETS = [t["name"] for t in fusedopt.info()["cpu"]["targets"]
                     if t["built"] and t["supported"]]

try:
    import torch  # noqa: F401

    HAVE_TORCH = True
except ImportError:  # pragma: no cover - depends on the environment
    HAVE_TORCH = False


def rng_for(*key) -> np.random.Generator:
    """A generator seeded from SEED and the test's key (stable across runs and processes),
    so every test sees its own data."""
    return np.random.default_rng([SEED, *(zlib.crc32(str(k).encode()) for k in key)])


# --------------------------------------------------------------------------------------
# Rule cases: one public function plus the hyperparameters that pick one code path.
# --------------------------------------------------------------------------------------
# States that are squares (or sums of squares) and must stay >= 0.
_SQUARE_STATES = set().union(*(r.square_states for r in fusedopt.rules.RULES.values()))


@dataclass(frozen=True)
class Case:
    id: str
    fn: str  # name of the public function, e.g. "adam_"
    kwargs: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def rule(self) -> str:
        return self.fn.rstrip("_")

    @property
    def takes_step(self) -> bool:
        return fusedopt.rules.kernel(self.fn)[1].takes_step

    @property
    def states(self) -> tuple[str, ...]:
        """The state arguments this call needs, in the function's positional order (the
        rule's description says which its flags use)."""
        rule, kernel = fusedopt.rules.kernel(self.fn)
        defaults = {k: v for k, v in kernel.keywords.items() if v is not fusedopt.rules.REQUIRED}
        step = {"step": 2} if kernel.takes_step else {}
        coeffs = rule.coefficients(self.fn, **kernel.fixed, **{**defaults, **self.kwargs, **step})
        return rule.states_for(coeffs)

    def call(self, params, grads, states: dict, step: int, **extra):
        """Calls the function; ``extra`` carries backend= (fusedopt) or mode= (reference)."""
        module = fusedopt.reference if "mode" in extra else fusedopt
        kwargs = dict(self.kwargs, **extra)
        if self.takes_step:
            kwargs["step"] = step
        return getattr(module, self.fn)(params, grads, **states, **kwargs)


def _sgd_cases(fn: str) -> list[Case]:
    out = []
    kinds = {
        "torch": {"": {}, "mom": dict(momentum=0.9), "mom-damp": dict(momentum=0.9, dampening=0.25),
                  "nesterov": dict(momentum=0.9, nesterov=True)},
        "keras": {"": {}, "mom": dict(momentum=0.9), "nesterov": dict(momentum=0.9, nesterov=True)},
    }
    for conv, maximize, wd in itertools.product(("torch", "keras"), (False, True), (0.0, 0.02)):
        for kind, extra in kinds[conv].items():
            parts = ["sgd", "keras" if conv == "keras" else "", kind, "wd" if wd else "",
                     "max" if maximize else ""]
            kwargs = dict(lr=0.05, weight_decay=wd, maximize=maximize, convention=conv, **extra)
            out.append(Case("-".join(p for p in parts if p), fn, kwargs))
    return out


def _cases() -> list[Case]:
    out = _sgd_cases("sgd_")
    # adaptive_sgd_ runs the SGD kernel at a rate from the global norm: a few paths suffice.
    out += [
        Case("asgd", "adaptive_sgd_", dict(lr=0.5)),
        Case("asgd-mom-wd-max", "adaptive_sgd_",
             dict(lr=0.5, momentum=0.9, weight_decay=0.02, maximize=True)),
        Case("asgd-nesterov", "adaptive_sgd_", dict(lr=0.5, momentum=0.9, nesterov=True)),
        Case("asgd-keras-mom-wd", "adaptive_sgd_",
             dict(lr=0.5, momentum=0.9, weight_decay=0.02, convention="keras")),
    ]
    for maximize, wd, decay in itertools.product((False, True), (0.0, 0.02), (0.0, 0.1)):
        parts = ["adagrad", "decay" if decay else "", "wd" if wd else "", "max" if maximize else ""]
        out.append(Case("-".join(p for p in parts if p), "adagrad_",
                        dict(lr=0.05, lr_decay=decay, weight_decay=wd, maximize=maximize)))
    for maximize, wd, centered, mom in itertools.product((False, True), (0.0, 0.02), (False, True),
                                                         (0.0, 0.9)):
        parts = ["rmsprop", "centered" if centered else "", "mom" if mom else "",
                 "wd" if wd else "", "max" if maximize else ""]
        out.append(Case("-".join(p for p in parts if p), "rmsprop_",
                        dict(lr=0.01, alpha=0.9, weight_decay=wd, momentum=mom, centered=centered,
                             maximize=maximize)))
    for fn, maximize, wd, amsgrad in itertools.product(("adam_", "adamw_"), (False, True),
                                                       (0.0, 0.02), (False, True)):
        parts = [fn.rstrip("_"), "amsgrad" if amsgrad else "", "wd" if wd else "",
                 "max" if maximize else ""]
        out.append(Case("-".join(p for p in parts if p), fn,
                        dict(lr=0.01, betas=(0.8, 0.95), weight_decay=wd, amsgrad=amsgrad,
                             maximize=maximize)))
    # Lion's weight decay is decoupled: p *= 1 - lr*wd, so wd is larger than Adam's here.
    for maximize, wd in itertools.product((False, True), (0.0, 0.5)):
        parts = ["lion", "wd" if wd else "", "max" if maximize else ""]
        out.append(Case("-".join(p for p in parts if p), "lion_",
                        dict(lr=0.01, betas=(0.8, 0.95), weight_decay=wd, maximize=maximize)))
    # Every other rule by its examples (fusedopt/rules/<rule>.py: each names its forms, with
    # and without decay and maximize): a rule added there joins the grid without a line here.
    listed = {c.fn for c in out}
    for name, fn, hyper, _, _ in fusedopt.rules.examples():
        if fn not in listed:
            out.append(Case(name, fn, dict(hyper)))
    return out


CASES = _cases()
CASES_BY_ID = {c.id: c for c in CASES}
assert len(CASES_BY_ID) == len(CASES), "case ids must be unique"


# --------------------------------------------------------------------------------------
# Random inputs
# --------------------------------------------------------------------------------------
def nonzero(rng, size, dtype, low=0.1, high=2.0, signed=True):
    """Values with |x| in [low, high); zeros would hide unwritten or skipped elements."""
    x = rng.uniform(low, high, size)
    if signed:
        x *= rng.choice((-1.0, 1.0), size)
    return x.astype(dtype)


@dataclass
class Inputs:
    """One call's arrays: params, states (name -> arrays), and a gradient per step."""

    single: bool
    params: list
    states: dict
    grads: list  # grads[k] is the gradient argument of step k

    def args(self, k: int):
        """(params, grads, states) as the function takes them: single arrays or lists."""
        pick = (lambda xs: xs[0]) if self.single else (lambda xs: xs)
        return pick(self.params), pick(self.grads[k]), {n: pick(v) for n, v in self.states.items()}

    def copy(self) -> Inputs:
        cp = lambda xs: [None if x is None else x.copy() for x in xs]  # noqa: E731
        return Inputs(self.single, cp(self.params), {n: cp(v) for n, v in self.states.items()},
                      [cp(g) for g in self.grads])

    def written(self) -> dict:
        """Every written array by a readable name: params[i], exp_avgs[i], ..."""
        out = {f"params[{i}]": p for i, p in enumerate(self.params)}
        for name, arrays in self.states.items():
            out.update({f"{name}[{i}]": a for i, a in enumerate(arrays) if a is not None})
        return out


def make_inputs(case: Case, dtype, sizes, *, steps: int, rng, single=None,
                grad_scale=None) -> Inputs:
    """Random nonzero params, states and ``steps`` gradients for ``case``.

    ``sizes`` is an int (one array; passed as a single array unless ``single=False``) or a
    list of ints (a list of arrays). States are nonzero too: square-type states positive, and
    the centered RMSprop average small enough that ``square_avg - grad_avg**2 > 0``.
    Gradients of adaptive_sgd_ are scaled so the global norm is about 1, which keeps the
    rate lr0 / (1 + ||g||^2) large enough to move every parameter. ``grad_scale`` overrides.
    """
    if single is None:
        single = isinstance(sizes, (int, np.integer))
    sizes = [int(sizes)] if isinstance(sizes, (int, np.integer)) else [int(n) for n in sizes]
    params = [nonzero(rng, n, dtype) for n in sizes]
    states = {}
    rule = fusedopt.rules.kernel(case.fn)[0]
    for name in case.states:
        # The rule's shape of this state for each (1-D) param: its own size, or None where
        # a factored rule keeps no such state (Adafactor's row and column factors).
        sizes_of = [None if rule.state_shapes((n,))[rule.states.index(name)] is None else n
                    for n in sizes]
        low, high, signed = ((0.5, 2.0, False) if name in _SQUARE_STATES
                             else (0.01, 0.3, True) if name == "grad_avgs" else (0.1, 2.0, True))
        states[name] = [None if n is None else nonzero(rng, n, dtype, low, high, signed=signed)
                        for n in sizes_of]
    if grad_scale is None:
        grad_scale = 1.0 / np.sqrt(max(sum(sizes), 1)) if case.fn == "adaptive_sgd_" else 1.0
    grads = [[(nonzero(rng, n, np.float64) * grad_scale).astype(dtype) for n in sizes]
             for _ in range(steps)]
    return Inputs(single, params, states, grads)


def run_steps(case: Case, inputs: Inputs, *, first_step: int = 1, **extra) -> list:
    """Runs len(inputs.grads) steps in place; returns what each call returned."""
    out = []
    for k in range(len(inputs.grads)):
        params, grads, states = inputs.args(k)
        out.append(case.call(params, grads, states, first_step + k, **extra))
    return out


# --------------------------------------------------------------------------------------
# Comparisons
# --------------------------------------------------------------------------------------
def _bits(a: np.ndarray) -> np.ndarray:
    return a.view({4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


def assert_bitwise(actual: Inputs, expected: Inputs):
    """Every written array has exactly the bits of the expected one (NaN payloads, and
    -0.0 versus +0.0, included), and the expected arrays are finite (so the comparison
    says something)."""
    exp = expected.written()
    for name, a in actual.written().items():
        e = exp[name]
        assert a.dtype == e.dtype and a.shape == e.shape, name
        assert np.isfinite(e).all(), f"{name}: the reference produced non-finite values"
        if not np.array_equal(_bits(a), _bits(e)):
            bad = np.flatnonzero(_bits(a) != _bits(e))
            i = int(bad[0])
            pytest.fail(f"{name}: {bad.size} of {a.size} elements differ; first at {i}: "
                        f"{a.flat[i]!r} != {e.flat[i]!r} (max |diff| "
                        f"{np.max(np.abs(a.astype(np.float64) - e.astype(np.float64))):.3g})")


# --------------------------------------------------------------------------------------
# CPU target and threads
# --------------------------------------------------------------------------------------
@contextlib.contextmanager
def cpu_config(target: str | None = None, threads: int | None = None):
    """Runs the block on ``target`` with ``threads`` threads, then restores the previous
    choice (None leaves a setting as it is)."""
    cpu = fusedopt.info()["cpu"]
    prev_target = "auto" if cpu["target_source"].startswith("auto") else cpu["target"]
    prev_threads = fusedopt.get_num_threads()
    try:
        if target is not None:
            fusedopt.set_cpu_target(target)
            assert fusedopt.info()["cpu"]["target"] == target
        if threads is not None:
            fusedopt.set_num_threads(threads)
        yield
    finally:
        fusedopt.set_num_threads(prev_threads)
        fusedopt.set_cpu_target(prev_target)
