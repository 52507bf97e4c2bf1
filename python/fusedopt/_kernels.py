"""The functional kernels: in place, one fused call per list of tensors.

Each public function (``fusedopt.adam_`` and the rest) is made here from its rule's
description (fusedopt/rules/<rule>.py: :class:`fusedopt.rules.Kernel`): it checks the
hyperparameters and computes the coefficients (the rule's ``coefficients``), then hands
the call to the one dispatch (fusedopt._dispatch), whose reader checks the arrays before
anything is written and which runs the native kernel or the reference implementation
according to ``backend``:

* ``"auto"``: the compiled kernel; where none exists for these arrays (no module built for
  their device, say), the reference implementation, with a one-time FallbackWarning and a
  note in :func:`fusedopt.info`.
* ``"native"``: the compiled kernel, or RuntimeError.
* ``"reference"``: the exact reference (NumPy/CuPy), through the same checks.

With ``skip_if_nonfinite=True`` a kernel first counts the NaN and infinite values of all
gradients of the call; if there is any, it writes nothing at all and says so in the
:class:`StepStatus` it returns (``adaptive_sgd_`` reports it in its AdaptiveRate).
Without it, NaN and inf propagate exactly as the reference says.
"""

from __future__ import annotations

from fusedopt import _coeffs, rules
from fusedopt._dispatch import AdaptiveRate, FallbackWarning, StepStatus, fallbacks, run

_COMMON_DOC = """
    Every kernel also takes ``skip_if_nonfinite`` (write nothing, and say so in the
    returned :class:`StepStatus`, when a gradient holds NaN or inf) and ``backend``
    (``"auto"``, ``"native"`` or ``"reference"``), and loss scaling and clipping, applied
    to the gradients as the update reads them (they are never written):

    * ``grad_scale``: the loss scale the gradients carry (torch's GradScaler): each is
      divided by it, as a multiply by ``1 / grad_scale``;
    * ``found_inf``: when true (a bool, a number or a one-element array or tensor, as
      GradScaler keeps it), nothing is written and the :class:`StepStatus` says skipped;
    * ``max_grad_norm``: clip as ``torch.nn.utils.clip_grad_norm_`` does, by
      ``min(1, max_grad_norm / (norm + 1e-6))`` where norm is the L2 norm of all the
      call's unscaled gradients (summed in a fixed blocking: the same bits at any thread
      count), in the same pass as the update; the :class:`StepStatus` returned carries
      that norm as ``grad_norm``;
    * ``grad_norm``: with ``max_grad_norm``, the norm to clip by when it was computed
      elsewhere (over several calls, or the shards of several processes).

    The gradients are read times one number, ``clip / grad_scale`` computed in double and
    rounded once to the compute precision.

    Stores to bfloat16 and float16 round to nearest even, or stochastically:
    ``rounding="stochastic"`` for the params, ``state_rounding="stochastic"`` for the states
    (up with the probability of the part dropped, so the mean of many roundings is the
    value: small updates are not lost). The random bits come from a counter-based hash keyed
    by ``seed`` (an int) and the step (``step``, for the kernels that take one; pass another
    seed each step to the others) and the element's position in the call, so a step has
    the same bits at any thread count, on every instruction set, on CUDA and in the
    reference. Other storage types ignore both.

    Master weights, for bfloat16 and float16 params: ``master_params``, a float32 array per
    param (same shape), holds the value the rule reads and updates, and the param is written
    rounded from it in the same pass (as ``rounding`` says, with the bits a plain step
    would draw). ``param_remainders``, an int16 array per bfloat16 param, holds the low 16
    bits of an exact float32 master whose high half is the param (rounded up where the
    remainder's bit 15 is set); it takes nearest rounding only, and not together with
    ``master_params``.
    """


# Loss scaling and clipping, every kernel's (fusedopt._coeffs.grad_scaling).
_SCALING = ("grad_scale", "found_inf", "max_grad_norm", "grad_norm")
# The rounding of 16-bit stores, every kernel's (fusedopt._coeffs.rounding), with defaults.
_ROUNDING = {"rounding": "nearest", "state_rounding": "nearest", "seed": 0}
# Master weights of 16-bit params, every elementwise kernel's (fusedopt._coeffs.masters).
_MASTERS = ("master_params", "param_remainders")


def _missing(fn: str, name: str, when: str):
    raise ValueError(f"{fn}: {name} is required {when}")


def _plain(hyper: dict) -> dict:
    """The raw hyperparameters for the float64 reference as Python floats (a NumPy float32
    lr would make its arithmetic float32), bools and strings; pairs as tuples of floats."""
    out = {}
    for k, v in hyper.items():
        if isinstance(v, (tuple, list)):
            v = tuple(None if x is None else float(x) for x in v)  # eps=(None, eps2)
        elif isinstance(v, bool) or getattr(getattr(v, "dtype", None), "kind", "") == "b":
            v = bool(v)
        elif v is not None and not isinstance(v, str):
            v = int(v) if k == "step" else float(v)
        out[k] = v
    return out


def _make(rule: rules.Rule, kernel: rules.Kernel):
    """The public function of ``kernel``: its signature written out (positional arrays,
    then keyword-only hyperparameters), so that a call costs what a hand-written one does
    and ``help()`` shows the real arguments."""
    fn = kernel.name
    states = list(rule.states)
    positional = ["params", "grads"] + [f"{s}=None" if s in rule.optional_states else s
                                        for s in states]
    keywords = list(kernel.keywords) + ["skip_if_nonfinite", *_SCALING, *_ROUNDING, *_MASTERS, "backend"]
    passed = ", ".join(f"{k}={k}" for k in kernel.keywords)
    fixed = "".join(f", {k}={v!r}" for k, v in kernel.fixed.items())
    step = "step" if kernel.takes_step else "0"  # the rounding key's step
    lines = [f"def {fn}({', '.join(positional)}, *, {', '.join(keywords)}):",
             f"    c = _coefficients({fn!r}{fixed}, {passed})",
             f"    r = _rounding({fn!r}, rounding, state_rounding, seed, {step})",
             f"    m = _masters({fn!r}, master_params, param_remainders, rounding, "
             f"factored={rule.state_layout != 'same'})"]
    # The states these coefficients' flags use, in rule order; a missing one is named. The
    # lists start as literals of the states every call uses (a call appends nothing else).
    always = [s for s in states if s not in rule.optional_states]
    if states[:len(always)] != always:
        raise TypeError(f"rule {rule.name}: its optional states must come after the others")
    lines.append(f"    names, values = {always!r}, [{', '.join(always)}]")
    for s in states:
        if s in rule.optional_states:
            flag, when = rule.optional_states[s]
            lines.append(f"    if c.{flag}:")
            lines.append(f"        if {s} is None: _missing({fn!r}, {s!r}, {when!r})")
            lines.append(f"        names.append({s!r}); values.append({s})")
    # The raw hyperparameters, for the float64 reference (the adaptive rate's lr is the
    # coefficients' own, set by the dispatch).
    hyper = f"_plain(dict({passed}{fixed}))"
    if kernel.adaptive:
        hyper = f"dict({hyper}, lr=c.lr)"
    lines.append(f"    return _run({rule.name!r}, {fn!r}, params, grads, tuple(names), values, c, "
                 f"lambda c: {hyper}, backend, skip_if_nonfinite, {kernel.adaptive}, "
                 f"{', '.join(_SCALING)}, r, m)")
    namespace = {"_coefficients": rule.coefficients, "_missing": _missing, "_run": run,
                 "_plain": _plain, "_rounding": _coeffs.rounding, "_masters": _coeffs.masters}
    exec("\n".join(lines), namespace)  # noqa: S102
    function = namespace[fn]
    defaults = {k: v for k, v in kernel.keywords.items() if v is not rules.REQUIRED}
    function.__kwdefaults__ = dict(defaults, skip_if_nonfinite=False, backend="auto",
                                   **dict.fromkeys(_SCALING), **_ROUNDING, **dict.fromkeys(_MASTERS))
    function.__doc__ = kernel.doc.strip("\n") + "\n" + _COMMON_DOC
    function.__module__ = "fusedopt"
    function.__qualname__ = fn
    return function


KERNELS = {k.name: _make(r, k) for r, k in rules.KERNELS.values()}
globals().update(KERNELS)

__all__ = ["AdaptiveRate", "FallbackWarning", "StepStatus", "fallbacks", *KERNELS]
