"""Reference implementations with the same signatures as the kernels, in NumPy or CuPy.

Every function takes ``mode``:

* ``"exact"`` (default): the kernel's documented operation order at the arrays' storage
  precision. float32 results equal the native kernels bit for bit; this is what the tests
  and ``python -m fusedopt verify`` compare against.
* ``"float64"``: the textbook formula from the raw hyperparameters, computed in float64 and
  stored back at the arrays' precision, for checking drift over many steps.

The same array checks as the kernels apply, and CuPy arrays work unchanged.
"""

from __future__ import annotations

import functools

from fusedopt import _dispatch, _kernels

__all__ = [*_kernels.KERNELS, "MODES"]

MODES = {"exact": "reference", "float64": _dispatch.FLOAT64}


def _reference_of(kernel):
    @functools.wraps(kernel)
    def wrapper(*args, mode: str = "exact", **kwargs):
        if "backend" in kwargs:
            raise TypeError(f"reference.{kernel.__name__} takes mode=, not backend=")
        if mode not in MODES:
            raise ValueError(f"reference.{kernel.__name__}: mode must be 'exact' or 'float64', "
                             f"got {mode!r}")
        return kernel(*args, backend=MODES[mode], **kwargs)

    wrapper.__doc__ = (f"Reference of fusedopt.{kernel.__name__} (mode='exact' or 'float64').\n\n"
                       + (kernel.__doc__ or ""))
    return wrapper


# One reference per functional kernel, by the same name.
globals().update({name: _reference_of(k) for name, k in _kernels.KERNELS.items()})
