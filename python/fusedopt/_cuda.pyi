"""Type stubs for the private CUDA module fusedopt._cuda (csrc/cuda, csrc/bindings).

Calls are read by the same reader as fusedopt._core's (device arrays: CuPy arrays, torch
CUDA tensors, objects with ``__cuda_array_interface__``) and take the same coefficient
objects, plus keyword-only ``stream`` (a cudaStream_t as an int; default: the current
stream of the params' library, torch's for a Batch whose params are torch tensors, else
CuPy's) and ``device_coeffs`` (the address of the coefficients in device memory, or 0).
"""

from collections.abc import Sequence
from typing import Any

_Arrays = Sequence[Any]
Refusal = tuple[str, int, int, int, int]

CHUNK_ELEMENTS: int
NORM_BLOCK: int
VECTOR_BYTES: int
SCALAR_ONLY: int
THREADS_PER_BLOCK: int
PARAM_LIMIT: int
DEVICE_COEFFS_DOUBLES: dict[str, int]  # per rule: its coefficients, then the skip word

class Batch:
    """Device pointers of one call's arrays, read once and reusable across steps."""

    def __init__(self, params: Any, grads: Any, states: Sequence[Any], layout: str = ...,
                 masters: Any = None, master: str = "none") -> None:
        """Reads a call with a state layout ('same', or 'factored' for Adafactor) and master
        weights of form ``master`` ("none", "float32", "remainders"); ValueError naming the
        refusal if the reader refuses it."""
    @staticmethod
    def strict(params: Any, grads: Any, states: Sequence[Any]) -> Batch | None:
        """The public API's fast path: a Batch if the reader accepts the call as device
        arrays, else None (fusedopt._arrays then words the refusal)."""
    def set_grads(self, grads: _Arrays) -> bool:
        """New grads for a Batch from strict(): True if they pass the same rules against the
        held arrays (and replace the old ones), False with nothing changed if not."""
    def drop_grads(self) -> None:
        """Lets go of the grads; a launch then needs set_grads() first."""
    @property
    def n_tensors(self) -> int: ...
    @property
    def n_elements(self) -> int: ...
    @property
    def device(self) -> int: ...
    @property
    def torch_params(self) -> bool:
        """True if strict() took torch tensors for the params: calls then run on torch's
        current stream, else on CuPy's."""
    def run(self, rule: str, coeffs: tuple, *, stream: int | None = None,
            device_coeffs: int = 0, grad_multiplier: float = 1.0,
            rounding: tuple[int, int, int] | None = None) -> None: ...
    def adaptive_sgd(self, coeffs: tuple, *, result: int, stream: int | None = None) -> None: ...
    def traffic(self, *, stream: int | None = None) -> None: ...
    def grad_sum_of_squares(self, *, out: int = 0, stream: int | None = None) -> float | None: ...
    def count_nonfinite(self, *, out: int = 0, stream: int | None = None) -> int | None:
        """How many grad values are NaN or infinite; with ``out`` (a device address) the
        count goes there as a uint64 and nothing waits."""
    def select_coeffs(self, rule: str, *, table: int, n_entries: int, step: int, out: int,
                      nonfinite: int = 0, stream: int | None = None) -> None:
        """On the device: step count at ``step`` (int64) plus one, and that step's row of
        ``table`` (``n_entries`` rows of DEVICE_COEFFS_DOUBLES[rule] float64; the last row
        serves every later step) copied to ``out``, the next update's device_coeffs. A
        nonzero uint64 at ``nonfinite`` sets out's skip word instead and leaves the count."""

def run(rule: str, params: Any, grads: Any, states: Sequence[Any], coeffs: tuple, *,
        stream: int | None = None, grad_multiplier: float = 1.0,
        rounding: tuple[int, int, int] | None = None) -> Refusal | None: ...
def grad_sum_of_squares(grads: Any, *, out: int = 0,
                        stream: int | None = None) -> float | None: ...
def count_nonfinite(grads: Any, *, stream: int | None = None) -> int: ...
def vector_head(addresses: Sequence[int], itemsize: int) -> int: ...
def chunk_count(n: int, head: int, chunk: int = ...) -> int: ...
def chunk_span(n: int, head: int, itemsize: int, k: int,
               chunk: int = ...) -> tuple[int, int, int, int]: ...
def locate(chunk_start: Sequence[int], chunk: int) -> int: ...
def plan_launches(sizes: Sequence[int], heads: Sequence[int] | None = None, *,
                  chunk: int = ..., capacity: int, max_grid: int) -> list[dict[str, Any]]: ...
def chunk_elements() -> int:
    """Elements per chunk of the update launches (CHUNK_ELEMENTS unless set)."""
def set_chunk_elements(n: int) -> int:
    """For tuning on a GPU: the chunk size of later update launches (a positive multiple
    of 2048); returns the previous one. Results do not depend on it."""
def update_capacity(n_roles: int) -> int: ...
def update_param_bytes(n_roles: int) -> int: ...
def norm_capacity() -> int: ...
def norm_param_bytes() -> int: ...
def unavailable_reason() -> str | None: ...
def build_info() -> dict[str, Any]: ...
def device_info() -> dict[str, Any] | None: ...
