"""fusedopt.torch against torch.optim (foreach=False): trajectories, the Optimizer surface,
state_dicts both ways, schedulers, GradScaler, and what an unfriendly user might pass.

Trajectories run 30+ steps on a few float32 tensors of mixed shapes with the same random
gradients on both sides, and compare params and every state within 1e-4 relative (over
each role's tensors together, as tests/test_torch_parity.py does): the rules are torch's,
only the order of a few float32 roundings differs.
"""

from __future__ import annotations

import copy
import io
import math
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed; fusedopt.torch needs it")

import fusedopt  # noqa: E402
import fusedopt.torch as ft  # noqa: E402

RTOL = 1e-4
STEPS = 32
SHAPES = [(3, 5), (17,), (1,), (2, 2, 3)]

TORCH_PAIRS = [
    ("SGD", dict(lr=0.05)),
    ("SGD", dict(lr=0.05, momentum=0.9, weight_decay=0.01)),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.1, maximize=True)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True)),
    ("Adagrad", dict(lr=0.1)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.01, weight_decay=0.1, initial_accumulator_value=0.2)),
    ("RMSprop", dict(lr=0.01)),
    ("RMSprop", dict(lr=0.01, momentum=0.5, centered=True, weight_decay=0.1, maximize=True)),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1, amsgrad=True)),
    ("Adam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)),
    ("AdamW", dict(lr=0.01)),
    ("AdamW", dict(lr=0.01, weight_decay=0.3, amsgrad=True, maximize=True, eps=1e-6)),
    # The classes made from a rule's description (fusedopt/rules/).
    ("Adamax", dict(lr=0.01)),
    ("Adamax", dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1, maximize=True)),
    ("NAdam", dict(lr=0.01)),
    ("NAdam", dict(lr=0.01, weight_decay=0.1, momentum_decay=0.01)),
    ("NAdam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, maximize=True)),
    ("RAdam", dict(lr=0.01)),
    ("RAdam", dict(lr=0.01, betas=(0.8, 0.9), weight_decay=0.1, decoupled_weight_decay=True)),
    ("Adadelta", dict()),
    ("Adadelta", dict(lr=0.5, rho=0.8, eps=1e-5, weight_decay=0.1, maximize=True)),
]


def _ids(pairs):
    return [f"{n}-" + ",".join(f"{k}={v}" for k, v in kw.items()) for n, kw in pairs]


def _params(seed=0, shapes=SHAPES, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=dtype).requires_grad_() for s in shapes]


def _clone(params):
    return [p.detach().clone().requires_grad_() for p in params]


def _grads(params, seed):
    gen = torch.Generator().manual_seed(1000 + seed)
    return [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]


def _set_grads(params, grads):
    for p, g in zip(params, grads):
        p.grad = None if g is None else g.clone()


def _rel(ours, theirs):
    a = torch.cat([t.detach().reshape(-1).double() for t in ours])
    b = torch.cat([t.detach().reshape(-1).double() for t in theirs])
    return float((a - b).norm() / max(float(b.norm()), 1e-30))


def _assert_close(ours_params, theirs_params, ours_opt=None, theirs_opt=None):
    assert _rel(ours_params, theirs_params) <= RTOL
    if ours_opt is None:
        return
    for p, q in zip(ours_params, theirs_params):
        assert set(ours_opt.state[p]) == set(theirs_opt.state[q])
    keys = {k for q in theirs_params for k in theirs_opt.state[q]}
    for key in keys:
        ours = [ours_opt.state[p][key] for p in ours_params if key in ours_opt.state[p]]
        theirs = [theirs_opt.state[q][key] for q in theirs_params if key in theirs_opt.state[q]]
        for a, b in zip(ours, theirs):
            assert a.dtype == b.dtype and a.shape == b.shape, key
        if key == "step":
            assert [float(a) for a in ours] == [float(b) for b in theirs]
        else:
            assert _rel(ours, theirs) <= RTOL, key


def _run_pair(ours, theirs, p, q, steps=STEPS, start=0, each=None):
    for k in range(start, start + steps):
        g = _grads(p, k)
        _set_grads(p, g)
        _set_grads(q, g)
        ours.step()
        theirs.step()
        if each is not None:
            each(k)


@pytest.mark.parametrize("name,kw", TORCH_PAIRS, ids=_ids(TORCH_PAIRS))
def test_matches_torch(name, kw):
    p, q = _params(), _params()
    ours = getattr(ft, name)(p, **kw)
    theirs = getattr(torch.optim, name)(q, foreach=False, **kw)
    _run_pair(ours, theirs, p, q)
    _assert_close(p, q, ours, theirs)


def test_float64_params_match_torch():
    p, q = _params(dtype=torch.float64), _params(dtype=torch.float64)
    ours, theirs = ft.AdamW(p, lr=0.01), torch.optim.AdamW(q, lr=0.01, foreach=False)
    _run_pair(ours, theirs, p, q)
    _assert_close(p, q, ours, theirs)
    assert ours.state[p[0]]["exp_avg"].dtype == torch.float64


def test_adaptive_sgd_is_sgd_at_the_adaptive_rate():
    p, q = _params(), _params()
    ours = ft.AdaptiveSGD(p, lr=0.5, momentum=0.9)
    theirs = torch.optim.SGD(q, lr=0.5, momentum=0.9, foreach=False)
    for k in range(STEPS):
        g = _grads(p, k)
        sum_sq = math.fsum(float((x.double() ** 2).sum()) for x in g)
        theirs.param_groups[0]["lr"] = 0.5 / (1.0 + sum_sq)
        _set_grads(p, g)
        _set_grads(q, g)
        ours.step()
        theirs.step()
        assert ours.last_rate.grad_norm == pytest.approx(math.sqrt(sum_sq), rel=1e-6)
    _assert_close(p, q, ours, theirs)


def test_adaptive_sgd_norm_spans_groups_of_different_lr():
    p, q = _params(), _params()
    ours = ft.AdaptiveSGD([{"params": p[:2]}, {"params": p[2:], "lr": 0.1}], lr=0.5)
    theirs = torch.optim.SGD([{"params": q[:2]}, {"params": q[2:], "lr": 0.1}], lr=0.5, foreach=False)
    for k in range(8):
        g = _grads(p, k)
        sum_sq = math.fsum(float((x.double() ** 2).sum()) for x in g)
        theirs.param_groups[0]["lr"] = 0.5 / (1.0 + sum_sq)
        theirs.param_groups[1]["lr"] = 0.1 / (1.0 + sum_sq)
        _set_grads(p, g)
        _set_grads(q, g)
        ours.step()
        theirs.step()
    _assert_close(p, q)


def test_lion_matches_the_formula_in_float64():
    p = _params()
    ref = [t.detach().double().clone() for t in p]
    m = [torch.zeros_like(t) for t in ref]
    lr, (b1, b2), wd = 1e-2, (0.9, 0.99), 0.1
    opt = ft.Lion(p, lr=lr, weight_decay=wd)
    for k in range(STEPS):
        g = _grads(p, k)
        _set_grads(p, g)
        opt.step()
        for i, gi in enumerate(g):
            gi = gi.double()
            c = b1 * m[i] + (1 - b1) * gi
            ref[i] = ref[i] * (1 - lr * wd) - lr * torch.sign(c)
            m[i] = b2 * m[i] + (1 - b2) * gi
    assert _rel(p, ref) <= RTOL
    assert _rel([opt.state[t]["exp_avg"] for t in p], m) <= RTOL
    assert set(opt.state[p[0]]) == {"exp_avg"}
    defaults = ft.Lion(_params()).defaults
    assert (defaults["lr"], defaults["betas"], defaults["weight_decay"]) == (1e-4, (0.9, 0.99), 0.0)


def test_param_groups_with_their_own_lr_and_weight_decay_and_one_added_mid_run():
    p, q = _params(), _params()
    groups = lambda ts: [{"params": ts[:1]}, {"params": ts[1:2], "lr": 0.003, "weight_decay": 0.5},  # noqa: E731
                         {"params": ts[2:3]}]
    ours, theirs = ft.AdamW(groups(p), lr=0.01), torch.optim.AdamW(groups(q), lr=0.01, foreach=False)
    _run_pair(ours, theirs, p[:3], q[:3], steps=10)
    ours.add_param_group({"params": [p[3]], "lr": 0.02, "amsgrad": True})
    theirs.add_param_group({"params": [q[3]], "lr": 0.02, "amsgrad": True})
    _run_pair(ours, theirs, p, q, steps=25, start=10)
    _assert_close(p, q, ours, theirs)
    assert float(ours.state[p[3]]["step"]) == 25 and float(ours.state[p[0]]["step"]) == 35


def test_a_param_without_grad_is_left_alone_and_gets_no_state():
    p, q = _params(), _params()
    ours, theirs = ft.Adam(p, lr=0.01), torch.optim.Adam(q, lr=0.01, foreach=False)
    before = p[1].detach().clone()
    for k in range(12):
        g = _grads(p, k)
        if k < 6:
            g[1] = None  # p[1] has no grad for 6 steps, then joins
        _set_grads(p, g)
        _set_grads(q, g)
        ours.step()
        theirs.step()
        if k == 5:
            assert torch.equal(p[1], before) and p[1] not in ours.state
    _assert_close(p, q, ours, theirs)
    assert float(ours.state[p[1]]["step"]) == 6 and float(ours.state[p[0]]["step"]) == 12


def test_sgd_momentum_buffer_for_a_param_that_joins_late():
    p, q = _params(), _params()
    ours = ft.SGD(p, lr=0.1, momentum=0.9)
    theirs = torch.optim.SGD(q, lr=0.1, momentum=0.9, foreach=False)
    for k in range(10):
        g = _grads(p, k)
        if k < 3:
            g[0] = None
        _set_grads(p, g)
        _set_grads(q, g)
        ours.step()
        theirs.step()
    _assert_close(p, q, ours, theirs)
    assert "step" not in ours.state[p[0]]


def test_momentum_zero_keeps_no_state_like_torch():
    p = _params()
    opt = ft.SGD(p, lr=0.1)
    _set_grads(p, _grads(p, 0))
    opt.step()
    assert all(len(opt.state[t]) == 0 for t in p)


@pytest.mark.parametrize("sched", ["StepLR", "OneCycleLR", "CosineAnnealingLR"])
def test_schedulers(sched):
    p, q = _params(), _params()
    kind = "SGD" if sched == "StepLR" else "AdamW"
    kw = dict(lr=0.05, momentum=0.9) if kind == "SGD" else dict(lr=0.01)
    ours, theirs = getattr(ft, kind)(p, **kw), getattr(torch.optim, kind)(q, foreach=False, **kw)

    def make(opt):
        if sched == "StepLR":
            return torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)
        if sched == "OneCycleLR":
            return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=STEPS)
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)

    s1, s2 = make(ours), make(theirs)

    def each(k):
        s1.step()
        s2.step()
        assert ours.param_groups[0]["lr"] == theirs.param_groups[0]["lr"]
        if sched == "OneCycleLR":
            assert ours.param_groups[0]["betas"] == theirs.param_groups[0]["betas"]

    _run_pair(ours, theirs, p, q, each=each)
    _assert_close(p, q, ours, theirs)


def test_tensor_lr():
    p, q = _params(), _params()
    ours = ft.Adam(p, lr=torch.tensor(0.01))
    theirs = torch.optim.Adam(q, lr=torch.tensor(0.01), foreach=False)
    _run_pair(ours, theirs, p, q, steps=10)
    _assert_close(p, q, ours, theirs)


def test_closure_runs_with_grad_and_its_loss_is_returned():
    p = _params()
    opt = ft.SGD(p, lr=0.1)

    def closure():
        assert torch.is_grad_enabled()
        opt.zero_grad()
        loss = sum((t**2).sum() for t in p)
        loss.backward()
        return loss

    with torch.no_grad():
        loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor) and loss.ndim == 0
    assert opt.step() is None


def test_step_hooks_fire_and_state_dict_hooks_too():
    p = _params()
    opt = ft.Adam(p)
    seen = []
    opt.register_step_pre_hook(lambda o, a, k: seen.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: seen.append("post"))
    opt.register_state_dict_pre_hook(lambda o: seen.append("sd"))
    opt.register_load_state_dict_post_hook(lambda o: seen.append("load"))
    _set_grads(p, _grads(p, 0))
    opt.step()
    opt.load_state_dict(opt.state_dict())
    assert seen == ["pre", "post", "sd", "load"]


def test_the_step_wrapper_takes_torchs_path_for_global_hooks_and_the_profiler():
    # A step skips torch's record_function only where nothing would see it: a global step
    # hook, a hook that rewrites the arguments, and a profiler each get what torch gives.
    p = _params()
    opt = ft.SGD(p, lr=0.1)
    _set_grads(p, _grads(p, 0))
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    seen = []
    handles = [register_optimizer_step_pre_hook(lambda o, a, k: seen.append(("pre", type(o).__name__))),
               register_optimizer_step_post_hook(lambda o, a, k: seen.append(("post", type(o).__name__)))]
    try:
        opt.step()
    finally:
        for h in handles:
            h.remove()
    assert seen == [("pre", "SGD"), ("post", "SGD")]
    opt.step()
    assert len(seen) == 2  # removed: not called again

    losses = []
    opt.register_step_pre_hook(lambda o, a, k: (a, {"closure": lambda: losses.append(1) or 7.0}))
    assert opt.step() == 7.0 and losses == [1]

    opt2 = ft.AdamW(_params())
    for q in opt2.param_groups[0]["params"]:
        q.grad = torch.ones_like(q)
    before = [q.detach().clone() for q in opt2.param_groups[0]["params"]]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        opt2.step()
    names = {e.key for e in prof.key_averages()}
    assert "Optimizer.step#AdamW.step" in names
    assert all(not torch.equal(a, q) for a, q in zip(before, opt2.param_groups[0]["params"]))


def test_zero_grad_and_named_parameters():
    model = torch.nn.Linear(3, 2)
    opt = ft.AdamW(model.named_parameters())
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    assert opt.state_dict()["param_groups"][0]["param_names"] == ["weight", "bias"]


# --- state_dicts -----------------------------------------------------------------------
@pytest.mark.parametrize("name,kw", [("AdamW", dict(lr=0.01, amsgrad=True)),
                                     ("SGD", dict(lr=0.05, momentum=0.9)),
                                     ("Adagrad", dict(lr=0.1)),
                                     ("RMSprop", dict(lr=0.01, momentum=0.5, centered=True)),
                                     ("NAdam", dict(lr=0.01, weight_decay=0.1)),
                                     ("RAdam", dict(lr=0.01)),
                                     ("Adamax", dict(lr=0.01)),
                                     ("Adadelta", dict(lr=0.5))])
@pytest.mark.parametrize("direction", ["fusedopt-to-torch", "torch-to-fusedopt"])
def test_state_dict_round_trip_continues_as_torch(name, kw, direction):
    first_cls, second_cls = getattr(ft, name), getattr(torch.optim, name)
    if direction == "torch-to-fusedopt":
        first_cls, second_cls = second_cls, first_cls
    extra = lambda cls: {"foreach": False} if cls.__module__.startswith("torch") else {}  # noqa: E731
    ref = _params()
    ref_opt = getattr(torch.optim, name)(ref, foreach=False, **kw)
    p = _params()
    first = first_cls(p, **kw, **extra(first_cls))
    for k in range(20):
        g = _grads(p, k)
        _set_grads(p, g)
        _set_grads(ref, g)
        first.step()
        ref_opt.step()
    buf = io.BytesIO()
    torch.save({"model": [t.detach() for t in p], "opt": first.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf)
    q = [t.clone().requires_grad_() for t in ckpt["model"]]
    second = second_cls(q, **kw, **extra(second_cls))
    second.load_state_dict(ckpt["opt"])
    for k in range(20, 35):
        g = _grads(q, k)
        _set_grads(q, g)
        _set_grads(ref, g)
        second.step()
        ref_opt.step()
    _assert_close(q, ref, second, ref_opt)


def _trained(seed=0, **kw):
    p = _params(seed)
    opt = ft.AdamW(p, lr=0.01, **kw)
    for k in range(3):
        _set_grads(p, _grads(p, k))
        opt.step()
    return p, opt


def _bad_dicts():
    def drop_group(sd):
        sd["param_groups"] = sd["param_groups"][:0]

    def short_group(sd):
        sd["param_groups"][0]["params"] = sd["param_groups"][0]["params"][:-1]

    def wrong_shape(sd):
        sd["state"][0]["exp_avg"] = torch.zeros(4, 3)

    def wrong_dtype(sd):
        sd["state"][1]["exp_avg_sq"] = torch.zeros(17, dtype=torch.int32)

    def missing_key(sd):
        del sd["state"][2]["exp_avg_sq"]

    def bad_step(sd):
        sd["state"][3]["step"] = torch.tensor(-1.0)

    def unknown_param(sd):
        sd["state"][7] = dict(sd["state"][0])

    def not_a_dict(sd):
        del sd["state"]

    return [drop_group, short_group, wrong_shape, wrong_dtype, missing_key, bad_step, unknown_param,
            not_a_dict]


@pytest.mark.parametrize("spoil", _bad_dicts(), ids=lambda f: f.__name__)
def test_a_state_dict_that_does_not_fit_is_refused_with_nothing_changed(spoil):
    _, donor = _trained(1)
    sd = copy.deepcopy(donor.state_dict())
    spoil(sd)
    p, opt = _trained(0)
    before = copy.deepcopy(opt.state_dict())
    params_before = [t.detach().clone() for t in p]
    with pytest.raises(ValueError, match="load_state_dict"):
        opt.load_state_dict(sd)
    after = opt.state_dict()
    assert after["param_groups"] == before["param_groups"]
    for i in before["state"]:
        for key, value in before["state"][i].items():
            assert torch.equal(after["state"][i][key], value)
    # ... and it still steps as before.
    _set_grads(p, _grads(p, 9))
    opt.step()
    assert not torch.equal(p[0], params_before[0])


def test_loaded_state_is_copied_and_cast_to_the_param_dtype():
    _, donor = _trained(1)
    sd = donor.state_dict()
    sd["state"][0]["exp_avg"] = sd["state"][0]["exp_avg"].double()
    p, opt = _trained(0)
    opt.load_state_dict(sd)
    assert opt.state[p[0]]["exp_avg"].dtype == torch.float32
    assert opt.state[p[1]]["exp_avg"].data_ptr() != donor.state[donor.param_groups[0]["params"][1]][
        "exp_avg"].data_ptr()


def test_step_reads_right_at_any_time():
    p, opt = _trained(0)
    assert [float(opt.state[t]["step"]) for t in p] == [3.0] * len(p)
    assert opt.state[p[0]]["step"].dtype == torch.float32 and opt.state[p[0]]["step"].ndim == 0


# --- non-finite gradients and GradScaler ---------------------------------------------------
def test_skip_if_nonfinite_writes_nothing_and_keeps_the_step():
    p, opt = _trained(0, skip_if_nonfinite=True)
    before = copy.deepcopy(opt.state_dict())
    params_before = [t.detach().clone() for t in p]
    g = _grads(p, 5)
    g[2][0] = float("nan")
    _set_grads(p, g)
    opt.step()
    assert opt.last_step_skipped
    assert all(torch.equal(a, b) for a, b in zip(p, params_before))
    for i, st in before["state"].items():
        for key, value in st.items():
            assert torch.equal(opt.state[p[i]][key], value)
    _set_grads(p, _grads(p, 6))
    opt.step()
    assert not opt.last_step_skipped and float(opt.state[p[0]]["step"]) == 4


def test_skip_if_nonfinite_over_several_calls_writes_nothing():
    p = _params()
    opt = ft.AdamW([{"params": p[:2]}, {"params": p[2:], "lr": 0.5}], skip_if_nonfinite=True)
    before = [t.detach().clone() for t in p]
    g = _grads(p, 0)
    g[3][0, 0, 0] = float("inf")
    _set_grads(p, g)
    opt.step()
    assert opt.last_step_skipped and all(torch.equal(a, b) for a, b in zip(p, before))


def test_grad_scaler_with_an_injected_inf_matches_torch():
    torch.manual_seed(0)
    model_a = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    model_b = copy.deepcopy(model_a)
    opt_a = ft.AdamW(model_a.parameters(), lr=0.01)
    opt_b = torch.optim.AdamW(model_b.parameters(), lr=0.01, foreach=False)
    sc_a = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=3)
    sc_b = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=3)
    gen = torch.Generator().manual_seed(3)
    scales = []
    for k in range(12):
        x = torch.randn(4, 8, generator=gen)
        for model, opt, sc in ((model_a, opt_a, sc_a), (model_b, opt_b, sc_b)):
            opt.zero_grad()
            loss = model(x).pow(2).mean()
            if k == 5:
                loss = loss * float("inf")
            sc.scale(loss).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1e6)
            sc.step(opt)
            sc.update()
        scales.append((sc_a.get_scale(), sc_b.get_scale()))
    assert all(a == b for a, b in scales) and len({a for a, _ in scales}) > 1
    _assert_close(list(model_a.parameters()), list(model_b.parameters()), opt_a, opt_b)


# --- refusals -------------------------------------------------------------------------------
def test_sparse_grad_is_refused_clearly():
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt = ft.Adam(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse gradients are not supported"):
        opt.step()


@pytest.mark.parametrize("name", ["SGD", "AdaptiveSGD", "Adagrad", "RMSprop", "Adam", "AdamW", "Lion",
                                  "LAMB"])
def test_differentiable_is_refused(name):
    with pytest.raises(ValueError, match="differentiable=True is not supported"):
        getattr(ft, name)(_params(), differentiable=True)


@pytest.mark.parametrize("name", ["RMSprop", "Adam", "AdamW"])
def test_capturable_is_refused(name):
    with pytest.raises(ValueError, match="capturable=True is not supported"):
        getattr(ft, name)(_params(), capturable=True)


def test_foreach_and_fused_are_accepted_but_not_together():
    p = _params()
    ft.AdamW(p, foreach=True)
    ft.AdamW(p, fused=True)
    # GradScaler hands its scale to the step, which unscales as it reads (test_grad_scaling.py)
    assert ft.AdamW(p, fused=True)._step_supports_amp_scaling is True
    with pytest.raises(RuntimeError, match="cannot be set together"):
        ft.AdamW(p, foreach=True, fused=True)


@pytest.mark.parametrize("make,error", [
    (lambda: ft.Adam([]), ValueError),
    (lambda: ft.Adam(torch.zeros(3, requires_grad=True)), TypeError),
    (lambda: ft.Adam([1.0, 2.0]), TypeError),
    (lambda: ft.Adam([{"params": {torch.zeros(3, requires_grad=True)}}]), TypeError),
    (lambda: ft.Adam(_params(), lr=-1.0), ValueError),
    (lambda: ft.Adam(_params(), betas=(1.0, 0.9)), ValueError),
    (lambda: ft.Adam(_params(), betas=(0.9,)), ValueError),
    (lambda: ft.Adam(_params(), eps=-1e-8), ValueError),
    (lambda: ft.AdamW(_params(), weight_decay=-0.1), ValueError),
    (lambda: ft.SGD(_params(), nesterov=True), ValueError),
    (lambda: ft.SGD(_params(), momentum=-0.5), ValueError),
    (lambda: ft.Adagrad(_params(), lr_decay=-1), ValueError),
    (lambda: ft.RMSprop(_params(), alpha=-0.1), ValueError),
    (lambda: ft.Lion(_params(), betas=(0.9, 1.5)), ValueError),
    (lambda: ft.LAMB(_params(), betas=(0.9, 1.5)), ValueError),
    (lambda: ft.LAMB(_params(), eps=-1e-6), ValueError),
    (lambda: ft.LAMB(_params(), weight_decay=-0.1), ValueError),
    (lambda: ft.LAMB(_params(), lr=-1.0), ValueError),
    (lambda: ft.Adam(_params(), skip_if_nonfinite="yes"), TypeError),
    (lambda: ft.Adam(_params(), lr=torch.tensor([0.1, 0.2])), ValueError),
], ids=["empty", "a tensor", "floats", "a group of a set", "lr<0", "beta1=1", "one beta", "eps<0", "wd<0",
        "nesterov without momentum", "momentum<0", "lr_decay<0", "alpha<0", "lion beta2>1",
        "lamb beta2>1", "lamb eps<0", "lamb wd<0", "lamb lr<0",
        "skip flag not a bool", "2-element lr"])
def test_bad_arguments_are_refused_as_torch_refuses_them(make, error):
    with pytest.raises(error):
        make()


def test_duplicate_params_across_groups_are_refused():
    p = _params()
    with pytest.raises(ValueError, match="more than one parameter group"):
        ft.Adam([{"params": p[:2]}, {"params": p[1:]}])
    opt = ft.Adam(p[:2])
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": [p[0]]})


def test_a_non_leaf_tensor_is_refused():
    with pytest.raises(ValueError, match="non-leaf"):
        ft.SGD([torch.zeros(3, requires_grad=True) * 2])


def test_a_grad_of_another_dtype_is_refused_with_nothing_written():
    p = _params()
    opt = ft.Adam(p)
    before = [t.detach().clone() for t in p]
    g = _grads(p, 0)
    g[1] = g[1].double()
    p[1].grad_dtype = None  # torch refuses such a grad unless told to take it
    _set_grads(p, g)
    with pytest.raises((TypeError, ValueError)):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(p, before))


def test_integer_params_are_refused_at_the_step():
    p = torch.zeros(3, dtype=torch.int32)
    opt = ft.SGD([p], lr=0.1)
    p.grad = torch.ones(3, dtype=torch.int32)
    with pytest.raises((TypeError, ValueError)):
        opt.step()


def test_equal_groups_share_one_call(monkeypatch):
    p = _params()
    opt = ft.AdamW([{"params": p[:2]}, {"params": p[2:3]}, {"params": p[3:], "lr": 0.5}])
    calls = []
    real = fusedopt.adamw_
    monkeypatch.setattr(fusedopt, "adamw_", lambda ps, *a, **k: calls.append(len(ps)) or real(ps, *a, **k))
    _set_grads(p, _grads(p, 0))
    opt.step()
    assert sorted(n for n in calls if n) == [1, 3]  # (empty calls: the hyperparameter check)


def test_pickle_and_deepcopy():
    p, opt = _trained(0)
    clone = copy.deepcopy(opt)
    assert clone.state_dict()["param_groups"] == opt.state_dict()["param_groups"]


def test_importing_fusedopt_does_not_import_torch():
    code = ("import sys, fusedopt; print('torch' in sys.modules); fusedopt.torch; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "True"], out.stderr


@pytest.mark.parametrize("layout", ["channels_last", "transposed", "grad in C order"])
def test_params_laid_out_in_another_order_match_torch(layout):
    def make():
        gen = torch.Generator().manual_seed(5)
        if layout == "transposed":
            return [torch.randn(6, 4, generator=gen).t().requires_grad_(),
                    torch.randn(5, generator=gen).requires_grad_()]
        t = torch.randn(2, 3, 4, 5, generator=gen).to(memory_format=torch.channels_last)
        return [t.requires_grad_(), torch.randn(5, generator=gen).requires_grad_()]

    p, q = make(), make()
    ours = ft.Adam(p, lr=0.01, amsgrad=True)
    theirs = torch.optim.Adam(q, lr=0.01, amsgrad=True, foreach=False)
    for k in range(STEPS):
        g = _grads(p, k)
        if layout != "grad in C order":
            g = [torch.empty_like(t).copy_(x) for x, t in zip(g, p)]  # laid out as the param
        _set_grads(p, g)
        _set_grads(q, g)
        ours.step()
        theirs.step()
    _assert_close(p, q, ours, theirs)
    assert ours.state[p[0]]["exp_avg"].stride() == p[0].stride()


def test_a_param_with_gaps_in_its_memory_is_refused():
    p = torch.randn(4, 6)[:, :3].requires_grad_()
    opt = ft.SGD([p], lr=0.1)
    p.grad = torch.ones(4, 3)
    with pytest.raises(ValueError, match="gaps or overlaps"):
        opt.step()


def test_a_param_listed_twice_in_a_group_is_refused_at_the_step():
    p = torch.randn(3, requires_grad=True)
    with pytest.warns(UserWarning, match="duplicate parameters"):
        opt = ft.Adam([p, p])
    p.grad = torch.ones(3)
    with pytest.raises(ValueError, match="more than once"):
        opt.step()


def test_empty_and_zero_dim_params():
    p, q = [torch.zeros(0, requires_grad=True), torch.tensor(1.5, requires_grad=True)], \
        [torch.zeros(0, requires_grad=True), torch.tensor(1.5, requires_grad=True)]
    ours, theirs = ft.AdamW(p, lr=0.1), torch.optim.AdamW(q, lr=0.1, foreach=False)
    _run_pair(ours, theirs, p, q, steps=5)
    assert torch.equal(p[1], q[1]) or abs(float(p[1] - q[1])) < 1e-6


def test_a_step_of_several_calls_refused_late_writes_nothing():
    p = _params()
    opt = ft.AdamW([{"params": p[:2]}, {"params": p[2:], "lr": 0.5}])
    before = [t.detach().clone() for t in p]
    g = _grads(p, 0)
    g[3] = g[3].double()
    p[3].grad_dtype = None
    _set_grads(p, g)
    with pytest.raises(ValueError, match="nothing was written"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(p, before))
    opt.param_groups[1]["lr"] = -1.0  # a bad schedule: refused by the second call's kernel
    _set_grads(p, _grads(p, 1))
    with pytest.raises(ValueError, match="lr"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(p, before))
    assert not any(float(opt.state[t]["step"]) for t in p)


@pytest.mark.parametrize("name", ["SGD", "Adagrad", "RMSprop", "Adam", "AdamW", "Adamax", "NAdam",
                                  "RAdam", "Adadelta"])
def test_the_constructor_is_torchs(name):
    import inspect

    ours = inspect.signature(getattr(ft, name)).parameters
    theirs = inspect.signature(getattr(torch.optim, name)).parameters
    own = ("skip_if_nonfinite", "max_grad_norm", "rounding", "state_rounding", "seed", "state_dtype",
           "master_weights")
    assert [(p.name, p.kind, p.default) for p in theirs.values()] == \
        [(p.name, p.kind, p.default) for p in ours.values() if p.name not in own]
    assert all(ours[k].kind is inspect.Parameter.KEYWORD_ONLY for k in own)


def test_state_cleared_in_place_starts_again_as_torch_does():
    p, q = _params(), _params()
    ours, theirs = ft.Adam(p, lr=0.01), torch.optim.Adam(q, lr=0.01, foreach=False)
    _run_pair(ours, theirs, p, q, steps=4)
    ours.state.clear()
    theirs.state.clear()
    _run_pair(ours, theirs, p, q, steps=4, start=4)
    _assert_close(p, q, ours, theirs)
    assert float(ours.state[p[0]]["step"]) == 4


@pytest.mark.parametrize("name,kw", [("Lion", dict(lr=1e-3, weight_decay=0.1)),
                                     ("AdaptiveSGD", dict(lr=0.5, momentum=0.9)),
                                     ("LAMB", dict(lr=1e-2, weight_decay=0.01))])
def test_state_dict_round_trip_of_the_classes_torch_lacks(name, kw):
    cls = getattr(ft, name)
    ref, p = _params(), _params()
    ref_opt, first = cls(ref, **kw), cls(p, **kw)
    _run_pair(first, ref_opt, p, ref, steps=10)
    q = [t.detach().clone().requires_grad_() for t in p]
    second = cls(q, **kw)
    second.load_state_dict(copy.deepcopy(first.state_dict()))
    _run_pair(second, ref_opt, q, ref, steps=10, start=10)
    assert torch.equal(torch.cat([t.reshape(-1) for t in q]), torch.cat([t.reshape(-1) for t in ref]))


def test_adaptive_sgd_skips_a_nonfinite_step_and_reports_it():
    p = _params()
    opt = ft.AdaptiveSGD(p, lr=0.5, skip_if_nonfinite=True)
    before = [t.detach().clone() for t in p]
    g = _grads(p, 0)
    g[0][0, 0] = float("nan")
    _set_grads(p, g)
    opt.step()
    assert opt.last_step_skipped and opt.last_rate.skipped
    assert all(torch.equal(a, b) for a, b in zip(p, before))
    _set_grads(p, _grads(p, 1))
    opt.step()
    assert not opt.last_step_skipped and 0.0 < opt.last_rate.lr < 0.5


def test_adagrad_share_memory():
    p = _params()
    opt = ft.Adagrad(p)
    opt.share_memory()
    assert all(opt.state[t]["sum"].is_shared() for t in p)
    _set_grads(p, _grads(p, 0))
    opt.step()
    assert all(opt.state[t]["sum"].is_shared() for t in p)


@pytest.mark.parametrize("bad", [dict(lr=-1.0), dict(betas=(1.0, 0.9)), dict(momentum_decay=-0.1),
                                 dict(eps=-1.0)])
def test_described_classes_check_arguments_as_torch_does(bad):
    """A class made from a rule's description takes torch's checks: the same error."""
    with pytest.raises(ValueError) as theirs:
        torch.optim.NAdam(_params(), **bad)
    with pytest.raises(ValueError) as ours:
        ft.NAdam(_params(), **bad)
    assert str(ours.value) == str(theirs.value)


def test_nadam_mu_product_is_kept_as_torch_keeps_it():
    """NAdam's per-param momentum product: a 0-d tensor under torch's key, equal to torch's
    after every step, and a refused state_dict when it is not a number."""
    p, q = _params(), _params()
    ours, theirs = ft.NAdam(p, lr=0.01), torch.optim.NAdam(q, lr=0.01, foreach=False)
    _run_pair(ours, theirs, p, q, steps=5)
    for a, b in zip(p, q):
        assert ours.state[a]["mu_product"].shape == () and \
            float(ours.state[a]["mu_product"]) == float(theirs.state[b]["mu_product"])
    sd = ours.state_dict()
    sd["state"][0]["mu_product"] = "one"
    with pytest.raises(ValueError, match="mu_product"):
        ft.NAdam(_params(), lr=0.01).load_state_dict(sd)
