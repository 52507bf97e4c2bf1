"""The benchmark harness behind ``python -m fusedopt bench``.

An optimizer step is bound by memory traffic, so every kernel is reported against the
memory roof of its own byte pattern, measured in the same run: ``fusedopt._core.traffic``
reads and writes the very arrays the rule reads and writes (param, grad and the rule's
states) with one add each, on the same thread count. ``% roof`` is the median over rounds
of the ratio of the roof's time to the kernel's time in the same round, on the same arrays.

With no options this is the quick run (about 40 seconds on a 2-core machine): every
rule, float32, 2^24 elements, all threads, the active CPU target, against the roof and the
exact NumPy reference, plus the latency of one small call. ``--full`` is the sweep of
bench/README.md: both dtypes, sizes 2^10 to 2^27 and a list of 1,000 tensors, 1 and all
threads, every CPU target the machine runs, and every installed peer (PyTorch's
``foreach=False``, ``foreach=True`` and ``fused=True``, DeepSpeed's CPU Adam and Adagrad).
Results go to CSV and JSON with the machine's metadata, and to a PNG plot when matplotlib
is installed.

How it measures:

* Only the call is timed (``time.perf_counter_ns`` around it); arrays are allocated,
  filled and warmed before, and the same arrays serve every implementation of a case.
* Gradients are random and nonzero; states start positive and small.
* The roof and every fusedopt target are timed in interleaved rounds, so a noisy neighbour
  slows all of them alike, and their ratios are paired: the median over rounds of the
  ratio of the two times of one round (``paired_ratio``), with its p10 and p90. Each peer
  is timed in rounds alternating with fusedopt's kernel, and its speedup is paired the
  same way; its %roof chains the two (fusedopt's %roof over the speedup). The ratio of the
  two medians is kept in the CSV too (``pct_roof_of_medians``). The quick table's speedup
  over NumPy is a ratio of medians: the reference is 20-50x slower, so a few percent of
  drift does not matter there.
* Peers step on private copies of the params and gradients (``_TorchPeer``), and every
  case ends by checking that its gradients are unchanged and its params finite.
* Calls shorter than --min-batch-ms (20 ms) are timed in batches of k calls (k is in the
  CSV); the latency lines time single calls. With 2 ms batches, a cache-sized case timed
  alternately with an OpenMP peer measured mostly the hand-over between the two thread
  pools: fusedopt's Adam at 2^20 elements came out 0.92x DeepSpeed's alongside it, against
  1.13x with 20 ms batches, close to the ratio of their rates in separate rounds (1.11x).
* A pause separates calls of different libraries, so that one's spinning worker threads
  (fusedopt's pool, PyTorch's OpenMP) never compete with the other's call on a small machine.
  After it, a call shorter than 20 ms runs untimed for --min-batch-ms before its timed
  batch: idle cores come back slowly (clocks, caches, sleeping pool threads).
* Medians over the repeats, with p10 and p90 as the spread.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import gc
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

import fusedopt
from fusedopt import _arrays, _coeffs, _native
from fusedopt import reference as _reference

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
}
RULES = tuple(TRAFFIC)
DTYPES = {"float32": np.float32, "float64": np.float64}
STEP = 10  # the step passed to every call: past the first, so every state is read


def bytes_per_element(rule: str, dtype: str) -> int:
    reads, writes, _ = TRAFFIC[rule]
    return (reads + writes) * np.dtype(DTYPES[dtype]).itemsize


# The fusedopt call of each rule; `mod` is fusedopt or fusedopt.reference, p and g are an
# array or a list of arrays, s the list of state roles.
def _call_fusedopt(rule: str, mod, p, g, s) -> None:
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
    else:  # pragma: no cover
        raise ValueError(rule)


# The same rule in torch.optim: (class name, keyword arguments).
_TORCH = {
    "sgd": ("SGD", dict(lr=0.01)),
    "sgd+momentum": ("SGD", dict(lr=0.01, momentum=0.9)),
    "sgd+nesterov": ("SGD", dict(lr=0.01, momentum=0.9, nesterov=True)),
    "adagrad": ("Adagrad", dict(lr=0.01)),
    "rmsprop": ("RMSprop", dict(lr=0.01)),
    "adam": ("Adam", dict(lr=1e-3)),
    "adamw": ("AdamW", dict(lr=1e-3, weight_decay=0.01)),
    "amsgrad": ("Adam", dict(lr=1e-3, amsgrad=True)),
}
# DeepSpeed's CPU optimizers: (module, class name, keyword arguments).
_DEEPSPEED = {
    "adam": ("deepspeed.ops.adam", "DeepSpeedCPUAdam", dict(lr=1e-3, adamw_mode=False)),
    "adamw": ("deepspeed.ops.adam", "DeepSpeedCPUAdam",
              dict(lr=1e-3, weight_decay=0.01, adamw_mode=True)),
    "adagrad": ("deepspeed.ops.adagrad", "DeepSpeedCPUAdagrad", dict(lr=0.01)),
}
PEERS = ("numpy", "torch", "deepspeed")
TORCH_VARIANTS = (("torch-foreach=False", dict(foreach=False)),
                  ("torch-foreach=True", dict(foreach=True)),
                  ("torch-fused=True", dict(fused=True)))

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


def size_label(size) -> str:
    if isinstance(size, str):
        return size
    k = int(size).bit_length() - 1
    return f"2^{k}" if size == 1 << k else str(size)


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
        only read the gradients; the peers step on their own copies (_TorchPeer)."""
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


def _mem_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class ForeignLoad:
    """CPU time that other processes used while we measured, from /proc/stat less our own
    (getrusage of this process, all threads), in cores. On a shared machine a case measured
    next to someone's compiler is not a figure of the kernel: the CSV says how busy it was."""

    def __init__(self):
        self.t0 = self._sample()

    @staticmethod
    def _sample():
        try:
            with open("/proc/stat") as f:
                fields = f.readline().split()[1:]
        except OSError:
            return None
        vals = [int(x) for x in fields]
        busy = sum(vals) - vals[3] - (vals[4] if len(vals) > 4 else 0)  # less idle, iowait
        tick = os.sysconf("SC_CLK_TCK")
        ru = os.times()
        return time.perf_counter(), busy / tick, ru.user + ru.system

    def cores(self) -> float | None:
        """Average cores used by other processes since construction (or the last call)."""
        t1 = self._sample()
        if t1 is None or self.t0 is None:
            return None
        wall = t1[0] - self.t0[0]
        other = (t1[1] - self.t0[1]) - (t1[2] - self.t0[2])
        self.t0 = t1
        return max(0.0, other / wall) if wall > 0 else None


def wait_for_quiet(max_wait_s: float, threshold: float = 0.15, window_s: float = 0.5) -> float:
    """Waits (up to max_wait_s) until other processes use under `threshold` cores over a
    window; returns the seconds waited."""
    start = time.perf_counter()
    while time.perf_counter() - start < max_wait_s:
        probe = ForeignLoad()
        time.sleep(window_s)
        load = probe.cores()
        if load is None or load < threshold:
            break
    return time.perf_counter() - start


# --------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------
@dataclass
class Timed:
    """Per-call times in seconds of one implementation, and the batch size k used."""

    times: list = field(default_factory=list)
    k: int = 1

    def median(self) -> float:
        return float(np.median(self.times))

    def pct(self, q: float) -> float:
        return float(np.percentile(self.times, q))


def paired_ratio(num: Timed, den: Timed) -> tuple[float, float, float]:
    """Median, p10 and p90 over rounds of num's time over den's time in the same round.

    The two were timed in the same interleaved rounds, one right after the other, so each
    round's ratio cancels what the machine was doing during that round. On the shared
    development VM, whose speed drifts by up to 1.7x within a minute, the ratio of the two
    medians mixed rounds from different phases: a 2^24 Adam case read 94.6% of the roof
    with a p10-p90 throughput spread of 44.5-55.3 GB/s.
    """
    if len(num.times) != len(den.times):
        raise ValueError("paired_ratio: the two were not timed in the same rounds")
    r = np.asarray(num.times) / np.asarray(den.times)
    return float(np.median(r)), float(np.percentile(r, 10)), float(np.percentile(r, 90))


# Rounds of the roof and fusedopt per case. On the shared development VM a single round's
# %roof at 2^24 elements spreads over about 88-108% (p10-p90), so the median of 15 rounds
# still moved by 2-3 points between sweeps; 41 rounds cut the median's noise by about
# sqrt(41/15) = 1.65x. They cost little next to the peers and the NumPy reference.
ROUNDS = 41

FAMILY_GAP_S = 0.003  # pause between calls of different libraries (see module docstring)


def _batch_size(fn: Callable[[], None], min_batch_s: float) -> tuple[int, float]:
    """Calls fn once or more (the warm-up); returns k such that k calls last min_batch_s,
    and the time of one call."""
    t0 = time.perf_counter()
    fn()
    once = time.perf_counter() - t0
    if once >= min_batch_s:
        return 1, once
    t0 = time.perf_counter()
    fn()
    once = time.perf_counter() - t0
    k = 1
    while once * k < min_batch_s and k < 1 << 20:
        k *= 2
    for _ in range(k):  # warm at the batch size too (caches, pool threads awake)
        fn()
    return k, once


REWARM_BELOW_S = 0.02  # calls shorter than this are re-warmed after a pause (see below)


def _rewarm(fn: Callable[[], None], min_batch_s: float) -> None:
    """Calls fn, untimed, for min_batch_s. After the pause between libraries the cores have
    idled: on the development machine (a KVM guest) a 1 ms call that follows 10 ms of sleep
    runs at half speed, and so does the next one; by a couple of milliseconds of work the
    clocks, caches and pool threads are back."""
    end = time.perf_counter() + min_batch_s
    while time.perf_counter() < end:
        fn()


def time_rounds(impls: dict, repeats: int, min_batch_s: float, family: dict | None = None,
                tick: Callable[[], None] | None = None) -> dict:
    """Times every implementation `repeats` times in interleaved rounds.

    impls: name -> zero-argument callable, or (setup, callable) where setup runs untimed
    before each of that implementation's batches (a CPU-target switch, say). family: name ->
    library, for the pause between libraries, after which a short call is re-warmed before
    it is timed. Returns name -> Timed.
    """
    family = family or {}
    split = {}
    for name, fn in impls.items():
        split[name] = fn if isinstance(fn, tuple) else (None, fn)
    ks, once = {}, {}
    for name, (setup, fn) in split.items():
        if setup:
            setup()
        ks[name], once[name] = _batch_size(fn, min_batch_s)
        time.sleep(FAMILY_GAP_S)
    out = {name: Timed(k=ks[name]) for name in impls}
    prev = None
    clock = time.perf_counter_ns
    for _ in range(repeats):
        for name, (setup, fn) in split.items():
            fam = family.get(name, name)
            paused = prev is not None and fam != prev
            if paused:
                time.sleep(FAMILY_GAP_S)
            prev = fam
            if setup:
                setup()
            if paused and once[name] < REWARM_BELOW_S:
                _rewarm(fn, min_batch_s)
            k = ks[name]
            if k == 1:
                t0 = clock()
                fn()
                t1 = clock()
            else:
                t0 = clock()
                for _ in range(k):
                    fn()
                t1 = clock()
            out[name].times.append((t1 - t0) * 1e-9 / k)
        if tick:
            tick()
    return out


# --------------------------------------------------------------------------------------
# peers
# --------------------------------------------------------------------------------------
def _import_torch():
    try:
        import torch
    except Exception:  # noqa: BLE001 - any failure means no torch peer
        return None
    return torch


def _deepspeed_version() -> str | None:
    try:
        import deepspeed
    except Exception:  # noqa: BLE001
        return None
    return getattr(deepspeed, "__version__", "?")


class _TorchPeer:
    """A torch (or DeepSpeed) optimizer over private copies of the case's params and
    gradients (its states are its own too), so nothing a peer does reaches the arrays that
    fusedopt and the later rules are measured on.

    The copies matter because torch's ``SGD(nesterov=True, foreach=True)`` adds the momentum
    into ``.grad`` in place (``torch._foreach_add_(device_grads, bufs, ...)`` in
    torch/optim/sgd.py, 2.13). With one fixed gradient that compounds: gradient, momentum
    and params grow 2.4x per step and reach inf. When the peers shared the case's arrays,
    every rule measured after it in a sweep ran on inf and NaN, and the adaptive rate, a
    subnormal float32 by then, ran at 19-28% of its roof at 2^24. The peer's own figures
    are unaffected by that growth: it never passes through subnormals, and inf and NaN
    cost nothing extra in the vector units.
    """

    def __init__(self, torch, opt_cls, kwargs, arrays: Arrays):
        self.params = []
        for p, g in zip(arrays.p, arrays.g):
            t = torch.nn.Parameter(torch.from_numpy(p.copy()))
            t.grad = torch.from_numpy(g.copy())
            self.params.append(t)
        self.opt = opt_cls(self.params, **kwargs)
        self.step = self.opt.step

    def close(self):
        self.opt = None
        self.step = None
        self.params = None


def _torch_peer(torch, rule, variant_kwargs, arrays):
    spec = _TORCH.get(rule)
    if spec is None:
        return None, "no torch.optim equivalent"
    cls_name, kwargs = spec
    cls = getattr(torch.optim, cls_name)
    try:
        peer = _TorchPeer(torch, cls, {**kwargs, **variant_kwargs}, arrays)
        peer.step()
    except Exception as exc:  # noqa: BLE001 - e.g. fused=True not implemented on CPU
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    return peer, None


def _deepspeed_peer(torch, rule, arrays):
    spec = _DEEPSPEED.get(rule)
    if spec is None:
        return None, "no DeepSpeed CPU optimizer for this rule"
    module, cls_name, kwargs = spec
    try:
        import importlib

        cls = getattr(importlib.import_module(module), cls_name)
        peer = _TorchPeer(torch, cls, kwargs, arrays)
        peer.step()
    except Exception as exc:  # noqa: BLE001 - not built, unsupported dtype, ...
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    return peer, None


# --------------------------------------------------------------------------------------
# the sweep
# --------------------------------------------------------------------------------------
@dataclass
class Config:
    rules: list
    dtypes: list
    sizes: list
    threads: list
    targets: list
    peers: list
    repeats: int
    peer_repeats: int
    ref_repeats: int
    min_batch_s: float
    latency: bool
    latency_calls: int
    seed: int
    full: bool
    progress: bool
    wait_quiet_s: float = 0.0


class Progress:
    def __init__(self, total: int, enabled: bool):
        self.total = max(1, total)
        self.done = 0
        self.enabled = enabled
        self.start = time.perf_counter()
        self.label = ""
        self.tty = sys.stderr.isatty()
        self._last_print = 0.0

    def set(self, label: str):
        self.label = label
        self._draw(force=not self.tty)

    def tick(self, n: int = 1):
        self.done = min(self.total, self.done + n)
        self._draw()

    def _draw(self, force: bool = False):
        if not self.enabled:
            return
        now = time.perf_counter()
        if not force and not self.tty and now - self._last_print < 10:
            return
        self._last_print = now
        frac = self.done / self.total
        width = 24
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        elapsed = now - self.start
        eta = elapsed / frac - elapsed if frac > 0.02 else float("nan")
        eta_s = "" if math.isnan(eta) else f" eta {eta:4.0f}s"
        line = f"[{bar}] {100 * frac:3.0f}% {elapsed:5.0f}s{eta_s}  {self.label}"
        if self.tty:
            sys.stderr.write("\r" + line[:110].ljust(110))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def close(self):
        if self.enabled and self.tty:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _supported_targets() -> list:
    return [t["name"] for t in fusedopt.info()["cpu"]["targets"] if t["supported"]]


def _row(rule, dtype, size, threads, impl, target, timed: Timed | None, n, nbytes, **extra):
    row = dict(rule=rule, dtype=dtype, size=size_label(size), elements=n, threads=threads,
               impl=impl, target=target or "", bytes_per_element=nbytes)
    if timed is not None and timed.times:
        med = timed.median()
        p10, p90 = timed.pct(10), timed.pct(90)
        row.update(median_s=med, p10_s=p10, p90_s=p90, min_s=min(timed.times),
                   repeats=len(timed.times), batch=timed.k,
                   melem_per_s=n / med / 1e6, gb_per_s=n * nbytes / med / 1e9,
                   gb_per_s_p10=n * nbytes / p90 / 1e9, gb_per_s_p90=n * nbytes / p10 / 1e9)
    row.update(extra)
    return row


def _work_units(cfg: Config, have_torch: bool, have_ds: bool) -> int:
    per_thread = cfg.repeats
    if have_torch and "torch" in cfg.peers:
        per_thread += 3 * cfg.peer_repeats
    if have_ds and "deepspeed" in cfg.peers:
        per_thread += cfg.peer_repeats
    per_case = per_thread * len(cfg.threads)
    if "numpy" in cfg.peers:
        per_case += cfg.ref_repeats
    return per_case * len(cfg.rules) * len(cfg.dtypes) * len(cfg.sizes)


def run_sweep(cfg: Config) -> dict:
    torch = _import_torch() if ("torch" in cfg.peers or "deepspeed" in cfg.peers) else None
    ds_version = _deepspeed_version() if "deepspeed" in cfg.peers and torch is not None else None
    have_ds = ds_version is not None
    supported = _supported_targets()
    active0 = fusedopt.info()["cpu"]["target"]
    source0 = fusedopt.info()["cpu"]["target_source"]
    targets = []
    for t in cfg.targets:
        if t == "active":
            targets.append(active0)
        elif t == "all":
            targets.extend(supported)
        elif t in supported:
            targets.append(t)
        else:
            raise SystemExit(f"bench: CPU target {t!r} is not supported here ({supported})")
    targets = list(dict.fromkeys(targets))
    max_threads = fusedopt.info()["cpu"]["cores"]
    threads = sorted({max_threads if t == "all" else int(t) for t in cfg.threads})
    threads0 = fusedopt.get_num_threads()
    torch_threads0 = torch.get_num_threads() if torch is not None else None

    progress = Progress(_work_units(cfg, torch is not None, have_ds), cfg.progress)
    rows, notes = [], []
    try:
        for dtype in cfg.dtypes:
            for size in cfg.sizes:
                # The list case keeps a flat twin of the same total for its side-by-side figure.
                need = ((2 if size == LIST_CASE else 1) * 6 * n_elements(size)
                        * np.dtype(DTYPES[dtype]).itemsize)
                avail = _mem_available()
                if avail is not None and need * 2.5 > avail:
                    msg = (f"skipped {dtype} {size_label(size)}: needs about {need * 2.5 / 2**30:.1f} "
                           f"GiB with the reference's temporaries, {avail / 2**30:.1f} GiB available")
                    notes.append(msg)
                    progress.tick(_work_units(cfg, torch is not None, have_ds)
                                  // max(1, len(cfg.dtypes) * len(cfg.sizes)))
                    continue
                progress.set(f"{dtype} {size_label(size)}: filling arrays")
                arrays = Arrays(dtype, size, cfg.seed)
                flat = Arrays(dtype, LIST_TOTAL, cfg.seed) if size == LIST_CASE else None
                for rule in cfg.rules:
                    rows += _run_case(cfg, rule, dtype, size, arrays, threads, targets, active0,
                                      torch, have_ds, progress, notes, flat)
                del arrays, flat
                gc.collect()
    finally:
        progress.close()
        fusedopt.set_cpu_target("auto" if source0 == "auto" else active0)
        fusedopt.set_num_threads(threads0)
        if torch is not None:
            torch.set_num_threads(torch_threads0)

    latency = run_latency(cfg, torch) if cfg.latency else []
    return dict(metadata=metadata(cfg, targets, threads, torch, ds_version), results=rows,
                latency=latency, notes=notes)


def _run_case(cfg, rule, dtype, size, arrays, threads, targets, active0, torch, have_ds,
              progress, notes, flat=None):
    """One (rule, dtype, size) at every thread count. ``flat``: for the list case, arrays of
    one tensor with the list's total, whose kernel is timed in the same rounds as the list's
    (``pct_of_flat``: the list's throughput as a share of the flat tensor's)."""
    reads, writes, n_states = TRAFFIC[rule]
    nbytes = bytes_per_element(rule, dtype)
    n = arrays.n
    arrays.reset_states()
    p, g, s = arrays.args(n_states)
    prep = _arrays.prepare("bench", arrays.p, arrays.g_roof,
                           [(f"s{k}", arrays.s[k]) for k in range(n_states)])

    def kernel():
        _call_fusedopt(rule, fusedopt, p, g, s)

    if flat is not None:
        flat.reset_states()
        flat_args = flat.args(n_states)

        def flat_kernel():
            _call_fusedopt(rule, fusedopt, *flat_args)

    if rule == "adaptive_sgd":
        # Two passes: ||g|| (read g), then the update (p, g -> p). The roof of the first is a
        # read-only loop of trivial arithmetic, which is what the sum of squares is.
        def roof():
            _native.grad_sum_of_squares(prep)
            _native.traffic(prep)
    else:
        def roof():
            _native.traffic(prep)

    rows = []
    label = f"{rule} {dtype} {size_label(size)}"
    for nt in threads:
        fusedopt.set_num_threads(nt)
        if torch is not None:
            torch.set_num_threads(nt)
        if cfg.wait_quiet_s > 0:
            progress.set(f"{label} t={nt}: waiting for a quiet machine")
            wait_for_quiet(cfg.wait_quiet_s)
        progress.set(f"{label} t={nt}: roof and fusedopt")
        impls, fam = {}, {}

        def target(name):
            return lambda: fusedopt.set_cpu_target(name)

        # The roof runs on the best target; every target is compared against it.
        impls["roof"] = (target(active0), roof)
        fam["roof"] = "fusedopt"
        for t in targets:
            impls[f"fusedopt:{t}"] = (target(t), kernel)
            fam[f"fusedopt:{t}"] = "fusedopt"
        if flat is not None:
            impls["flat"] = (target(active0), flat_kernel)
            fam["flat"] = "fusedopt"
        load = ForeignLoad()
        timed = time_rounds(impls, cfg.repeats, cfg.min_batch_s, fam, progress.tick)
        other = load.cores()
        fusedopt.set_cpu_target(active0)
        roof_t = timed["roof"].median()
        rows.append(_row(rule, dtype, size, nt, "roof", active0, timed["roof"], n, nbytes,
                         pct_roof=100.0, other_load_cores=other))
        fo_pct_roof = float("nan")  # the active target's, if it was measured
        for t in targets:
            tm = timed[f"fusedopt:{t}"]
            extra = {}
            if flat is not None and t == active0:
                share, lo, hi = (100.0 * x for x in paired_ratio(timed["flat"], tm))
                extra.update(pct_of_flat=share, pct_of_flat_p10=lo, pct_of_flat_p90=hi)
            pct, p10, p90 = (100.0 * x for x in paired_ratio(timed["roof"], tm))
            if t == active0:
                fo_pct_roof = pct  # the peers' %roof chains onto it
            rows.append(_row(rule, dtype, size, nt, "fusedopt", t, tm, n, nbytes,
                             pct_roof=pct, pct_roof_p10=p10, pct_roof_p90=p90,
                             pct_roof_of_medians=100.0 * roof_t / tm.median(),
                             other_load_cores=other, **extra))

        def peer_rows(impl, step_fn, repeats, threads_label, fo_pct_roof=fo_pct_roof):
            if cfg.wait_quiet_s > 0:
                wait_for_quiet(cfg.wait_quiet_s)
            load = ForeignLoad()
            tm = time_rounds({impl: step_fn, "fusedopt": kernel}, repeats, cfg.min_batch_s,
                             {impl: impl.split("-")[0], "fusedopt": "fusedopt"}, progress.tick)
            speedup, p10, p90 = paired_ratio(tm[impl], tm["fusedopt"])
            # The peer's %roof chains two paired ratios: roof/fusedopt from the roof's
            # rounds, fusedopt/peer from these.
            return _row(rule, dtype, size, threads_label, impl, "", tm[impl], n, nbytes,
                        pct_roof=fo_pct_roof / speedup,
                        fusedopt_speedup=speedup, fusedopt_speedup_p10=p10,
                        fusedopt_speedup_p90=p90,
                        fusedopt_median_s_alongside=tm["fusedopt"].median(),
                        other_load_cores=load.cores())

        if "numpy" in cfg.peers:
            if nt == threads[-1] or len(threads) == 1:
                # NumPy's elementwise ufuncs run on one thread whatever the count; measured
                # once per case, alongside fusedopt at all threads.
                progress.set(f"{label} t={nt}: NumPy reference")
                arrays_ref = (p, g, s)

                def ref(arrays_ref=arrays_ref):
                    _call_fusedopt(rule, _reference, *arrays_ref)

                rows.append(peer_rows("numpy-reference", ref, cfg.ref_repeats, nt))
        if torch is not None and "torch" in cfg.peers:
            for impl, kw in TORCH_VARIANTS:
                progress.set(f"{label} t={nt}: {impl}")
                peer, why = _torch_peer(torch, rule, kw, arrays)
                if peer is None:
                    rows.append(_row(rule, dtype, size, nt, impl, "", None, n, nbytes,
                                     unavailable=why))
                    progress.tick(cfg.peer_repeats)
                    continue
                rows.append(peer_rows(impl, peer.step, cfg.peer_repeats, nt))
                peer.close()
                del peer
                gc.collect()
        if have_ds and "deepspeed" in cfg.peers:
            progress.set(f"{label} t={nt}: deepspeed")
            peer, why = _deepspeed_peer(torch, rule, arrays)
            if peer is None:
                rows.append(_row(rule, dtype, size, nt, "deepspeed", "", None, n, nbytes,
                                 unavailable=why))
                progress.tick(cfg.peer_repeats)
            else:
                rows.append(peer_rows("deepspeed", peer.step, cfg.peer_repeats, nt))
                peer.close()
                del peer
                gc.collect()
        arrays.check_case_data(f"{label} t={nt}")
        arrays.reset_states()
    return rows


# --------------------------------------------------------------------------------------
# small-call latency
# --------------------------------------------------------------------------------------
LATENCY_SIZE = 1024


def _single_call_times(fn, calls: int) -> list:
    clock = time.perf_counter_ns
    for _ in range(min(calls, 2000)):
        fn()
    out = []
    for _ in range(calls):
        t0 = clock()
        fn()
        out.append(clock() - t0)
    return out


def run_latency(cfg: Config, torch) -> list:
    """One 1,024-element float32 Adam call, single calls timed one by one (microseconds)."""
    rng = np.random.default_rng(cfg.seed)
    n = LATENCY_SIZE
    p, g = rng.standard_normal(n, dtype=np.float32), rng.standard_normal(n, dtype=np.float32)
    m, v = np.zeros(n, np.float32), np.full(n, 1e-4, np.float32)
    impls = {}
    impls["fusedopt.adam_ (functional)"] = lambda: fusedopt.adam_(p, g, m, v, step=STEP, lr=1e-3)
    impls["fusedopt.adam_ skip_if_nonfinite=True"] = lambda: fusedopt.adam_(
        p, g, m, v, step=STEP, lr=1e-3, skip_if_nonfinite=True)
    prep = _arrays.prepare("adam_", p, g, [("exp_avgs", m), ("exp_avg_sqs", v)])
    c = _coeffs.adam("adam_", step=STEP, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                     weight_decay=0.0, amsgrad=False, maximize=False, decoupled=False)
    impls["native call, checks done (_native.apply)"] = lambda: _native.apply("adam", prep, c)
    impls["traffic roof call (_native.traffic)"] = lambda: _native.traffic(prep)
    unavailable = {}
    try:
        from fusedopt import optim  # noqa: PLC0415

        opt = optim.Adam([p.copy()], lr=1e-3)
        grads = [g]
        opt.step(grads)
        impls["fusedopt.optim.Adam.step"] = lambda: opt.step(grads)
    except Exception as exc:  # noqa: BLE001 - optim not there yet, or another signature
        unavailable["fusedopt.optim.Adam.step"] = f"{type(exc).__name__}: {exc}"[:160]
    if torch is not None:
        for name, kw in (("torch Adam fused=True", dict(fused=True)),
                         ("torch Adam foreach=False", dict(foreach=False))):
            try:
                tp = torch.nn.Parameter(torch.from_numpy(p.copy()))
                tp.grad = torch.from_numpy(g.copy())
                topt = torch.optim.Adam([tp], lr=1e-3, **kw)
                topt.step()
                impls[name] = topt.step
            except Exception as exc:  # noqa: BLE001
                unavailable[name] = f"{type(exc).__name__}: {exc}"[:160]
    out = []
    threads = fusedopt.get_num_threads()
    for name, fn in impls.items():
        if cfg.wait_quiet_s > 0:
            wait_for_quiet(cfg.wait_quiet_s)
        ns = np.array(_single_call_times(fn, cfg.latency_calls), dtype=np.float64) / 1e3
        out.append(dict(impl=name, size=n, dtype="float32", threads=threads,
                        median_us=float(np.median(ns)), p10_us=float(np.percentile(ns, 10)),
                        p90_us=float(np.percentile(ns, 90)), calls=len(ns)))
    for name, why in unavailable.items():
        out.append(dict(impl=name, size=n, dtype="float32", threads=threads, unavailable=why))
    return out


# --------------------------------------------------------------------------------------
# metadata and output
# --------------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def metadata(cfg: Config, targets, threads, torch, ds_version) -> dict:
    info = fusedopt.info()
    return dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        command="python -m fusedopt bench " + " ".join(sys.argv[1:]) if sys.argv else "",
        host=platform.node(),
        machine=platform.machine(),
        cpu_model=_cpu_model(),
        cores=info["cpu"].get("cores"),
        memory_gib=round((os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")) / 2**30, 1)
        if hasattr(os, "sysconf") else None,
        transparent_hugepages=_read("/sys/kernel/mm/transparent_hugepage/enabled"),
        load_average=list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        os=platform.platform(),
        python=platform.python_version(),
        fusedopt=fusedopt.__version__,
        compiler=info["cpu"].get("compiler"),
        cpu_target_active=info["cpu"].get("target"),
        cpu_targets_measured=targets,
        threads_measured=threads,
        numpy=np.__version__,
        torch=getattr(torch, "__version__", None),
        deepspeed=ds_version,
        config=dict(rules=cfg.rules, dtypes=cfg.dtypes, sizes=[size_label(s) for s in cfg.sizes],
                    peers=cfg.peers, repeats=cfg.repeats, peer_repeats=cfg.peer_repeats,
                    ref_repeats=cfg.ref_repeats, min_batch_s=cfg.min_batch_s, step=STEP,
                    seed=cfg.seed, list_tensors=LIST_TENSORS, list_total=LIST_TOTAL),
        byte_table={r: dict(reads=v[0], writes=v[1], states=v[2]) for r, v in TRAFFIC.items()},
    )


CSV_FIELDS = ["rule", "dtype", "size", "elements", "threads", "impl", "target",
              "bytes_per_element", "median_s", "p10_s", "p90_s", "min_s", "repeats", "batch",
              "melem_per_s", "gb_per_s", "gb_per_s_p10", "gb_per_s_p90", "pct_roof",
              "pct_roof_p10", "pct_roof_p90", "pct_roof_of_medians", "pct_of_flat",
              "pct_of_flat_p10", "pct_of_flat_p90",
              "fusedopt_speedup", "fusedopt_speedup_p10", "fusedopt_speedup_p90",
              "fusedopt_median_s_alongside", "other_load_cores", "unavailable"]


def write_csv(path: str, result: dict) -> None:
    with open(path, "w", newline="") as f:
        meta = result["metadata"]
        for key in ("date", "command", "cpu_model", "cores", "cpu_target_active", "fusedopt",
                    "numpy", "torch", "deepspeed", "python", "compiler"):
            f.write(f"# {key}: {meta.get(key)}\n")
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for row in result["results"]:
            w.writerow({k: _fmt_csv(row.get(k)) for k in CSV_FIELDS})
        for lat in result["latency"]:
            w.writerow({"rule": "adam", "dtype": lat["dtype"], "size": lat["size"],
                        "elements": lat["size"], "threads": lat["threads"],
                        "impl": "latency: " + lat["impl"],
                        "median_s": _fmt_csv(lat.get("median_us", float("nan")) * 1e-6),
                        "p10_s": _fmt_csv(lat.get("p10_us", float("nan")) * 1e-6),
                        "p90_s": _fmt_csv(lat.get("p90_us", float("nan")) * 1e-6),
                        "repeats": lat.get("calls", ""), "batch": 1,
                        "unavailable": lat.get("unavailable", "")})


def _fmt_csv(v):
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else v


def write_json(path: str, result: dict) -> None:
    with open(path, "w") as f:
        json.dump(result, f, indent=1, default=str)
        f.write("\n")


def write_plot(path: str, result: dict) -> str | None:
    """GB/s against size, one panel per rule (float32 and float64 lines, all threads), the
    roof dashed. Returns why not, if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'fusedopt[bench]')"
    rows = [r for r in result["results"] if "gb_per_s" in r]
    if not rows:
        return "no results"
    max_threads = max(r["threads"] for r in rows)
    rules = [r for r in RULES if any(x["rule"] == r for x in rows)]
    cols = min(3, len(rules))
    nrows = math.ceil(len(rules) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5.2 * cols, 3.9 * nrows), squeeze=False)
    active = result["metadata"]["cpu_target_active"]
    styles = {"roof": dict(color="black", ls="--"), "fusedopt": dict(color="tab:blue"),
              "numpy-reference": dict(color="tab:gray"),
              "torch-foreach=False": dict(color="tab:orange"),
              "torch-foreach=True": dict(color="tab:red"),
              "torch-fused=True": dict(color="tab:purple"),
              "deepspeed": dict(color="tab:green")}
    for ax, rule in zip(axes.flat, rules):
        for dtype, marker in (("float32", "o"), ("float64", "s")):
            for impl, style in styles.items():
                pts = [r for r in rows if r["rule"] == rule and r["dtype"] == dtype
                       and r["impl"] == impl and r["threads"] == max_threads
                       and (impl != "fusedopt" or r["target"] == active)]
                flat = sorted((r["elements"], r["gb_per_s"]) for r in pts if r["size"] != LIST_CASE)
                lst = [(r["elements"], r["gb_per_s"]) for r in pts if r["size"] == LIST_CASE]
                if flat:
                    ax.plot([x for x, _ in flat], [y for _, y in flat], marker=marker, ms=4,
                            label=f"{impl} {dtype}", lw=1.2,
                            alpha=1.0 if dtype == "float32" else 0.55, **style)
                if lst:
                    ax.plot([x for x, _ in lst], [y for _, y in lst], marker="x", ms=9, ls="",
                            color=style["color"], alpha=1.0 if dtype == "float32" else 0.55)
        ax.set_xscale("log", base=2)
        ax.set_title(f"{rule} ({max_threads} threads; x = {LIST_TENSORS} tensors)", fontsize=9)
        ax.set_xlabel("elements")
        ax.set_ylabel("GB/s (read + written)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(rules):]:
        ax.axis("off")
    legend = {}  # every panel's lines: DeepSpeed, say, is absent from the SGD panels
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    fig.legend(list(legend.values()), list(legend), loc="lower center", ncol=4, fontsize=7,
               frameon=False)
    meta = result["metadata"]
    fig.suptitle(f"fusedopt {meta['fusedopt']} on {meta['cpu_model']} ({meta['cores']} cores), "
                 f"{meta['date']}", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


# --------------------------------------------------------------------------------------
# tables for people
# --------------------------------------------------------------------------------------
def _fmt_rate(x):
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}"


def _fmt_busy(x) -> str:
    return f"{x:5.2f}" if isinstance(x, float) else f"{'?':>5}"


def _fmt_spread(lo, hi) -> str:
    return f"{lo:5.1f}-{hi:<5.1f}" if lo is not None else f"{'':>11}"


def quick_table(result: dict) -> str:
    rows = result["results"]
    out = []
    by = {}
    for r in rows:
        by.setdefault((r["rule"], r["dtype"], r["size"], r["threads"]), []).append(r)
    head = (f"{'rule':<13} {'dtype':<7} {'size':>8} {'thr':>3} {'B/el':>4}  {'Melem/s':>8} "
            f"{'GB/s':>6} {'p10-p90 GB/s':>13} {'roof GB/s':>9} {'%roof':>6} {'p10-p90':>11}  "
            f"{'ref Melem/s':>11} {'speedup':>8} {'busy':>5}")
    out.append(head)
    out.append("-" * len(head))
    for (rule, dtype, size, thr), rs in by.items():
        roof = next((r for r in rs if r["impl"] == "roof"), None)
        ref = next((r for r in rows if r["impl"] == "numpy-reference" and r["rule"] == rule
                    and r["dtype"] == dtype and r["size"] == size), None)
        for k in (r for r in rs if r["impl"] == "fusedopt"):
            tgt = "" if len(result["metadata"]["cpu_targets_measured"]) == 1 else f" {k['target']}"
            line = (f"{rule + tgt:<13} {dtype:<7} {size:>8} {thr:>3} {k['bytes_per_element']:>4}  "
                    f"{_fmt_rate(k['melem_per_s']):>8} {k['gb_per_s']:>6.1f} "
                    f"{k['gb_per_s_p10']:>6.1f}-{k['gb_per_s_p90']:<6.1f} "
                    f"{roof['gb_per_s'] if roof else float('nan'):>9.1f} {k['pct_roof']:>5.1f}% "
                    f"{_fmt_spread(k.get('pct_roof_p10'), k.get('pct_roof_p90'))}")
            if ref and "melem_per_s" in ref:
                speed = ref["median_s"] / k["median_s"]
                line += f"  {_fmt_rate(ref['melem_per_s']):>11} {speed:>7.1f}x"
            else:
                line += f"  {'':>11} {'':>8}"
            line += f" {_fmt_busy(k.get('other_load_cores'))}"
            if k.get("pct_of_flat") is not None:
                line += f"  ({k['pct_of_flat']:.1f}% of a flat tensor, same rounds)"
            out.append(line)
    return "\n".join(out)


def peers_table(result: dict) -> str:
    rows = [r for r in result["results"] if r["impl"] not in ("roof",)]
    if not any(r["impl"] not in ("fusedopt", "numpy-reference") for r in rows):
        return ""
    out = []
    head = (f"{'rule':<13} {'dtype':<7} {'size':>8} {'thr':>3} {'impl':<22} {'Melem/s':>8} "
            f"{'GB/s':>6} {'%roof':>6} {'fusedopt is':>11} {'busy':>5}")
    out.append(head)
    out.append("-" * len(head))
    for r in rows:
        if r["impl"] == "fusedopt":
            continue
        if "melem_per_s" not in r:
            out.append(f"{r['rule']:<13} {r['dtype']:<7} {r['size']:>8} {r['threads']:>3} "
                       f"{r['impl']:<22} n/a: {r.get('unavailable', '')[:60]}")
            continue
        out.append(f"{r['rule']:<13} {r['dtype']:<7} {r['size']:>8} {r['threads']:>3} "
                   f"{r['impl']:<22} {_fmt_rate(r['melem_per_s']):>8} {r['gb_per_s']:>6.1f} "
                   f"{r['pct_roof']:>5.1f}% {r['fusedopt_speedup']:>10.2f}x "
                   f"{_fmt_busy(r.get('other_load_cores'))}")
    return "\n".join(out)


def latency_table(result: dict) -> str:
    out = []
    for lat in result["latency"]:
        if "median_us" in lat:
            out.append(f"latency, one {lat['size']}-element {lat['dtype']} Adam call, "
                       f"{lat['impl']:<40} median {lat['median_us']:6.2f} us "
                       f"(p10 {lat['p10_us']:.2f}, p90 {lat['p90_us']:.2f}; {lat['calls']} calls)")
        else:
            out.append(f"latency, {lat['impl']:<40} n/a: {lat['unavailable']}")
    return "\n".join(out)


def _find(rows, **kw):
    for r in rows:
        if all(r.get(k) == v for k, v in kw.items()) and "median_s" in r:
            return r
    return None


def targets_report(result: dict) -> str:
    """The figures issue-style targets ask for, computed from this run's rows (not asserted)."""
    rows = result["results"]
    active = result["metadata"]["cpu_target_active"]
    threads = result["metadata"]["threads_measured"]
    tmax = max(threads) if threads else 1
    lines = []

    def fo(**kw):
        return _find(rows, impl="fusedopt", target=active, **kw)

    def mark(ok):
        return "met    " if ok else "NOT met"

    for size in ("2^24", "2^27"):
        for rule in RULES:
            k = fo(rule=rule, dtype="float32", size=size, threads=tmax)
            if k:
                lines.append(f"{mark(k['pct_roof'] >= 95)} {rule} float32 {size} t={tmax}: "
                             f"{k['pct_roof']:.1f}% of roof (>= 95%)")
    for rule in RULES:
        lk = fo(rule=rule, dtype="float32", size=LIST_CASE, threads=tmax)
        if lk and lk.get("pct_of_flat") is not None:
            lines.append(f"{mark(lk['pct_of_flat'] >= 90)} {rule} float32 {LIST_CASE} t={tmax}: "
                         f"{lk['pct_of_flat']:.1f}% of a flat tensor's throughput, same rounds "
                         "(>= 90%)")
    for peer in ("torch-fused=True", "deepspeed"):
        r = _find(rows, impl=peer, rule="adam", dtype="float32", size=LIST_CASE, threads=tmax)
        if r:
            lines.append(f"{mark(r['fusedopt_speedup'] >= 1.4)} adam float32 {LIST_CASE} "
                         f"t={tmax}: {r['fusedopt_speedup']:.2f}x {peer} (>= 1.4x)")
    for peer, need in (("deepspeed", 1.0), ("torch-fused=True", 1.2)):
        r = _find(rows, impl=peer, rule="adam", dtype="float32", size="2^20", threads=tmax)
        if r:
            lines.append(f"{mark(r['fusedopt_speedup'] >= need)} adam float32 2^20 t={tmax}: "
                         f"{r['fusedopt_speedup']:.2f}x {peer} (>= {need}x)")
    for rule in RULES:
        k = fo(rule=rule, dtype="float32", size="2^24", threads=1)
        if k and 1 in threads and tmax != 1:
            lines.append(f"{mark(k['pct_roof'] >= 90)} {rule} float32 2^24 t=1: "
                         f"{k['pct_roof']:.1f}% of the 1-thread roof (>= 90%)")
    for lat in result["latency"]:
        if lat["impl"].startswith("fusedopt.adam_") and "median_us" in lat:
            lines.append(f"{mark(lat['median_us'] < 5)} 1024-element adam_ call: "
                         f"{lat['median_us']:.2f} us median (< 5 us)")
        if lat["impl"].startswith("fusedopt.optim") and "median_us" in lat:
            lines.append(f"{mark(lat['median_us'] < 10)} 1024-element optim.Adam.step: "
                         f"{lat['median_us']:.2f} us median (< 10 us)")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------
def _split(value: str) -> list:
    return [x.strip() for x in value.split(",") if x.strip()]


def _parse_sizes(value: str) -> list:
    out = []
    for x in _split(value):
        if x == "all":
            out += [*SIZE_NAMES.values(), LIST_CASE]
        elif x == LIST_CASE:
            out.append(LIST_CASE)
        elif x in SIZE_NAMES:
            out.append(SIZE_NAMES[x])
        elif x.startswith("2^"):
            out.append(1 << int(x[2:]))
        else:
            out.append(int(x))
    return out


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m fusedopt bench",
        description="Throughput of the CPU kernels against the memory roof measured in the same "
                    "run, and against their peers. With no options: the quick run (every rule, "
                    "float32, 2^24 elements, all threads, the active CPU target, NumPy "
                    "reference). --full: the sweep of bench/README.md.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="cuda: the GPU benchmark instead (Adam, SGD with momentum and Adagrad "
                         "against torch's fused optimizers, a CuPy kernel and the copy bandwidth; "
                         "2^24 elements, or 2^28 with --full); of the other options it takes "
                         "--full, --repeats (timed steps per case: 5, or 20 with --full) and "
                         "--out (a folder for gpu_report.md and gpu_bench.json; nothing is "
                         "written without it)")
    ap.add_argument("--full", action="store_true",
                    help="every rule, float32+float64, sizes 2^10..2^27 and list1000, threads 1 "
                         "and all, every CPU target, every installed peer, latency; writes "
                         "CSV/JSON/PNG to --out")
    ap.add_argument("--rules", default=None, help=f"comma list of {', '.join(RULES)}, or all")
    ap.add_argument("--dtypes", default=None, help="float32, float64, or both comma-separated")
    ap.add_argument("--sizes", default=None,
                    help="comma list of 2^K, plain counts, list1000 (1,000 tensors of log-uniform "
                         "sizes totalling 2^24), or all")
    ap.add_argument("--threads", default=None, help="comma list of thread counts and/or 'all'")
    ap.add_argument("--targets", default=None,
                    help="CPU targets: active, all, or names (baseline, avx2, avx512)")
    ap.add_argument("--peers", default=None,
                    help="comma list of numpy, torch, deepspeed; all; or none")
    ap.add_argument("--repeats", type=int, default=None,
                    help=f"timed rounds of roof and fusedopt (default {ROUNDS})")
    ap.add_argument("--peer-repeats", type=int, default=None, help="timed rounds of each torch "
                    "or DeepSpeed peer")
    ap.add_argument("--ref-repeats", type=int, default=None,
                    help="timed rounds of the NumPy reference (slow)")
    ap.add_argument("--min-batch-ms", type=float, default=20.0,
                    help="calls shorter than this are timed in batches lasting at least this")
    ap.add_argument("--latency", dest="latency", action="store_true", default=True,
                    help="time single 1,024-element Adam calls")
    ap.add_argument("--no-latency", dest="latency", action="store_false")
    ap.add_argument("--latency-calls", type=int, default=20000)
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                    help="before each measurement wait up to this long until other processes "
                         "use under 0.15 cores (shared machines)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None,
                    help="folder for bench-<date>.csv/.json/.png (default with --full: "
                         "bench/results if it exists, else the current folder)")
    ap.add_argument("--csv", default=None, help="CSV path")
    ap.add_argument("--json", default=None, help="JSON path")
    ap.add_argument("--plot", default=None, help="PNG path (needs matplotlib)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return ap


def config_from_args(args) -> Config:
    full = args.full
    rules = _split(args.rules) if args.rules else ["all"]
    if rules == ["all"]:
        rules = list(RULES)
    for r in rules:
        if r not in TRAFFIC:
            raise SystemExit(f"bench: unknown rule {r!r}; choose from {', '.join(RULES)}")
    dtypes = _split(args.dtypes) if args.dtypes else (list(DTYPES) if full else ["float32"])
    for d in dtypes:
        if d not in DTYPES:
            raise SystemExit(f"bench: unknown dtype {d!r}; choose float32 or float64")
    sizes = _parse_sizes(args.sizes) if args.sizes else (
        _parse_sizes("all") if full else [1 << 24])
    threads = _split(args.threads) if args.threads else (["1", "all"] if full else ["all"])
    for t in threads:
        if t != "all" and not (t.isdigit() and int(t) >= 1):
            raise SystemExit(f"bench: bad thread count {t!r}")
    targets = _split(args.targets) if args.targets else (["all"] if full else ["active"])
    peers = _split(args.peers) if args.peers else (list(PEERS) if full else ["numpy"])
    if peers == ["all"]:
        peers = list(PEERS)
    if peers == ["none"]:
        peers = []
    for p in peers:
        if p not in PEERS:
            raise SystemExit(f"bench: unknown peer {p!r}; choose from {', '.join(PEERS)}")
    return Config(rules=rules, dtypes=dtypes, sizes=sizes, threads=threads, targets=targets,
                  peers=peers, repeats=args.repeats or ROUNDS,
                  peer_repeats=args.peer_repeats or 7, ref_repeats=args.ref_repeats or 3,
                  min_batch_s=args.min_batch_ms / 1e3, latency=args.latency,
                  latency_calls=args.latency_calls, seed=args.seed, full=full,
                  progress=not args.no_progress, wait_quiet_s=args.wait_quiet)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.device == "cuda":
        from fusedopt import _gpu_bench

        return _gpu_bench.measure(quick=not args.full, reps=args.repeats, out=args.out)
    cfg = config_from_args(args)
    if _native.core() is None:
        print(f"bench: the compiled module did not import: {_native.core_error()}",
              file=sys.stderr)
        return 1
    result = run_sweep(cfg)
    meta = result["metadata"]
    print(f"fusedopt {meta['fusedopt']}  {meta['cpu_model']}, {meta['cores']} cores, target "
          f"{meta['cpu_target_active']}  numpy {meta['numpy']}"
          + (f"  torch {meta['torch']}" if meta["torch"] else "")
          + (f"  deepspeed {meta['deepspeed']}" if meta["deepspeed"] else "")
          + f"  {meta['date']}")
    print("GB/s counts bytes read + written per element (B/el, the table in fusedopt/_bench.py); "
          "%roof = traffic-only loop of the same arrays and threads, same run: the median "
          "and p10-p90 over rounds of the ratio of the two times of one round; medians of "
          f"{cfg.repeats} rounds, NumPy exact reference {cfg.ref_repeats}; busy = cores other "
          "processes used meanwhile.")
    print()
    print(quick_table(result))
    peers = peers_table(result)
    if peers:
        print()
        print("peers (fusedopt is: the median over rounds of the peer's time / fusedopt's, "
              "timed alternately)")
        print(peers)
    if result["latency"]:
        print()
        print(latency_table(result))
    for note in result["notes"]:
        print("note:", note)
    report = targets_report(result)
    if cfg.full and report:
        print()
        print("targets")
        print(report)

    out_dir = args.out
    if cfg.full and out_dir is None and not (args.csv or args.json or args.plot):
        out_dir = "bench/results" if os.path.isdir("bench") else "."
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    csv_path, json_path, png_path = args.csv, args.json, args.plot
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        base = os.path.join(out_dir, f"bench-{stamp}")
        csv_path = csv_path or base + ".csv"
        json_path = json_path or base + ".json"
        png_path = png_path or base + ".png"
    written = []
    if csv_path:
        write_csv(csv_path, result)
        written.append(csv_path)
    if json_path:
        write_json(json_path, result)
        written.append(json_path)
    if png_path:
        why = write_plot(png_path, result)
        if why:
            print(f"note: no plot: {why}", file=sys.stderr)
        else:
            written.append(png_path)
    if written:
        print()
        print("wrote " + ", ".join(written))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
