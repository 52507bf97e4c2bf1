"""NaN and inf: propagated exactly as the exact reference says, or, with
``skip_if_nonfinite=True``, a call that writes nothing and reports how many gradient values
were not finite. Every rule, functional and optimizer, native and reference.
"""

from __future__ import annotations

import fusedopt
import fusedopt.optim
import fusedopt.reference
import numpy as np
import pytest

# name -> (function, hyperparameters, state arguments in positional order)
CONFIGS = {
    "sgd": ("sgd_", dict(lr=0.1, step=2), ()),
    "sgd-mom-nesterov-wd": ("sgd_", dict(lr=0.1, momentum=0.9, nesterov=True,
                                         weight_decay=0.01, step=2), ("momentum_buffers",)),
    "sgd-mom-first-step": ("sgd_", dict(lr=0.1, momentum=0.9, dampening=0.1, step=1),
                           ("momentum_buffers",)),
    "sgd-keras-mom-max": ("sgd_", dict(lr=0.1, momentum=0.9, convention="keras", maximize=True,
                                       weight_decay=0.01), ("momentum_buffers",)),
    "asgd": ("adaptive_sgd_", dict(lr=0.5), ()),
    "asgd-mom": ("adaptive_sgd_", dict(lr=0.5, momentum=0.9, step=3), ("momentum_buffers",)),
    "adagrad-decay-wd": ("adagrad_", dict(lr=0.1, lr_decay=0.01, weight_decay=0.01, step=3),
                         ("state_sums",)),
    "rmsprop": ("rmsprop_", dict(lr=0.01), ("square_avgs",)),
    "rmsprop-centered-mom-wd": ("rmsprop_", dict(lr=0.01, centered=True, momentum=0.9,
                                                 weight_decay=0.01),
                                ("square_avgs", "grad_avgs", "momentum_buffers")),
    "adam-wd": ("adam_", dict(lr=1e-3, weight_decay=0.01, step=3), ("exp_avgs", "exp_avg_sqs")),
    "adam-amsgrad": ("adam_", dict(lr=1e-3, amsgrad=True, step=3),
                     ("exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs")),
    "adamw-amsgrad-max": ("adamw_", dict(lr=1e-3, amsgrad=True, maximize=True, step=2),
                          ("exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs")),
    # sign(NaN) is NaN: a NaN in the direction reaches the parameter (an infinite one is a
    # sign of +-1 and does not).
    "lion-wd-max": ("lion_", dict(lr=1e-3, weight_decay=0.1, maximize=True), ("exp_avgs",)),
}
POSITIVE = {"state_sums", "square_avgs", "exp_avg_sqs", "max_exp_avg_sqs"}
SMALL = {"grad_avgs"}
# Sizes: a single element, an odd size, one large enough to be split between threads, and
# a small last tensor.
SIZES = [1, 17, 70001, 3]
NONFINITE = (np.nan, np.inf, -np.inf)
DTYPES = {"f32": np.float32, "f64": np.float64}


def make(config, dtype, seed):
    fn, hyper, states = CONFIGS[config]
    rng = np.random.default_rng(seed)

    def values(n, role):
        if role in SMALL:
            x = rng.uniform(0.01, 0.3, n)
        else:
            x = rng.uniform(0.1, 2.0, n)
        if role not in POSITIVE:
            x *= rng.choice((-1.0, 1.0), n)
        return x.astype(dtype)

    scale = 1.0 / np.sqrt(sum(SIZES)) if fn == "adaptive_sgd_" else 1.0
    arrays = {"params": [values(n, "params") for n in SIZES],
              "grads": [(values(n, "grads") * scale).astype(dtype) for n in SIZES]}
    for s in states:
        arrays[s] = [values(n, s) for n in SIZES]
    return fn, hyper, ("params", "grads") + states, arrays


def plant(arrays, role, rng, count):
    """Puts `count` NaN/inf/-inf values into arrays[role] at first, last and random places;
    returns how many distinct positions now hold a non-finite value."""
    spots = [(0, 0), (len(SIZES) - 1, SIZES[-1] - 1), (2, 0), (2, SIZES[2] - 1),
             (2, SIZES[2] // 2)]
    while len(spots) < count:
        t = int(rng.integers(len(SIZES)))
        spots.append((t, int(rng.integers(SIZES[t]))))
    for k, (t, i) in enumerate(spots[:count]):
        arrays[role][t][i] = NONFINITE[k % 3]
    return len(set(spots[:count]))


def copy(arrays):
    return {r: [a.copy() for a in v] for r, v in arrays.items()}


def call(fn, roles, arrays, hyper, impl, **extra):
    f = getattr(fusedopt, fn) if impl == "native" else getattr(fusedopt.reference, fn)
    kw = dict(hyper, **extra)
    if impl == "native":
        kw["backend"] = "native"
    if fn == "rmsprop_":
        kw.pop("step", None)
    with np.errstate(all="ignore"):  # the reference computes with NaN and inf on purpose
        return f(*[arrays[r] for r in roles], **kw)


def bits(a):
    return a.view({4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


def assert_same(actual, expected):
    """Equal values with NaN equal to NaN, and the same bits wherever the value is not NaN
    (so -0.0 and +0.0 and the infinities must match too)."""
    for r in actual:
        for t, (a, e) in enumerate(zip(actual[r], expected[r])):
            assert np.array_equal(a, e, equal_nan=True), f"{r}[{t}] differs"
            keep = ~np.isnan(e)
            assert np.array_equal(bits(a)[keep], bits(e)[keep]), f"{r}[{t}] differs in bits"


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("where", ["grads", "params", "state"])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_nonfinite_propagates_as_the_reference(config, where, dtype):
    fn, hyper, roles, arrays = make(config, DTYPES[dtype], seed=1)
    role = roles[2] if where == "state" and len(roles) > 2 else where
    if where == "state" and len(roles) == 2:
        pytest.skip("this configuration keeps no state")
    rng = np.random.default_rng(2)
    plant(arrays, role, rng, 12)
    expected = copy(arrays)
    got = call(fn, roles, arrays, hyper, "native")
    want = call(fn, roles, expected, hyper, "reference")
    assert_same(arrays, expected)
    if fn == "adaptive_sgd_":
        assert np.array_equal([got.lr, got.grad_norm], [want.lr, want.grad_norm],
                              equal_nan=True)
    # the non-finite values reached the params (except where the rule ignores the planted
    # state: torch's first momentum step sets the buffer to the gradient)
    if not (config == "sgd-mom-first-step" and where == "state"):
        assert any(not np.isfinite(a).all() for a in arrays["params"])


@pytest.mark.parametrize("impl", ["native", "reference"])
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("config", list(CONFIGS))
def test_skip_writes_nothing_and_counts(config, dtype, impl):
    fn, hyper, roles, arrays = make(config, DTYPES[dtype], seed=3)
    rng = np.random.default_rng(4)
    n = plant(arrays, "grads", rng, 9)
    # non-finite values elsewhere are not counted: only gradients are checked
    arrays["params"][1][3] = np.nan
    before = copy(arrays)
    status = call(fn, roles, arrays, hyper, impl, skip_if_nonfinite=True)
    assert status.skipped is True
    assert status.nonfinite == n
    if fn == "adaptive_sgd_":
        assert status.lr == 0.0 and np.isnan(status.grad_norm)
    assert_same(arrays, before)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("config", list(CONFIGS))
def test_native_and_reference_agree_on_the_count(config, dtype):
    fn, hyper, roles, arrays = make(config, DTYPES[dtype], seed=5)
    rng = np.random.default_rng(6)
    counts = []
    for k in (1, 2, 3, 40, 1000):
        plant(arrays, "grads", rng, k)
        expected = sum(int((~np.isfinite(g)).sum()) for g in arrays["grads"])
        native = call(fn, roles, arrays, hyper, "native", skip_if_nonfinite=True).nonfinite
        ref = call(fn, roles, arrays, hyper, "reference", skip_if_nonfinite=True).nonfinite
        assert native == ref == expected
        counts.append(native)
    assert counts == sorted(counts) and counts[-1] > counts[0]


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_count_is_the_same_for_any_thread_count(threads):
    big = np.ones(1 << 18, np.float32)
    big[[0, 65535, 65536, 131072, (1 << 18) - 1]] = [np.nan, np.inf, -np.inf, np.nan, np.inf]
    prev = fusedopt.get_num_threads()
    try:
        fusedopt.set_num_threads(threads)
        p = np.zeros_like(big)
        status = fusedopt.sgd_(p, big, lr=0.1, skip_if_nonfinite=True, backend="native")
    finally:
        fusedopt.set_num_threads(prev)
    assert status == fusedopt.StepStatus(True, 5)
    assert not p.any()


@pytest.mark.parametrize("impl", ["native", "reference"])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_skip_with_finite_grads_is_a_normal_step(config, impl):
    fn, hyper, roles, arrays = make(config, np.float32, seed=7)
    plain = copy(arrays)
    status = call(fn, roles, arrays, hyper, impl, skip_if_nonfinite=True)
    result = call(fn, roles, plain, hyper, impl)
    assert status.skipped is False and status.nonfinite == 0
    if fn == "adaptive_sgd_":
        assert (status.lr, status.grad_norm) == (result.lr, result.grad_norm)
    assert_same(arrays, plain)
    assert not np.array_equal(arrays["params"][2], make(config, np.float32, 7)[3]["params"][2])


# --------------------------------------------------------------------------------------
# Optimizers
# --------------------------------------------------------------------------------------
OPTIMIZERS = {
    "SGD": (fusedopt.optim.SGD, dict(lr=0.1, momentum=0.9)),
    "SGD-keras": (fusedopt.optim.SGD, dict(lr=0.1, momentum=0.9, convention="keras")),
    "AdaptiveSGD": (fusedopt.optim.AdaptiveSGD, dict(lr=0.5, momentum=0.9)),
    "Adagrad": (fusedopt.optim.Adagrad, dict(lr=0.1, initial_accumulator_value=0.1)),
    "RMSprop": (fusedopt.optim.RMSprop, dict(lr=0.01, centered=True, momentum=0.9)),
    "Adam": (fusedopt.optim.Adam, dict(lr=1e-2, amsgrad=True)),
    "AdamW": (fusedopt.optim.AdamW, dict(lr=1e-2)),
    "Lion": (fusedopt.optim.Lion, dict(lr=1e-3, weight_decay=0.1)),
}


def _grads(seed, bad=False):
    rng = np.random.default_rng(seed)
    g = [rng.uniform(-0.1, 0.1, n).astype(np.float32) for n in SIZES]
    if bad:
        g[2][[5, 77]] = [np.inf, np.nan]
        g[3][-1] = -np.inf
    return g


def _params():
    rng = np.random.default_rng(11)
    return [rng.uniform(-1, 1, n).astype(np.float32) for n in SIZES]


def _assert_state_equal(a, b):
    for x, y in zip(a.params, b.params):
        assert np.array_equal(x, y, equal_nan=True)
    for name in a.state:
        for x, y in zip(a.state[name], b.state[name]):
            assert np.array_equal(x, y, equal_nan=True), name


@pytest.mark.parametrize("backend", ["native", "reference"])
@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_optimizer_skip_does_not_advance(opt, backend):
    cls, kw = OPTIMIZERS[opt]
    skipping = cls(_params(), skip_if_nonfinite=True, backend=backend, **kw)
    clean = cls(_params(), backend=backend, **kw)
    for k in range(4):
        # a skipped step between every two good ones; the clean optimizer never sees them
        before = [p.copy() for p in skipping.params]
        status = skipping.step(_grads(100 + k, bad=True))
        assert status.skipped is True and status.nonfinite == 3
        assert skipping.step_count == k
        for p, q in zip(skipping.params, before):
            assert np.array_equal(p, q)
        good = skipping.step(_grads(k))
        assert good.skipped is False and good.nonfinite == 0
        clean.step(_grads(k))
        assert skipping.step_count == clean.step_count == k + 1
        _assert_state_equal(skipping, clean)
    assert skipping.state_dict()["step"] == 4


@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_optimizer_without_skip_propagates(opt):
    cls, kw = OPTIMIZERS[opt]
    o = cls(_params(), backend="native", **kw)
    ref = cls(_params(), backend="reference", **kw)
    o.step(_grads(1))
    ref.step(_grads(1))
    with np.errstate(all="ignore"):
        o.step(_grads(2, bad=True))
        ref.step(_grads(2, bad=True))
    assert o.step_count == ref.step_count == 2
    _assert_state_equal(o, ref)
    assert not all(np.isfinite(p).all() for p in o.params)
