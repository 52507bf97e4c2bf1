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
from fusedopt.rules._common import block_sums


def sum_of_squares_exact(xp, grads) -> float:
    """csrc/math/sumsq.h: every gradient's blocks summed in lanes, the block sums added in
    call order."""
    import numpy as np

    total = 0.0
    for g in grads:
        # The exact sum runs on the host: a device scan would not add in lane order.
        g = g if isinstance(g, np.ndarray) else g.get()
        if g.size == 0:
            continue
        gd = g.reshape(1, -1).astype(np.float64)
        for block_sum in block_sums(np, gd * gd)[0].tolist():  # block sums in call order
            total = total + block_sum
    return total


def apply_exact(rule: str, prep, coeffs) -> None:
    fn = RULES[rule].exact
    xp = prep.xp
    for i, p in enumerate(prep.params):
        if not p.size:
            continue
        compute = _storage.compute_dtype(xp, p.dtype)
        written = [p, *(s[i] for s in prep.states)]  # None: a state this param does not keep
        values = [None if a is None else _storage.widened(xp, a, compute) for a in written]
        fn(xp, values[0], _storage.widened(xp, prep.grads[i], compute), values[1:], coeffs)
        for a, v in zip(written, values):
            if a is not None:
                _storage.store(xp, a, v)


def apply_float64(rule: str, prep, hyper: dict) -> None:
    fn = RULES[rule].float64
    xp = prep.xp
    for i, p in enumerate(prep.params):
        if not p.size:
            continue
        f64 = [None if s[i] is None else s[i].astype(xp.float64) for s in prep.states]
        # param_dtype: for a default that depends on the params' storage (Adafactor's eps1).
        new_p, new_states = fn(xp, p.astype(xp.float64), prep.grads[i].astype(xp.float64), f64,
                               dict(hyper, param_dtype=p.dtype))
        p[...] = new_p
        for k, s in enumerate(new_states):
            if s is not None:
                prep.states[k][i][...] = s


def sum_of_squares_float64(xp, grads) -> float:
    return math.fsum(float(xp.sum(g.astype(xp.float64) ** 2)) for g in grads)
