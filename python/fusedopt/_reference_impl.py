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


def apply_exact(rule: str, prep, coeffs, grad_multiplier: float = 1.0, rounding=None) -> None:
    fn = RULES[rule].exact
    reads_back = RULES[rule].reads_back
    xp = prep.xp
    for i, p in enumerate(prep.params):
        if not p.size:
            continue
        compute = _storage.compute_dtype(xp, p.dtype)
        written = [p, *(s[i] for s in prep.states)]  # None: a state this param does not keep
        values = [None if a is None else _storage.widened(xp, a, compute) for a in written]
        if prep.master is not None:  # the rule reads and writes the float32 master
            values[0] = _storage.master_value(xp, prep.master, p, prep.masters[i])

        def rounded(role, i=i):  # stochastic rounding's (key0, key1, role, tensor), or None
            stochastic = rounding is not None and (rounding[0] >> role) & 1
            return (rounding[1], rounding[2], role, i) if stochastic else None

        extra = {}
        if reads_back:
            # State k's values as the kernel reads them back within the step: rounded to
            # its storage (written there too, as the kernel's pass 1 does).
            def as_stored(k, x, i=i, compute=compute):
                _storage.store(xp, prep.states[k][i], x, rounded(2 + k))
                return _storage.widened(xp, prep.states[k][i], compute)

            extra["as_stored"] = as_stored
        # Every gradient read times the call's multiplier at the compute precision, as
        # csrc/math/grad_multiplier.h does (1 leaves it as it is).
        g = _storage.widened(xp, prep.grads[i], compute) * compute(grad_multiplier)
        fn(xp, values[0], g, values[1:], coeffs, **extra)
        for role, (a, v) in zip((0, 2, 3, 4), zip(written, values)):
            if role == 0 and prep.master is not None:
                _storage.store_master(xp, prep.master, p, prep.masters[i], v, rounded(0))
            elif a is not None:
                _storage.store(xp, a, v, rounded(role))


def apply_float64(rule: str, prep, hyper: dict, grad_multiplier: float = 1.0) -> None:
    fn = RULES[rule].float64
    xp = prep.xp
    for i, p in enumerate(prep.params):
        if not p.size:
            continue
        f64 = [None if s[i] is None else s[i].astype(xp.float64) for s in prep.states]
        g = prep.grads[i].astype(xp.float64) * grad_multiplier
        # param_dtype: for a default that depends on the params' storage (Adafactor's eps1).
        value = p if prep.master is None else _storage.master_value(xp, prep.master, p, prep.masters[i])
        new_p, new_states = fn(xp, value.astype(xp.float64), g, f64, dict(hyper, param_dtype=p.dtype))
        if prep.master is None:
            p[...] = new_p
        else:
            _storage.store_master(xp, prep.master, p, prep.masters[i], new_p)
        for k, s in enumerate(new_states):
            if s is not None:
                prep.states[k][i][...] = s


def sum_of_squares_float64(xp, grads) -> float:
    return math.fsum(float(xp.sum(g.astype(xp.float64) ** 2)) for g in grads)
