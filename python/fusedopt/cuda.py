"""The CUDA backend: availability, the compiled module fusedopt._cuda, and its device-side
adaptive-rate step.

``fusedopt._cuda`` links the CUDA runtime statically, so it imports on machines without a
driver or a GPU; :func:`unavailable_reason` then says which is missing, and calls on CuPy
arrays with ``backend="auto"`` fall back to the CuPy reference (once warned), while
``backend="native"`` raises. Kernels run on CuPy's current stream and never wait for the
device, except where a host value is asked for (``count_nonfinite``, the float that
``_cuda.grad_sum_of_squares`` returns).
"""

from __future__ import annotations

import importlib

_NOT_BUILT = "fusedopt was built without its CUDA module (fusedopt._cuda)"

try:
    _cuda = importlib.import_module("fusedopt._cuda")
except ImportError as exc:
    _cuda = None
    if isinstance(exc, ModuleNotFoundError) and exc.name == "fusedopt._cuda":
        _import_error = _NOT_BUILT
    else:  # built, but does not load: say why rather than "not built"
        _import_error = f"the CUDA module fusedopt._cuda did not import ({type(exc).__name__}: {exc})"
else:
    _import_error = None

__all__ = ["is_built", "is_available", "unavailable_reason", "info"]


def is_built() -> bool:
    """True if this installation carries the CUDA module."""
    return _cuda is not None


def is_available() -> bool:
    """True if the CUDA module is built and can run on the current GPU."""
    return unavailable_reason(None) is None


def unavailable_reason(prep=None) -> str | None:
    """Why CUDA kernels cannot run (None if they can): not built, no driver, a driver older
    than the module's runtime, no device, or a device this build has no code for."""
    if _cuda is None:
        return _import_error or _NOT_BUILT
    return _cuda.unavailable_reason()


def module():
    return _cuda


def info() -> dict:
    """CUDA build and device facts for fusedopt.info()."""
    out = {"built": is_built()}
    reason = unavailable_reason()
    out["available"] = reason is None
    if reason is not None:
        out["reason"] = reason
    if _cuda is not None:
        out.update(_cuda.build_info())
        if reason is None:
            out["device"] = _cuda.device_info()
    return out


def adaptive_sgd(batch, base):
    """Adaptive-rate SGD entirely on the device: the norm, the rate and the update, over a
    ``fusedopt._cuda.Batch``.

    Returns ``(lr_t, grad_norm)`` as 0-d CuPy float64 arrays, computed on the device in the
    same order as the host path, so the step does not wait for the GPU; ``float()`` of
    either waits for it. ``base`` holds the SGD coefficients at the base rate lr0.
    """
    import cupy

    result = cupy.empty(2, dtype=cupy.float64)
    batch.adaptive_sgd(*base, result=result.data.ptr, stream=cupy.cuda.get_current_stream().ptr)
    return result[0], cupy.sqrt(result[1])
