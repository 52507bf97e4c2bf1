"""The CPU benchmark's results for people and for files: the tables it prints, the targets
it scores, and the CSV, JSON and PNG it writes."""

from __future__ import annotations

import csv
import json
import math

from .cases import LIST_CASE, LIST_TENSORS, RULES

# --------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------
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
    head = (f"{'rule':<13} {'dtype':<11} {'size':>8} {'thr':>3} {'B/el':>4}  {'Melem/s':>8} "
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
            line = (f"{rule + tgt:<13} {dtype:<11} {size:>8} {thr:>3} {k['bytes_per_element']:>4}  "
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
    head = (f"{'rule':<13} {'dtype':<11} {'size':>8} {'thr':>3} {'impl':<22} {'Melem/s':>8} "
            f"{'GB/s':>6} {'%roof':>6} {'fusedopt is':>11} {'busy':>5}")
    out.append(head)
    out.append("-" * len(head))
    for r in rows:
        if r["impl"] == "fusedopt":
            continue
        if "melem_per_s" not in r:
            out.append(f"{r['rule']:<13} {r['dtype']:<11} {r['size']:>8} {r['threads']:>3} "
                       f"{r['impl']:<22} n/a: {r.get('unavailable', '')[:60]}")
            continue
        out.append(f"{r['rule']:<13} {r['dtype']:<11} {r['size']:>8} {r['threads']:>3} "
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
