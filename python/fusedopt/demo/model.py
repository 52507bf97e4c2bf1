"""The seed's model, Dense(128, relu) -> Dense(10) with softmax cross-entropy, twice: in
NumPy with a hand-written backward pass, and in torch with autograd. Both keep their
parameters as a list [W1, b1, W2, b2] that fusedopt's kernels update in place."""

from __future__ import annotations

import numpy as np

from fusedopt import _storage

HIDDEN = 128
CLASSES = 10


def init_params(n_in: int, seed: int, hidden: int = HIDDEN, classes: int = CLASSES) -> list[np.ndarray]:
    """Keras's defaults for Dense: Glorot-uniform kernels, zero biases (float32)."""
    rng = np.random.default_rng(seed)

    def glorot(fan_in, fan_out):
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-limit, limit, size=(fan_in, fan_out)).astype(np.float32)

    return [glorot(n_in, hidden), np.zeros(hidden, np.float32),
            glorot(hidden, classes), np.zeros(classes, np.float32)]


class NumpyModel:
    """Forward and backward in NumPy; no framework."""

    framework = "numpy"

    def __init__(self, init: list[np.ndarray], storage: str = "float32"):
        dtype = np.dtype(np.float32) if storage == "float32" else _storage.bfloat16()
        self.params = [p.astype(dtype) for p in init]

    def zeros_like(self) -> list[np.ndarray]:
        return [np.zeros(p.shape, np.float32) for p in self.params]  # states: float32

    def _forward(self, x):
        w1, b1, w2, b2 = (p.astype(np.float32, copy=False) for p in self.params)
        pre = x @ w1 + b1
        hidden = np.maximum(pre, 0.0)
        logits = hidden @ w2 + b2
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        return pre, hidden, log_probs

    def loss_and_grads(self, x: np.ndarray, y: np.ndarray) -> tuple[float, list[np.ndarray]]:
        """The batch's mean cross-entropy and its gradients, one array per parameter."""
        w2 = self.params[2].astype(np.float32, copy=False)
        pre, hidden, log_probs = self._forward(x)
        n = len(y)
        loss = -float(log_probs[np.arange(n), y].mean())
        d_logits = np.exp(log_probs)
        d_logits[np.arange(n), y] -= 1.0
        d_logits /= np.float32(n)
        d_hidden = d_logits @ w2.T
        d_hidden[pre <= 0.0] = 0.0
        grads = [x.T @ d_hidden, d_hidden.sum(axis=0), hidden.T @ d_logits, d_logits.sum(axis=0)]
        return loss, grads

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        """(mean cross-entropy, accuracy) on a whole set."""
        _, _, log_probs = self._forward(x)
        loss = -float(log_probs[np.arange(len(y)), y].mean())
        return loss, float((log_probs.argmax(axis=1) == y).mean())


class TorchModel:
    """The same model with torch autograd for forward and backward; the parameters are
    torch tensors, and fusedopt updates them in place like NumPy arrays."""

    framework = "torch"

    def __init__(self, init: list[np.ndarray], storage: str = "float32"):
        import torch

        self._torch = torch
        dtype = torch.float32 if storage == "float32" else torch.bfloat16
        self.params = [torch.tensor(p).to(dtype).requires_grad_() for p in init]

    def zeros_like(self):
        return [self._torch.zeros_like(p, dtype=self._torch.float32, requires_grad=False)
                for p in self.params]

    def _logits(self, x):
        w1, b1, w2, b2 = (p.float() for p in self.params)
        return self._torch.relu(x @ w1 + b1) @ w2 + b2

    def loss_and_grads(self, x, y):
        import torch.nn.functional as F

        for p in self.params:
            p.grad = None
        loss = F.cross_entropy(self._logits(x), y)
        loss.backward()
        return float(loss.detach()), [p.grad for p in self.params]

    def evaluate(self, x, y):
        import torch.nn.functional as F

        with self._torch.no_grad():
            logits = self._logits(x)
            loss = float(F.cross_entropy(logits, y))
            acc = float((logits.argmax(dim=1) == y).float().mean())
        return loss, acc

    def as_inputs(self, x: np.ndarray, y: np.ndarray):
        return self._torch.from_numpy(x), self._torch.from_numpy(y)


def make_model(framework: str, init: list[np.ndarray], storage: str = "float32"):
    if framework == "numpy":
        return NumpyModel(init, storage)
    if framework == "torch":
        try:
            import torch  # noqa: F401
        except ImportError as exc:
            raise ImportError("--framework torch needs PyTorch: pip install \"fusedopt[torch]\"") from exc
        return TorchModel(init, storage)
    raise ValueError(f"framework must be 'numpy' or 'torch', got {framework!r}")
