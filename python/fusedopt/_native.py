"""The compiled modules: the CPU module (always built) and whether a device call can run."""

from __future__ import annotations

from fusedopt import _core


def core():
    """The CPU module."""
    return _core


def unavailable(device: str) -> str | None:
    """Why no compiled kernel can take a call of this device ("cpu" or "cuda"), or None."""
    if device == "cpu":
        return None
    from fusedopt import cuda

    return cuda.unavailable_reason()


class DeviceParams(list):
    """An optimizer's own list of device params (fusedopt.optim), carrying the
    fusedopt._cuda.Batch that its first step's read built over its params and states.
    Later steps with the same state lists read the gradients and what the held arrays can
    change in place (Batch.set_grads): on a 1,000-tensor Adam of CuPy arrays, 1,000 arrays
    read a step and 3,000 shapes, instead of 4,000 arrays. The optimizer drops the
    gradients from the Batch after each step (Batch.drop_grads)."""

    __slots__ = ("batch", "states")

    def __init__(self, params):
        super().__init__(params)
        self.batch = None
        self.states = None  # the state lists the Batch was built over


def device_batch(params, grads, state_values, master=None):
    """A fusedopt._cuda.Batch of a device call the reader accepts, or None where it refuses
    the call or no CUDA kernel can run (the caller then words the refusal, or falls back).
    ``master``: the call's master weights (fusedopt._coeffs.Masters), read with the rest."""
    if master is not None:
        return _master_batch(params, grads, state_values, master)
    if type(params) is DeviceParams and params.batch is not None and _same_lists(params.states, state_values):
        if params.batch.set_grads(grads):
            return params.batch
        params.batch = None  # bad grads, or a held array changed (a torch param's .data): all again
    from fusedopt import cuda

    module = cuda.module()
    if module is None:
        return None
    # The read first: asking for a device would start CUDA even for a call it refuses.
    batch = module.Batch.strict(params, grads, state_values)
    if batch is None or cuda.unavailable_reason() is not None:
        return None
    if type(params) is DeviceParams:
        params.batch, params.states = batch, list(state_values)
    return batch


def _master_batch(params, grads, state_values, master):
    from fusedopt import cuda

    module = cuda.module()
    if module is None:
        return None
    try:
        batch = module.Batch(params, grads, state_values, "same", *master.args)
    except ValueError:  # refused: the caller words it
        return None
    return batch if cuda.unavailable_reason() is None else None


def _same_lists(held, values) -> bool:
    return len(held) == len(values) and all(a is b for a, b in zip(held, values))
