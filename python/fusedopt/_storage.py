"""Storage dtypes in the array modules: what the reference computes in and how it rounds back.

The kernels store params, grads and states in float32, float64, bfloat16 or float16 and
compute in float32 (float64 for float64 params): a load widens exactly, a store rounds to
nearest even (csrc/math/storage.h). The exact reference does the same around each rule's
``exact``: :func:`widened` before, :func:`store` after. bfloat16 is ml_dtypes' NumPy dtype
(the one JAX and TensorFlow use); without ml_dtypes installed everything else still works.
"""

from __future__ import annotations

import numpy as np

try:  # optional: NumPy has no bfloat16 of its own
    import ml_dtypes as _ml_dtypes
except ImportError:  # pragma: no cover - depends on the environment
    _ml_dtypes = None

BFLOAT16 = np.dtype(_ml_dtypes.bfloat16) if _ml_dtypes is not None else None


def dtype_name(dtype) -> str:
    """The name of a storage dtype ("bfloat16" for ml_dtypes' one)."""
    return np.dtype(dtype).name if not isinstance(dtype, str) else dtype


def bfloat16():
    """ml_dtypes' bfloat16 as a NumPy dtype, or a TypeError saying how to get it."""
    if BFLOAT16 is None:
        raise TypeError("bfloat16 arrays need ml_dtypes (pip install ml_dtypes, or "
                        "pip install 'fusedopt[bf16]')")
    return BFLOAT16


def is_bfloat16(dtype) -> bool:
    return dtype.itemsize == 2 and dtype.kind == "V" and dtype.name == "bfloat16"


def compute_dtype(xp, param_dtype):
    """float64 for float64 params, float32 for every other storage."""
    return xp.float64 if np.dtype(param_dtype) == np.float64 else xp.float32


def widened(xp, a, compute):
    """``a`` in the compute dtype: the array itself where it is stored so, else a widened
    copy (exact). bfloat16 widens by its bits: its 16 bits are float32's high half."""
    if a.dtype == compute:
        return a
    if is_bfloat16(a.dtype):
        return (a.view(xp.uint16).astype(xp.uint32) << 16).view(xp.float32)
    return a.astype(compute)


def _bfloat16_bits(xp, x):
    """float32 values rounded to bfloat16 bits, as math::float_to_bf16: to nearest even by
    adding 0x7FFF and the kept half's lowest bit; NaN keeps its sign and top payload bits,
    made quiet."""
    u = x.view(xp.uint32)
    rounded = (u + xp.uint32(0x7FFF) + ((u >> 16) & xp.uint32(1))) >> 16  # wraps only for NaN
    nan = (u >> 16) | xp.uint32(0x0040)
    return xp.where((u & xp.uint32(0x7FFFFFFF)) > xp.uint32(0x7F800000), nan, rounded).astype(xp.uint16)


def _mix32(xp, x):
    """math::mix32 on uint32 arrays (NumPy's and CuPy's uint32 products wrap, as C++'s)."""
    x = x ^ (x >> 16)
    x = x * xp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * xp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def random_bits(xp, key0: int, key1: int, role: int, tensor: int, n: int):
    """math::random_bits of the ``n`` elements of tensor ``tensor`` of the call in ``role``
    (math::tensor_key computed as the kernels do, once per tensor)."""
    tkey = _mix32(xp, xp.asarray([key1 ^ (tensor & 0xFFFFFFFF)], dtype=xp.uint32))[0]
    counter = (xp.arange(n, dtype=xp.uint64) << xp.uint64(3)) | xp.uint64(role)
    lo = (counter & xp.uint64(0xFFFFFFFF)).astype(xp.uint32)
    hi = (counter >> xp.uint64(32)).astype(xp.uint32)
    return _mix32(xp, _mix32(xp, lo ^ xp.uint32(key0)) ^ hi ^ tkey)


def _stochastic_bits(xp, dtype, x, r):
    """math::float_to_bf16_stochastic / float_to_f16_stochastic on float32 ``x`` with
    random bits ``r``: the 16-bit patterns."""
    u = x.view(xp.uint32)
    a = u & xp.uint32(0x7FFFFFFF)
    if is_bfloat16(dtype):
        up = (u + (r >> 16)) >> 16  # wraps only for NaN, which takes nearest rounding's bits
        return xp.where(a > xp.uint32(0x7F800000), _bfloat16_bits(xp, x), up).astype(xp.uint16)
    sign = (u >> 16) & xp.uint32(0x8000)
    e = a >> 23
    with np.errstate(over="ignore", invalid="ignore"):
        nearest = x.astype(xp.float16).view(xp.uint16).astype(xp.uint32)
    normal = (a - xp.uint32(0x38000000) + (r & xp.uint32(0x1FFF))) >> 13  # wraps where unused
    shift = xp.clip(xp.uint32(126) - xp.minimum(e, xp.uint32(112)), 14, 31).astype(xp.uint32)
    m = (a & xp.uint32(0x7FFFFF)) | xp.uint32(0x800000)
    sub = (m + (r & ((xp.uint32(1) << shift) - xp.uint32(1)))) >> shift
    out = xp.where(e < 95, sign, sign | sub)
    out = xp.where(a >= xp.uint32(0x38800000), sign | normal, out)
    out = xp.where(a >= xp.uint32(0x47800000), sign | xp.uint32(0x7C00), out)
    return xp.where(a >= xp.uint32(0x7F800000), nearest, out).astype(xp.uint16)


def store(xp, a, values, stochastic=None) -> None:
    """Writes compute-dtype ``values`` into ``a``, rounded to nearest even where ``a`` is
    narrower (nothing to do where ``values`` is ``a`` itself), or stochastically with
    ``stochastic`` = (key0, key1, role, the array's tensor index in the call)."""
    if values is a:
        return
    if stochastic is not None and a.dtype.itemsize == 2:
        key0, key1, role, tensor = stochastic
        x = xp.ascontiguousarray(values, dtype=xp.float32).reshape(-1)
        bits = _stochastic_bits(xp, a.dtype, x, random_bits(xp, key0, key1, role, tensor, x.size))
        a.view(xp.uint16)[...] = bits.reshape(a.shape)
        return
    if is_bfloat16(a.dtype):
        a.view(xp.uint16)[...] = _bfloat16_bits(xp, xp.ascontiguousarray(values, dtype=xp.float32))
        return
    with np.errstate(over="ignore"):  # past float16's largest value: inf, as IEEE rounds
        a[...] = values.astype(a.dtype)


# --------------------------------------------------------------------------------------
# Master weights (csrc/common/batch.h: Master): the value the rule reads and writes for a
# 16-bit param is a float32 master, kept as a float32 array ("float32") or as the bfloat16
# param plus an int16 remainder ("remainders", csrc/math/storage.h: join_master and
# split_master).
# --------------------------------------------------------------------------------------
def join_master(xp, param, remainder):
    """The float32 master of a bfloat16 param and its int16 remainder: the param's bits,
    less one where the remainder's bit 15 is set, are the high half, the remainder the low."""
    low = remainder.view(xp.uint16).astype(xp.uint32)
    high = (param.view(xp.uint16).astype(xp.uint32) - (low >> 15)) & xp.uint32(0xFFFF)
    return ((high << 16) | low).view(xp.float32)


def split_master(xp, values, param, remainder) -> None:
    """Writes float32 ``values`` as a bfloat16 param (the high half, plus one where bit 15
    of the low half is set) and an int16 remainder (the low half)."""
    u = xp.ascontiguousarray(values, dtype=xp.float32).view(xp.uint32)
    remainder.view(xp.uint16)[...] = (u & xp.uint32(0xFFFF)).astype(xp.uint16)
    high = ((u >> 16) + ((u >> 15) & xp.uint32(1))) & xp.uint32(0xFFFF)
    param.view(xp.uint16)[...] = high.astype(xp.uint16)


def master_value(xp, form: str, param, master):
    """The float32 value of a param with master weights of ``form``: the master array itself
    (written in place by the rule), or the master joined from param and remainder."""
    return master if form == "float32" else join_master(xp, param, master)


def store_master(xp, form: str, param, master, values, stochastic=None) -> None:
    """Writes a param's new value ``values`` (float32 or float64) to its master and the
    16-bit param: the master rounded to the param's storage (to nearest even, or as
    ``stochastic`` says: see :func:`store`), or split into param and remainder."""
    if form == "float32":
        if values is not master:
            master[...] = values.astype(xp.float32)
        store(xp, param, master, stochastic)
        return
    split_master(xp, values.astype(xp.float32), param, master)
