"""The strategies the demo compares, each a batch size and one fusedopt kernel.

The seed gives one set of numbers, momentum 0.9 at a learning rate of 0.01 (Keras's
convention: ``v = 0.9*v - 0.01*g; p += v``). Its effective step on a steady gradient is
0.01 / (1 - 0.9) = 0.1, so plain SGD and full-batch gradient descent run at 0.1, which
makes the three comparable. The adaptive rate lr0/(1+||g||^2) takes lr0 = 0.1 alone and
0.01 with momentum, for the same reason; Adam runs at its usual 0.001.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import fusedopt

BATCH = 32  # Keras's default batch size for fit()


@dataclass(frozen=True)
class Strategy:
    key: str  # the name on the command line
    label: str  # the name in the table and the plots
    kernel: str  # "sgd", "adaptive_sgd" or "adam"
    lr: float
    momentum: float = 0.0
    nesterov: bool = False
    full_batch: bool = False  # one step per epoch on the whole training set
    storage: str = "float32"  # the params' dtype: "float32" or "bfloat16" (float32 gradients)
    rounding: str = "nearest"  # how bfloat16 params are rounded: "nearest" or "stochastic"
    # master weights of bfloat16 params: "" (none), "float32" (master_params=) or
    # "remainders" (param_remainders=: the params and an int16 low half are the master)
    master: str = ""

    def batch_size(self, n_train: int, batch: int) -> int:
        return n_train if self.full_batch else batch

    def settings(self) -> str:
        """The hyperparameters as the table shows them."""
        parts = [f"lr {self.lr:g}"]
        if self.kernel == "adaptive_sgd":
            parts[0] = f"lr0 {self.lr:g}"
        if self.momentum:
            parts.append(f"mom {self.momentum:g}")
        if self.storage != "float32":
            how = f"{self.master} master" if self.master else self.rounding
            parts.append(f"{self.storage} params, {how}")
        return ", ".join(parts)

    def _rounding(self) -> dict:
        return {} if self.rounding == "nearest" else dict(rounding=self.rounding, seed=0)

    def _masters(self, params, zeros_like) -> dict:
        """The master-weight argument of every call: float32 copies of the params, or int16
        remainders of zero (with which the params' values are the masters), in the params'
        framework."""
        if not self.master:
            return {}
        made = zeros_like()
        if self.master == "float32":
            for m, p in zip(made, params):
                m[...] = p
            return {"master_params": made}
        return {"param_remainders": [m.astype(np.int16) if isinstance(m, np.ndarray) else m.short()
                                     for m in made]}

    def updater(self, params, zeros_like):
        """A function grads -> the rate the step used; it updates ``params`` in place with
        one fused call over all four tensors. ``zeros_like()`` makes the state arrays."""
        count = [0]  # the step count (stochastic rounding draws other bits every step)
        masters = self._masters(params, zeros_like)
        if self.kernel == "sgd":
            buffers = zeros_like() if self.momentum else None

            def step(grads):
                # Looked up on the module at each call, so a test can count the calls.
                count[0] += 1
                fusedopt.sgd_(params, grads, buffers, lr=self.lr, momentum=self.momentum,
                              nesterov=self.nesterov, convention="keras", step=count[0],
                              **self._rounding(), **masters)
                return self.lr

            return step
        if self.kernel == "adaptive_sgd":
            buffers = zeros_like() if self.momentum else None

            def step(grads):
                rate = fusedopt.adaptive_sgd_(params, grads, buffers, lr=self.lr,
                                              momentum=self.momentum, convention="keras")
                return float(rate.lr)

            return step
        if self.kernel == "adam":
            exp_avgs, exp_avg_sqs = zeros_like(), zeros_like()

            def step(grads):
                count[0] += 1
                fusedopt.adam_(params, grads, exp_avgs, exp_avg_sqs, step=count[0], lr=self.lr,
                               **self._rounding(), **masters)
                return self.lr

            return step
        raise ValueError(f"unknown kernel {self.kernel!r}")


STRATEGIES = (
    Strategy("sgd", "mini-batch SGD", "sgd", lr=0.1),
    Strategy("full-batch", "full-batch GD", "sgd", lr=0.1, full_batch=True),
    Strategy("momentum", "momentum", "sgd", lr=0.01, momentum=0.9),
    Strategy("nesterov", "Nesterov", "sgd", lr=0.01, momentum=0.9, nesterov=True),
    Strategy("adaptive", "adaptive lr0/(1+|g|^2)", "adaptive_sgd", lr=0.1),
    Strategy("adaptive-momentum", "adaptive + momentum", "adaptive_sgd", lr=0.01, momentum=0.9),
    Strategy("adam", "Adam", "adam", lr=0.001),
)


# Training with bfloat16 params (float32 gradients and states, float32 arithmetic): each
# step's params are rounded to bfloat16, to nearest or stochastically, or kept exactly in
# a float32 master (or the params and an int16 remainder) from which each step's bfloat16
# params are written. Not in the default run; name them with --strategies
# (docs/strategies.md shows the curves).
PRECISION = (
    Strategy("momentum-bf16", "momentum, bf16 nearest", "sgd", lr=0.01, momentum=0.9, storage="bfloat16"),
    Strategy("momentum-bf16-sr", "momentum, bf16 stochastic", "sgd", lr=0.01, momentum=0.9,
             storage="bfloat16", rounding="stochastic"),
    Strategy("adam-bf16", "Adam, bf16 nearest", "adam", lr=0.001, storage="bfloat16"),
    Strategy("adam-bf16-sr", "Adam, bf16 stochastic", "adam", lr=0.001, storage="bfloat16",
             rounding="stochastic"),
    Strategy("momentum-bf16-master", "momentum, bf16 + f32 master", "sgd", lr=0.01, momentum=0.9,
             storage="bfloat16", master="float32"),
    Strategy("momentum-bf16-rem", "momentum, bf16 + remainders", "sgd", lr=0.01, momentum=0.9,
             storage="bfloat16", master="remainders"),
    Strategy("adam-bf16-master", "Adam, bf16 + f32 master", "adam", lr=0.001, storage="bfloat16",
             master="float32"),
    Strategy("adam-bf16-rem", "Adam, bf16 + remainders", "adam", lr=0.001, storage="bfloat16",
             master="remainders"),
)


def select(keys) -> list[Strategy]:
    """The strategies named in ``keys`` (None: the default set), in the table's order."""
    if keys is None:
        return list(STRATEGIES)
    every = STRATEGIES + PRECISION
    by_key = {s.key: s for s in every}
    unknown = [k for k in keys if k not in by_key]
    if unknown:
        raise ValueError(f"unknown strategies {unknown}; choose from {', '.join(by_key)}")
    return [s for s in every if s.key in set(keys)]
