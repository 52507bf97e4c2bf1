"""A stand-in for CuPy over host memory, so that tests/test_cuda.py can run on the CUDA
emulation (fusedopt._cuda_emulated) where there is no GPU.

With ``FUSEDOPT_TEST_CUDA_EMULATION=1``, tests/conftest.py installs this module as ``cupy``
and the emulation as ``fusedopt._cuda``; then the public API takes the GPU path end to end:
the array checks, the fallbacks, the device-side adaptive rate, the bindings and the
kernels. Only the part of CuPy that fusedopt and its CUDA tests use is here, with CuPy 14's
names and behaviour where they differ from NumPy's: arrays are not NumPy arrays (no
implicit conversion, so code that would copy a device array to the host fails), reductions
return 0-d arrays, and ``flags`` has no ``writeable``.
"""

from __future__ import annotations

import ctypes
import types

import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin

float16, float32, float64 = np.float16, np.float32, np.float64
int64, uint64 = np.int64, np.uint64


class _Flags:
    """CuPy's ndarray.flags: c_contiguous, f_contiguous, owndata."""

    __slots__ = ("c_contiguous", "f_contiguous", "owndata")

    def __init__(self, a: np.ndarray):
        self.c_contiguous = a.flags.c_contiguous
        self.f_contiguous = a.flags.f_contiguous
        self.owndata = a.base is None


class _MemoryPointer:
    __slots__ = ("ptr", "device_id")

    def __init__(self, ptr: int):
        self.ptr, self.device_id = ptr, 0


def _unwrap(x):
    if isinstance(x, ndarray):
        return x._host
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap(v) for v in x)
    if isinstance(x, dict):
        return {k: _unwrap(v) for k, v in x.items()}
    if isinstance(x, np.ndarray):
        raise TypeError("a NumPy array where a device array was expected (CuPy would refuse it)")
    return x


def _wrap(x):
    if isinstance(x, np.ndarray):
        return ndarray(x)
    if isinstance(x, (np.generic, bool, int, float)) and not isinstance(x, ndarray):
        return ndarray(np.asarray(x))  # CuPy's reductions give 0-d arrays, not scalars
    if isinstance(x, tuple):
        return tuple(_wrap(v) for v in x)
    return x


class ndarray(NDArrayOperatorsMixin):  # noqa: N801 - CuPy's name
    """A device array whose memory is host memory."""

    __slots__ = ("_host",)

    def __init__(self, host: np.ndarray):
        self._host = host

    # --- what fusedopt and the bindings read --------------------------------------------
    dtype = property(lambda self: self._host.dtype)
    @property
    def shape(self):
        return self._host.shape

    @shape.setter
    def shape(self, value):  # CuPy sets a shape in place too (same size)
        self._host.shape = value

    size = property(lambda self: self._host.size)
    ndim = property(lambda self: self._host.ndim)
    itemsize = property(lambda self: self._host.itemsize)
    nbytes = property(lambda self: self._host.nbytes)
    strides = property(lambda self: self._host.strides)
    flags = property(lambda self: _Flags(self._host))
    # CuPy's own field behind flags.c_contiguous, which the CUDA module's fast path reads
    # (csrc/bindings/cuda_batch.cpp): flags builds an object on every read.
    _c_contiguous = property(lambda self: self._host.flags.c_contiguous)
    data = property(lambda self: _MemoryPointer(self._host.ctypes.data))

    @property
    def __cuda_array_interface__(self):
        h = self._host
        return {"shape": h.shape, "typestr": h.dtype.str, "data": (h.ctypes.data, False),
                "strides": None if h.flags.c_contiguous else h.strides, "version": 3}

    # DLPack as a CUDA array offers it: the device says CUDA, the capsule is NumPy's. Only
    # this module's from_dlpack can read it back; another consumer (torch.from_dlpack, say)
    # would take host memory for device memory.
    def __dlpack__(self, **kwargs):
        return self._host.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return (2, 0)  # kDLCUDA, device 0

    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. "
                        "Please use `.get()` to construct a NumPy array explicitly.")

    # --- NumPy's operations, on the host memory, giving device arrays ------------------------
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        out = getattr(ufunc, method)(*_unwrap(inputs), **_unwrap(kwargs))
        if "out" in kwargs:
            return kwargs["out"][0] if len(kwargs["out"]) == 1 else kwargs["out"]
        return _wrap(out)

    def __array_function__(self, func, types_, args, kwargs):
        return _wrap(func(*_unwrap(args), **_unwrap(kwargs)))

    def __getitem__(self, key):
        return _wrap(self._host[_unwrap(key)])

    def __setitem__(self, key, value):
        self._host[_unwrap(key)] = _unwrap(value)

    def __len__(self):
        return len(self._host)

    def __bool__(self):
        return bool(self._host)

    def __float__(self):
        return float(self._host)

    def __int__(self):
        return int(self._host)

    def __index__(self):
        return int(self._host)

    def __repr__(self):
        return f"host_cupy.ndarray({self._host!r})"

    def copy(self):
        return ndarray(self._host.copy())

    def astype(self, dtype_, copy=True):
        return ndarray(self._host.astype(dtype_, copy=copy))

    def reshape(self, *shape):
        return ndarray(self._host.reshape(*shape))

    def get(self):
        return self._host.copy()

    def set(self, arr):
        if not isinstance(arr, np.ndarray):
            raise TypeError("set() takes a NumPy array")
        self._host[...] = arr


def asarray(a, dtype=None):
    if isinstance(a, ndarray):
        return a if dtype is None or np.dtype(dtype) == a.dtype else a.astype(dtype)
    interface = getattr(a, "__cuda_array_interface__", None)
    if interface is not None:  # a foreign device array: a view of its memory, as CuPy makes
        if interface.get("strides") is not None or dtype is not None:
            raise NotImplementedError("host_cupy: asarray of a strided foreign array, or with a dtype")
        host_dtype = np.dtype(interface["typestr"])
        count = int(np.prod(interface["shape"]))
        memory = (ctypes.c_char * (count * host_dtype.itemsize)).from_address(interface["data"][0])
        return ndarray(np.frombuffer(memory, host_dtype).reshape(interface["shape"]))
    return ndarray(np.array(a, dtype=dtype))  # a host-to-device copy


def asnumpy(a):
    return a.get() if isinstance(a, ndarray) else np.asarray(a)


def _creator(fn):
    return lambda *args, **kwargs: ndarray(fn(*args, **kwargs))


empty, zeros, ones, full = (_creator(f) for f in (np.empty, np.zeros, np.ones, np.full))
# Ufuncs and array functions dispatch to ndarray.__array_ufunc__ / __array_function__.
sqrt, maximum, isfinite, add, where = np.sqrt, np.maximum, np.isfinite, np.add, np.where
abs = np.abs  # noqa: A001 - CuPy's name (Adamax's reference)
count_nonzero, sum, all, array_equal = np.count_nonzero, np.sum, np.all, np.array_equal


def from_dlpack(x):
    """A view of a DLPack producer's memory; its capsule is NumPy's (see ndarray.__dlpack__)."""
    if int(x.__dlpack_device__()[0]) not in (2, 13):
        raise BufferError("host_cupy: from_dlpack of a producer not on the (emulated) GPU")

    class _AsHost:
        __dlpack__ = staticmethod(x.__dlpack__)

        @staticmethod
        def __dlpack_device__():
            return (1, 0)  # kDLCPU: what the capsule really holds

    return ndarray(np.from_dlpack(_AsHost()))


# --- cupy.cuda -----------------------------------------------------------------------------
class _Stream:
    """A stream that is always done: the emulation runs everything when it is queued."""

    _current: list = []

    def __init__(self, non_blocking=False, null=False, ptr=0):
        self.ptr = ptr

    @classmethod
    def from_external(cls, obj):  # the CUDA stream protocol: (version, cudaStream_t)
        return cls(ptr=obj.__cuda_stream__()[1])

    def synchronize(self):
        pass

    def __enter__(self):
        _Stream._current.append(self)
        return self

    def __exit__(self, *exc):
        _Stream._current.pop()


def _get_current_stream(device_id=-1):
    return _Stream._current[-1] if _Stream._current else _Stream(null=True)


class _Device:
    """The one emulated GPU, as a context like cupy.cuda.Device's."""

    def __init__(self, device=None):
        self.id = 0 if device is None else int(device)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def _device_count():
    return 1


def _mem_get_info():
    return 0, 0  # no device memory to speak of: tests that need GiBs skip


cuda = types.ModuleType("cupy.cuda")
cuda.Stream = _Stream
cuda.Device = _Device
cuda.get_current_stream = _get_current_stream
cuda.runtime = types.SimpleNamespace(getDeviceCount=_device_count, memGetInfo=_mem_get_info)


class _MemoryPool:
    def free_all_blocks(self):
        pass


def get_default_memory_pool():
    return _MemoryPool()


def install(emulated_module):
    """Makes this module ``cupy`` and `emulated_module` ``fusedopt._cuda`` for the rest of
    the process (tests/conftest.py, with FUSEDOPT_TEST_CUDA_EMULATION=1)."""
    import sys

    import fusedopt.cuda

    sys.modules.update({"cupy": sys.modules[__name__], "cupy.cuda": cuda, "fusedopt._cuda": emulated_module})
    fusedopt._cuda = emulated_module
    fusedopt.cuda._cuda, fusedopt.cuda._import_error = emulated_module, None
