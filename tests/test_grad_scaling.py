"""Loss scaling and fused clipping, every rule: ``grad_scale``, ``found_inf``,
``max_grad_norm`` and ``grad_norm`` (fusedopt._coeffs.grad_scaling, csrc/math/grad_multiplier.h).

What is checked:

* bitwise: every rule's cases with a loss scale and clipping, native against the exact
  reference, float32 and float64, on every CPU target at 1, 2 and 3 threads;
* the definition: a clipped call equals a plain call on the gradients multiplied by
  float32(min(1, max / (norm + 1e-6)) / grad_scale), bit for bit, where norm is the one the
  call returns; a power-of-two loss scale changes no bit of the update of the unscaled
  gradients;
* clipping against clip-then-update in float64 (the float64 reference, and torch's
  clip_grad_norm_ followed by torch's optimizer);
* found_inf writes nothing; a bad argument is refused by name and writes nothing.
"""

from __future__ import annotations

import math

import fusedopt
import numpy as np
import pytest
from conftest import CASES, SUPPORTED_TARGETS, assert_bitwise, cpu_config, make_inputs, rng_for, run_steps

# One case per public function: the first of the grid's (options are covered by test_rules);
# the factored rules' passes take no multiplier (test_factored_rules_refuse_scaling).
_FIRST = {}
for _c in CASES:
    if fusedopt.rules.kernel(_c.fn)[0].state_layout == "same":
        _FIRST.setdefault(_c.fn, _c)
FIRST_CASES = list(_FIRST.values())
# Tensors on both sides of the thread split (32768 elements per thread), and empty ones.
SIZES = [0, 5, 4097, 70_001, 0, 17, 40_000]
SCALE = 1024.0


def _norm(grads, scale=1.0) -> float:
    return math.sqrt(math.fsum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads)) / scale


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("target", SUPPORTED_TARGETS)
@pytest.mark.parametrize("dt", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", FIRST_CASES, ids=lambda c: c.id)
def test_scaled_and_clipped_bitwise(case, dt, target, threads):
    host = make_inputs(case, dt, SIZES, steps=3, rng=rng_for("scaled", case.id, dt))
    for k, grads in enumerate(host.grads):  # the gradients carry a loss scale (not a power of 2)
        host.grads[k] = [(g * 3 * SCALE).astype(dt) for g in grads]
    max_norm = 0.3 * _norm(host.grads[0], 3 * SCALE)  # clips every step
    native, ref = host.copy(), host.copy()
    kw = dict(grad_scale=3 * SCALE, max_grad_norm=max_norm)
    with cpu_config(target, threads):
        got = run_steps(case, native, backend="native", **kw)
    want = run_steps(case, ref, mode="exact", **kw)
    assert_bitwise(native, ref)
    assert got == want
    for status, grads in zip(got, host.grads):
        assert status.grad_norm == pytest.approx(_norm(grads, 3 * SCALE), rel=1e-12)


@pytest.mark.parametrize("case", [c for c in FIRST_CASES if c.fn != "adaptive_sgd_"], ids=lambda c: c.id)
def test_clipping_is_a_multiplier_of_the_gradients(case):
    """The definition, bit for bit: the clipped call equals the plain call on the gradients
    times float32(clip / grad_scale), with clip from the norm the call returns."""
    host = make_inputs(case, np.float32, SIZES, steps=2, rng=rng_for("definition", case.id))
    clipped, plain = host.copy(), host.copy()
    for k in range(2):
        params, grads, states = clipped.args(k)
        max_norm = 0.5 * _norm(grads, SCALE)
        status = case.call(params, grads, states, k + 1, grad_scale=SCALE, max_grad_norm=max_norm)
        clip = min(1.0, max_norm / (status.grad_norm + 1e-6))
        params, grads, states = plain.args(k)
        case.call(params, [g * np.float32(clip / SCALE) for g in grads], states, k + 1)
    assert_bitwise(clipped, plain)


@pytest.mark.parametrize("case", FIRST_CASES, ids=lambda c: c.id)
def test_power_of_two_loss_scale_changes_no_bit(case):
    host = make_inputs(case, np.float32, SIZES, steps=3, rng=rng_for("pow2", case.id))
    scaled, plain = host.copy(), host.copy()
    for k in range(3):
        scaled.grads[k] = [g * np.float32(2.0**14) for g in scaled.grads[k]]
    run_steps(case, scaled, grad_scale=2.0**14)
    run_steps(case, plain)
    assert_bitwise(scaled, plain)


@pytest.mark.parametrize("case", FIRST_CASES, ids=lambda c: c.id)
def test_clip_then_update_in_float64(case):
    """Clipping inside the step lands where clipping the gradients first and then stepping
    does, in float64."""
    host = make_inputs(case, np.float64, [300, 1000], steps=4, rng=rng_for("f64clip", case.id))
    fused, manual = host.copy(), host.copy()
    for k in range(4):
        params, grads, states = fused.args(k)
        max_norm = 0.2 * _norm(grads)
        case.call(params, grads, states, k + 1, max_grad_norm=max_norm, mode="float64")
        params, grads, states = manual.args(k)
        coef = max_norm / (_norm(grads) + 1e-6)
        case.call(params, [g * coef for g in grads], states, k + 1, mode="float64")
    for name, a in fused.written().items():
        np.testing.assert_allclose(a, manual.written()[name], rtol=1e-12, atol=1e-15, err_msg=name)


def test_grad_norm_given_is_the_norm_clipped_by():
    case = _FIRST["adam_"]
    host = make_inputs(case, np.float32, SIZES, steps=1, rng=rng_for("given-norm"))
    a, b = host.copy(), host.copy()
    own = case.call(*a.args(0), 1, max_grad_norm=0.1)
    given = case.call(*b.args(0), 1, max_grad_norm=0.1, grad_norm=own.grad_norm)
    assert given.grad_norm == own.grad_norm
    assert_bitwise(a, b)
    # A larger norm given (that of more tensors elsewhere) clips harder.
    c = host.copy()
    case.call(*c.args(0), 1, max_grad_norm=0.1, grad_norm=4 * own.grad_norm)
    moved = lambda x: np.abs(x.params[1] - host.params[1]).sum()  # noqa: E731
    assert moved(c) < moved(a)


def test_no_clipping_below_the_maximum():
    case = _FIRST["adam_"]
    host = make_inputs(case, np.float32, SIZES, steps=1, rng=rng_for("below"))
    a, b = host.copy(), host.copy()
    status = case.call(*a.args(0), 1, max_grad_norm=1e30)
    assert status == fusedopt.StepStatus(False, 0, status.grad_norm)
    case.call(*b.args(0), 1)
    assert_bitwise(a, b)


@pytest.mark.parametrize("found", [True, 1.0, np.float32(1.0), np.array(1.0), np.array([2.0]),
                                   np.array(True), float("nan")],
                         ids=["bool", "float", "np-scalar", "0d", "1elem", "0d-bool", "nan"])
@pytest.mark.parametrize("backend", ["native", "reference"])
def test_found_inf_writes_nothing(found, backend):
    case = _FIRST["adam_"]
    host = make_inputs(case, np.float32, SIZES, steps=1, rng=rng_for("found"))
    x = host.copy()
    status = case.call(*x.args(0), 1, found_inf=found, grad_scale=SCALE, backend=backend)
    assert status == fusedopt.StepStatus(True, 0)
    assert_bitwise(x, host)


def test_found_inf_false_steps():
    case = _FIRST["adam_"]
    host = make_inputs(case, np.float32, SIZES, steps=1, rng=rng_for("notfound"))
    a, b = host.copy(), host.copy()
    assert case.call(*a.args(0), 1, found_inf=np.array(0.0)) == fusedopt.StepStatus(False, 0)
    case.call(*b.args(0), 1)
    assert_bitwise(a, b)


def test_adaptive_rate_sees_unscaled_clipped_gradients():
    p, g = np.ones(1000, np.float32), np.full(1000, 0.1, np.float32)
    plain = fusedopt.adaptive_sgd_(p.copy(), g, lr=0.5)
    scaled = fusedopt.adaptive_sgd_(p.copy(), g * np.float32(64), lr=0.5, grad_scale=64.0)
    assert scaled == plain
    clipped = fusedopt.adaptive_sgd_(p.copy(), g, lr=0.5, max_grad_norm=1.0)
    assert clipped.grad_norm == plain.grad_norm  # the norm before clipping
    # ||g|| = sqrt(10) is clipped to 1: the rate is lr0 / (1 + 1).
    assert clipped.lr == pytest.approx(0.25, rel=1e-6)


BAD = [
    (dict(grad_scale=0.0), ValueError, "grad_scale"),
    (dict(grad_scale=-2.0), ValueError, "grad_scale"),
    (dict(grad_scale=float("nan")), ValueError, "grad_scale"),
    (dict(grad_scale=float("inf")), ValueError, "grad_scale"),
    (dict(grad_scale=True), TypeError, "grad_scale"),
    (dict(grad_scale="2"), TypeError, "grad_scale"),
    (dict(grad_scale=np.ones(2)), TypeError, "grad_scale"),
    (dict(found_inf="yes"), TypeError, "found_inf"),
    (dict(found_inf=np.zeros(3)), TypeError, "found_inf"),
    (dict(max_grad_norm=0.0), ValueError, "max_grad_norm"),
    (dict(max_grad_norm=-1.0), ValueError, "max_grad_norm"),
    (dict(max_grad_norm=float("nan")), ValueError, "max_grad_norm"),
    (dict(max_grad_norm=[1.0]), TypeError, "max_grad_norm"),
    (dict(grad_norm=1.0), ValueError, "grad_norm"),
    (dict(max_grad_norm=1.0, grad_norm=-1.0), ValueError, "grad_norm"),
]


@pytest.mark.parametrize("backend", ["native", "reference"])
@pytest.mark.parametrize("kwargs,error,name", BAD, ids=[f"{n}-{i}" for i, (_, _, n) in enumerate(BAD)])
def test_bad_scaling_arguments_write_nothing(kwargs, error, name, backend):
    case = _FIRST["adam_"]
    host = make_inputs(case, np.float32, [3, 9], steps=1, rng=rng_for("bad"))
    x = host.copy()
    with pytest.raises(error, match=f"adam_: {name}"):
        case.call(*x.args(0), 1, backend=backend, **kwargs)
    assert_bitwise(x, host)


def test_torch_grad_scaler_tensors_are_taken():
    torch = pytest.importorskip("torch")
    case = _FIRST["adam_"]
    host = make_inputs(case, np.float32, SIZES, steps=1, rng=rng_for("torch-scalars"))
    a, b = host.copy(), host.copy()
    a.grads[0] = [g * np.float32(SCALE) for g in a.grads[0]]
    status = case.call(*a.args(0), 1, grad_scale=torch.full((), SCALE), found_inf=torch.zeros(()),
                       max_grad_norm=torch.tensor(1e30))
    assert status.skipped is False
    case.call(*b.args(0), 1)
    assert_bitwise(a, b)


def test_clipping_matches_torch_clip_grad_norm_then_adamw():
    torch = pytest.importorskip("torch")
    rng = rng_for("torch-clip")
    shapes = [(64, 32), (32,), (10, 64), (10,)]
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    tparams = [torch.tensor(p.copy(), requires_grad=True) for p in params]
    opt = torch.optim.AdamW(tparams, lr=1e-2, weight_decay=0.1, foreach=False)
    for step in range(1, 31):
        grads = [rng.standard_normal(s).astype(np.float32) * 3 for s in shapes]
        for t, g in zip(tparams, grads):
            t.grad = torch.tensor(g)
        torch.nn.utils.clip_grad_norm_(tparams, 1.5, foreach=False)
        opt.step()
        status = fusedopt.adamw_(params, grads, m, v, lr=1e-2, weight_decay=0.1, step=step,
                                 max_grad_norm=1.5)
        assert status.grad_norm > 1.5  # it clipped
    for p, t in zip(params, tparams):
        np.testing.assert_allclose(p, t.detach().numpy(), rtol=1e-4, atol=1e-6)


# --- the optimizers ----------------------------------------------------------------------
def test_optim_class_clips_and_unscales():
    rng = rng_for("optim-class")
    params = [rng.standard_normal(n).astype(np.float32) for n in (100, 3000)]
    twin = [p.copy() for p in params]
    opt = fusedopt.optim.Adam(params, lr=1e-2, max_grad_norm=0.5)
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    assert opt.max_grad_norm == 0.5
    for step in range(1, 4):
        grads = [rng.standard_normal(p.shape).astype(np.float32) for p in params]
        status = opt.step([g * np.float32(256) for g in grads], grad_scale=256.0)
        want = fusedopt.adam_(twin, grads, m, v, lr=1e-2, step=step, max_grad_norm=0.5)
        assert status == want
    skipped = opt.step(grads, found_inf=True)
    assert skipped.skipped and opt.step_count == 3
    for a, b in zip(params, twin):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="Adam: max_grad_norm"):
        fusedopt.optim.Adam([np.zeros(3, np.float32)], max_grad_norm=-1.0)


def _mlp(torch, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))


def test_torch_max_grad_norm_matches_clip_grad_norm_then_step():
    torch = pytest.importorskip("torch")
    import fusedopt.torch as ft

    ref_model, model = _mlp(torch), _mlp(torch)
    # Two groups with different rates: two fused calls, clipped by the norm of both.
    groups = lambda m: [{"params": list(m[0].parameters())},  # noqa: E731
                        {"params": list(m[2].parameters()), "lr": 3e-3}]
    ref = torch.optim.AdamW(groups(ref_model), lr=1e-2, weight_decay=0.05, foreach=False)
    opt = ft.AdamW(groups(model), lr=1e-2, weight_decay=0.05, max_grad_norm=0.5)
    x, y = torch.randn(64, 20), torch.randn(64, 4)
    for _ in range(30):
        for m, o in ((ref_model, ref), (model, opt)):
            o.zero_grad()
            loss = ((m(x) * 4 - y) ** 2).mean()
            loss.backward()
            if o is ref:
                norm = torch.nn.utils.clip_grad_norm_(m.parameters(), 0.5, foreach=False)
            else:
                o.step()
        ref.step()
        assert opt.last_grad_norm == pytest.approx(float(norm), rel=1e-5)
    for a, b in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["AdamW", "SGD"])
def test_torch_grad_scaler_matches_torch_fused(name):
    """GradScaler with overflow steps injected: the same scale history and the same params
    as torch's fused optimizer under its own scaler."""
    torch = pytest.importorskip("torch")
    import fusedopt.torch as ft

    ref_model, model = _mlp(torch, 1), _mlp(torch, 1)
    kw = dict(lr=1e-2) if name == "AdamW" else dict(lr=0.05, momentum=0.9)
    ref = getattr(torch.optim, name)(ref_model.parameters(), fused=True, **kw)
    opt = getattr(ft, name)(model.parameters(), **kw)
    scalers = [torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=3) for _ in range(2)]
    x, y = torch.randn(64, 20), torch.randn(64, 4)
    for step in range(24):
        for m, o, scaler in ((ref_model, ref, scalers[0]), (model, opt, scalers[1])):
            o.zero_grad()
            loss = ((m(x) - y) ** 2).mean()
            scaler.scale(loss).backward()
            if step in (4, 5, 13):
                m[0].weight.grad[0, 0] = float("inf")
            scaler.step(o)
            scaler.update()
        assert scalers[1].get_scale() == scalers[0].get_scale(), step
        assert opt.last_step_skipped == (step in (4, 5, 13))
    assert scalers[0].get_scale() != 2.0**12  # it backed off and grew
    for a, b in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    if name == "AdamW":
        assert opt.state_dict()["state"][0]["step"] == ref.state_dict()["state"][0]["step"]


def test_factored_rules_refuse_scaling():
    """Adafactor's passes read the gradients as they are: a loss scale or clipping is refused
    by name before anything is written; found_inf still skips."""
    p = np.ones((4, 3), np.float32)
    g = np.full((4, 3), 0.5, np.float32)
    row, col = np.zeros((4, 1), np.float32), np.zeros((1, 3), np.float32)
    for kwargs in (dict(grad_scale=2.0), dict(max_grad_norm=1.0)):
        with pytest.raises(ValueError, match="adafactor_: grad_scale and max_grad_norm"):
            fusedopt.adafactor_([p], [g], [row], [col], [None], step=1, **kwargs)
        assert np.all(p == 1.0) and np.all(row == 0.0)
    status = fusedopt.adafactor_([p], [g], [row], [col], [None], step=1, found_inf=True)
    assert status.skipped and np.all(p == 1.0)
    assert fusedopt.adafactor_([p], [g], [row], [col], [None], step=1, found_inf=False).skipped is False
    assert np.all(p != 1.0)
