"""RAdam's own edge: the step at which it switches to the rectified update, which must be
torch's (the grid, bad input and torch parity reach it from fusedopt/rules/radam.py)."""

from __future__ import annotations

import fusedopt
import numpy as np
import pytest
from conftest import SUPPORTED_TARGETS, cpu_config
from fusedopt.rules import radam


@pytest.mark.parametrize("beta2", [0.0, 0.5, 0.9, 0.99, 0.999])
def test_switch_step_is_where_rho_t_passes_5(beta2):
    rho_inf = 2 / (1 - beta2) - 1
    for step in range(1, 200):
        rho_t = rho_inf - 2 * step * beta2**step / (1 - beta2**step)
        assert radam.rectification(beta2, step)[0] == (rho_t > 5), step


def test_before_the_switch_the_update_is_momentum_only():
    # Steps 1-5 are unrectified (rho_t <= 5) for these betas, step 6 on rectified.
    assert [radam.rectification(0.9, t)[0] for t in range(1, 8)] == [False] * 5 + [True] * 2
    f = np.float32
    p, g = np.ones(8, f), np.full(8, 0.5, f)
    m, v = np.zeros(8, f), np.zeros(8, f)
    fusedopt.radam_(p, g, m, v, step=1, lr=0.1, betas=(0.9, 0.9))
    # m = 0.1 * 0.5; step_size = lr / (1 - 0.9): p = 1 - step_size * m, in float32.
    assert np.array_equal(p, np.full(8, f(1) - f(0.1 / (1 - 0.9)) * (f(0.9) * f(0) + f(1 - 0.9) * f(0.5))))


@pytest.mark.parametrize("target", SUPPORTED_TARGETS)
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_both_forms_match_the_reference_bit_for_bit(target, threads):
    """The case grid runs a few steps, all before the switch: here steps 1-10 cross it."""
    rng = np.random.default_rng(3)
    sizes = [0, 1, 17, 33, 70_001]
    for dtype in (np.float32, np.float64):
        params = [rng.standard_normal(n).astype(dtype) for n in sizes]
        runs = {k: ([a.copy() for a in params], [np.zeros(n, dtype) for n in sizes],
                    [np.zeros(n, dtype) for n in sizes]) for k in ("native", "exact")}
        for step in range(1, 11):
            grads = [rng.standard_normal(n).astype(dtype) for n in sizes]
            kw = dict(step=step, lr=0.01, betas=(0.9, 0.99), weight_decay=0.01)
            with cpu_config(target, threads):
                fusedopt.radam_(*runs["native"][:1], grads, *runs["native"][1:], backend="native", **kw)
            fusedopt.reference.radam_(*runs["exact"][:1], grads, *runs["exact"][1:], **kw)
        for got, want in zip(runs["native"], runs["exact"]):
            for a, b in zip(got, want):
                assert np.array_equal(a, b)


def test_switch_matches_torch_step_by_step():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    p0 = rng.standard_normal(32).astype(np.float32)
    t = torch.tensor(p0.copy(), requires_grad=True)
    opt = torch.optim.RAdam([t], lr=0.01, betas=(0.9, 0.9), foreach=False)
    p, m, v = p0.copy(), np.zeros(32, np.float32), np.zeros(32, np.float32)
    for step in range(1, 9):
        g = rng.standard_normal(32).astype(np.float32)
        t.grad = torch.from_numpy(g.copy())
        opt.step()
        fusedopt.radam_(p, g, m, v, step=step, lr=0.01, betas=(0.9, 0.9))
        np.testing.assert_allclose(p, t.detach().numpy(), rtol=1e-6, atol=1e-7, err_msg=f"step {step}")
