"""fusedopt: fused optimizer-update kernels for NumPy, CuPy and PyTorch arrays.

The functional kernels update arrays in place, one fused call per list of tensors::

    fusedopt.adam_(params, grads, exp_avgs, exp_avg_sqs, step=1, lr=1e-3)

Stateful optimizers live in :mod:`fusedopt.optim`, reference implementations in
:mod:`fusedopt.reference`, the CUDA backend's controls in :mod:`fusedopt.cuda`, and
:func:`info` says what was built and chosen.
"""

from fusedopt import cuda, optim, reference
from fusedopt._info import get_num_threads, info, set_cpu_target, set_num_threads
from fusedopt._kernels import KERNELS as _KERNELS
from fusedopt._kernels import AdaptiveRate, FallbackWarning, StepStatus
from fusedopt._version import __version__

# The functional kernels, one per rule's public function (fusedopt/rules/): adam_, sgd_, ...
globals().update(_KERNELS)

__all__ = [
    "__version__",
    "AdaptiveRate",
    "FallbackWarning",
    "cuda",
    "get_num_threads",
    "info",
    "optim",
    "reference",
    "set_cpu_target",
    "set_num_threads",
    "StepStatus",
    *sorted(_KERNELS),
]

# Submodules that import a framework (torch, Keras) or a large harness are imported on
# first use, so that `import fusedopt` costs only NumPy and the compiled kernels. A name
# joins __all__ when its module exists; until then fusedopt.<name> is an AttributeError.
_LAZY_SUBMODULES = frozenset({"bench", "demo", "keras", "torch"})


def __getattr__(name: str):
    if name in _LAZY_SUBMODULES:
        import importlib

        try:
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            # Only the submodule itself being absent means "no such attribute"; a missing
            # framework inside it (no torch installed, say) is an error worth seeing as is.
            if exc.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
