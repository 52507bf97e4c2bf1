"""What the CPU benchmark measures: the byte table of every rule, the call that steps it,
the sizes (with the list of 1,000 tensors) and the arrays of one case. The GPU benchmark
counts its bytes from the same table (gpu_report.py)."""

from __future__ import annotations

import math

import numpy as np

from fusedopt import rules as _rules

# The cases: name -> (public function, hyperparameters). Every rule's first function is
# measured; a rule without a case here is measured by its first example (fusedopt/rules/).
_NAMED = {
    "sgd": ("sgd_", dict(lr=0.01)),
    "sgd+momentum": ("sgd_", dict(lr=0.01, momentum=0.9)),
    "sgd+nesterov": ("sgd_", dict(lr=0.01, momentum=0.9, nesterov=True)),
    "adaptive_sgd": ("adaptive_sgd_", dict(lr=0.1)),
    "adagrad": ("adagrad_", dict(lr=0.01)),
    "rmsprop": ("rmsprop_", dict(lr=0.01)),
    "adam": ("adam_", dict(lr=1e-3)),
    "adamw": ("adamw_", dict(lr=1e-3, weight_decay=0.01)),
    "amsgrad": ("adam_", dict(lr=1e-3, amsgrad=True)),
    "lion": ("lion_", dict(lr=1e-4, weight_decay=0.1)),
    # Adafactor's step is relative to the param's RMS, and the bench repeats one gradient:
    # each call can grow the params by a factor of up to (1 + lr), so the many thousand calls
    # of the small sizes need a small lr to keep them finite (at lr=0.01, 2^16 overflowed).
    "adafactor": ("adafactor_", dict(lr=1e-5)),
}
STEP = 10  # the step passed to every call: past the first, so every state is read


def _cases() -> dict:
    cases = dict(_NAMED)
    for rule in _rules.RULES.values():
        kernel = rule.kernels[0]
        if rule.name not in cases and kernel.examples:
            cases[rule.name] = (kernel.name, next(iter(kernel.examples.values())))
    return cases


def factored(case: str) -> bool:
    """Whether a case's rule keeps factored states (Adafactor): its arrays are matrices."""
    return _rules.kernel(CASES[case][0])[0].state_layout == "factored"


CASES = _cases()


def _states(fn: str, hyper: dict) -> tuple:
    rule, kernel = _rules.kernel(fn)
    keywords = {k: v for k, v in kernel.keywords.items() if v is not _rules.REQUIRED}
    step = {"step": STEP} if kernel.takes_step else {}
    return rule.states_for(rule.coefficients(fn, **kernel.fixed, **{**keywords, **hyper, **step}))


# The byte table: arrays read and arrays written per element, per case: the param, the
# gradient and each state are read, and the param and each state written. A second pass
# counts again: the adaptive rate reads every gradient once for ||g|| before the update
# reads it again. Momentum rules are measured after their first step (on step 1 torch's
# convention writes the buffer without reading it). A trust-ratio rule (LAMB) reads the
# param and the states again in its second pass; its first writes no param, its second
# only the param, so its writes are counted once. A factored rule (Adafactor) runs five
# passes over a matrix: the param's squares (p), the gradient's row and its column sums (g,
# g), the update's squares (g) and the update (p, g -> p); its row and column factors, a
# few numbers per row and column, are not counted (0 states: its roof has none either).
def _traffic(fn: str, hyper: dict) -> tuple:
    rule, kernel = _rules.kernel(fn)
    if rule.state_layout == "factored":
        return 6, 1, 0
    n = len(_states(fn, hyper))
    return 2 + n + kernel.adaptive + rule.trust_ratio * (1 + n), 1 + n, n


TRAFFIC = {name: _traffic(fn, h) for name, (fn, h) in CASES.items()}
RULES = tuple(TRAFFIC)
DTYPES = {"float32": np.float32, "float64": np.float64}
# The keywords a storage recipe adds to every call of its rows.
RECIPE_KEYWORDS: dict = {}
try:  # bfloat16: params, grads and states all bfloat16 (float32 arithmetic), with ml_dtypes
    import ml_dtypes as _ml_dtypes

    DTYPES["bfloat16"] = np.dtype(_ml_dtypes.bfloat16)
    # The same arrays with the params rounded stochastically: the same bytes, so the same roof.
    DTYPES["bfloat16-sr"] = DTYPES["bfloat16"]
    RECIPE_KEYWORDS["bfloat16-sr"] = dict(rounding="stochastic", seed=0)
except ImportError:  # pragma: no cover - depends on the environment
    pass


def bytes_per_element(rule: str, dtype: str) -> int:
    reads, writes, _ = TRAFFIC[rule]
    return (reads + writes) * np.dtype(DTYPES[dtype]).itemsize


# Per case, worked out once (a timed call does nothing else): (function name, its state
# argument names, its keyword arguments).
_CALLS = {name: (fn, _states(fn, h), {**h, **({"step": STEP} if _rules.kernel(fn)[1].takes_step else {})})
          for name, (fn, h) in CASES.items()}


def call_fusedopt(rule: str, mod, p, g, s, dtype: str = "float32") -> None:
    """One step of the case ``rule``: ``mod`` is fusedopt or fusedopt.reference, p and g an
    array or a list of arrays, s the list of state roles, ``dtype`` the storage recipe
    (a key of DTYPES)."""
    fn, names, kwargs = _CALLS[rule]
    getattr(mod, fn)(p, g, **dict(zip(names, s)), **kwargs, **RECIPE_KEYWORDS.get(dtype, {}))


SIZE_NAMES = {"2^10": 1 << 10, "2^16": 1 << 16, "2^20": 1 << 20, "2^24": 1 << 24, "2^27": 1 << 27}
LIST_CASE = "list1000"
LIST_TENSORS = 1000
LIST_TOTAL = 1 << 24


# --------------------------------------------------------------------------------------
# cases and their arrays
# --------------------------------------------------------------------------------------
def list_sizes(seed: int = 0, n: int = LIST_TENSORS, total: int = LIST_TOTAL) -> list[int]:
    """n sizes drawn log-uniformly (64 to 2^20 before scaling) and scaled to sum to total:
    a model's mix of biases, norms and weight matrices."""
    rng = np.random.default_rng(seed + 1000)
    raw = np.exp(rng.uniform(math.log(64), math.log(1 << 20), n))
    sizes = np.maximum(1, np.floor(raw / raw.sum() * total)).astype(np.int64)
    sizes[np.argmax(sizes)] += total - int(sizes.sum())
    return [int(x) for x in sizes]


def size_label(size, grouped: bool = False) -> str:
    """2^k for a power of two, else the count (with thousands separators if grouped); a
    named case such as list1000 as it is."""
    if isinstance(size, str):
        return size
    k = int(size).bit_length() - 1
    if size == 1 << k:
        return f"2^{k}"
    return f"{size:,}" if grouped else str(size)


def factored_shape(n: int) -> tuple:
    """A tensor of n elements as a factored rule's case has it: a matrix whose column count
    is the largest power of two that divides n and is at most sqrt(n) (4096 x 4096 at
    2^24), or a vector where no power of two above 1 does."""
    c = 1
    while n % (2 * c) == 0 and (2 * c) * (2 * c) <= n:
        c *= 2
    return (n // c, c) if c > 1 else (n,)


def n_elements(size) -> int:
    return LIST_TOTAL if size == LIST_CASE else int(size)


class Arrays:
    """p, g and three state roles for one (dtype, size): one array each, or lists."""

    def __init__(self, dtype: str, size, seed: int):
        rng = np.random.default_rng(seed)
        t = DTYPES[dtype]
        self.is_list = size == LIST_CASE
        sizes = list_sizes(seed) if self.is_list else [int(size)]
        self.n = sum(sizes)
        self.n_tensors = len(sizes)

        def randn(n):
            x = rng.standard_normal(n, dtype=np.float64 if t == np.float64 else np.float32)
            x[x == 0] = 1.0  # nonzero: a zero gradient hides an unwritten output
            return x.astype(t, copy=False)  # bfloat16: rounded from float32, still nonzero

        self.p = [randn(k) for k in sizes]
        self.g = [randn(k) for k in sizes]
        self.s = [[np.empty(k, dtype=t) for k in sizes] for _ in range(3)]
        # The roof's gradient: same sizes, zeros written page by page (an untouched calloc
        # page would read from the shared zero page and flatter the roof). Adding zeros
        # leaves p and the states as they are, so the roof never walks a state such as
        # Adam's v negative between kernel calls.
        self.g_roof = [np.empty(k, dtype=t) for k in sizes]
        for x in self.g_roof:
            x.fill(0.0)
        self._g_fingerprint = self.grads_fingerprint()
        self._factored = None  # a factored rule's (params, grads, states), made on first use
        self.reset_states()

    def grads_fingerprint(self) -> list:
        """The sum of each gradient's bit patterns: cheap (one read at memory speed), and
        any write to a gradient changes it in practice."""
        ints = {2: np.uint16, 4: np.uint32, 8: np.uint64}[self.g[0].itemsize]
        return [int(x.view(ints).sum(dtype=np.uint64)) for x in self.g]

    def check_case_data(self, case: str) -> None:
        """After a case: the gradients must be as they were and the params finite, or the
        figures after it would be measured on other data. fusedopt and the NumPy reference
        only read the gradients; the peers step on their own copies (peers.TorchPeer)."""
        if self.grads_fingerprint() != self._g_fingerprint:
            raise RuntimeError(f"bench: the gradients changed during {case}; an implementation "
                               "wrote to them")
        if not all(np.isfinite(p).all() for p in self.p):
            raise RuntimeError(f"bench: the params are no longer finite after {case}")

    def reset_states(self) -> None:
        """States small and positive (valid for every rule), refreshed before each rule."""
        for role in self.s:
            for s, g in zip(role, self.g):
                np.abs(g, out=s)
                np.multiply(s, 0.01, out=s)
        if self._factored is not None:  # the row and column factors (a vector's is in self.s)
            for role in self._factored[2][:2]:
                for s in role:
                    if s is not None:
                        s.fill(0.01)

    def args(self, n_states: int):
        """(p, g, states) as the functional kernels take them."""
        if self.is_list:
            return self.p, self.g, self.s[:n_states]
        return self.p[0], self.g[0], [role[0] for role in self.s[:n_states]]

    def shaped(self, case: str):
        """(params, grads) as lists, shaped as the case's rule takes them (factored_shape)."""
        if not factored(case):
            return self.p, self.g
        self.factored_args(case)
        return self._factored[0], self._factored[1]

    def factored_args(self, case: str):
        """(p, g, states) of a factored rule's case: the params and gradients reshaped
        (views), the states of the rule's layout (a vector's full state is a view of
        self.s[2]; None where a param keeps no such state)."""
        if self._factored is None:
            rule = _rules.kernel(CASES[case][0])[0]
            shapes = [factored_shape(p.size) for p in self.p]
            p = [x.reshape(s) for x, s in zip(self.p, shapes)]
            g = [x.reshape(s) for x, s in zip(self.g, shapes)]
            states = [[], [], []]
            for k, shape in enumerate(shapes):
                row, col, var = rule.state_shapes(shape)
                dt = self.p[0].dtype
                states[0].append(None if row is None else np.full(row, 0.01, dt))
                states[1].append(None if col is None else np.full(col, 0.01, dt))
                states[2].append(None if var is None else self.s[2][k].reshape(var))
            self._factored = (p, g, states)
        p, g, states = self._factored
        if self.is_list:
            return p, g, states
        return p[0], g[0], [role[0] for role in states]

    def case_args(self, case: str):
        """(p, g, states) of a case as the functional kernels take them."""
        return self.factored_args(case) if factored(case) else self.args(TRAFFIC[case][2])

    def nbytes(self) -> int:
        return 6 * self.n * self.p[0].itemsize

