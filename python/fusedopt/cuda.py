"""The CUDA backend: availability, the compiled module fusedopt._cuda, the stream a call
runs on, the device-side adaptive-rate step, and the step schedule of capturable
optimizers (:class:`StepSchedule`).

``fusedopt._cuda`` links the CUDA runtime statically, so it imports on machines without a
driver or a GPU; :func:`unavailable_reason` then says which is missing, and calls on CuPy
arrays with ``backend="auto"`` fall back to the CuPy reference (once warned), while
``backend="native"`` raises.

Streams. A call runs where the library of its params runs its own operations: on torch's
current stream (:func:`torch_stream`) when the params are torch tensors, else on CuPy's
current stream. So a step on torch tensors is ordered after the backward pass that made
its gradients and before the next forward pass, on whatever stream torch is using,
including the capture stream of ``torch.cuda.graph``; torch's side streams do not wait
for CuPy's default stream, nor it for them. Kernels never wait for the device, except
where a host value is asked for (``count_nonfinite`` and ``grad_sum_of_squares`` without
``out``, :attr:`StepSchedule.steps_taken`).
"""

from __future__ import annotations

import contextlib
import importlib

from fusedopt import _arrays

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
    return unavailable_reason() is None


def unavailable_reason() -> str | None:
    """Why CUDA kernels cannot run (None if they can): not built, no driver, a driver older
    than the module's runtime, no device, or a device this build has no code for."""
    if _cuda is None:
        return _import_error or _NOT_BUILT
    return _cuda.unavailable_reason()


def module():
    return _cuda


def cupy_arrays_reason() -> str | None:
    """Why the CUDA kernels cannot run on CuPy arrays here (None if they can): the kernels'
    reason (unavailable_reason), or CuPy missing. For the commands that make CuPy arrays
    themselves (verify and bench with --device cuda)."""
    reason = unavailable_reason()
    if reason is not None:
        return reason
    try:
        importlib.import_module("cupy")
    except ImportError:
        return "CuPy is not installed (pip install 'fusedopt[cuda]')"
    return None


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


def torch_stream(device: int) -> int:
    """torch's current stream on GPU ``device``, as a ``cudaStream_t`` int: where calls on
    torch tensors run (the CUDA module asks this for the fast path)."""
    import torch

    raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)  # what torch's compiler uses
    if raw is not None:
        return int(raw(device))
    return int(torch.cuda.current_stream(device).cuda_stream)


class _RawStream:
    """A stream handle in the CUDA stream protocol, for cupy.cuda.Stream.from_external."""

    __slots__ = ("ptr",)

    def __init__(self, ptr: int):
        self.ptr = ptr

    def __cuda_stream__(self):
        return (0, self.ptr)


def params_stream(torch_device):
    """A context for device work outside the CUDA module's fast path (a checked call, the
    CuPy reference, an optimizer's states): with ``torch_device`` the GPU of torch params
    (``Prepared.torch_device``), CuPy's current stream is torch's current stream there while
    it lasts, so that the work runs where the fast path's would; with None (any other
    params) it changes nothing."""
    return contextlib.nullcontext() if torch_device is None else _on_torch_stream(torch_device)


@contextlib.contextmanager
def _on_torch_stream(device: int):
    import cupy

    ptr = torch_stream(device)
    from_external = getattr(cupy.cuda.Stream, "from_external", None)
    with cupy.cuda.Device(device):  # a stream made here belongs to this GPU, whatever CuPy's rule
        # CuPy 14 deprecates ExternalStream for from_external; older CuPy has only the former.
        stream = from_external(_RawStream(ptr)) if from_external else cupy.cuda.ExternalStream(ptr, device)
        with stream:
            yield


def adaptive_sgd(batch, base, first_param):
    """Adaptive-rate SGD entirely on the device: the norm, the rate and the update, over a
    ``fusedopt._cuda.Batch``, on the stream of the params' library.

    Returns ``(lr_t, grad_norm)`` as 0-d float64 arrays of that library (torch tensors when
    ``first_param``, the call's first param, is a torch tensor; else CuPy arrays), computed
    on the device in the same order as the host path and on the same stream as the step,
    so the step does not wait for the GPU. ``float()`` of either waits for that stream when
    called with it current (as a step's caller usually is); from another stream, wait for
    it first. ``base`` holds the SGD coefficients at the base rate lr0.
    """
    if _arrays.is_torch_tensor(first_param):
        import torch

        result = torch.empty(2, dtype=torch.float64, device=first_param.device)
        batch.adaptive_sgd(base, result=result.data_ptr())
        return result[0], result[1].sqrt()
    import cupy

    with cupy.cuda.Device(batch.device):  # the arrays' GPU, whose current stream the step used
        result = cupy.empty(2, dtype=cupy.float64)
        batch.adaptive_sgd(base, result=result.data.ptr)
        return result[0], cupy.sqrt(result[1])


class StepSchedule:
    """A rule's coefficients for every step, in device memory, and the step count on the
    device: what a step captured in a CUDA graph needs to replay as the step it is, with no
    host work per step (fusedopt.optim's ``capturable=True``).

    ``table`` is a float64 array from fusedopt._coeffs (row t-1: the rule's numbers at step
    t; the last row also serves every later step). Before each update, :meth:`queue` has the
    device add one to the step count and copy that step's row to where the update reads its
    coefficients (``_cuda.Batch.select_coeffs``); with ``skip``, the device counts the
    gradients' NaN and inf first, and a step with any writes nothing and is not counted. The
    arrays are made, and later written, on the params' stream (:func:`params_stream`), on
    GPU ``device``.
    """

    def __init__(self, rule: str, table, *, device: int, torch_device):
        import cupy

        self.rule, self._device, self._torch_device = rule, device, torch_device
        self._doubles = _cuda.DEVICE_COEFFS_DOUBLES[rule]
        with self._here():
            self.table = cupy.asarray(self._rows(table))
            self.step = cupy.zeros(1, dtype=cupy.int64)
            self.coeffs = cupy.zeros(self._doubles, dtype=cupy.float64)
            self.nonfinite = cupy.zeros(1, dtype=cupy.uint64)

    def _here(self):
        import cupy

        stack = contextlib.ExitStack()
        stack.enter_context(cupy.cuda.Device(self._device))
        stack.enter_context(params_stream(self._torch_device))
        return stack

    def _rows(self, table):
        """The device layout (the rule's DeviceCoeffs): each row's numbers, then the skip
        word 0."""
        import numpy as np

        if table.ndim != 2 or table.shape[1] != self._doubles - 1:
            raise AssertionError(f"a {self.rule} table has {self._doubles - 1} numbers a row, "
                                 f"not {table.shape[1:]}")
        return np.concatenate([table, np.zeros((len(table), 1))], axis=1)

    def rewrite(self, table) -> None:
        """New coefficients (after a change of lr, say) into the same device memory, so that
        a graph already captured replays with them. The number of rows must stay (another
        needs a new capture: the optimizer refuses it before calling this)."""
        if table.shape[0] != self.table.shape[0]:
            raise AssertionError(f"a table of {table.shape[0]} rows for {self.table.shape[0]}")
        with self._here():
            self.table.set(self._rows(table))  # straight into the table, on the current stream

    def queue(self, batch, skip: bool) -> int:
        """Queues the count (with skip) and the selection on the stream of ``batch``'s
        params; returns the address of the selected coefficients, the device_coeffs of the
        update to queue next."""
        nonfinite = 0
        if skip:
            nonfinite = self.nonfinite.data.ptr
            batch.count_nonfinite(out=nonfinite)
        batch.select_coeffs(self.rule, table=self.table.data.ptr, n_entries=self.table.shape[0],
                            step=self.step.data.ptr, out=self.coeffs.data.ptr, nonfinite=nonfinite)
        return self.coeffs.data.ptr

    @property
    def steps_taken(self) -> int:
        """The step count on the device (waits for the steps queued on the params' stream)."""
        with self._here():
            return int(self.step.get()[0])

    @steps_taken.setter
    def steps_taken(self, value: int) -> None:
        import cupy

        with self._here():
            self.step[...] = cupy.asarray([value], dtype=cupy.int64)
