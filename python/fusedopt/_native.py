"""Loads the compiled modules and calls them; says why when a call cannot be native."""

from __future__ import annotations

from fusedopt import _arrays

try:
    from fusedopt import _core
except ImportError as exc:  # pragma: no cover - only on a broken install
    _core = None
    _core_error = f"{type(exc).__name__}: {exc}"
else:
    _core_error = None


def core():
    """The CPU module, or None if it failed to import."""
    return _core


def core_error():
    return _core_error


def unavailable(prep) -> str | None:
    """Why no compiled kernel can take this call, or None if one can."""
    if prep.device == "cpu":
        if _core is None:
            return f"the CPU module fusedopt._core did not import ({_core_error})"
        return None
    from fusedopt import cuda

    return cuda.unavailable_reason(prep)


def _module(prep):
    if prep.device == "cpu":
        return _core
    from fusedopt import cuda

    return cuda.module()


def apply(rule: str, prep, coeffs) -> None:
    """Runs rule ('sgd', 'adagrad', 'rmsprop', 'adam') natively; coeffs from _coeffs."""
    getattr(_module(prep), rule)(prep.params, prep.grads, prep.states, prep.dtype_code, *coeffs)


def apply_strict(rule: str, params, grads, state_values, coeffs) -> bool:
    """The fast path: runs rule on the arguments as the caller passed them (lists of NumPy
    arrays, or of CuPy arrays, or one array per role) if the C++ checks of the module for
    their device pass; False (nothing written) if they do not, and the caller falls back to
    _arrays.prepare(), which words the error or takes the arrays the fast paths do not
    (torch tensors, other device arrays, a fallback to the reference)."""
    if _core is not None and getattr(_core, rule)(params, grads, state_values, -1, *coeffs, True):
        return True
    batch = device_batch_strict(params, grads, state_values)
    if batch is None:
        return False
    getattr(batch, rule)(*coeffs)
    return True


class DeviceParams(list):
    """An optimizer's own list of device params (fusedopt.optim), carrying the
    fusedopt._cuda.Batch that its first step's checks built over its params and states.
    Later steps with the same state lists check the gradients and what the held arrays can
    change in place (Batch.set_grads): on a 1,000-tensor Adam of CuPy arrays, 1,000 arrays
    checked a step and 3,000 shapes read, instead of 4,000 arrays checked. The optimizer
    drops the gradients from the Batch after each step (Batch.drop_grads)."""

    __slots__ = ("batch", "states")

    def __init__(self, params):
        super().__init__(params)
        self.batch = None
        self.states = None  # the state lists the Batch was built over


def device_batch_strict(params, grads, state_values):
    """A fusedopt._cuda.Batch of device arguments (CuPy arrays, torch CUDA tensors) that
    pass prepare()'s rules, or None (also where no CUDA kernel can run, so that prepare()
    and the fallback decide)."""
    if type(params) is DeviceParams and params.batch is not None and _same_lists(params.states, state_values):
        if params.batch.set_grads(grads):
            return params.batch
        params.batch = None  # bad grads, or a held array changed (a torch param's .data): all again
    from fusedopt import cuda

    module = cuda.module()
    if module is None:
        return None
    # The C++ checks first: they return at once for arguments that are not CuPy arrays,
    # where asking for a device would start CUDA in a process that only uses the CPU.
    batch = module.Batch.strict(params, grads, state_values)
    if batch is None or cuda.unavailable_reason() is not None:
        return None
    if type(params) is DeviceParams:
        params.batch, params.states = batch, list(state_values)
    return batch


def _same_lists(held, values) -> bool:
    return len(held) == len(values) and all(a is b for a, b in zip(held, values))


class CheckedCall:
    """One call's arguments after a module's C++ checks passed (check_fast), ready to have
    its gradients counted or normed and its rule run, without being read in Python."""

    __slots__ = ("_lists", "_dtype", "batch")

    def __init__(self, lists=None, dtype=-1, batch=None):
        # NumPy arrays: the lists for fusedopt._core, and their dtype; device arrays: a Batch.
        self._lists, self._dtype, self.batch = lists, dtype, batch

    @property
    def device(self) -> str:
        return "cpu" if self.batch is None else "cuda"

    def count_nonfinite(self) -> int:
        if self.batch is not None:
            return self.batch.count_nonfinite()
        return _core.count_nonfinite(self._lists[1], self._dtype)

    def grad_sum_of_squares(self) -> float:
        """The CPU's norm (on CUDA the adaptive rate stays on the device: adaptive_sgd_device)."""
        return _core.grad_sum_of_squares(self._lists[1], self._dtype) if self._lists[0] else 0.0

    def run(self, rule: str, coeffs) -> None:
        if self.batch is not None:
            getattr(self.batch, rule)(*coeffs)
        else:
            getattr(_core, rule)(*self._lists, self._dtype, *coeffs)


def check_fast(params, grads, state_values) -> CheckedCall | None:
    """The fast paths' checks without running anything, for calls that must count, norm or
    decide before the update (skip_if_nonfinite, the adaptive rate): a CheckedCall if the
    arguments pass the C++ checks of the module for their device, else None, and the
    caller goes to _arrays.prepare()."""
    if _core is not None:
        lists = _arrays.numpy_fast_lists(params, grads, state_values)
        dtype = _core.validate(*lists) if lists is not None else -1
        if dtype >= 0:
            return CheckedCall(lists, dtype)
    batch = device_batch_strict(params, grads, state_values)
    return None if batch is None else CheckedCall(batch=batch)


def grad_sum_of_squares(prep) -> float:
    return _module(prep).grad_sum_of_squares(prep.grads, prep.dtype_code)


def traffic(prep) -> None:
    """The memory roof for benchmarks: the rule's loads and stores, one add each."""
    _module(prep).traffic(prep.params, prep.grads, prep.states, prep.dtype_code)


def count_nonfinite(prep) -> int:
    return _module(prep).count_nonfinite(prep.grads, prep.dtype_code)


def adaptive_sgd_device(batch, base, first_param):
    """adaptive_sgd_ on a fusedopt._cuda.Batch without leaving the device: the norm, lr_t and
    the update are queued on the stream of the params' library; returns (lr_t, grad_norm)
    as 0-d arrays of that library (fusedopt.cuda.adaptive_sgd)."""
    from fusedopt import cuda

    return cuda.adaptive_sgd(batch, base, first_param)


def device_batch(prep):
    """The fusedopt._cuda.Batch of a checked call on CUDA arrays."""
    return _module(prep).Batch(prep.params, prep.grads, prep.states, prep.dtype_code)
