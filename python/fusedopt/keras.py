"""Keras 3 optimizers that update a model's variables with fusedopt's fused kernels.

    import os; os.environ["KERAS_BACKEND"] = "torch"      # before keras is first imported
    import keras, fusedopt.keras
    model.compile(optimizer=fusedopt.keras.SGD(learning_rate=0.01, momentum=0.9), ...)

:class:`SGD` and :class:`Adam` follow ``keras.optimizers.SGD`` and ``keras.optimizers.Adam``
(same arguments, same defaults, same update rules) and subclass
``keras.optimizers.Optimizer``, so everything the base class does still happens: learning
rate schedules (read at every step), ``weight_decay``, gradient clipping, EMA, gradient
accumulation, loss scaling. Only the update itself changes: one fused fusedopt call per step
for all the variables together, instead of several tensor operations per variable.

Backends: the **torch** backend only. There a Keras variable's value is a torch tensor,
which fusedopt updates in place (CPU tensors through the CPU kernels, CUDA tensors through
the CUDA kernels). JAX arrays are immutable and TensorFlow compiles the training step into
a graph, so neither gives fusedopt memory it could write; the optimizers refuse those
backends when they are made, saying so.

Importing this module imports Keras (``import fusedopt`` alone does not).
"""

from __future__ import annotations

import math

import fusedopt


def _import_keras():
    try:
        import keras
    except ImportError as exc:
        if getattr(exc, "name", None) == "keras":
            raise ImportError('fusedopt.keras needs Keras 3: pip install "fusedopt[keras]"') from exc
        if getattr(exc, "name", None) == "torch":
            raise ImportError("fusedopt.keras runs on Keras's torch backend, which needs PyTorch: "
                              'pip install "fusedopt[keras,torch]"') from exc
        raise ImportError(f"fusedopt.keras: Keras is installed but failed to import ({exc}). Its "
                          "default backend is TensorFlow; fusedopt.keras runs on the torch backend: "
                          "set KERAS_BACKEND=torch before keras is first imported") from exc
    version = getattr(keras, "__version__", "0")
    if int(version.split(".")[0]) < 3:
        raise ImportError(f"fusedopt.keras needs Keras 3 (found keras {version}): "
                          'pip install "fusedopt[keras]"')
    return keras


keras = _import_keras()

SUPPORTED_BACKENDS = ("torch",)


def _scalar(x) -> float:
    """A Python float from a float, a Keras variable or a (0-d) tensor of the backend."""
    x = getattr(x, "value", x)
    detach = getattr(x, "detach", None)
    if detach is not None:
        x = detach()
    return float(x)


class _FusedOptimizer(keras.optimizers.Optimizer):
    """The part both optimizers share: the backend check and the one fused call per step."""

    def __init__(self, **kwargs):
        backend = keras.backend.backend()
        if backend not in SUPPORTED_BACKENDS:
            raise ValueError(
                f"{type(self).__name__}: fusedopt.keras runs on Keras's torch backend only "
                f"(KERAS_BACKEND=torch); this process uses {backend!r}, whose variables fusedopt "
                "cannot update in place (JAX arrays are immutable; TensorFlow compiles the "
                "step into a graph). Use keras.optimizers.SGD or Adam there.")
        super().__init__(**kwargs)

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        # The base class calls this once per step, after clipping and weight decay, with the
        # current learning rate (a schedule's value at this step).
        import torch

        with torch.no_grad():
            self._fused_update(list(grads), list(trainable_variables), _scalar(learning_rate))

    def update_step(self, gradient, variable, learning_rate):
        # Keras's per-variable entry point (its default _backend_update_step and
        # stateless paths): the same fused call on a list of one.
        import torch

        with torch.no_grad():
            self._fused_update([gradient], [variable], _scalar(learning_rate))

    @staticmethod
    def _tensors(grads, variables):
        params = [v.value for v in variables]
        grads = [g.to(p.dtype) if g.dtype != p.dtype else g for g, p in zip(grads, params)]
        return params, [g.contiguous() for g in grads]

    def _states(self, states, variables):
        return [states[self._get_variable_index(v)].value for v in variables]


class SGD(_FusedOptimizer):
    """``keras.optimizers.SGD`` through ``fusedopt.sgd_(..., convention="keras")``:
    ``v = momentum*v - lr*g; p += v`` (Nesterov: ``p += momentum*v - lr*g``), or
    ``p -= lr*g`` without momentum. Other keyword arguments go to Keras's base optimizer."""

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, name="fusedopt_sgd", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        momentum = float(momentum)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"SGD: momentum must be a float in [0, 1], got {momentum}")
        self.momentum = momentum
        self.nesterov = bool(nesterov)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = self.add_optimizer_variables(variables, "momentum") if self.momentum else []

    def _fused_update(self, grads, variables, lr):
        params, grads = self._tensors(grads, variables)
        buffers = self._states(self.momentums, variables) if self.momentum else None
        fusedopt.sgd_(params, grads, buffers, lr=lr, momentum=self.momentum, nesterov=self.nesterov,
                      convention="keras")

    def get_config(self):
        config = super().get_config()
        config.update({"momentum": self.momentum, "nesterov": self.nesterov})
        return config


class Adam(_FusedOptimizer):
    """``keras.optimizers.Adam`` through ``fusedopt.adam_``.

    Keras puts epsilon outside the bias correction of the second moment:
    ``p -= lr*sqrt(1-b2^t)/(1-b1^t) * m / (sqrt(v) + eps)``. Dividing the fraction's top and
    bottom by ``sqrt(1-b2^t)`` gives fusedopt's (torch's) form
    ``p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps')`` with ``eps' = eps/sqrt(1-b2^t)``,
    which is computed in float64 for each step and passed as adam_'s eps.
    """

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False,
                 name="fusedopt_adam", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.beta_1 = float(beta_1)
        self.beta_2 = float(beta_2)
        self.epsilon = float(epsilon)
        self.amsgrad = bool(amsgrad)

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._momentums, self._velocities = self.add_optimizer_variables(var_list, ["momentum", "velocity"])
        if self.amsgrad:
            self._velocity_hats = self.add_optimizer_variables(var_list, "velocity_hat")

    def _fused_update(self, grads, variables, lr):
        params, grads = self._tensors(grads, variables)
        step = int(_scalar(self.iterations)) + 1
        eps = self.epsilon / math.sqrt(1.0 - self.beta_2**step)
        max_sqs = self._states(self._velocity_hats, variables) if self.amsgrad else None
        fusedopt.adam_(params, grads, self._states(self._momentums, variables),
                       self._states(self._velocities, variables), max_sqs, step=step, lr=lr,
                       betas=(self.beta_1, self.beta_2), eps=eps, amsgrad=self.amsgrad)

    def get_config(self):
        config = super().get_config()
        config.update({"beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon,
                       "amsgrad": self.amsgrad})
        return config


__all__ = ["Adam", "SGD"]
