"""What the CPU benchmark measures: the byte table of every rule, the call that steps it,
the sizes (with the list of 1,000 tensors) and the arrays of one case. The GPU benchmark
counts its bytes from the same table (gpu_report.py)."""

from __future__ import annotations

import math

import numpy as np

# --------------------------------------------------------------------------------------
# The byte table: arrays read and arrays written per element, per rule. Bytes per element
# are (reads + writes) * itemsize, so float64 moves twice the bytes of float32. A rule's
# second pass counts again: the adaptive rate reads every gradient once for ||g|| before
# the update reads it again. Momentum rules are measured after their first step (on step
# 1 torch's convention writes the buffer without reading it).
# --------------------------------------------------------------------------------------
TRAFFIC = {
    # rule:          (reads, writes, states)
    "sgd":           (2, 1, 0),   # p, g -> p
    "sgd+momentum":  (3, 2, 1),   # p, g, buf -> p, buf
    "sgd+nesterov":  (3, 2, 1),
    "adaptive_sgd":  (3, 1, 0),   # g (norm pass); p, g -> p
    "adagrad":       (3, 2, 1),   # p, g, sum -> p, sum
    "rmsprop":       (3, 2, 1),   # p, g, square_avg -> p, square_avg
    "adam":          (4, 3, 2),   # p, g, m, v -> p, m, v
    "adamw":         (4, 3, 2),
    "amsgrad":       (5, 4, 3),   # p, g, m, v, vmax -> p, m, v, vmax
    "lion":          (3, 2, 1),   # p, g, m -> p, m
}
RULES = tuple(TRAFFIC)
DTYPES = {"float32": np.float32, "float64": np.float64}
STEP = 10  # the step passed to every call: past the first, so every state is read


def bytes_per_element(rule: str, dtype: str) -> int:
    reads, writes, _ = TRAFFIC[rule]
    return (reads + writes) * np.dtype(DTYPES[dtype]).itemsize


# The fusedopt call of each rule; `mod` is fusedopt or fusedopt.reference, p and g are an
# array or a list of arrays, s the list of state roles.
def call_fusedopt(rule: str, mod, p, g, s) -> None:
    if rule == "sgd":
        mod.sgd_(p, g, lr=0.01, step=STEP)
    elif rule == "sgd+momentum":
        mod.sgd_(p, g, s[0], lr=0.01, momentum=0.9, step=STEP)
    elif rule == "sgd+nesterov":
        mod.sgd_(p, g, s[0], lr=0.01, momentum=0.9, nesterov=True, step=STEP)
    elif rule == "adaptive_sgd":
        mod.adaptive_sgd_(p, g, lr=0.1, step=STEP)
    elif rule == "adagrad":
        mod.adagrad_(p, g, s[0], step=STEP, lr=0.01)
    elif rule == "rmsprop":
        mod.rmsprop_(p, g, s[0], lr=0.01)
    elif rule == "adam":
        mod.adam_(p, g, s[0], s[1], step=STEP, lr=1e-3)
    elif rule == "adamw":
        mod.adamw_(p, g, s[0], s[1], step=STEP, lr=1e-3, weight_decay=0.01)
    elif rule == "amsgrad":
        mod.adam_(p, g, s[0], s[1], s[2], step=STEP, lr=1e-3, amsgrad=True)
    elif rule == "lion":
        mod.lion_(p, g, s[0], lr=1e-4, weight_decay=0.1)
    else:  # pragma: no cover
        raise ValueError(rule)


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
            x = rng.standard_normal(n, dtype=np.float32 if t == np.float32 else np.float64)
            x[x == 0] = 1.0  # nonzero: a zero gradient hides an unwritten output
            return x

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
        self.reset_states()

    def grads_fingerprint(self) -> list:
        """The sum of each gradient's bit patterns: cheap (one read at memory speed), and
        any write to a gradient changes it in practice."""
        ints = np.uint32 if self.g[0].itemsize == 4 else np.uint64
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

    def args(self, n_states: int):
        """(p, g, states) as the functional kernels take them."""
        if self.is_list:
            return self.p, self.g, self.s[:n_states]
        return self.p[0], self.g[0], [role[0] for role in self.s[:n_states]]

    def nbytes(self) -> int:
        return 6 * self.n * self.p[0].itemsize

