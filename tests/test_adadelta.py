"""Adadelta's own edges (the grid, bad input and torch parity reach it from
fusedopt/rules/adadelta.py): its first step from zero states, rho at its bounds, specials."""

from __future__ import annotations

import fusedopt
import numpy as np
import pytest
from conftest import SUPPORTED_TARGETS, cpu_config


def test_first_step_moves_by_sqrt_eps_over_rms():
    g = np.array([2.0, -3.0], np.float32)
    p = np.zeros(2, np.float32)
    sq, acc = np.zeros(2, np.float32), np.zeros(2, np.float32)
    fusedopt.adadelta_(p, g, sq, acc, lr=1.0, rho=0.9, eps=1e-6)
    f = np.float32
    want_sq = f(0.9) * f(0) + f(1 - 0.9) * (g * g)
    want_delta = (np.sqrt(f(0) + f(1e-6)) / np.sqrt(want_sq + f(1e-6))) * g
    assert np.array_equal(sq, want_sq)
    assert np.array_equal(p, -want_delta)


@pytest.mark.parametrize("rho", [0.0, 1.0])
def test_rho_at_its_bounds(rho):
    p, g = np.ones(4, np.float32), np.full(4, 0.5, np.float32)
    sq, acc = np.full(4, 0.25, np.float32), np.full(4, 0.01, np.float32)
    fusedopt.adadelta_(p, g, sq, acc, rho=rho)
    assert np.all(np.isfinite(p))
    if rho == 1.0:  # the averages never move: sq and acc stay as they were
        assert np.all(sq == np.float32(0.25)) and np.all(acc == np.float32(0.01))


@pytest.mark.parametrize("target", SUPPORTED_TARGETS)
def test_specials_match_the_reference(target):
    g = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 1e-30, 1e30], np.float32)

    def run(fn, **kw):
        p = np.ones(g.size, np.float32)
        sq, acc = np.zeros(g.size, np.float32), np.full(g.size, 0.5, np.float32)
        fn(p, g, sq, acc, lr=0.5, **kw)
        return p, sq, acc

    with cpu_config(target):
        native = run(fusedopt.adadelta_, backend="native")
    with np.errstate(all="ignore"):
        exact = run(fusedopt.reference.adadelta_)
    for a, b in zip(native, exact):
        assert np.array_equal(a, b, equal_nan=True)
