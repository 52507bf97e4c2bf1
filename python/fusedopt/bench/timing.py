"""Timing on a shared machine: interleaved rounds, their paired ratios, single calls, and
the machine's state meanwhile (memory available, other processes' load). cpu.py's
docstring says why each is done the way it is."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np


# --------------------------------------------------------------------------------------
# the machine
# --------------------------------------------------------------------------------------
def mem_available() -> int | None:
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

FAMILY_GAP_S = 0.003  # pause between calls of different libraries (see cpu.py's docstring)


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


def rewarm(fn: Callable[[], None], min_batch_s: float) -> None:
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
                rewarm(fn, min_batch_s)
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


def single_call_times(fn, calls: int) -> list:
    clock = time.perf_counter_ns
    for _ in range(min(calls, 2000)):
        fn()
    out = []
    for _ in range(calls):
        t0 = clock()
        fn()
        out.append(clock() - t0)
    return out
