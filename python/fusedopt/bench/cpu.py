"""The CPU benchmark behind ``python -m fusedopt bench`` (its options: cli.py).

An optimizer step is bound by memory traffic, so every kernel is reported against the
memory roof of its own byte pattern, measured in the same run: ``fusedopt._core.traffic``
reads and writes the very arrays the rule reads and writes (param, grad and the rule's
states) with one add each, on the same thread count. ``% roof`` is the median over rounds
of the ratio of the roof's time to the kernel's time in the same round, on the same arrays.

With no options this is the quick run (about 40 seconds on a 2-core machine): every
rule, float32, 2^24 elements, all threads, the active CPU target, against the roof and the
exact NumPy reference, plus the latency of one small call. ``--full`` is the sweep of
bench/README.md: every dtype (float32, float64, and bfloat16 where ml_dtypes is installed:
params, grads and states all bfloat16, rounded to nearest and, as bfloat16-sr, with the
params rounded stochastically, without peers), sizes 2^10 to 2^27 and a list of
1,000 tensors, 1 and all threads, every CPU target the machine runs, and every installed
peer (PyTorch's ``foreach=False``, ``foreach=True`` and ``fused=True``, DeepSpeed's CPU
Adam and Adagrad).
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
* Peers step on private copies of the params and gradients (``peers.TorchPeer``), and every
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

import datetime
import gc
import math
import os
import platform
import sys
import time
from dataclasses import dataclass

import numpy as np

import fusedopt
from fusedopt import _arrays, _dispatch, rules
from fusedopt import reference as _reference

from .cases import (
    CASES,
    DTYPES,
    LIST_CASE,
    LIST_TENSORS,
    LIST_TOTAL,
    STEP,
    TRAFFIC,
    Arrays,
    bytes_per_element,
    call_fusedopt,
    factored,
    n_elements,
    size_label,
)
from .peers import TORCH_VARIANTS, deepspeed_peer, deepspeed_version, import_torch, torch_peer
from .timing import (
    ForeignLoad,
    Timed,
    mem_available,
    paired_ratio,
    single_call_times,
    time_rounds,
    wait_for_quiet,
)


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
    torch = import_torch() if ("torch" in cfg.peers or "deepspeed" in cfg.peers) else None
    ds_version = deepspeed_version() if "deepspeed" in cfg.peers and torch is not None else None
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
                avail = mem_available()
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
    p, g, s = arrays.case_args(rule)
    prep = _arrays.prepare("bench", arrays.p, arrays.g_roof,
                           [(f"s{k}", arrays.s[k]) for k in range(n_states)])
    roof_call = _dispatch.native_target(prep)  # read once: the roof times the loop alone

    def kernel():
        call_fusedopt(rule, fusedopt, p, g, s, dtype)

    if flat is not None:
        flat.reset_states()
        flat_args = flat.case_args(rule)

        def flat_kernel():
            call_fusedopt(rule, fusedopt, *flat_args, dtype)

    if rules.kernel(CASES[rule][0])[0].trust_ratio:
        # Two passes (LAMB): (p, g, m, v -> m, v), then (p, m, v -> p). The roof is the traffic
        # loops of (p, g, m, v -> p, m, v) and (p, m -> p): the same ten arrays, one of the
        # reads exchanged for a write.
        second = _dispatch.native_target(_arrays.prepare("bench", arrays.p, arrays.s[0], []))

        def roof():
            roof_call.traffic()
            second.traffic()
    elif factored(rule):
        # Five passes (Adafactor, a matrix): four read one array each (p, g, g, g), the
        # last is (p, g -> p). The roof: four read-only sums of squares and that loop.
        def roof():
            for _ in range(4):
                roof_call.grad_sum_of_squares()
            roof_call.traffic()
    elif rule == "adaptive_sgd":
        # Two passes: ||g|| (read g), then the update (p, g -> p). The roof of the first is a
        # read-only loop of trivial arithmetic, which is what the sum of squares is.
        def roof():
            roof_call.grad_sum_of_squares()
            roof_call.traffic()
    else:
        def roof():
            roof_call.traffic()

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
                    call_fusedopt(rule, _reference, *arrays_ref, dtype)

                rows.append(peer_rows("numpy-reference", ref, cfg.ref_repeats, nt))
        # The peers step on torch tensors copied from the case's arrays (bfloat16 through its
        # bits): torch keeps a bfloat16 param's states in bfloat16, as these rows do,
        # DeepSpeed in float32. No peer rounds stochastically: bfloat16-sr rows have none.
        peers_take = dtype in ("float32", "float64", "bfloat16")
        if torch is not None and "torch" in cfg.peers and peers_take:
            for impl, kw in TORCH_VARIANTS:
                progress.set(f"{label} t={nt}: {impl}")
                peer, why = torch_peer(torch, rule, kw, arrays)
                if peer is None:
                    rows.append(_row(rule, dtype, size, nt, impl, "", None, n, nbytes,
                                     unavailable=why))
                    progress.tick(cfg.peer_repeats)
                    continue
                rows.append(peer_rows(impl, peer.step, cfg.peer_repeats, nt))
                peer.close()
                del peer
                gc.collect()
        if have_ds and "deepspeed" in cfg.peers and peers_take:
            progress.set(f"{label} t={nt}: deepspeed")
            peer, why = deepspeed_peer(torch, rule, arrays)
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
    c = rules.adam.coefficients("adam_", step=STEP, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                     weight_decay=0.0, amsgrad=False, maximize=False, decoupled=False)
    prepared = _dispatch.native_target(prep)
    impls["native call, arrays read (Call.run)"] = lambda: prepared.run("adam", c)
    impls["traffic roof call (Call.traffic)"] = lambda: prepared.traffic()
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
        ns = np.array(single_call_times(fn, cfg.latency_calls), dtype=np.float64) / 1e3
        out.append(dict(impl=name, size=n, dtype="float32", threads=threads,
                        median_us=float(np.median(ns)), p10_us=float(np.percentile(ns, 10)),
                        p90_us=float(np.percentile(ns, 90)), calls=len(ns)))
    for name, why in unavailable.items():
        out.append(dict(impl=name, size=n, dtype="float32", threads=threads, unavailable=why))
    return out


# --------------------------------------------------------------------------------------
# the machine and the run, for the results files
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
