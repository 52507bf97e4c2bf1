"""python -m fusedopt verify: every kernel against its exact and float64 references.

``--device cuda`` runs the CUDA kernels on CuPy arrays instead and also compares them with
the CPU kernels on the same inputs: the numerics contract says float32 results are the
same bits on both, so a GPU (or a build for it) that breaks it shows here.
"""

from __future__ import annotations

import sys

import numpy as np

from fusedopt import _kernels, reference, rules

# (name, kernel, hyperparameters, state argument names, whether it takes step=): every
# example of every rule (fusedopt/rules/).
CASES = rules.examples()

SIZES = [0, 1, 17, 1023, 100_003, (1 << 20) + 3]
# A factored rule's params (Adafactor): vectors, which keep a full state, and matrices and
# a batch of them, which keep row and column factors (a row past a norm block among them).
FACTORED_SHAPES = [(0,), (1,), (17,), (3, 0), (31, 33), (2, 65, 70), (2, 66_000)]
STEPS = 6  # RAdam rectifies from step 6 (rho_t > 5): both of its forms are run
# Largest error of native float32 against the float64 textbook formula after STEPS steps,
# relative to the largest parameter: a few roundings of the storage per step.
FLOAT64_TOLERANCE = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12,
                     np.dtype(np.float16): 5e-3}
# The params' (and grads') dtypes: float32 and float64, and the 16-bit storage types
# (float32 arithmetic; bfloat16 where ml_dtypes is installed; states: state_dtype()).
DTYPES = [np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16)]
try:
    import ml_dtypes as _ml_dtypes

    DTYPES.append(np.dtype(_ml_dtypes.bfloat16))
    FLOAT64_TOLERANCE[DTYPES[-1]] = 4e-2
except ImportError:  # pragma: no cover - depends on the environment
    pass


def state_dtype(dtype):
    """The states' dtype of a case: the params' own, but float32 for float16 params (the
    kernels store states in float32 or bfloat16 for every params' dtype but float64)."""
    return np.dtype(np.float32) if np.dtype(dtype) == np.float16 else np.dtype(dtype)


def _shapes(kernel):
    rule = rules.kernel(kernel)[0]
    return [(n,) for n in SIZES] if rule.state_layout == "same" else FACTORED_SHAPES


def _arrays(rng, kernel, dtype, state_names):
    rule = rules.kernel(kernel)[0]
    shapes = _shapes(kernel)
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]

    def state(shape):  # zero, as every optimizer starts them; None where a param keeps none
        return None if shape is None else np.zeros(shape, state_dtype(dtype))

    which = [rule.states.index(name) for name in state_names]
    return params, [[state(rule.state_shapes(s)[k]) for s in shapes] for k in which]


def _run(fn, params, states, state_names, hyper, takes_step, grads_per_step, step_kw):
    for s, grads in enumerate(grads_per_step, start=1):
        kwargs = dict(hyper, **step_kw)
        if takes_step:
            kwargs["step"] = s
        fn(params, grads, **dict(zip(state_names, states)), **kwargs)


def verify_case(name, kernel, hyper, state_names, takes_step, dtype, seed=0, device="cpu"):
    """One case: the native kernel on `device` ("cpu", or "cuda" on CuPy arrays) against the
    exact reference (bitwise), the float64 formula (within tolerance) and, on "cuda", the
    CPU kernel (bitwise)."""
    rng = np.random.default_rng(seed)
    params, states = _arrays(rng, kernel, dtype, state_names)
    grads = [[rng.standard_normal(s).astype(dtype) for s in _shapes(kernel)] for _ in range(STEPS)]

    def each(arrays, f):  # f of every array of a list, None (a state not kept) as it is
        return [None if a is None else f(a) for a in arrays]

    def copy():
        return each(params, np.copy), [each(st, np.copy) for st in states]

    native_p, native_s = copy()
    exact_p, exact_s = copy()
    f64_p = [p.astype(np.float64) for p in params]
    f64_s = [each(st, lambda a: a.astype(np.float64)) for st in states]
    f64_g = [[g.astype(np.float64) for g in step] for step in grads]

    native = getattr(_kernels, kernel)
    if device == "cuda":
        import cupy

        put = lambda arrays: each(arrays, cupy.asarray)  # noqa: E731
        dev_p, dev_s = put(native_p), [put(st) for st in native_s]
        _run(native, dev_p, dev_s, state_names, hyper, takes_step, [put(g) for g in grads],
             {"backend": "native"})
        device_outs = [cupy.asnumpy(a) for a in dev_p + [a for st in dev_s for a in st if a is not None]]
    _run(native, native_p, native_s, state_names, hyper, takes_step, grads, {"backend": "native"})
    _run(getattr(reference, kernel), exact_p, exact_s, state_names, hyper, takes_step, grads,
         {"mode": "exact"})
    _run(getattr(reference, kernel), f64_p, f64_s, state_names, hyper, takes_step, f64_g,
         {"mode": "float64"})

    cpu_outs = native_p + [a for st in native_s for a in st if a is not None]
    outs = device_outs if device == "cuda" else cpu_outs
    exact = exact_p + [a for st in exact_s for a in st if a is not None]
    identical = all(np.array_equal(a, b) for a, b in zip(outs, exact))
    same_as_cpu = all(np.array_equal(a, b) for a, b in zip(outs, cpu_outs))
    exact_err = max((float(np.max(np.abs(a.astype(np.float64) - b))) for a, b in zip(outs, exact)
                     if a.size), default=0.0)
    scale = max(float(np.max(np.abs(p))) for p in f64_p if p.size)
    f64_err = max(float(np.max(np.abs(a.astype(np.float64) - b))) for a, b in
                  zip(outs[:len(f64_p)], f64_p) if a.size) / scale
    ok = identical and same_as_cpu and f64_err <= FLOAT64_TOLERANCE[np.dtype(dtype)]
    return dict(case=name, dtype=np.dtype(dtype).name, identical=identical, exact_err=exact_err,
                same_as_cpu=same_as_cpu, f64_rel_err=f64_err, ok=ok)


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m fusedopt verify",
                                     description="Runs every kernel on random data against its "
                                     "exact reference (bitwise) and the float64 textbook formula.")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda: the CUDA kernels on CuPy arrays, also compared with the CPU "
                        "kernels bit for bit (default: cpu)")
    args = parser.parse_args(argv)
    from fusedopt import cuda, info

    found = info()
    cpu = found["cpu"]
    where = f"CPU target {cpu.get('target')}, {cpu.get('threads')} threads"
    if args.device == "cuda":
        reason = cuda.cupy_arrays_reason()
        if reason is not None:
            print(f"fusedopt verify: cannot run the CUDA kernels: {reason}", file=sys.stderr)
            return 2
        gpu = found["cuda"].get("device") or {}
        where = (f"CUDA on {gpu.get('name', 'the GPU')} (compute capability "
                 f"{gpu.get('compute_capability', '?')}), against the {where}")
    print(f"fusedopt verify: {where}, {len(SIZES)} tensors per call (sizes {SIZES}), {STEPS} steps")
    cpu_column = f" {'vs CPU':>10s}" if args.device == "cuda" else ""
    header = f"{'case':28s} {'dtype':8s} {'vs exact':>12s}{cpu_column} {'vs float64 (rel)':>17s}  result"
    print(header)
    print("-" * len(header))
    failures = 0
    # CuPy has no bfloat16 (torch CUDA tensors carry it: tests/test_cuda.py).
    dtypes = [d for d in DTYPES if args.device == "cpu" or d.name != "bfloat16"]
    for name, kernel, hyper, states, takes_step in CASES:
        for dtype in dtypes:
            r = verify_case(name, kernel, hyper, states, takes_step, dtype, device=args.device)
            exact = "identical" if r["identical"] else f"{r['exact_err']:.3g}"
            vs_cpu = f" {'identical' if r['same_as_cpu'] else 'DIFFERENT':>10s}" if cpu_column else ""
            print(f"{r['case']:28s} {r['dtype']:8s} {exact:>12s}{vs_cpu} {r['f64_rel_err']:>17.3g}  "
                  f"{'PASS' if r['ok'] else 'FAIL'}")
            failures += not r["ok"]
    total = len(dtypes) * len(CASES)
    print(f"{total - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
