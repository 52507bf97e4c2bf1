"""What a call's arrays are to Python: the reader's verdict worded, and accepted arrays adapted.

The rules of what a call accepts live in one place, the C++ reader compiled into both
modules (csrc/bindings/reader.h): list structure, kinds of array, host or device memory,
dtypes, shapes, contiguity, alignment, writability, overlap. This module asks it for its
verdict (:func:`prepare`) and only words a refusal: a TypeError or ValueError naming the
function, the argument, the list index and what was expected. Nothing is written before
the verdict, and nothing is ever copied: a copy of an output would lose the update.

An accepted call is adapted for the code that runs it in Python (the reference backend,
and a native call on arrays the reader reaches only through CuPy, such as DLPack
producers): NumPy views of torch CPU tensors, CuPy views of device arrays.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from fusedopt import _core, _storage

# As the reader (csrc/bindings/reader.cpp) takes them, in the combinations it allows.
SUPPORTED_DTYPES = "float32, float64, bfloat16 or float16"


class Prepared:
    """A call the reader accepted, adapted: lists of arrays per role (NumPy or CuPy) of one
    device."""

    __slots__ = ("device", "xp", "params", "grads", "states", "torch_device", "layout", "master",
                 "masters")

    def __init__(self, device, xp, params, grads, states, torch_device=None, layout="same",
                 master=None, masters=None):
        self.device = device  # "cpu" or "cuda"
        self.xp = xp  # numpy or cupy: the array module of the arrays
        self.params = params
        self.grads = grads
        self.states = states  # list of lists, in the rule's state order (None: a state
        # that a param does not keep, in the factored layout)
        self.layout = layout  # the state layout the reader read them with (rules.Rule)
        # The GPU of the params if they are torch CUDA tensors, else None: device work on
        # torch params runs on torch's current stream there (fusedopt.cuda.params_stream).
        self.torch_device = torch_device
        # Master weights: their form ("float32" or "remainders", fusedopt._coeffs.Masters)
        # and a list of arrays like params; None without.
        self.master = master
        self.masters = masters

    @property
    def n_tensors(self) -> int:
        return len(self.params)


def _is_list(value) -> bool:
    return isinstance(value, (list, tuple))


def _cupy():
    try:
        import cupy
    except ImportError:  # pragma: no cover - depends on the machine
        return None
    return cupy


def is_torch_tensor(x) -> bool:
    """A torch.Tensor, subclasses (nn.Parameter, ones defined elsewhere) included; never
    imports torch."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


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


def _need_cupy(fn: str, label: str, what: str):
    cupy = _cupy()
    if cupy is None:
        raise TypeError(f"{fn}: {label} is {what}, and CuPy is not installed to reach its memory "
                        "(pip install 'fusedopt[cuda]')")
    return cupy


def _label(single: bool):
    return (lambda name, i: name) if single else (lambda name, i: f"{name}[{i}]")


def _with_dlpack_as_cupy(fn: str, names, values, single):
    """``values`` with every DLPack device producer that is not also a device array the
    reader knows replaced by a CuPy view (zero-copy): the reader reaches those through
    CuPy. None where there is none."""
    label = _label(single)
    out, changed = [], False
    for name, value in zip(names, values):
        items = [value] if single else value
        if not _is_list(items):
            out.append(value)
            continue
        new = list(items)
        for i, x in enumerate(items):
            if (not isinstance(x, np.ndarray) and not is_torch_tensor(x)
                    and not hasattr(x, "__cuda_array_interface__") and _dlpack_on_cuda(x)):
                cupy = _need_cupy(fn, label(name, i), "a DLPack device array")
                new[i] = cupy.from_dlpack(x)  # zero-copy, ordered on CuPy's current stream
                changed = True
        out.append(new[0] if single else new)
    return out if changed else None


def prepare(fn: str, params, grads, states: Sequence[tuple[str, Any]] = (), *,
            written_only: bool = False, layout: str = "same", master=None) -> Prepared:
    """Asks the reader for its verdict on one call, words a refusal, and adapts the arrays of
    an accepted call. ``states`` are (argument name, arrays) in rule order.

    ``layout`` is the rule's state layout (fusedopt.rules.Rule.state_layout); ``master``
    the call's master weights (fusedopt._coeffs.Masters), read as a role after the states.

    ``written_only=True`` (with ``grads=None``) reads only the arrays that are written (an
    optimizer's own params and states, at construction); the result then has
    ``grads=None``. Otherwise grads are required: a kernel called with ``grads=None`` must
    not get past the checks.
    """
    if grads is None and not written_only:
        raise TypeError(f"{fn}: grads must be an array or a list of arrays, got None")
    has_grads = grads is not None
    names = ["params", *(["grads"] if has_grads else []), *(name for name, _ in states)]
    values = [params, *([grads] if has_grads else []), *(value for _, value in states)]
    if master is not None:
        names.append(master.name)
        values.append(master.arrays)
    single = not _is_list(params)
    first_state = 2 if has_grads else 1
    n_states = len(states)

    def read():
        extra = () if master is None else (values[-1], master.form)
        return _core.read(values[0], values[1] if has_grads else None,
                          values[first_state:first_state + n_states], layout, *extra)

    refusal = read()
    if refusal is not None and refusal[0] == "not_array":
        adapted = _with_dlpack_as_cupy(fn, names, values, single)
        if adapted is not None:
            values = adapted
            refusal = read()
    if refusal is not None:
        raise _worded(fn, refusal, names, values, single, layout, master)
    lists = [[v] if single else list(v) for v in values]
    label = _label(single)
    native = [[_adapted(fn, label(names[r], i), x) for i, x in enumerate(arrays)]
              for r, arrays in enumerate(lists)]
    device = "cpu"
    if native[0]:
        device = "cpu" if isinstance(native[0][0], np.ndarray) else "cuda"
    xp = _cupy() if device == "cuda" else np
    torch_device = None
    if device == "cuda" and is_torch_tensor(lists[0][0]):
        torch_device = int(native[0][0].device.id)
    return Prepared(device, xp, native[0], native[1] if has_grads else None,
                    native[first_state:first_state + n_states], torch_device, layout,
                    None if master is None else master.form,
                    None if master is None else native[first_state + n_states])


def _adapted(fn: str, label: str, x):
    """An accepted array as the Python code that runs it needs it, without a copy: NumPy
    arrays and CuPy arrays as they are, a NumPy view of a torch CPU tensor, a CuPy view of
    any other device array (None, a state the layout leaves out, as it is). The reader has
    checked it: this only adapts."""
    if x is None or isinstance(x, np.ndarray):
        return x
    if is_torch_tensor(x):
        torch = sys.modules["torch"]
        if x.dtype == torch.bfloat16:  # NumPy's view: ml_dtypes' bfloat16 over the same bytes
            if x.device.type != "cpu":
                raise TypeError(f"{fn}: {label} is a bfloat16 torch tensor on {x.device}, which "
                                "only the compiled CUDA kernels take (CuPy has no bfloat16)")
            if _storage.BFLOAT16 is None:
                raise TypeError(f"{fn}: {label} is a bfloat16 torch tensor, which the reference "
                                "reaches through ml_dtypes' NumPy bfloat16 (pip install ml_dtypes)")
            return x.detach().view(torch.int16).numpy().view(_storage.BFLOAT16)
        if x.device.type == "cpu":
            return x.detach().numpy()  # detach(): parameters require grad; shares the memory
        return _need_cupy(fn, label, f"a torch tensor on {x.device}").asarray(x.detach())
    if type(x).__module__.split(".", 1)[0] == "cupy":
        return x
    return _need_cupy(fn, label, "a device array").asarray(x)


# --------------------------------------------------------------------------------------
# Wording the reader's refusals
# --------------------------------------------------------------------------------------
def _dtype_name(x) -> str:
    if is_torch_tensor(x):
        return str(x.dtype).replace("torch.", "")
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        interface = getattr(x, "__cuda_array_interface__", None)
        return str(np.dtype(interface["typestr"])) if interface else "unknown"
    return str(np.dtype(dtype)) if not isinstance(dtype, str) else dtype


def _shape(x) -> tuple:
    shape = getattr(x, "shape", None)
    if shape is None:
        interface = getattr(x, "__cuda_array_interface__", None)
        shape = interface["shape"] if interface else ()
    return tuple(int(d) for d in shape)


def _address(x) -> int:
    if isinstance(x, np.ndarray):
        return x.__array_interface__["data"][0]
    if is_torch_tensor(x):
        return int(x.data_ptr())
    data = getattr(x, "data", None)
    if data is not None and hasattr(data, "ptr"):
        return int(data.ptr)  # CuPy
    interface = getattr(x, "__cuda_array_interface__", None)
    return int(interface["data"][0]) if interface else 0


def _memory(x) -> str:
    if isinstance(x, np.ndarray) or (is_torch_tensor(x) and x.device.type == "cpu"):
        return "cpu"
    return "cuda"


def _worded(fn: str, refusal, names, values, single, layout="same", master=None) -> Exception:
    rule, role, index, other_role, other_index = refusal
    label = _label(single)
    if rule in ("not_list", "list_for_single", "length"):
        name, value = names[role], values[role]
        if rule == "not_list":
            return TypeError(f"{fn}: {name} must be a list of arrays like params, got "
                             f"{type(value).__name__}")
        if rule == "list_for_single":
            return TypeError(f"{fn}: {name} is a list but params is a single array; pass lists "
                             "for every argument or single arrays for every one")
        return ValueError(f"{fn}: {name} has {len(value)} arrays but params has {len(values[0])}; "
                          "every argument needs one array per tensor")
    if rule == "too_many_states":
        return ValueError(f"{fn}: more state lists than any rule keeps")

    def item(r, i):
        return values[r] if single else values[r][i]

    where = label(names[role], index)
    x = item(role, index)
    first = label(names[0], 0)
    if rule == "not_array":
        if hasattr(x, "__dlpack__") and _dlpack_on_cuda(x):
            return TypeError(f"{fn}: {where} is a DLPack device array that fusedopt cannot read")
        if is_torch_tensor(x):
            return TypeError(f"{fn}: {where} is a torch tensor whose shape does not agree with its "
                             "numel() or its memory (a subclass that overrides them?)")
        if hasattr(x, "__cuda_array_interface__"):
            return TypeError(f"{fn}: {where} has a __cuda_array_interface__ that fusedopt cannot "
                             "take (masked, or an invalid stream or shape)")
        return TypeError(f"{fn}: {where} must be a NumPy array, CuPy array or torch tensor, "
                         f"got {type(x).__name__}")
    if rule == "unreachable":
        if is_torch_tensor(x) and (x.is_neg() or x.is_conj()):
            return TypeError(f"{fn}: {where} is a torch tensor with its negative or conjugate bit "
                             f"set (its memory does not hold its values); supported: "
                             f"{SUPPORTED_DTYPES}, without a conjugate or negative bit")
        return TypeError(f"{fn}: {where} is a torch tensor on {getattr(x, 'device', '?')}, which "
                         "fusedopt cannot reach: pass CPU or CUDA tensors")
    if rule == "mixed_memory":
        return ValueError(f"{fn}: {where} is a {_memory(x)} array but {first} is a "
                          f"{_memory(item(0, 0))} array; one call takes arrays of one device")
    if rule == "other_gpu":
        other = label(names[other_role], other_index)
        return ValueError(f"{fn}: {where} is on another GPU than {other}; one call takes arrays of "
                          "one GPU")
    if rule == "dtype":
        return TypeError(f"{fn}: {where} has dtype {_dtype_name(x)}; supported: {SUPPORTED_DTYPES}")
    if rule == "dtype_mismatch":
        other = label(names[other_role], other_index)
        what = ("every state of one call shares one dtype" if other_role != role
                else f"every array of {names[role]} shares one dtype")
        return TypeError(f"{fn}: {where} has dtype {_dtype_name(x)} but {other} has "
                         f"{_dtype_name(item(other_role, other_index))}; {what}")
    if rule == "dtype_combination":
        param = _dtype_name(item(0, index))
        grads, states = _core.storage_combinations.get(param, ((), ()))
        kind = "grads" if names[role] == "grads" else "states"
        allowed = grads if kind == "grads" else states
        return TypeError(f"{fn}: {where} has dtype {_dtype_name(x)} but {label('params', index)} "
                         f"has {param}; with {param} params the {kind} must be "
                         f"{' or '.join(allowed)}")
    if rule == "state_shape":
        param = _shape(item(0, index))
        first_state = names.index("grads") + 1 if "grads" in names else 1
        want = _core.state_shapes(layout, param)[role - first_state]
        p = label("params", index)
        if want is None:
            return ValueError(f"{fn}: {where} must be None: {p} of shape {param} keeps no "
                              f"{names[role]} state")
        if x is None:
            return ValueError(f"{fn}: {where} is None, but {p} of shape {param} needs one of "
                              f"shape {want}")
        return ValueError(f"{fn}: {where} has shape {_shape(x)} but {p} of shape {param} needs "
                          f"shape {want}")
    if rule == "master_dtype":
        param = _dtype_name(item(0, index))
        remainders = master.form == "remainders"
        if other_role == 0:
            if remainders:
                return TypeError(f"{fn}: {where} goes with bfloat16 params, but "
                                 f"{label('params', index)} has {param}; pass float32 masters as "
                                 "master_params= for float16 params")
            return TypeError(f"{fn}: {where} goes with bfloat16 or float16 params, but "
                             f"{label('params', index)} has {param}: such params are their own "
                             "master; leave master_params out")
        want = "int16" if remainders else "float32"
        return TypeError(f"{fn}: {where} has dtype {_dtype_name(x)}; {names[role]} are {want} "
                         "arrays")
    if rule == "shape":
        return ValueError(f"{fn}: {where} has shape {_shape(x)} but {label('params', index)} has "
                          f"shape {_shape(item(0, index))}")
    if rule == "not_contiguous":
        strides = getattr(x, "strides", None)
        if strides is None and hasattr(x, "stride"):
            strides = x.stride()
        return ValueError(f"{fn}: {where} is not C-contiguous (strides {strides}); the kernels "
                          "update arrays in place and never copy, so pass contiguous arrays")
    if rule == "misaligned":
        return ValueError(f"{fn}: {where} is not aligned to its elements (address "
                          f"{_address(x):#x}); pass an aligned array")
    if rule == "null_data":
        return ValueError(f"{fn}: {where} has elements but a null data pointer")
    if rule == "read_only":
        return ValueError(f"{fn}: {where} is read-only, but the kernel writes it")
    if rule == "overlap":
        other = label(names[other_role], other_index)
        return ValueError(f"{fn}: {where} and {other} share memory; every array the kernel writes "
                          "must have memory of its own (a param cannot be its own grad or state)")
    return ValueError(f"{fn}: the arrays were refused ({rule} at {where})")
