"""NAdam's own edges: its momentum product (computed from the step, or passed as torch keeps
it), and a run whose betas change midway (the grid, bad input and torch parity reach it
from its description, fusedopt/rules/nadam.py)."""

from __future__ import annotations

import math

import fusedopt
import numpy as np
import pytest
from fusedopt.rules import nadam


def _mu(b1, psi, t):
    return b1 * (1 - 0.5 * 0.96 ** (t * psi))


@pytest.mark.parametrize("step", [1, 2, 7, 300])
def test_product_from_the_step_is_the_running_product(step):
    want = math.prod(_mu(0.9, 4e-3, t) for t in range(1, step))
    assert nadam.mu_product_before(0.9, 4e-3, step) == pytest.approx(want, rel=1e-15)
    # In any order of calls: the memo of the last product restarts when it cannot extend.
    assert nadam.mu_product_before(0.8, 4e-3, 3) == _mu(0.8, 4e-3, 1) * _mu(0.8, 4e-3, 2)
    assert nadam.mu_product_before(0.9, 4e-3, step) == pytest.approx(want, rel=1e-15)


def test_passing_the_product_equals_computing_it():
    rng = np.random.default_rng(0)
    p = rng.standard_normal(100).astype(np.float32)
    arrays = [p.copy(), p.copy()]
    states = [[np.zeros(100, np.float32) for _ in range(2)] for _ in range(2)]
    product = 1.0
    for step in range(1, 6):
        g = rng.standard_normal(100).astype(np.float32)
        fusedopt.nadam_(arrays[0], g, *states[0], step=step, lr=0.01)
        fusedopt.nadam_(arrays[1], g, *states[1], step=step, lr=0.01, mu_product=product)
        product *= _mu(0.9, 4e-3, step)
    assert np.array_equal(arrays[0], arrays[1])


def test_bad_product_is_refused_naming_it():
    p, g, m, v = (np.zeros(3, np.float32) for _ in range(4))
    for bad, kind in ((1.5, ValueError), (-0.1, ValueError), ("1", TypeError)):
        with pytest.raises(kind, match="mu_product"):
            fusedopt.nadam_(p, g, m, v, step=2, mu_product=bad)


def test_betas_changed_midway_follow_torch_with_the_product_passed():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    p0 = rng.standard_normal(64).astype(np.float32)
    t = torch.tensor(p0.copy(), requires_grad=True)
    opt = torch.optim.NAdam([t], lr=0.01, foreach=False)
    p, m, v = p0.copy(), np.zeros(64, np.float32), np.zeros(64, np.float32)
    for step in range(1, 21):
        betas = (0.9, 0.999) if step <= 10 else (0.7, 0.99)
        opt.param_groups[0]["betas"] = betas
        g = rng.standard_normal(64).astype(np.float32)
        product = float(opt.state[t]["mu_product"]) if opt.state else 1.0
        t.grad = torch.from_numpy(g.copy())
        opt.step()
        fusedopt.nadam_(p, g, m, v, step=step, lr=0.01, betas=betas, mu_product=product)
    np.testing.assert_allclose(p, t.detach().numpy(), rtol=1e-5, atol=1e-6)
