"""The one place that inspects arrays.

Every kernel, native or reference, goes through :func:`prepare` before anything is written:
argument types, list lengths, dtypes, shapes, contiguity, writability, memory overlap and
device. A violation raises TypeError or ValueError naming the function, the argument, the
list index and what was expected, and leaves every array untouched. Nothing is ever copied:
a copy of an output would silently lose the update.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

# Storage dtypes of the kernels and their codes in csrc/common/dtype.h.
DTYPE_CODES = {np.dtype(np.float32): 0, np.dtype(np.float64): 1}
SUPPORTED_DTYPES = "float32 or float64"


class Prepared:
    """A checked call: lists of arrays per role, all of one dtype and device."""

    __slots__ = ("fn", "device", "xp", "dtype", "dtype_code", "params", "grads", "states",
                 "state_names", "single", "torch_device")

    def __init__(self, fn, device, xp, dtype, params, grads, states, state_names, single,
                 torch_device=None):
        self.fn = fn
        self.device = device  # "cpu" or "cuda"
        self.xp = xp  # numpy or cupy: the array module of the arrays
        self.dtype = dtype
        self.dtype_code = DTYPE_CODES.get(dtype)
        self.params = params
        self.grads = grads
        self.states = states  # list of lists, in the rule's state order
        self.state_names = state_names
        self.single = single
        # The GPU of the params if they are torch CUDA tensors (seen here as CuPy views),
        # else None: device work on torch params runs on torch's current stream there
        # (fusedopt.cuda.params_stream).
        self.torch_device = torch_device

    @property
    def n_tensors(self) -> int:
        return len(self.params)

    @property
    def n_elements(self) -> int:
        return sum(int(p.size) for p in self.params)


def _is_list(value) -> bool:
    return isinstance(value, (list, tuple))


def _cupy():
    try:
        import cupy
    except ImportError:  # pragma: no cover - depends on the machine
        return None
    return cupy


def to_native(fn: str, label: str, x):
    """Returns (array, device) for a NumPy array, CuPy array or torch tensor, no copy."""
    if isinstance(x, np.ndarray):
        return x, "cpu"
    if is_torch_tensor(x):
        if x.device.type == "cpu":
            # detach(): parameters require grad; the NumPy view shares the tensor's memory.
            try:
                return x.detach().numpy(), "cpu"
            except (TypeError, RuntimeError) as exc:  # bfloat16; conjugate or negative bit
                dtype = str(x.dtype).replace("torch.", "")
                raise TypeError(f"{fn}: {label} is a torch tensor of dtype {dtype} that NumPy "
                                f"cannot view in place ({exc}); supported: {SUPPORTED_DTYPES}, "
                                "without a conjugate or negative bit") from None
        if x.is_neg() or x.is_conj():  # NumPy refuses these views on the CPU; CuPy would not
            raise TypeError(f"{fn}: {label} is a torch tensor with its negative or conjugate bit "
                            "set (its memory does not hold its values); supported: "
                            f"{SUPPORTED_DTYPES}, without a conjugate or negative bit")
        cupy = _cupy()
        if cupy is None:
            raise TypeError(f"{fn}: {label} is a torch tensor on {x.device}, and CuPy is not "
                            "installed to reach its memory (pip install 'fusedopt[cuda]')")
        return cupy.asarray(x.detach()), "cuda"
    if _is_cupy_array(x):
        return x, "cuda"
    if hasattr(x, "__cuda_array_interface__"):
        cupy = _cupy()
        if cupy is None:
            raise TypeError(f"{fn}: {label} is a device array, and CuPy is not installed to "
                            "reach its memory (pip install 'fusedopt[cuda]')")
        return cupy.asarray(x), "cuda"
    if _dlpack_on_cuda(x):
        cupy = _cupy()
        if cupy is None:
            raise TypeError(f"{fn}: {label} is a DLPack device array, and CuPy is not installed "
                            "to reach its memory (pip install 'fusedopt[cuda]')")
        return cupy.from_dlpack(x), "cuda"  # zero-copy, ordered on CuPy's current stream
    raise TypeError(
        f"{fn}: {label} must be a NumPy array, CuPy array or torch tensor, "
        f"got {type(x).__name__}")


def _dlpack_on_cuda(x) -> bool:
    """True for a DLPack producer whose memory is CUDA device or managed memory."""
    device = getattr(x, "__dlpack_device__", None)
    if device is None or not hasattr(x, "__dlpack__"):
        return False
    try:
        kind = int(device()[0])
    except Exception:  # a producer that cannot say where it lives is not one we can use
        return False
    return kind in (2, 13)  # kDLCUDA, kDLCUDAManaged


def numpy_fast_lists(params, grads, state_values):
    """(params, grads, state lists) as tuples of arrays for the CPU module, or None.

    For plain NumPy (or torch CPU) calls that must pass the arrays to several native functions (the
    adaptive rate's norm, then its update; skip_if_nonfinite's count, then the update:
    fusedopt._native.check_fast); a call without either goes straight to the module's
    strict check (fusedopt._native.apply_strict). Only the shape of the call is looked at
    here; the module's validate() then applies prepare()'s rules in C++ (csrc/bindings/
    batch_from_python.cpp), and whatever it refuses goes to prepare(), which words the error.
    """
    if _host_single(params):
        if not _host_single(grads):
            return None
        lists = []
        for value in state_values:
            if not _host_single(value):
                return None
            lists.append((value,))
        return (params,), (grads,), lists
    if type(params) not in (list, tuple) or type(grads) not in (list, tuple):
        return None
    for value in state_values:
        if type(value) not in (list, tuple):
            return None
    # Tuples: the caller's lists could change (another thread) between the check and the
    # update, whose reads then go unchecked; a tuple of our own cannot.
    return tuple(params), tuple(grads), [tuple(v) for v in state_values]


def _host_single(x) -> bool:
    """One array the CPU module's reader may take as a one-tensor call: a NumPy array or a
    torch tensor (it refuses those not in host memory)."""
    return type(x) is np.ndarray or is_torch_tensor(x)


def _as_lists(fn: str, roles: Sequence[tuple[str, Any]]):
    """Normalises every role to a list; a single array in params means one tensor."""
    params_name, params = roles[0]
    single = not _is_list(params)
    out = []
    for name, value in roles:
        if single:
            if _is_list(value):
                raise TypeError(f"{fn}: {name} is a list but {params_name} is a single array; "
                                "pass lists for every argument or single arrays for every one")
            out.append([value])
        else:
            if not _is_list(value):
                raise TypeError(f"{fn}: {name} must be a list of arrays like {params_name}, "
                                f"got {type(value).__name__}")
            if len(value) != len(params):
                raise ValueError(f"{fn}: {name} has {len(value)} arrays but {params_name} has "
                                 f"{len(params)}; every argument needs one array per tensor")
            out.append(list(value))
    return single, out


def prepare(fn: str, params, grads, states: Sequence[tuple[str, Any]] = (), *,
            written_only: bool = False) -> Prepared:
    """Checks one call's arrays. ``states`` are (argument name, arrays) in rule order.

    ``written_only=True`` (with ``grads=None``) checks only the arrays that are written (an
    optimizer's own params and states, at construction); the result then has
    ``grads=None``. Otherwise grads are required: a kernel called with ``grads=None`` must
    not get past the checks.
    """
    if grads is None and not written_only:
        raise TypeError(f"{fn}: grads must be an array or a list of arrays, got None")
    has_grads = grads is not None
    roles = [("params", params), *([("grads", grads)] if has_grads else []), *states]
    single, lists = _as_lists(fn, roles)
    names = [name for name, _ in roles]
    read_only = 1 if has_grads else -1  # the role index that is only read
    n = len(lists[0])
    label = (lambda name, i: name) if single else (lambda name, i: f"{name}[{i}]")

    native = [[None] * n for _ in roles]
    device = None
    dtype = None
    for i in range(n):
        for r, name in enumerate(names):
            arr, dev = to_native(fn, label(name, i), lists[r][i])
            if device is None:
                device = dev
            elif dev != device:
                raise ValueError(
                    f"{fn}: {label(name, i)} is a {dev} array but {label(names[0], 0)} is a "
                    f"{device} array; one call takes arrays of one device")
            native[r][i] = arr
        p = native[0][i]
        if dtype is None:
            dtype = p.dtype
            if dtype not in DTYPE_CODES:
                raise TypeError(f"{fn}: {label('params', i)} has dtype {dtype}; supported: "
                                f"{SUPPORTED_DTYPES}")
        for r, name in enumerate(names):
            a = native[r][i]
            if a.dtype != dtype:
                raise TypeError(
                    f"{fn}: {label(name, i)} has dtype {a.dtype} but {label('params', 0)} has "
                    f"{dtype}; every array of one call must share one dtype")
            if r and a.shape != p.shape:
                raise ValueError(f"{fn}: {label(name, i)} has shape {a.shape} but "
                                 f"{label('params', i)} has shape {p.shape}")
            if not a.flags.c_contiguous:
                raise ValueError(
                    f"{fn}: {label(name, i)} is not C-contiguous (strides {a.strides}); the kernels "
                    "update arrays in place and never copy, so pass contiguous arrays")
            if a.size and _address(a) % a.dtype.itemsize:
                # The loops access elements through typed pointers: a misaligned one is
                # undefined behaviour in C++ and a fault on some vector paths.
                raise ValueError(
                    f"{fn}: {label(name, i)} is not aligned to its {a.dtype.itemsize}-byte "
                    f"elements (address {_address(a):#x}); pass an aligned array")
            if r != read_only and _read_only(a, lists[r][i]):
                raise ValueError(f"{fn}: {label(name, i)} is read-only, but the kernel writes it")
    if n:
        _check_overlap(fn, native, names, label, device, read_only)
    xp = np
    if device == "cuda":
        xp = _cupy()
    first_state = 2 if has_grads else 1
    torch_device = None
    if device == "cuda" and is_torch_tensor(lists[0][0]):
        torch_device = int(native[0][0].device.id)
    return Prepared(fn, device or "cpu", xp, dtype or np.dtype(np.float32), native[0],
                    native[1] if has_grads else None, native[first_state:],
                    names[first_state:], single, torch_device)


def _is_cupy_array(x) -> bool:
    """An array of CuPy's own types (by module: CuPy may not be importable here)."""
    return type(x).__module__.split(".", 1)[0] == "cupy"


def is_torch_tensor(x) -> bool:
    """A torch.Tensor, subclasses (nn.Parameter, ones defined elsewhere) included; never
    imports torch."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _read_only(arr, original) -> bool:
    """NumPy's writeable flag. CuPy arrays have none (CuPy 14's flags are c_contiguous,
    f_contiguous and owndata: its arrays are always writable), and neither do torch
    tensors; any other device array says so in the read-only bit of its
    __cuda_array_interface__."""
    if isinstance(arr, np.ndarray):
        return not arr.flags.writeable
    if _is_cupy_array(original) or is_torch_tensor(original):
        return False
    interface = getattr(original, "__cuda_array_interface__", None)
    return bool(interface is not None and interface["data"][1])


def _check_overlap(fn, native, names, label, device, read_only):
    flat, written, where = [], [], []
    for r, arrays in enumerate(native):
        for i, a in enumerate(arrays):
            flat.append(a)
            written.append(r != read_only)  # gradients are only read: two may share memory
            where.append(label(names[r], i))
    pair = _find_overlap(flat, written, device)
    if pair is not None:
        a, b = where[pair[0]], where[pair[1]]
        raise ValueError(f"{fn}: {a} and {b} share memory; every array the kernel writes must "
                         "have memory of its own (a param cannot be its own grad or state)")


def _find_overlap(arrays, written, device):
    if device == "cpu":
        from fusedopt import _native

        core = _native.core()
        if core is not None:
            return core.find_overlap(arrays, written)
    return _find_overlap_py(arrays, written)


def _find_overlap_py(arrays, written):
    """The same sweep as _core.find_overlap, over byte ranges of contiguous arrays."""
    spans = []
    for i, a in enumerate(arrays):
        nbytes = int(a.nbytes)
        if nbytes:
            lo = _address(a)
            spans.append((lo, lo + nbytes, i, written[i]))
    spans.sort()
    reach = None
    for span in spans:
        if reach is not None and span[0] < reach[1] and (span[3] or reach[3]):
            return min(span[2], reach[2]), max(span[2], reach[2])
        if reach is None or span[1] > reach[1]:
            reach = span
    return None


def _address(a) -> int:
    if isinstance(a, np.ndarray):
        return a.__array_interface__["data"][0]
    return int(a.data.ptr)  # CuPy
