"""``python -m fusedopt bench``: its options, and what it prints and writes. The CPU
benchmark is cpu.py; ``--device cuda`` hands over to gpu.py."""

from __future__ import annotations

import argparse
import datetime
import os
import sys

from .cases import DTYPES, LIST_CASE, RULES, SIZE_NAMES, TRAFFIC
from .cpu import Config, run_sweep
from .peers import PEERS
from .report import latency_table, peers_table, quick_table, targets_report, write_csv, write_json, write_plot
from .timing import ROUNDS


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
    ap.add_argument("--dtypes", default=None,
                    help="float32, float64, bfloat16 (params, grads and states; needs ml_dtypes), "
                         "bfloat16-sr (the same with the params rounded stochastically), "
                         "comma-separated")
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
            raise SystemExit(f"bench: unknown dtype {d!r}; choose from {', '.join(DTYPES)}")
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
        from . import gpu

        return gpu.measure(quick=not args.full, reps=args.repeats, out=args.out)
    cfg = config_from_args(args)
    result = run_sweep(cfg)
    meta = result["metadata"]
    print(f"fusedopt {meta['fusedopt']}  {meta['cpu_model']}, {meta['cores']} cores, target "
          f"{meta['cpu_target_active']}  numpy {meta['numpy']}"
          + (f"  torch {meta['torch']}" if meta["torch"] else "")
          + (f"  deepspeed {meta['deepspeed']}" if meta["deepspeed"] else "")
          + f"  {meta['date']}")
    print("GB/s counts bytes read + written per element (B/el, the table in fusedopt/bench/cases.py); "
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
