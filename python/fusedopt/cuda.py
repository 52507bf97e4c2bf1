"""The CUDA backend: availability and the compiled module fusedopt._cuda."""

from __future__ import annotations

try:
    from fusedopt import _cuda  # type: ignore[attr-defined]
except ImportError as exc:
    _cuda = None
    _import_error = f"{type(exc).__name__}: {exc}"
else:
    _import_error = None


def is_built() -> bool:
    """True if this installation carries the CUDA module."""
    return _cuda is not None


def is_available() -> bool:
    """True if the CUDA module is built and a usable GPU is present."""
    return unavailable_reason(None) is None


def unavailable_reason(prep=None) -> str | None:
    """Why CUDA kernels cannot run (None if they can)."""
    if _cuda is None:
        return "fusedopt was built without its CUDA module (fusedopt._cuda)"
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
    return out
