"""The reference implementations, in NumPy or CuPy (whichever module the arrays belong to).

Two modes:

* exact: the kernel's operation order, at the compute precision, with the rule's
  coefficients: every array widened to float32 (float64 for float64 params), the rule's
  ``exact`` run there, and what it wrote rounded back to each array's storage to nearest
  even (fusedopt/_storage.py), as the kernels load and store. The results equal the native
  kernels bit for bit. Each rule's ``exact`` (fusedopt/rules/<rule>.py) mirrors its
  csrc/math/<rule>.h line by line and knows nothing of storage.
* float64: the textbook formula from the raw hyperparameters (the rule's ``float64``),
  computed in float64 and stored back at the arrays' precision. It checks drift, not bits.

Public entry points are in fusedopt.reference; both modes go through the same array checks
as the kernels.
"""

from __future__ import annotations

import math

from fusedopt import _storage
from fusedopt.rules import RULES
from fusedopt.rules._common import sum_of_squares_exact  # noqa: F401 (the adaptive rate's)


def apply_exact(rule: str, prep, coeffs) -> None:
    fn = RULES[rule].exact
    reads_back = RULES[rule].trust_ratio
    xp = prep.xp
    for i, p in enumerate(prep.params):
        if not p.size:
            continue
        compute = _storage.compute_dtype(xp, p.dtype)
        written = [p, *(s[i] for s in prep.states)]
        values = [_storage.widened(xp, a, compute) for a in written]
        extra = {}
        if reads_back:
            # State k's values as the kernel reads them back within the step: rounded to
            # its storage (written there too, as the kernel's pass 1 does).
            def as_stored(k, x, i=i, compute=compute):
                _storage.store(xp, prep.states[k][i], x)
                return _storage.widened(xp, prep.states[k][i], compute)

            extra["as_stored"] = as_stored
        fn(xp, values[0], _storage.widened(xp, prep.grads[i], compute), values[1:], coeffs, **extra)
        for a, v in zip(written, values):
            _storage.store(xp, a, v)


def apply_float64(rule: str, prep, hyper: dict) -> None:
    fn = RULES[rule].float64
    xp = prep.xp
    for i, p in enumerate(prep.params):
        if not p.size:
            continue
        f64 = [s[i].astype(xp.float64) for s in prep.states]
        new_p, new_states = fn(xp, p.astype(xp.float64), prep.grads[i].astype(xp.float64), f64, hyper)
        p[...] = new_p
        for k, s in enumerate(new_states):
            prep.states[k][i][...] = s


def sum_of_squares_float64(xp, grads) -> float:
    return math.fsum(float(xp.sum(g.astype(xp.float64) ** 2)) for g in grads)
