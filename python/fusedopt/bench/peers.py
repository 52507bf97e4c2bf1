"""The CPU benchmark's peers: PyTorch's optimizers (foreach=False, foreach=True and
fused=True) and DeepSpeed's CPU Adam and Adagrad, each stepping on its own copies of a
case's arrays. The NumPy peer is fusedopt.reference, called as fusedopt is (cases.py)."""

from __future__ import annotations

import numpy as np

from fusedopt import rules as _rules

from .cases import CASES, Arrays

# The same rule in torch.optim: (class name, keyword arguments).
_TORCH = {
    "sgd": ("SGD", dict(lr=0.01)),
    "sgd+momentum": ("SGD", dict(lr=0.01, momentum=0.9)),
    "sgd+nesterov": ("SGD", dict(lr=0.01, momentum=0.9, nesterov=True)),
    "adagrad": ("Adagrad", dict(lr=0.01)),
    "rmsprop": ("RMSprop", dict(lr=0.01)),
    "adam": ("Adam", dict(lr=1e-3)),
    "adamw": ("AdamW", dict(lr=1e-3, weight_decay=0.01)),
    "amsgrad": ("Adam", dict(lr=1e-3, amsgrad=True)),
}
# DeepSpeed's CPU optimizers: (module, class name, keyword arguments).
_DEEPSPEED = {
    "adam": ("deepspeed.ops.adam", "DeepSpeedCPUAdam", dict(lr=1e-3, adamw_mode=False)),
    "adamw": ("deepspeed.ops.adam", "DeepSpeedCPUAdam",
              dict(lr=1e-3, weight_decay=0.01, adamw_mode=True)),
    "adagrad": ("deepspeed.ops.adagrad", "DeepSpeedCPUAdagrad", dict(lr=0.01)),
    "lion": ("deepspeed.ops.lion", "DeepSpeedCPULion", dict(lr=1e-4, weight_decay=0.1)),
}
PEERS = ("numpy", "torch", "deepspeed")
TORCH_VARIANTS = (("torch-foreach=False", dict(foreach=False)),
                  ("torch-foreach=True", dict(foreach=True)),
                  ("torch-fused=True", dict(fused=True)))


def import_torch():
    try:
        import torch
    except Exception:  # noqa: BLE001 - any failure means no torch peer
        return None
    return torch


def deepspeed_version() -> str | None:
    try:
        import deepspeed
    except Exception:  # noqa: BLE001
        return None
    return getattr(deepspeed, "__version__", "?")


def _torch_copy(torch, a):
    """A torch tensor holding a copy of array ``a``; ml_dtypes' bfloat16 (which
    torch.from_numpy does not take) through its bits."""
    if a.dtype.name == "bfloat16":
        return torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(a.copy())


class TorchPeer:
    """A torch (or DeepSpeed) optimizer over private copies of the case's params and
    gradients (its states are its own too), so nothing a peer does reaches the arrays that
    fusedopt and the later rules are measured on.

    The copies matter because torch's ``SGD(nesterov=True, foreach=True)`` adds the momentum
    into ``.grad`` in place (``torch._foreach_add_(device_grads, bufs, ...)`` in
    torch/optim/sgd.py, 2.13). With one fixed gradient that compounds: gradient, momentum
    and params grow 2.4x per step and reach inf. When the peers shared the case's arrays,
    every rule measured after it in a sweep ran on inf and NaN, and the adaptive rate, a
    subnormal float32 by then, ran at 19-28% of its roof at 2^24. The peer's own figures
    are unaffected by that growth: it never passes through subnormals, and inf and NaN
    cost nothing extra in the vector units.
    """

    def __init__(self, torch, opt_cls, kwargs, arrays: Arrays, case: str):
        self.params = []
        for p, g in zip(*arrays.shaped(case)):  # a factored rule's matrices as fusedopt's
            t = torch.nn.Parameter(_torch_copy(torch, p))
            t.grad = _torch_copy(torch, g)
            self.params.append(t)
        self.opt = opt_cls(self.params, **kwargs)
        self.step = self.opt.step

    def close(self):
        self.opt = None
        self.step = None
        self.params = None


def _torch_spec(torch, rule):
    """(torch class name, keyword arguments) of a case, or None: the table above, else the
    torch class of the case's optimizer name (fusedopt/rules/) with the case's arguments."""
    if rule in _TORCH:
        return _TORCH[rule]
    fn, hyper = CASES[rule]
    name = _rules.kernel(fn)[1].optimizer
    return (name, dict(hyper)) if name and hasattr(torch.optim, name) else None


def torch_peer(torch, rule, variant_kwargs, arrays):
    spec = _torch_spec(torch, rule)
    if spec is None:
        return None, "no torch.optim equivalent"
    cls_name, kwargs = spec
    cls = getattr(torch.optim, cls_name)
    try:
        peer = TorchPeer(torch, cls, {**kwargs, **variant_kwargs}, arrays, rule)
        peer.step()
    except Exception as exc:  # noqa: BLE001 - e.g. fused=True not implemented on CPU
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    return peer, None


def deepspeed_peer(torch, rule, arrays):
    spec = _DEEPSPEED.get(rule)
    if spec is None:
        return None, "no DeepSpeed CPU optimizer for this rule"
    module, cls_name, kwargs = spec
    try:
        import importlib

        cls = getattr(importlib.import_module(module), cls_name)
        peer = TorchPeer(torch, cls, kwargs, arrays, rule)
        peer.step()
    except Exception as exc:  # noqa: BLE001 - not built, unsupported dtype, ...
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    return peer, None
