"""The GPU benchmark's cases, results and report: pure Python, so that the report logic
runs without a GPU (selftest, and tests/test_cuda_bench.py). gpu.py measures."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from .cases import TRAFFIC, size_label

ELEMENT_BYTES = 4  # float32
# Arrays read and written per element by each rule (param, grad, states), from the CPU
# benchmark's byte table, where these rules go by other names.
_TRAFFIC_NAMES = {"adam": "adam", "sgd_momentum": "sgd+momentum", "adagrad": "adagrad"}
RULE_TRAFFIC = {rule: dict(zip(("read", "written", "states"), TRAFFIC[name]))
                for rule, name in _TRAFFIC_NAMES.items()}
RULE_TITLES = {"adam": "Adam", "sgd_momentum": "SGD momentum", "adagrad": "Adagrad"}


def one_tensor_label(n: int) -> str:
    return f"one tensor, {size_label(n, grouped=True)}"


def tensor_list_label(total: int) -> str:
    return f"1,000 tensors, {size_label(total, grouped=True)}"


# The sizes the targets are set at (the full run); the quick run's rows carry their own.
ONE_TENSOR = one_tensor_label(2**28)
TENSOR_LIST = tensor_list_label(2**26)


@dataclass
class Result:
    rule: str  # a RULE_TRAFFIC key, or "copy"
    layout: str
    impl: str
    samples_ms: list = field(default_factory=list)
    bytes_moved: int = 0
    note: str = ""

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms) if self.samples_ms else float("nan")

    def percentile_ms(self, q: float) -> float:
        if not self.samples_ms:
            return float("nan")
        s = sorted(self.samples_ms)
        return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]

    @property
    def gbps(self) -> float:
        m = self.median_ms
        return self.bytes_moved / (m * 1e-3) / 1e9 if self.samples_ms and m > 0 else float("nan")


def step_bytes(rule: str, n_elements: int) -> int:
    t = RULE_TRAFFIC[rule]
    return (t["read"] + t["written"]) * ELEMENT_BYTES * n_elements


def mixed_sizes(n_tensors: int, total: int, seed: int = 0) -> list[int]:
    """n_tensors sizes, log-normally mixed (a few large, many small, every one >= 1), that
    add up to exactly `total`."""
    import random

    rng = random.Random(seed)
    raw = [rng.lognormvariate(0.0, 1.5) for _ in range(n_tensors)]
    scale = (total - n_tensors) / sum(raw)
    sizes = [1 + int(r * scale) for r in raw]
    sizes[sizes.index(max(sizes))] += total - sum(sizes)
    assert sum(sizes) == total and min(sizes) >= 1
    return sizes


# --------------------------------------------------------------------------------------
# The report (pure Python: runs without a GPU, see --selftest)
# --------------------------------------------------------------------------------------
def _fmt(x: float, digits: int = 3) -> str:
    return "n/a" if x != x else f"{x:.{digits}f}"


def percent_of(gbps: float, copy_gbps: float) -> float:
    """gbps as a percentage of the copy bandwidth (NaN where no copy was measured)."""
    return 100.0 * gbps / copy_gbps if copy_gbps == copy_gbps and copy_gbps > 0 else float("nan")


GRAPH = "graph replay: "  # the rows of steps captured in a CUDA graph


def format_table(results: list[Result], copy_gbps: float) -> str:
    """A Markdown table: one row per case and implementation, with GB/s, the share of the
    measured copy bandwidth, and the speed relative to torch's fused (or foreach) step, or
    for a graph replay to torch's graph replay."""
    torch_ms = {}
    for r in results:
        graph = r.impl.startswith(GRAPH)
        if r.impl.startswith(GRAPH + "torch" if graph else "torch") and r.samples_ms:
            torch_ms.setdefault((r.rule, r.layout, graph), r.median_ms)
    lines = ["| case | implementation | median ms | p10–p90 ms | GB/s | % of copy | vs torch |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in results:
        case = "device-to-device copy" if r.rule == "copy" else f"{RULE_TITLES[r.rule]}, {r.layout}"
        if not r.samples_ms:
            lines.append(f"| {case} | {r.impl} | n/a | | | | {r.note} |")
            continue
        share = percent_of(r.gbps, copy_gbps)
        ref = torch_ms.get((r.rule, r.layout, r.impl.startswith(GRAPH)))
        theirs = r.impl.startswith(("torch", GRAPH + "torch"))  # not "..., torch tensors"
        vs = f"{ref / r.median_ms:.2f}x" if ref and not theirs else ""
        lines.append(f"| {case} | {r.impl} | {_fmt(r.median_ms)} | {_fmt(r.percentile_ms(0.1))}–"
                     f"{_fmt(r.percentile_ms(0.9))} | {_fmt(r.gbps, 0)} | {_fmt(share, 1)} | {vs} |")
    return "\n".join(lines)


# The rows the targets are scored on.
PREPARED = "fusedopt (prepared Batch)"
OPTIM = "fusedopt optim step"
OPTIM_TORCH = "fusedopt optim step, torch tensors"
TORCH_FUSED = "torch fused"


def find(results, rule, layout, impl):
    """The measured row of this case and implementation, or None."""
    for r in results:
        if r.rule == rule and r.layout == layout and r.impl == impl and r.samples_ms:
            return r
    return None


def copy_roof(results) -> float:
    """The copy bandwidth the shares are taken of: the faster of the run's copy
    measurements (one before the cases, one after), so a GPU still clocking up when the
    first was taken cannot lower the roof and flatter the shares."""
    return max((r.gbps for r in results if r.rule == "copy" and r.samples_ms), default=float("nan"))


def acceptance(results: list[Result], copy_gbps: float) -> list[tuple[str, bool | None, str]]:
    """The benchmark's targets: (what, passed or None if not measurable, figures).

    The torch comparisons are scored for the prepared call (the kernels and their launch)
    and for fusedopt.optim's step on CuPy arrays and on torch tensors (what a user's step
    costs, host work included, as torch's row is its whole optimizer step)."""
    out = []
    ours = find(results, "adam", ONE_TENSOR, PREPARED)
    if ours and copy_gbps == copy_gbps:
        share = ours.gbps / copy_gbps
        out.append(("Adam f32 2^28 >= 90% of copy bandwidth", share >= 0.9, f"{100 * share:.1f}%"))
    else:
        out.append(("Adam f32 2^28 >= 90% of copy bandwidth", None, "not measured at 2^28"))
    for layout, target, need in ((ONE_TENSOR, "Adam f32 2^28 >= torch fused Adam", 1.0),
                                 (TENSOR_LIST, "Adam f32 1,000-tensor list >= 1.3x torch fused Adam", 1.3)):
        theirs = find(results, "adam", layout, TORCH_FUSED)
        for impl in (PREPARED, OPTIM, OPTIM_TORCH):
            what = f"{target} ({impl})"
            a = find(results, "adam", layout, impl)
            if a and theirs:
                ratio = theirs.median_ms / a.median_ms
                out.append((what, ratio >= need, f"{ratio:.2f}x"))
            else:
                out.append((what, None, "not measured at these sizes"))
    return out


def format_sweep(sweep: list[Result], copy_gbps: float, default_chunk: int) -> str:
    """The chunk-size sweep as a Markdown table, the default chunk size marked."""
    lines = ["| Adam, prepared Batch | chunk elements | median ms | p10–p90 ms | GB/s | % of copy |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in sweep:
        chunk = int(r.impl.split()[-1])
        mark = " (default)" if chunk == default_chunk else ""
        share = percent_of(r.gbps, copy_gbps)
        lines.append(f"| {r.layout} | {chunk}{mark} | {_fmt(r.median_ms)} | {_fmt(r.percentile_ms(0.1))}–"
                     f"{_fmt(r.percentile_ms(0.9))} | {_fmt(r.gbps, 0)} | {_fmt(share, 1)} |")
    return "\n".join(lines)


def format_report(results, copy_gbps, meta, sweep=(), default_chunk=0) -> str:
    checks = acceptance(results, copy_gbps)
    mark = {True: "PASS", False: "FAIL", None: "n/a"}
    lines = [f"# fusedopt GPU benchmark, {meta.get('date', '?')}, {meta.get('gpu', '?')}", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items() if k not in ("date", "gpu")]
    if sweep:
        lines += ["", "Chunk sizes (the same bits at every size; the data to tune the default by):", "",
                  format_sweep(list(sweep), copy_gbps, default_chunk)]
    lines += ["", format_table(results, copy_gbps), ""]
    lines += [f"- {mark[ok]}: {what} ({fig})" for what, ok, fig in checks]
    return "\n".join(lines) + "\n"


# Chunk sizes to sweep: powers of two around the default, each a multiple of 2048.
SWEEP_CHUNKS = (2048, 4096, 8192, 16384, 32768, 65536)


def selftest() -> int:
    fake = [Result("copy", "2^28 float32", "cudaMemcpyAsync", [0.5, 0.51, 0.49], 2 * 4 * 2**28)]
    fake.append(Result("adam", ONE_TENSOR, "fusedopt (prepared Batch)", [1.9, 1.8, 2.0],
                       step_bytes("adam", 2**28)))
    fake.append(Result("adam", ONE_TENSOR, "torch fused", [2.2, 2.3, 2.1], step_bytes("adam", 2**28)))
    fake.append(Result("adam", TENSOR_LIST, "fusedopt (prepared Batch)", [0.5, 0.6],
                       step_bytes("adam", 2**26)))
    # Graph replays: compared with torch's graph replay, and never scored as torch's eager
    # step (here there is none on the list, so the list's target stays unscored).
    fake.append(Result("adam", TENSOR_LIST, GRAPH + "fusedopt capturable Adam", [0.4],
                       step_bytes("adam", 2**26)))
    fake.append(Result("adam", TENSOR_LIST, GRAPH + "torch fused capturable Adam", [1.0],
                       step_bytes("adam", 2**26)))
    fake.append(Result("adagrad", TENSOR_LIST, "torch fused", [], 0, "not supported on CUDA"))
    fake.append(Result("adam", ONE_TENSOR, OPTIM, [2.0, 2.1], step_bytes("adam", 2**28)))
    fake.append(Result("copy", "2^28 float32", "cudaMemcpyAsync, after the cases", [0.6], 2 * 4 * 2**28))
    copy_gbps = copy_roof(fake)
    assert copy_gbps == fake[0].gbps  # the faster copy is the roof
    sweep = [Result("adam", ONE_TENSOR, f"chunk {c}", [1.9 + c / 1e5], step_bytes("adam", 2**28))
             for c in SWEEP_CHUNKS]
    report = format_report(fake, copy_gbps, {"date": "2000-01-01", "gpu": "none", "torch": "x"},
                           sweep, default_chunk=8192)
    assert "| one tensor, 2^28 | 8192 (default) | 1.982 |" in report, report
    assert report.index("chunk elements") < report.index("| case | implementation"), report
    assert "| Adam, one tensor, 2^28 | fusedopt (prepared Batch) | 1.900 |" in report, report
    assert "PASS: Adam f32 2^28 >= torch fused Adam (fusedopt (prepared Batch)) (1.16x)" in report, report
    assert "PASS: Adam f32 2^28 >= torch fused Adam (fusedopt optim step) (1.07x)" in report, report
    assert "n/a: Adam f32 2^28 >= torch fused Adam (fusedopt optim step, torch tensors)" in report, report
    assert "n/a: Adam f32 1,000-tensor list" in report, report
    assert "| graph replay: fusedopt capturable Adam | 0.400 |" in report and "| 2.50x |" in report, report
    assert one_tensor_label(2**24) == "one tensor, 2^24" and tensor_list_label(3000) == "1,000 tensors, 3,000"
    assert sum(mixed_sizes(1000, 2**26)) == 2**26
    print(report)
    print("selftest passed")
    return 0

