"""Threads: the CPU kernels release the GIL, so Python threads really run them at once.

* Many threads calling kernels on their own arrays get the bits that sequential calls get.
* The GIL is released during a kernel: another Python thread observes a call half done.
* Two threads stepping one optimizer are serialised by its lock: the result equals that
  many sequential steps, and the step count is exact.
* Changing the thread count while kernels run changes no result.
"""

from __future__ import annotations

import threading

import fusedopt
import fusedopt.optim
import numpy as np
import pytest

JOIN_TIMEOUT = 120  # seconds; a hang fails the test instead of the whole run

# (function, hyperparameters, states)
RULES = [
    ("sgd_", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01), ("b",)),
    ("adaptive_sgd_", dict(lr=0.5, momentum=0.9), ("b",)),
    ("adagrad_", dict(lr=0.1, lr_decay=0.01), ("s",)),
    ("rmsprop_", dict(lr=0.01, centered=True, momentum=0.9), ("sq", "ga", "b")),
    ("adam_", dict(lr=1e-3, amsgrad=True, weight_decay=0.01), ("m", "v", "vmax")),
    ("adamw_", dict(lr=1e-3), ("m", "v")),
    ("lion_", dict(lr=1e-3, weight_decay=0.1), ("m",)),
]


def _run_threads(targets):
    errors = []

    def wrap(target):
        try:
            target()
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=wrap, args=(t,)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN_TIMEOUT)
        assert not t.is_alive(), "a thread did not finish"
    if errors:
        raise errors[0]


class Job:
    """One thread's work: a rule on its own arrays, several steps."""

    def __init__(self, k, sizes, steps):
        self.fn, self.hyper, states = RULES[k % len(RULES)]
        rng = np.random.default_rng(k)
        self.params = [rng.uniform(-1, 1, n).astype(np.float32) for n in sizes]
        self.states = [[rng.uniform(0.1, 0.3, n).astype(np.float32) for n in sizes]
                       for _ in states]
        scale = 1.0 / np.sqrt(sum(sizes)) if self.fn == "adaptive_sgd_" else 1.0
        self.grads = [[(rng.uniform(-1, 1, n) * scale).astype(np.float32) for n in sizes]
                      for _ in range(steps)]
        self.returned = []

    def copy(self):
        other = object.__new__(Job)
        other.fn, other.hyper = self.fn, self.hyper
        other.params = [p.copy() for p in self.params]
        other.states = [[s.copy() for s in role] for role in self.states]
        other.grads = self.grads
        other.returned = []
        return other

    def run(self, barrier=None):
        if barrier is not None:
            barrier.wait(JOIN_TIMEOUT)
        f = getattr(fusedopt, self.fn)
        for k, g in enumerate(self.grads):
            kw = dict(self.hyper)
            if self.fn not in ("rmsprop_", "lion_"):
                kw["step"] = k + 1
            self.returned.append(f(self.params, g, *self.states, backend="native", **kw))

    def assert_equal(self, other):
        for a, b in zip(self.params, other.params):
            assert np.array_equal(a, b)
        for ra, rb in zip(self.states, other.states):
            for a, b in zip(ra, rb):
                assert np.array_equal(a, b)
        assert self.returned == other.returned


@pytest.mark.parametrize("n_threads", [2, 8])
def test_concurrent_kernels_equal_sequential(n_threads):
    # sizes: many small tensors (runs on the caller), and one large enough for the pool
    jobs = [Job(k, [7, 1000, 70001 + k, 33], steps=6) for k in range(n_threads)]
    sequential = [j.copy() for j in jobs]
    for j in sequential:
        j.run()
    barrier = threading.Barrier(n_threads)
    _run_threads([lambda j=j: j.run(barrier) for j in jobs])
    for j, s in zip(jobs, sequential):
        j.assert_equal(s)


def test_the_gil_is_released_during_a_kernel():
    """While one thread runs a long kernel, another Python thread sees its output half
    written. If the GIL were held for the call, the observer could only ever see it before
    or after (the call is one C function call from Python's point of view)."""
    n = 1 << 25
    p = np.zeros(n, np.float32)
    g = np.ones(n, np.float32)
    prev = fusedopt.get_num_threads()
    seen_partial = False
    try:
        fusedopt.set_num_threads(1)  # leaves a core for the observer; the range is in order
        for _ in range(20):
            p[...] = 0.0
            started = threading.Event()
            done = threading.Event()

            def kernel(started=started, done=done):
                started.set()
                fusedopt.sgd_(p, g, lr=1.0, backend="native")
                done.set()

            t = threading.Thread(target=kernel)
            t.start()
            started.wait(JOIN_TIMEOUT)
            while not done.is_set():
                if p[0] != 0.0 and p[-1] == 0.0:
                    seen_partial = True
                    break
            t.join(JOIN_TIMEOUT)
            assert p[0] == -1.0 and p[-1] == -1.0 and (p == -1.0).all()
            if seen_partial:
                break
    finally:
        fusedopt.set_num_threads(prev)
    assert seen_partial, "no other thread ran while the kernel ran: is the GIL released?"


@pytest.mark.parametrize("opt_name", ["SGD", "AdaptiveSGD", "Adagrad", "RMSprop", "Adam",
                                      "AdamW", "Lion"])
def test_two_threads_stepping_one_optimizer_serialize(opt_name):
    """The documented behaviour: Optimizer.step holds a lock, so concurrent steps run one
    after another. With the same gradient for every step, any order gives the same result,
    which must equal that many sequential steps (each with its own step number)."""
    cls = getattr(fusedopt.optim, opt_name)
    kw = {"SGD": dict(lr=0.1, momentum=0.9), "AdaptiveSGD": dict(lr=0.5, momentum=0.9),
          "Adagrad": dict(lr=0.1), "RMSprop": dict(lr=0.01, momentum=0.9, centered=True),
          "Adam": dict(lr=1e-2, amsgrad=True), "AdamW": dict(lr=1e-2),
          "Lion": dict(lr=1e-3, weight_decay=0.1)}[opt_name]
    rng = np.random.default_rng(0)
    sizes = [200_003, 5, 100_000]
    params = [rng.uniform(-1, 1, n).astype(np.float32) for n in sizes]
    grads = [rng.uniform(-1e-3, 1e-3, n).astype(np.float32) for n in sizes]
    bad = [g.copy() for g in grads]
    bad[1][2] = np.nan
    shared = cls([p.copy() for p in params], skip_if_nonfinite=True, **kw)
    alone = cls([p.copy() for p in params], **kw)
    n_threads, steps = 4, 8
    barrier = threading.Barrier(n_threads)

    def worker(k):
        barrier.wait(JOIN_TIMEOUT)
        for i in range(steps):
            # one thread also sends skipped steps in between: they must not count
            if k == 0 and i % 2:
                assert shared.step(bad).skipped
            shared.step(grads)

    _run_threads([lambda k=k: worker(k) for k in range(n_threads)])
    for _ in range(n_threads * steps):
        alone.step(grads)
    assert shared.step_count == alone.step_count == n_threads * steps
    for a, b in zip(shared.params, alone.params):
        assert np.array_equal(a, b)
    for name in alone.state:
        for a, b in zip(shared.state[name], alone.state[name]):
            assert np.array_equal(a, b), name


def test_set_num_threads_under_load_changes_no_result():
    jobs = [Job(k, [70001, 3, 150_000 + k], steps=8) for k in range(4)]
    sequential = [j.copy() for j in jobs]
    for j in sequential:
        j.run()
    prev = fusedopt.get_num_threads()
    stop = threading.Event()

    def churn():
        k = 0
        while not stop.is_set():
            fusedopt.set_num_threads(1 + k % 5)  # 1..5 on two cores: oversubscribed too
            k += 1

    churner = threading.Thread(target=churn)
    churner.start()
    try:
        _run_threads([lambda j=j: j.run() for j in jobs])
    finally:
        stop.set()
        churner.join(JOIN_TIMEOUT)
        fusedopt.set_num_threads(prev)
    for j, s in zip(jobs, sequential):
        j.assert_equal(s)


def test_load_state_dict_is_atomic_with_step():
    """A step that runs while load_state_dict tries out new hyperparameters waits for it;
    it never runs with the hyperparameters being checked (here invalid ones)."""
    trying = threading.Event()
    release = threading.Event()

    class Probe(fusedopt.optim.Adam):
        def _call(self, params, grads, states, **kw):
            if not params and self._hyper["lr"] < 0:  # load_state_dict trying out lr < 0
                trying.set()
                release.wait(JOIN_TIMEOUT)
            return super()._call(params, grads, states, **kw)

    rng = np.random.default_rng(3)
    opt = Probe([rng.uniform(-1, 1, 100).astype(np.float32)], lr=1e-2)
    grads = [rng.uniform(-1, 1, 100).astype(np.float32)]
    opt.step(grads)
    bad = opt.state_dict()
    bad["hyperparameters"]["lr"] = -1.0
    errors, results = [], []

    def loader():
        try:
            opt.load_state_dict(bad)
        except ValueError as exc:
            errors.append(exc)

    def stepper():
        try:
            results.append(opt.step(grads))
        except ValueError as exc:
            results.append(exc)

    a = threading.Thread(target=loader)
    a.start()
    assert trying.wait(JOIN_TIMEOUT)
    b = threading.Thread(target=stepper)
    b.start()
    b.join(0.5)  # the stepper gets time to run; with the lock held it must still wait
    release.set()
    a.join(JOIN_TIMEOUT)
    b.join(JOIN_TIMEOUT)
    assert len(errors) == 1 and "lr" in str(errors[0])
    assert results == [None], f"the concurrent step saw the rejected hyperparameters: {results}"
    assert opt.step_count == 2 and opt.lr == 1e-2


@pytest.mark.parametrize("skip", [False, True], ids=["update", "skip_if_nonfinite"])
def test_a_list_changed_by_another_thread_during_a_call(skip):
    """The kernel runs without the GIL, so another thread can replace an array in the
    caller's list meanwhile and drop the last reference to it. The call must have kept
    what it checked: it read its pointers from a copy of the list that owns the arrays (a
    borrowed list once made this a write to freed memory, which crashed)."""
    n = 1 << 20  # 4 MiB arrays: freed memory of this size goes back to the system
    params = [np.ones(n, np.float32), np.ones(16, np.float32)]
    grads = [np.full(n, 1e-3, np.float32), np.full(16, 1e-3, np.float32)]
    stop = threading.Event()

    def replace():
        while not stop.is_set():
            params[0] = np.ones(n, np.float32)

    def call():
        try:
            for _ in range(300):
                fusedopt.sgd_(params, grads, lr=0.1, skip_if_nonfinite=skip)
        finally:
            stop.set()

    _run_threads([replace, call])
    assert params[1][0] < 1  # the calls ran
