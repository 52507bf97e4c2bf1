"""fusedopt.torch with 16-bit params and states: ``state_dtype=``, float16 params, and
stochastic rounding (``rounding=``, ``seed=``)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import fusedopt  # noqa: E402
import fusedopt.torch as ft  # noqa: E402


def _model(dtype, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4)).to(dtype)


def _train(model, opt, steps=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    dtype = next(model.parameters()).dtype
    for _ in range(steps):
        x, y = torch.randn(32, 16, generator=g).to(dtype), torch.randn(32, 4, generator=g)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x).float(), y).backward()
        opt.step()


def test_float16_params_get_float32_states_and_follow_float32_training():
    half, full = _model(torch.float16), _model(torch.float32)
    opt = ft.AdamW(half.parameters(), lr=1e-3)
    _train(half, opt)
    _train(full, ft.AdamW(full.parameters(), lr=1e-3))
    assert all(st["exp_avg"].dtype == torch.float32 for st in opt.state.values())
    for a, b in zip(half.parameters(), full.parameters()):
        torch.testing.assert_close(a.float(), b, rtol=0, atol=2e-3)


def test_bfloat16_states_of_float32_params_are_the_kernels_bits():
    model = _model(torch.float32)
    params = list(model.parameters())
    twins = [p.detach().clone() for p in params]
    opt = ft.AdamW(params, lr=1e-2, state_dtype=torch.bfloat16)
    m = [torch.zeros_like(p, dtype=torch.bfloat16) for p in twins]
    v = [torch.zeros_like(p, dtype=torch.bfloat16) for p in twins]
    for step in range(1, 4):
        grads = [torch.randn_like(p) for p in params]
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
        fusedopt.adamw_(twins, grads, m, v, lr=1e-2, step=step)
    for p, t in zip(params, twins):
        assert torch.equal(p.detach(), t)
    st = opt.state[params[0]]
    assert st["exp_avg"].dtype == torch.bfloat16 and torch.equal(st["exp_avg"], m[0])


def test_a_float32_state_dict_loads_into_bfloat16_states():
    model = _model(torch.float32)
    ref = torch.optim.AdamW(model.parameters(), lr=1e-3)
    _train(model, ref, steps=2)
    opt = ft.AdamW(model.parameters(), lr=1e-3, state_dtype="bfloat16")
    opt.load_state_dict(ref.state_dict())
    st = opt.state[next(model.parameters())]
    assert st["exp_avg_sq"].dtype == torch.bfloat16
    _train(model, opt, steps=2)


def test_stochastic_rounding_reproduces_by_seed():
    runs = []
    for seed in (3, 3, 4):
        model = _model(torch.bfloat16)
        _train(model, ft.Adam(model.parameters(), lr=1e-4, rounding="stochastic", seed=seed))
        runs.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(runs[0].view(torch.int16), runs[1].view(torch.int16))
    assert not torch.equal(runs[0].view(torch.int16), runs[2].view(torch.int16))


def test_stochastic_rounding_moves_where_nearest_does_not():
    """lr 1e-4 on bfloat16 weights near 1: each update is below half a spacing."""
    moved = {}
    for rounding in ("nearest", "stochastic"):
        w = torch.nn.Parameter(torch.ones(4096, dtype=torch.bfloat16))
        opt = ft.SGD([w], lr=1e-4, rounding=rounding, seed=0)
        for _ in range(100):
            w.grad = torch.ones_like(w)
            opt.step()
        moved[rounding] = float(w.detach().float().mean())
    assert moved["nearest"] == 1.0
    assert moved["stochastic"] == pytest.approx(0.99, abs=2e-3)


@pytest.mark.parametrize("bad", ["float16", torch.int32, 3])
def test_bad_state_dtype(bad):
    with pytest.raises(TypeError, match="AdamW: state_dtype"):
        ft.AdamW(_model(torch.float32).parameters(), state_dtype=bad)


def test_float64_params_keep_float64_states():
    model = _model(torch.float64)
    opt = ft.Adam(model.parameters(), state_dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="float64 params"):
        _train(model, opt, steps=1)


def test_bad_rounding_is_refused_by_the_constructor():
    with pytest.raises(ValueError, match="Adam: rounding"):
        ft.Adam(_model(torch.float32).parameters(), rounding="up")
    with pytest.raises(ValueError, match="Adam: seed"):
        ft.Adam(_model(torch.float32).parameters(), rounding="stochastic", seed=-1)
