"""The functional kernels: in place, one fused call per list of tensors.

Each function checks its hyperparameters and computes its coefficients (fusedopt._coeffs),
then hands the call to the one dispatch (fusedopt._dispatch), whose reader checks the
arrays before anything is written and which runs the native kernel or the reference
implementation according to ``backend``:

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

from fusedopt import _coeffs
from fusedopt._dispatch import AdaptiveRate, FallbackWarning, StepStatus, fallbacks, run

__all__ = ["AdaptiveRate", "FallbackWarning", "StepStatus", "fallbacks", "sgd_", "adaptive_sgd_",
           "adagrad_", "rmsprop_", "adam_", "adamw_", "lion_"]


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
    return run("sgd", fn, params, grads, names, values, c, _sgd_hyper(dampening, step, convention),
               backend, skip_if_nonfinite)


def _sgd_hyper(dampening, step, convention):
    """SGD's raw hyperparameters from its coefficients (the adaptive rate's lr included)."""
    return lambda c: dict(lr=c.lr, momentum=c.momentum, dampening=dampening, nesterov=c.nesterov,
                          weight_decay=c.weight_decay, maximize=c.maximize, step=step,
                          convention=convention)


def _momentum_state(fn: str, c, momentum_buffers):
    if c.momentum_mode == _coeffs.MOM_NONE:
        return (), []
    return ("momentum_buffers",), [_required(fn, "momentum_buffers", momentum_buffers,
                                             "when momentum > 0")]


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
    base = _coeffs.sgd(fn, lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov,
                       weight_decay=weight_decay, maximize=maximize, step=step,
                       convention=convention)
    names, values = _momentum_state(fn, base, momentum_buffers)
    return run("sgd", fn, params, grads, names, values, base, _sgd_hyper(dampening, step, convention),
               backend, skip_if_nonfinite, adaptive=True)


def adagrad_(params, grads, state_sums, *, step, lr=0.01, lr_decay=0.0, weight_decay=0.0,
             eps=1e-10, maximize=False, skip_if_nonfinite=False, backend="auto"):
    """Adagrad (torch.optim.Adagrad), in place. ``step`` counts from 1.

    ``clr = lr / (1 + (step-1)*lr_decay)``; ``sum += g*g``; ``p -= clr * g / (sqrt(sum) + eps)``.
    """
    fn = "adagrad_"
    c = _coeffs.adagrad(fn, step=step, lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                        eps=eps, maximize=maximize)
    return run("adagrad", fn, params, grads, ("state_sums",), [state_sums], c,
               lambda c: dict(step=step, lr=float(lr), lr_decay=float(lr_decay),
                              weight_decay=c.weight_decay, eps=c.eps, maximize=c.maximize),
               backend, skip_if_nonfinite)


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
    return run("rmsprop", fn, params, grads, tuple(names), values, c,
               lambda c: dict(lr=c.lr, alpha=c.alpha, eps=c.eps, weight_decay=c.weight_decay,
                              momentum=c.momentum, centered=c.centered, maximize=c.maximize),
               backend, skip_if_nonfinite)


def _adam(fn, decoupled, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, step, lr, betas,
          eps, weight_decay, amsgrad, maximize, skip_if_nonfinite, backend):
    c = _coeffs.adam(fn, step=step, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                     amsgrad=amsgrad, maximize=maximize, decoupled=decoupled)
    names, values = ["exp_avgs", "exp_avg_sqs"], [exp_avgs, exp_avg_sqs]
    if c.amsgrad:
        names.append("max_exp_avg_sqs")
        values.append(_required(fn, "max_exp_avg_sqs", max_exp_avg_sqs, "when amsgrad=True"))
    return run("adam", fn, params, grads, tuple(names), values, c,
               lambda c: dict(step=step, lr=float(lr), betas=(c.beta1, c.beta2), eps=c.eps,
                              weight_decay=c.weight_decay, amsgrad=c.amsgrad, maximize=c.maximize,
                              decoupled=decoupled),
               backend, skip_if_nonfinite)


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


def lion_(params, grads, exp_avgs, *, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0,
          maximize=False, skip_if_nonfinite=False, backend="auto"):
    """Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"; optax.lion),
    in place. ``exp_avgs`` (the momentum) starts at zero; there is no step count.

    ``c = b1*m + (1-b1)*g``; ``p *= 1 - lr*weight_decay`` (decoupled, as AdamW);
    ``p -= lr * sign(c)``; ``m = b2*m + (1-b2)*g``. ``sign`` is -1 or 1 away from zero and
    keeps +0, -0 and NaN as they are. Every element moves by exactly ``lr`` (or not at all),
    so Lion wants a learning rate 3-10x smaller than AdamW's and a weight decay that much
    larger for the same effective decay ``lr*weight_decay``.
    """
    fn = "lion_"
    c = _coeffs.lion(fn, lr=lr, betas=betas, weight_decay=weight_decay, maximize=maximize)
    return run("lion", fn, params, grads, ("exp_avgs",), [exp_avgs], c,
               lambda c: dict(lr=c.lr, betas=(c.beta1, c.beta2), weight_decay=c.weight_decay,
                              maximize=c.maximize),
               backend, skip_if_nonfinite)
