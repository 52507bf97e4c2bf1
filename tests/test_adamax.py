"""Adamax's own edges: what its infinity norm does with -0, NaN and inf in the gradient and
in the state (the grid, the bad-input grid and torch parity reach it from its description,
fusedopt/rules/adamax.py)."""

from __future__ import annotations

import fusedopt
import numpy as np
import pytest
from conftest import SUPPORTED_TARGETS, cpu_config


def _step(backend, g, u0, dtype):
    p = np.full(g.size, 1.0, dtype)
    m = np.zeros(g.size, dtype)
    u = np.asarray(u0, dtype).copy()
    kwargs = dict(backend=backend) if backend else dict(mode="exact")
    fn = fusedopt.adamax_ if backend else fusedopt.reference.adamax_
    fn(p, g.astype(dtype), m, u, step=1, lr=0.1, **kwargs)
    return p, m, u


@pytest.mark.parametrize("target", SUPPORTED_TARGETS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_specials_match_the_reference_bit_for_bit(target, dtype):
    g = np.array([-0.0, 0.0, np.nan, np.inf, -np.inf, -2.0, 3.0, 1e-30, -1e-30], dtype=np.float64)
    u0 = np.array([0.0, np.nan, 1.0, 2.0, np.inf, 0.5, 0.0, 0.0, 1.0])
    with cpu_config(target):
        native = _step("native", g, u0, dtype)
    with np.errstate(invalid="ignore"):  # inf/inf in NumPy's reference, as intended
        exact = _step(None, g, u0, dtype)
    for got, want in zip(native, exact):
        assert np.array_equal(got, want, equal_nan=True)
    p, _, u = native
    # |-0| + eps is eps; NaN on either side of the max stays NaN and reaches the param.
    assert u[0] == dtype(1e-8) and np.isnan(u[1]) and np.isnan(u[2]) and np.isnan(p[1])
    # An infinite gradient makes u infinite: m/u is inf/inf = NaN, as in torch.
    assert np.isinf(u[3]) and np.isnan(p[3])
    # The state's inf decays to inf and wins the max.
    assert u[4] == np.inf


def test_state_that_only_decays_keeps_the_update_bounded():
    """With u far above |g|, u only decays (u = b2*u) and the step is lr*m/u/(1-b1): small."""
    g = np.array([1e-3], np.float32)
    p, m, u = _step("native", g, [10.0], np.float32)
    assert u[0] == np.float32(0.999) * np.float32(10.0)
    assert abs(1.0 - p[0]) < 1e-4
