"""fusedopt: fused optimizer-update kernels for NumPy, CuPy and PyTorch arrays.

The functional kernels update arrays in place, one fused call per list of tensors::

    fusedopt.adam_(params, grads, exp_avgs, exp_avg_sqs, step=1, lr=1e-3)

Stateful optimizers live in :mod:`fusedopt.optim`, reference implementations in
:mod:`fusedopt.reference`, and :func:`info` says what was built and chosen.
"""

from fusedopt._info import get_num_threads, info, set_cpu_target, set_num_threads
from fusedopt._kernels import (
    AdaptiveRate,
    FallbackWarning,
    StepStatus,
    adagrad_,
    adam_,
    adamw_,
    adaptive_sgd_,
    rmsprop_,
    sgd_,
)
from fusedopt._version import __version__

__all__ = [
    "__version__",
    "AdaptiveRate",
    "FallbackWarning",
    "adagrad_",
    "adam_",
    "adamw_",
    "adaptive_sgd_",
    "get_num_threads",
    "info",
    "rmsprop_",
    "set_cpu_target",
    "set_num_threads",
    "sgd_",
    "StepStatus",
]
