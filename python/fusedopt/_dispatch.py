"""The one dispatch: every public call (functional kernels, fusedopt.optim, adapters) takes
its arrays to a backend here.

``backend``:

* ``"auto"``: the compiled kernel; where none exists for these arrays (no module built for
  their device, say), the reference implementation, with a one-time FallbackWarning and a
  note in :func:`fusedopt.info`.
* ``"native"``: the compiled kernel, or RuntimeError.
* ``"reference"``: the exact reference (NumPy/CuPy), through the same reader.

The way in, for ``auto`` and ``native``: the CPU module's reader takes the call as the
caller passed it and runs it at once where it lies in host memory; a call on device
arrays goes to the CUDA module's reader (the same reader, compiled there). Where either
refuses, or for the reference, :func:`fusedopt._arrays.prepare` asks the reader again and
words the refusal; nothing has been written by then.

With ``skip_if_nonfinite=True`` the gradients' NaN and infinite values are counted first;
if there is any, nothing at all is written and the result says so. Loss scaling and
clipping (``grad_scale``, ``found_inf``, ``max_grad_norm``, ``grad_norm``: checked in
fusedopt._coeffs.grad_scaling) come to the kernel as one multiplier of the gradients
(csrc/math/grad_multiplier.h); ``found_inf`` set writes nothing.
"""

from __future__ import annotations

import threading
import warnings
from typing import Callable, NamedTuple

from fusedopt import _arrays, _coeffs, _core, _native, cuda, rules
from fusedopt import _reference_impl as _ref

BACKENDS = ("auto", "native", "reference")
FLOAT64 = "float64"  # internal backend of fusedopt.reference's float64 mode


class FallbackWarning(RuntimeWarning):
    """A kernel ran on the reference implementation because no compiled one could."""


class StepStatus(NamedTuple):
    """What a kernel called with ``skip_if_nonfinite=True``, ``found_inf`` or
    ``max_grad_norm`` did."""

    skipped: bool  # True: found_inf was set, or a gradient held NaN or inf; nothing was written
    nonfinite: int  # how many gradient values were NaN or infinite (when counted)
    # With max_grad_norm: the L2 norm of the unscaled gradients before clipping (the one
    # given as grad_norm, or the call's own); None otherwise.
    grad_norm: float | None = None


class AdaptiveRate(NamedTuple):
    """What adaptive_sgd_ used: the step's rate and the global gradient norm."""

    lr: float  # the rate applied (0.0 when the step was skipped)
    grad_norm: float  # the global L2 norm of the gradients (NaN when skipped)
    skipped: bool = False  # skip_if_nonfinite=True and a gradient was not finite
    nonfinite: int = 0  # how many gradient values were NaN or infinite (when checked)


_fallbacks: dict[str, str] = {}  # reason -> first function that fell back
_fallback_lock = threading.Lock()


def fallbacks() -> dict[str, str]:
    """Reasons for which backend='auto' fell back to the reference, with the first caller."""
    with _fallback_lock:
        return dict(_fallbacks)


def check_backend(fn: str, backend: str) -> str:
    if backend not in BACKENDS and backend != FLOAT64:
        raise ValueError(f"{fn}: backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def _layout(rule: str) -> str:
    """The state layout a rule's calls are read with (fusedopt.rules.Rule.state_layout)."""
    return rules.RULES[rule].state_layout


def _use_native(fn: str, prep, backend: str) -> bool:
    if backend in ("reference", FLOAT64):
        return False
    reason = _native.unavailable(prep.device)
    if reason is None:
        return True
    if backend == "native":
        raise RuntimeError(f"{fn}: no compiled kernel can take these arrays: {reason}")
    with _fallback_lock:
        first = reason not in _fallbacks
        if first:
            _fallbacks[reason] = fn
    if first:
        warnings.warn(f"{fn}: using the reference implementation because {reason} "
                      "(shown once; fusedopt.info() lists fallbacks)", FallbackWarning, stacklevel=5)
    return False


class Call(NamedTuple):
    """One call as a public function hands it over."""

    rule: str  # the rule's name in the modules: "sgd", "adagrad", "rmsprop", "adam"
    fn: str  # the public name, for messages
    params: object
    grads: object
    names: tuple  # the state arguments the rule uses, in rule order
    values: list  # ... and their values
    coeffs: tuple  # the rule's coefficients (fusedopt._coeffs)
    hyper: Callable  # coeffs -> the raw hyperparameters (the float64 reference)
    adaptive: bool = False  # SGD at lr0 / (1 + ||g||^2): coeffs at lr0, the rate set here
    scaling: _coeffs.GradScaling | None = None  # loss scaling and clipping, if any
    rounding: tuple | None = None  # stochastic rounding of 16-bit stores (_coeffs.rounding)
    master: _coeffs.Masters | None = None  # master weights of 16-bit params (_coeffs.masters)

    @property
    def master_args(self) -> tuple:
        """The modules' trailing arguments for the call's master weights (none without)."""
        return () if self.master is None else self.master.args


def run(rule, fn, params, grads, names, values, coeffs, hyper, backend, skip_if_nonfinite,
        adaptive=False, grad_scale=None, found_inf=None, max_grad_norm=None, grad_norm=None,
        rounding=None, master=None):
    """Runs a public call (the fields of :class:`Call`): None, a StepStatus (with
    skip_if_nonfinite, found_inf or max_grad_norm) or an AdaptiveRate. The common call, a
    plain step whose arrays the CPU module's reader takes, is one call into the module
    (with grad_scale alone too); the Call is built after."""
    scaling = None
    if grad_scale is not None or found_inf is not None or max_grad_norm is not None \
            or grad_norm is not None:
        scaling = _coeffs.grad_scaling(fn, grad_scale, found_inf, max_grad_norm, grad_norm)
        if (scaling.grad_scale != 1.0 or scaling.clips) and _layout(rule) != "same":
            raise ValueError(f"{fn}: grad_scale and max_grad_norm are not supported by this rule's "
                             "passes yet; unscale and clip the gradients before the call")
    refusal = None
    if (backend == "auto" or backend == "native") and grads is not None and not adaptive \
            and skip_if_nonfinite is False and (scaling is None or _plain_scale(scaling)):
        refusal = _core.run(rule, params, grads, values, coeffs,
                            1.0 if scaling is None else 1.0 / scaling.grad_scale, rounding,
                            *(() if master is None else master.args))
        if refusal is None:
            return None
    return _run_call(Call(rule, fn, params, grads, names, values, coeffs, hyper, adaptive, scaling,
                          rounding, master), backend, skip_if_nonfinite, refusal)


def _plain_scale(scaling) -> bool:
    """A call whose scaling is a loss scale alone (nothing to skip, norm or report)."""
    return scaling.found_inf is None and scaling.max_grad_norm is None


def _run_call(call: Call, backend: str, skip_if_nonfinite, refusal=None):
    """The rest of run(): ``refusal`` is the CPU module's answer to a plain call, if asked."""
    if (backend == "auto" or backend == "native") and call.grads is not None:
        if refusal is None and (skip_if_nonfinite is True or skip_if_nonfinite is False):
            # Counted, normed or decided before the update: read once, then each in turn.
            host = _core.Call(call.params, call.grads, call.values, _layout(call.rule), *call.master_args)
            refusal = host.refusal
            if refusal is None:
                return _run_native(host, call, skip_if_nonfinite)
        # Device arrays: the CUDA module's fast path (Batch.strict) reads states shaped like
        # their params; a factored rule's call goes through prepare() and native_target().
        if refusal is not None and refusal[0] == "device_call" and _layout(call.rule) == "same":
            batch = _native.device_batch(call.params, call.grads, call.values, call.master)
            if batch is not None:
                return _run_native(batch, call, skip_if_nonfinite, device=True)
    # A refusal (worded now), a flag that is not a bool, the reference, or a fallback.
    return _run_checked(call, check_backend(call.fn, backend),
                        _coeffs.flag(call.fn, "skip_if_nonfinite", skip_if_nonfinite))


def _first(params):
    if isinstance(params, (list, tuple)):
        return params[0] if params else None
    return params


def _skipped(call: Call, count: int):
    return AdaptiveRate(0.0, float("nan"), True, count) if call.adaptive else StepStatus(True, count)


def _reports(call: Call, skip: bool) -> bool:
    """Whether the call returns a StepStatus rather than None."""
    return skip or (call.scaling is not None and not _plain_scale(call.scaling))


def _done(call: Call, skip: bool, norm=None):
    return StepStatus(False, 0, norm) if _reports(call, skip) else None


def _scaled(call: Call, sum_of_squares):
    """(the gradients' multiplier, the unscaled norm or None) of a call; sum_of_squares is
    a function giving the call's own (asked only where the call clips by it)."""
    scaling = call.scaling
    if scaling is None:
        return 1.0, None
    if not scaling.clips:
        return 1.0 / scaling.grad_scale, None
    norm = scaling.unscaled_norm(sum_of_squares() if scaling.needs_norm else 0.0)
    return scaling.multiplier(norm), norm


def _adaptive_step(call: Call, sum_sq: float):
    """SGD's coefficients at the adaptive rate, the gradients' multiplier and the norm
    reported, from the sum of squares of the stored gradients: the rate sees the gradients
    as the rule reads them (unscaled and clipped)."""
    multiplier, norm = _scaled(call, lambda: sum_sq)
    if norm is None:
        norm = sum_sq**0.5 / (1.0 if call.scaling is None else call.scaling.grad_scale)
    return adaptive_coeffs(call.coeffs, sum_sq * multiplier * multiplier), multiplier, norm


def _run_native(target, call: Call, skip: bool, device: bool = False):
    """A call a module's reader accepted: ``target`` is the CPU module's Call or the CUDA
    module's Batch, which both count, norm and run."""
    if call.scaling is not None and call.scaling.found_inf:
        return _skipped(call, 0)
    if skip:
        count = target.count_nonfinite()
        if count:
            return _skipped(call, count)
    if call.adaptive:
        if device and call.scaling is None and call.rounding is None:
            # The norm, the rate and the update stay on the GPU (no host sync inside the
            # step): lr and grad_norm come back as 0-d arrays of the params' library.
            return AdaptiveRate(*cuda.adaptive_sgd(target, call.coeffs, _first(call.params)))
        coeffs, multiplier, norm = _adaptive_step(call, target.grad_sum_of_squares())
        target.run("sgd", coeffs, grad_multiplier=multiplier, rounding=call.rounding)
        return AdaptiveRate(coeffs.lr, norm)
    multiplier, norm = _scaled(call, target.grad_sum_of_squares)
    target.run(call.rule, call.coeffs, grad_multiplier=multiplier, rounding=call.rounding)
    return _done(call, skip, norm)


def _run_checked(call: Call, backend: str, skip: bool):
    """The reader's verdict asked through fusedopt._arrays, which words a refusal; then the
    compiled kernel on the adapted arrays, or the reference."""
    prep = _arrays.prepare(call.fn, call.params, call.grads, list(zip(call.names, call.values)),
                           layout=_layout(call.rule), master=call.master)
    if prep.n_tensors == 0:
        if call.scaling is not None and call.scaling.found_inf:
            return _skipped(call, 0)
        if call.adaptive:
            return AdaptiveRate(call.coeffs.lr, 0.0)
        return _done(call, skip, _scaled(call, lambda: 0.0)[1])
    native = _use_native(call.fn, prep, backend)
    with cuda.params_stream(prep.torch_device):
        if native:
            return _run_native(native_target(prep), call, skip, device=prep.device == "cuda")
        return _run_reference(prep, call, backend, skip)


def native_target(prep):
    """The module object that runs a prepared call: the CPU module's Call, or a CUDA Batch."""
    if prep.device == "cpu":
        if prep.master is None:
            return _core.Call(prep.params, prep.grads, prep.states, prep.layout)
        return _core.Call(prep.params, prep.grads, prep.states, prep.layout, prep.masters, prep.master)
    if prep.master is not None:
        return cuda.module().Batch(prep.params, prep.grads, prep.states, layout=prep.layout,
                                   masters=prep.masters, master=prep.master)
    return cuda.module().Batch(prep.params, prep.grads, prep.states, layout=prep.layout)


def _run_reference(prep, call: Call, backend: str, skip: bool):
    xp = prep.xp
    if call.scaling is not None and call.scaling.found_inf:
        return _skipped(call, 0)
    if skip:
        count = sum(int(xp.count_nonzero(~xp.isfinite(g))) for g in prep.grads)
        if count:
            return _skipped(call, count)

    def sum_of_squares():
        if backend == FLOAT64:
            return _ref.sum_of_squares_float64(xp, prep.grads)
        return _ref.sum_of_squares_exact(xp, prep.grads)

    coeffs = call.coeffs
    if call.adaptive:
        coeffs, multiplier, norm = _adaptive_step(call, sum_of_squares())
    else:
        multiplier, norm = _scaled(call, sum_of_squares)
    if backend == FLOAT64:
        _ref.apply_float64(call.rule, prep, call.hyper(coeffs), multiplier)
    else:
        _ref.apply_exact(call.rule, prep, coeffs, multiplier, call.rounding)
    if call.adaptive:
        return AdaptiveRate(coeffs.lr, norm)
    return _done(call, skip, norm)


def adaptive_coeffs(base, sum_sq: float):
    """SGD's coefficients at ``lr_t = lr0 / (1 + sum_sq)``: only the rate and the decay
    factor change. lr_t is NaN when a gradient is NaN (inf gives 0.0): that is the
    gradients' doing, not a bad lr, so it propagates like any non-finite gradient instead
    of failing the lr check."""
    lr_t = _coeffs.adaptive_lr(base.lr, sum_sq)
    return base._replace(lr=lr_t, decay_factor=1.0 - lr_t * base.weight_decay)


def run_captured(call: Call, schedule, skip: bool, torch_device) -> None:
    """A capturable optimizer's step (fusedopt.optim): the device counts the step and picks
    its coefficients from ``schedule`` (cuda.StepSchedule), then the update reads them. It
    waits for nothing and leaves nothing per step on the host; the arrays are read as every
    call's are."""
    batch = _native.device_batch(call.params, call.grads, call.values)
    if batch is None:  # the refusal worded, or arrays the reader reaches only through CuPy
        prep = _arrays.prepare(call.fn, call.params, call.grads, list(zip(call.names, call.values)))
        batch = native_target(prep)
    with cuda.params_stream(torch_device):
        device_coeffs = schedule.queue(batch, skip)
        batch.run(call.rule, call.coeffs, device_coeffs=device_coeffs)


def grad_sum_of_squares(grads) -> float:
    """The squared L2 norm of every gradient of ``grads`` together, in the kernels' fixed
    blocking (math/sumsq.h): the CPU module's for host arrays, the CUDA module's (waiting
    for it) for device arrays. For a step of several calls clipped by one norm."""
    try:
        return _core.grad_sum_of_squares(grads)
    except ValueError as refused:  # the grads are device arrays: not the CPU module's
        if "device_call" not in str(refused):
            raise
    return float(cuda.module().grad_sum_of_squares(grads))
