"""Smoke test of an installed fusedopt: import, report, and every rule against its reference.

Small and quick enough to run under an emulator (qemu-x86_64 with a CPU model that lacks
AVX-512 or AVX2), where a kernel built for the wrong instruction set dies of SIGILL:

    qemu-x86_64 -cpu Nehalem  venv/bin/python tools/smoke.py --expect-target baseline
    qemu-x86_64 -cpu Haswell  venv/bin/python tools/smoke.py --expect-target avx2

Every case runs three steps on lists of arrays whose sizes straddle the vector widths of
every target (plus one list large enough to be split across threads), natively and on the
exact reference, and the parameters and states must agree bit for bit. Uses only the
public API, so it checks an installed wheel as a user would see it.

Exit status 0 when every case passes; the last line reads "N passed, N failed".
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

# Around 4, 8 and 16 lanes (SSE2, AVX2, AVX-512 float32) and 2, 4, 8 (float64), plus 0.
SMALL_SIZES = [0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 65, 1000, 4099]
# One list above 2 x 32768 elements, so a call is split across threads.
LARGE_SIZES = [70_001, 5]
# A factored rule's (Adafactor) matrices and a batch of them, besides the sizes as vectors.
MATRICES = [(3, 5), (17, 33), (2, 9, 31)]
STEPS = 3


def _inputs(rng, dtype, shapes, rule, state_names, squares):
    def nonzero(shape, low=0.1, high=2.0, signed=True):
        if shape is None:  # a state the param does not keep (a factored rule's)
            return None
        x = rng.uniform(low, high, shape)
        if signed:
            x *= rng.choice((-1.0, 1.0), shape)
        return x.astype(dtype)

    params = [nonzero(s) for s in shapes]
    states = {}
    for name in state_names:
        kept = [rule.state_shapes(s)[rule.states.index(name)] for s in shapes]
        if name in squares:
            states[name] = [nonzero(s, 0.5, 2.0, signed=False) for s in kept]
        elif name == "grad_avgs":
            states[name] = [nonzero(s, 0.01, 0.3) for s in kept]
        else:
            states[name] = [nonzero(s) for s in kept]
    scale = 1.0 / np.sqrt(max(sum(p.size for p in params), 1))  # keeps adaptive_sgd_'s rate up
    grads = [[(nonzero(s) * scale).astype(dtype) for s in shapes] for _ in range(STEPS)]
    return params, states, grads


def _copy(params, states):
    return [p.copy() for p in params], {k: [None if a is None else a.copy() for a in v]
                                        for k, v in states.items()}


def _bits(a):
    return a.view({4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


def run_case(fusedopt, case, dtype, sizes, seed):
    name, fn, hyper, state_names, takes_step = case
    rng = np.random.default_rng(seed)
    squares = set().union(*(r.square_states for r in fusedopt.rules.RULES.values()))
    rule = fusedopt.rules.kernel(fn)[0]
    shapes = [(n,) for n in sizes] + (MATRICES if rule.state_layout == "factored" else [])
    params, states, grads = _inputs(rng, dtype, shapes, rule, state_names, squares)
    results = {}
    for label, func, extra in (("native", getattr(fusedopt, fn), {"backend": "native"}),
                               ("exact", getattr(fusedopt.reference, fn), {"mode": "exact"})):
        p, s = _copy(params, states)
        returned = []
        for k in range(STEPS):
            kwargs = dict(hyper, **extra)
            if takes_step:
                kwargs["step"] = k + 1
            returned.append(func(p, grads[k], **s, **kwargs))
        results[label] = (p, s, returned)
    (np_, ns, nr), (ep, es, er) = results["native"], results["exact"]
    problems = []
    written = [("params", np_, ep)] + [(k, ns[k], es[k]) for k in state_names]
    for role, got, want in written:
        for i, (a, b) in enumerate(zip(got, want)):
            if a is not None and not np.array_equal(_bits(a), _bits(b)):
                bad = int(np.count_nonzero(_bits(a) != _bits(b)))
                problems.append(f"{role}[{i}] (size {a.size}): {bad} elements differ")
    if fn == "adaptive_sgd_" and [tuple(r) for r in nr] != [tuple(r) for r in er]:
        problems.append(f"returned rate/norm differ: {nr} != {er}")
    if np_ and sum(p.size for p in np_) and all(np.array_equal(a, b) for a, b in zip(np_, params)):
        problems.append("no parameter changed")
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--expect-target", metavar="NAME",
                        help="fail unless fusedopt.info() reports this CPU target in use")
    parser.add_argument("--all-targets", action="store_true",
                        help="run the cases on every CPU target this machine supports "
                             "(default: only the one in use)")
    parser.add_argument("--no-large", action="store_true",
                        help="skip the list that is large enough to be split across threads")
    parser.add_argument("--quiet", action="store_true", help="print failures and the total only")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    import fusedopt
    import fusedopt.reference
    import fusedopt.rules

    # One case per example of every rule (fusedopt/rules/): each momentum convention and
    # the options that add a state among them.
    cases = fusedopt.rules.examples()

    info = fusedopt.info()
    cpu = info["cpu"]
    summary = {
        "version": info["version"],
        "module": fusedopt.__file__,
        "target": cpu.get("target"),
        "target_source": cpu.get("target_source"),
        "targets": {t["name"]: ("built" if t["built"] else "missing")
                    + (", supported" if t["supported"] else "") for t in cpu.get("targets", [])},
        "threads": cpu.get("threads"),
        "cuda": info["cuda"],
    }
    print("fusedopt.info():", json.dumps(summary, indent=1, sort_keys=True))
    if not cpu.get("built"):
        print(f"the CPU module did not import: {cpu.get('error')}")
        print("0 passed, 1 failed")
        return 1

    failures, passed = [], 0
    if args.expect_target and cpu["target"] != args.expect_target:
        failures.append(f"target in use is {cpu['target']!r}, expected {args.expect_target!r}")

    if args.all_targets:
        targets = [t["name"] for t in cpu["targets"] if t["built"] and t["supported"]]
    else:
        targets = [cpu["target"]]
    size_lists = [SMALL_SIZES] + ([] if args.no_large else [LARGE_SIZES])
    start_target = cpu["target"]
    for target in targets:
        if args.all_targets:
            fusedopt.set_cpu_target(target)
        for seed, case in enumerate(cases):
            for dtype in (np.float32, np.float64):
                for sizes in size_lists:
                    label = f"{target}/{case[0]}/{np.dtype(dtype).name}/{len(sizes)} tensors"
                    try:
                        problems = run_case(fusedopt, case, dtype, sizes, seed)
                    except Exception as exc:  # a crash is a failure to report, not to hide
                        problems = [f"{type(exc).__name__}: {exc}"]
                    if problems:
                        failures.append(f"{label}: " + "; ".join(problems))
                    else:
                        passed += 1
                        if not args.quiet:
                            print(f"PASS {label}")
    if args.all_targets:
        fusedopt.set_cpu_target("auto" if cpu["target_source"].startswith("auto") else start_target)

    for f in failures:
        print(f"FAIL {f}")
    print(f"smoke: {len(cases)} cases x 2 dtypes x {len(size_lists)} size lists on "
          f"{targets} in {time.perf_counter() - t0:.1f} s")
    print(f"{passed} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
