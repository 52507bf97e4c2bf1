"""The functional kernels: in place, one fused call per list of tensors.

Each function checks its hyperparameters (fusedopt._coeffs) and its arrays
(fusedopt._arrays) before anything is written, then runs the native kernel or the
reference implementation according to ``backend``:

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

import threading
import warnings
from typing import NamedTuple

from fusedopt import _arrays, _coeffs, _native, cuda
from fusedopt import _reference_impl as _ref

BACKENDS = ("auto", "native", "reference")
_FLOAT64 = "float64"  # internal backend of fusedopt.reference's float64 mode


class FallbackWarning(RuntimeWarning):
    """A kernel ran on the reference implementation because no compiled one could."""


_fallbacks: dict[str, str] = {}  # reason -> first function that fell back
_fallback_lock = threading.Lock()


def fallbacks() -> dict[str, str]:
    """Reasons for which backend='auto' fell back to the reference, with the first caller."""
    with _fallback_lock:
        return dict(_fallbacks)


def _backend(fn: str, backend: str) -> str:
    if backend not in BACKENDS and backend != _FLOAT64:
        raise ValueError(f"{fn}: backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def _use_native(fn: str, prep, backend: str) -> bool:
    if backend in ("reference", _FLOAT64):
        return False
    reason = _native.unavailable(prep)
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
                      "(shown once; fusedopt.info() lists fallbacks)", FallbackWarning, stacklevel=4)
    return False


class StepStatus(NamedTuple):
    """What a kernel called with ``skip_if_nonfinite=True`` did."""

    skipped: bool  # True: a gradient held NaN or inf, and no array was written
    nonfinite: int  # how many gradient values were NaN or infinite


def _count_nonfinite(prep, native: bool) -> int:
    if native:
        return _native.count_nonfinite(prep)
    xp = prep.xp
    return sum(int(xp.count_nonzero(~xp.isfinite(g))) for g in prep.grads)


def _skip_or_run(skip: bool, count, run):
    """The skip_if_nonfinite protocol, the same on every path: with skip, count the
    gradients' NaN and inf first and write nothing if there is any."""
    if skip:
        n = count()
        if n:
            return StepStatus(True, n)
    run()
    return StepStatus(False, 0) if skip else None


def _run(rule: str, prep, coeffs, backend: str, hyper, skip_if_nonfinite: bool):
    """Runs a checked call; ``hyper`` makes the raw hyperparameters (float64 mode only)."""
    skip = _coeffs._flag(prep.fn, "skip_if_nonfinite", skip_if_nonfinite)
    if prep.n_tensors == 0:
        return StepStatus(False, 0) if skip else None
    native = _use_native(prep.fn, prep, backend)
    if native:
        run = lambda: _native.apply(rule, prep, coeffs)  # noqa: E731
    elif backend == _FLOAT64:
        run = lambda: _ref.apply_float64(rule, prep, hyper())  # noqa: E731
    else:
        run = lambda: _ref.apply_exact(rule, prep, coeffs)  # noqa: E731
    with cuda.params_stream(prep.torch_device):
        return _skip_or_run(skip, lambda: _count_nonfinite(prep, native), run)


def _call(rule: str, fn: str, params, grads, state_names, state_values, coeffs, backend: str,
          hyper, skip_if_nonfinite):
    """Checks and runs one call: a fast path for plain NumPy or CuPy arrays, else prepare().

    ``state_names`` and ``state_values`` are the state roles the rule uses, in rule order.
    The fast paths hand the arguments as they came to the module of their device, which
    checks them against prepare()'s rules while it reads their pointers; anything it
    refuses, and every argument it does not look at (an unknown backend, a non-bool
    skip_if_nonfinite), goes down the checked path, which words the error. Without
    skip_if_nonfinite the check and the update are one call into the module.
    """
    if backend == "auto" or backend == "native":
        if skip_if_nonfinite is False:
            if _native.apply_strict(rule, params, grads, state_values, coeffs):
                return None
        elif skip_if_nonfinite is True:
            call = _native.check_fast(params, grads, state_values)
            if call is not None:
                return _skip_or_run(True, call.count_nonfinite, lambda: call.run(rule, coeffs))
    backend = _backend(fn, backend)
    prep = _arrays.prepare(fn, params, grads, list(zip(state_names, state_values)))
    return _run(rule, prep, coeffs, backend, hyper, skip_if_nonfinite)


def _required(fn: str, name: str, value, because: str):
    """A state argument the call's flags need (``because`` says which flag)."""
    if value is None:
        raise ValueError(f"{fn}: {name} is required {because}")
    return value


# --------------------------------------------------------------------------------------
def sgd_(params, grads, momentum_buffers=None, *, lr, momentum=0.0, dampening=0.0,
         nesterov=False, weight_decay=0.0, maximize=False, step=1, convention="torch",
         skip_if_nonfinite=False, backend="auto"):
    """SGD with optional heavy-ball or Nesterov momentum, in place.

    ``convention="torch"`` follows torch.optim.SGD: coupled weight decay, and on ``step == 1``
    the momentum buffer is set to the gradient (its previous contents are ignored).
    ``convention="keras"`` follows Keras/TensorFlow: ``v = momentum*v - lr*g; p += v``
    (Nesterov: ``p += momentum*v - lr*g``), buffers starting at zero, and decoupled weight
    decay ``p *= 1 - lr*weight_decay``. ``momentum_buffers`` is required when momentum > 0.
    The exact operation order is in csrc/math/sgd.h and the README.
    """
    fn = "sgd_"
    c = _coeffs.sgd(fn, lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov,
                    weight_decay=weight_decay, maximize=maximize, step=step, convention=convention)
    names, values = _momentum_state(fn, c, momentum_buffers)
    return _call("sgd", fn, params, grads, names, values, c, backend,
                 lambda: dict(lr=c.lr, momentum=c.momentum, dampening=dampening,
                              nesterov=c.nesterov, weight_decay=c.weight_decay,
                              maximize=c.maximize, step=step, convention=convention),
                 skip_if_nonfinite)


def _momentum_state(fn: str, c, momentum_buffers):
    if c.momentum_mode == _coeffs.MOM_NONE:
        return (), []
    return ("momentum_buffers",), [_required(fn, "momentum_buffers", momentum_buffers,
                                             "when momentum > 0")]


class AdaptiveRate(NamedTuple):
    """What adaptive_sgd_ used: the step's rate and the global gradient norm."""

    lr: float  # the rate applied (0.0 when the step was skipped)
    grad_norm: float  # the global L2 norm of the gradients (NaN when skipped)
    skipped: bool = False  # skip_if_nonfinite=True and a gradient was not finite
    nonfinite: int = 0  # how many gradient values were NaN or infinite (when checked)


def adaptive_sgd_(params, grads, momentum_buffers=None, *, lr, momentum=0.0, dampening=0.0,
                  nesterov=False, weight_decay=0.0, maximize=False, step=1, convention="torch",
                  skip_if_nonfinite=False, backend="auto") -> AdaptiveRate:
    """SGD at the adaptive rate ``lr_t = lr / (1 + ||g||^2)``, in place.

    ``||g||`` is the L2 norm of every gradient of the call together (before weight decay),
    summed in a fixed blocking and order, so it has the same bits for any thread count.
    ``lr`` is the base rate lr0; every other argument is as in :func:`sgd_`. Returns the
    rate used and the norm.
    """
    fn = "adaptive_sgd_"
    backend = _backend(fn, backend)
    base = _coeffs.sgd(fn, lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov,
                       weight_decay=weight_decay, maximize=maximize, step=step,
                       convention=convention)
    names, values = _momentum_state(fn, base, momentum_buffers)
    skip = _coeffs._flag(fn, "skip_if_nonfinite", skip_if_nonfinite)
    if backend == "auto" or backend == "native":
        call = _native.check_fast(params, grads, values)
        if call is not None:
            if skip:
                count = call.count_nonfinite()
                if count:
                    return AdaptiveRate(0.0, float("nan"), True, count)
            if call.device == "cuda":
                return AdaptiveRate(*_native.adaptive_sgd_device(call.batch, base, _first(params)))
            sum_sq = call.grad_sum_of_squares()
            c = _adaptive_coeffs(base, sum_sq)
            call.run("sgd", c)
            return AdaptiveRate(c.lr, sum_sq**0.5)
    prep = _arrays.prepare(fn, params, grads, list(zip(names, values)))
    if prep.n_tensors == 0:
        return AdaptiveRate(base.lr, 0.0)
    native = _use_native(fn, prep, backend)
    with cuda.params_stream(prep.torch_device):
        if skip:
            count = _count_nonfinite(prep, native)
            if count:
                return AdaptiveRate(0.0, float("nan"), True, count)
        if native and prep.device == "cuda":
            # The norm, the rate and the update stay on the GPU (no host sync inside the
            # step): lr and grad_norm come back as 0-d arrays of the params' library.
            batch = _native.device_batch(prep)
            return AdaptiveRate(*_native.adaptive_sgd_device(batch, base, _first(params)))
        if native:
            sum_sq = _native.grad_sum_of_squares(prep)
        elif backend == _FLOAT64:
            sum_sq = _ref.sum_of_squares_float64(prep.xp, prep.grads)
        else:
            sum_sq = _ref.sum_of_squares_exact(prep.xp, prep.grads)
        c = _adaptive_coeffs(base, sum_sq)
        _run("sgd", prep, c, backend,
             lambda: dict(lr=c.lr, momentum=c.momentum, dampening=dampening, nesterov=c.nesterov,
                          weight_decay=c.weight_decay, maximize=c.maximize, step=step,
                          convention=convention), False)
    return AdaptiveRate(c.lr, sum_sq**0.5)


def _first(params):
    """The first param of a call (a list or one array), or None for an empty list."""
    if isinstance(params, (list, tuple)):
        return params[0] if params else None
    return params


def _adaptive_coeffs(base, sum_sq: float):
    """SGD's coefficients at ``lr_t = lr0 / (1 + sum_sq)``: only the rate and the decay
    factor change. lr_t is NaN when a gradient is NaN (inf gives 0.0): that is the
    gradients' doing, not a bad lr, so it propagates like any non-finite gradient instead
    of failing the lr check."""
    lr_t = _coeffs.adaptive_lr(base.lr, sum_sq)
    return base._replace(lr=lr_t, decay_factor=1.0 - lr_t * base.weight_decay)


def adagrad_(params, grads, state_sums, *, step, lr=0.01, lr_decay=0.0, weight_decay=0.0,
             eps=1e-10, maximize=False, skip_if_nonfinite=False, backend="auto"):
    """Adagrad (torch.optim.Adagrad), in place. ``step`` counts from 1.

    ``clr = lr / (1 + (step-1)*lr_decay)``; ``sum += g*g``; ``p -= clr * g / (sqrt(sum) + eps)``.
    """
    fn = "adagrad_"
    c = _coeffs.adagrad(fn, step=step, lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                        eps=eps, maximize=maximize)
    return _call("adagrad", fn, params, grads, ("state_sums",), [state_sums], c, backend,
                 lambda: dict(step=step, lr=float(lr), lr_decay=float(lr_decay),
                              weight_decay=c.weight_decay, eps=c.eps, maximize=c.maximize),
                 skip_if_nonfinite)


def rmsprop_(params, grads, square_avgs, grad_avgs=None, momentum_buffers=None, *, lr=0.01,
             alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False,
             maximize=False, skip_if_nonfinite=False, backend="auto"):
    """RMSprop (torch.optim.RMSprop), in place.

    ``grad_avgs`` is required when ``centered``; ``momentum_buffers`` when momentum > 0.
    All states start at zero.
    """
    fn = "rmsprop_"
    c = _coeffs.rmsprop(fn, lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                        momentum=momentum, centered=centered, maximize=maximize)
    names, values = ["square_avgs"], [square_avgs]
    if c.centered:
        names.append("grad_avgs")
        values.append(_required(fn, "grad_avgs", grad_avgs, "when centered=True"))
    if c.has_momentum:
        names.append("momentum_buffers")
        values.append(_required(fn, "momentum_buffers", momentum_buffers, "when momentum > 0"))
    return _call("rmsprop", fn, params, grads, names, values, c, backend,
                 lambda: dict(lr=c.lr, alpha=c.alpha, eps=c.eps, weight_decay=c.weight_decay,
                              momentum=c.momentum, centered=c.centered, maximize=c.maximize),
                 skip_if_nonfinite)


def _adam(fn, decoupled, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, step, lr, betas,
          eps, weight_decay, amsgrad, maximize, skip_if_nonfinite, backend):
    c = _coeffs.adam(fn, step=step, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                     amsgrad=amsgrad, maximize=maximize, decoupled=decoupled)
    names, values = ["exp_avgs", "exp_avg_sqs"], [exp_avgs, exp_avg_sqs]
    if c.amsgrad:
        names.append("max_exp_avg_sqs")
        values.append(_required(fn, "max_exp_avg_sqs", max_exp_avg_sqs, "when amsgrad=True"))
    return _call("adam", fn, params, grads, names, values, c, backend,
                 lambda: dict(step=step, lr=float(lr), betas=(c.beta1, c.beta2), eps=c.eps,
                              weight_decay=c.weight_decay, amsgrad=c.amsgrad, maximize=c.maximize,
                              decoupled=decoupled), skip_if_nonfinite)


def adam_(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs=None, *, step, lr=1e-3,
          betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, maximize=False,
          skip_if_nonfinite=False, backend="auto"):
    """Adam (torch.optim.Adam), in place, with coupled (L2) weight decay. ``step`` counts
    from 1 and is the step being taken. ``max_exp_avg_sqs`` is required when ``amsgrad``.

    ``m = b1*m + (1-b1)*g``; ``v = b2*v + (1-b2)*g*g``;
    ``p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)``.
    """
    return _adam("adam_", False, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, step, lr, betas,
          eps, weight_decay, amsgrad, maximize, skip_if_nonfinite, backend)


def adamw_(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs=None, *, step, lr=1e-3,
           betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, maximize=False,
           skip_if_nonfinite=False, backend="auto"):
    """AdamW (torch.optim.AdamW), in place: as :func:`adam_`, with decoupled weight decay
    ``p *= 1 - lr*weight_decay`` applied before the update."""
    return _adam("adamw_", True, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, step, lr, betas,
          eps, weight_decay, amsgrad, maximize, skip_if_nonfinite, backend)
