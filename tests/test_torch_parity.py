"""50-step trajectories against torch.optim (foreach=False), in float32.

Every case of ``conftest.CASES`` with a torch counterpart runs 50 steps on a list of
tensors of mixed sizes, with the same random nonzero gradients fed to fusedopt (native
kernel, NumPy arrays) and to the torch optimizer (float32 tensors). After the last step,
params and every state must agree within

    ||ours - torch||_2 / ||torch||_2 <= 1e-5

where each norm runs over all tensors of one role (params, exp_avgs, ...) together, and,
for params, also relative to how far they moved, ||ours - torch||_2 / ||torch - p0||_2
<= 1e-5, so that a wrong update cannot hide behind large initial values. (Measured: at
most 1.2e-6 for the states and 1e-6 for the displacement; a single tiny tensor's norm can
be near zero by chance, which is why the norms are taken over the whole list.)

Mapping of arguments: lr, momentum, dampening, nesterov, weight_decay, maximize, lr_decay,
alpha, eps, centered, betas and amsgrad pass straight through; Adagrad's
initial_accumulator_value (0.1 here) becomes the initial value of our state_sums; our
``step`` is torch's step count after its increment (1 on the first step). torch SGD sets
its momentum buffer to the gradient on the first step: our buffers start filled with
nonzero junk, which step=1 must ignore. adaptive_sgd_ is compared with torch SGD whose lr
is set, before each step, to the rate adaptive_sgd_ returned. The Keras convention has no
torch counterpart, nor have Lion and LAMB; those cases are skipped.
"""

from __future__ import annotations

import fusedopt.rules
import numpy as np
import pytest
from conftest import CASES, make_inputs, rng_for

try:
    import torch
except ImportError as exc:  # not installed, or installed but broken
    pytest.skip(f"torch is not importable ({exc}); the parity tests need it",
                allow_module_level=True)

STEPS = 50
SIZES = [1, 17, 4097]
RTOL = 1e-5
ADAGRAD_INIT = 0.1

# Our state argument -> torch's state key: the singular, except Adagrad's sum.
def torch_state(name: str) -> str:
    return "sum" if name == "state_sums" else name[:-1]


def _torch_optimizer(case, tensors):
    k = dict(case.kwargs)
    common = dict(lr=k.pop("lr", fusedopt.rules.kernel(case.fn)[1].keywords["lr"]),
                  weight_decay=k.pop("weight_decay", 0.0),
                  maximize=k.pop("maximize", False), foreach=False)
    if case.fn in ("sgd_", "adaptive_sgd_"):
        assert k.pop("convention", "torch") == "torch"
        opt = torch.optim.SGD(tensors, momentum=k.pop("momentum", 0.0),
                              dampening=k.pop("dampening", 0.0), nesterov=k.pop("nesterov", False),
                              **common)
    elif case.fn == "adagrad_":
        opt = torch.optim.Adagrad(tensors, lr_decay=k.pop("lr_decay", 0.0),
                                  initial_accumulator_value=ADAGRAD_INIT, **common)
    elif case.fn == "rmsprop_":
        opt = torch.optim.RMSprop(tensors, alpha=k.pop("alpha"), momentum=k.pop("momentum", 0.0),
                                  centered=k.pop("centered", False), **common)
    else:
        # Every other rule: the torch class of its optimizer's name takes the same names.
        cls = getattr(torch.optim, fusedopt.rules.kernel(case.fn)[1].optimizer)
        opt, k = cls(tensors, **k, **common), {}
    assert not k, f"hyperparameters not mapped to torch: {sorted(k)}"
    return opt


def _torch_cases():
    for case in CASES:
        marks = ()
        if case.kwargs.get("convention") == "keras":
            marks = pytest.mark.skip(reason="the Keras convention has no torch.optim counterpart")
        elif case.fn in ("lion_", "lamb_"):
            name = fusedopt.rules.kernel(case.fn)[1].optimizer
            marks = pytest.mark.skip(reason=f"torch.optim has no {name}; tests/test_{case.rule}.py "
                                            "checks it against the paper's formulas")
        yield pytest.param(case, id=case.id, marks=marks)


@pytest.mark.parametrize("case", list(_torch_cases()))
def test_matches_torch_for_50_steps(case):
    inputs = make_inputs(case, np.float32, SIZES, steps=STEPS, rng=rng_for("torch", case.id))
    for name, arrays in inputs.states.items():
        for a in arrays:
            if a is None:  # a state this (1-D) param does not keep: Adafactor's factors
                continue
            if case.fn == "adagrad_":
                a[...] = ADAGRAD_INIT
            elif name != "momentum_buffers" or case.fn == "rmsprop_":
                a[...] = 0.0  # torch starts these at zero; SGD's buffer keeps its junk
    p0 = [p.copy() for p in inputs.params]

    tensors = [torch.tensor(p, requires_grad=True) for p in inputs.params]
    opt = _torch_optimizer(case, tensors)
    for k in range(STEPS):
        params, grads, states = inputs.args(k)
        ret = case.call(params, grads, states, k + 1, backend="native")
        if case.fn == "adaptive_sgd_":
            norm = torch.linalg.vector_norm(torch.cat([torch.from_numpy(g) for g in grads]).double())
            assert ret.grad_norm == pytest.approx(float(norm), rel=1e-12)
            for group in opt.param_groups:
                group["lr"] = ret.lr
        for t, g in zip(tensors, grads):
            t.grad = torch.from_numpy(g.copy())
        opt.step()

    ours, theirs = cat(inputs.params), cat(t.detach().numpy() for t in tensors)
    errors = {"params": _rel(ours, theirs, theirs),
              "params vs their displacement": _rel(ours, theirs, theirs - cat(p0))}
    for name, arrays in inputs.states.items():
        kept = [(a, t) for a, t in zip(arrays, tensors) if a is not None]
        if not kept:
            continue
        theirs = cat(opt.state[t][torch_state(name)].numpy() for _, t in kept)
        errors[name] = _rel(cat(a for a, _ in kept), theirs, theirs)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= RTOL, f"{worst}: relative error {errors[worst]:.3g} > {RTOL}"


def cat(arrays):
    """One float64 vector of every array of a role, in list order."""
    return np.concatenate([np.asarray(a, np.float64).ravel() for a in arrays])


def _rel(ours, theirs, scale):
    return float(np.linalg.norm(ours - theirs) / np.linalg.norm(scale))
