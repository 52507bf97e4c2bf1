"""What was built and what is in use: fusedopt.info(), threads and CPU target."""

from __future__ import annotations

import os
import platform

from fusedopt import _kernels, _native, cuda
from fusedopt._version import __version__


def set_num_threads(n: int) -> None:
    """Sets how many threads a CPU kernel may use (the calling thread included)."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"set_num_threads: n must be an int, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"set_num_threads: n must be >= 1, got {n}")
    _native.core().set_num_threads(n)


def get_num_threads() -> int:
    """How many threads a CPU kernel may use (default: the cores this process may run on,
    or FUSEDOPT_NUM_THREADS)."""
    return _native.core().get_num_threads()


def set_cpu_target(name: str) -> None:
    """Forces a CPU instruction-set build ('baseline', 'avx2', 'avx512') or 'auto'.

    Raises ValueError if the build is missing or this CPU cannot run it. The environment
    variable FUSEDOPT_CPU_TARGET does the same at import time.
    """
    try:
        _native.core().select_target(name)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"set_cpu_target: {exc}") from None


def info() -> dict:
    """What this installation built and is using: version, compiler, CPU targets (built,
    supported, active), threads, CUDA, and any fallbacks to the reference so far."""
    out = {
        "version": __version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    core = _native.core()
    build = core.build_info()
    targets = core.cpu_targets()
    cpu = {
        "built": True,
        "compiler": build["compiler"],
        "numerics": build["numerics"],
        "targets": targets,
        "target": core.active_target(),
        "target_source": core.target_source(),
        "threads": core.get_num_threads(),
        "cores": core.available_cores(),
    }
    env = os.environ.get("FUSEDOPT_CPU_TARGET")
    if env and env != "auto" and cpu["target_source"] != "FUSEDOPT_CPU_TARGET":
        supported = [t["name"] for t in targets if t["supported"]]
        cpu["target_error"] = (f"FUSEDOPT_CPU_TARGET={env!r} ignored: choose one of "
                               f"{supported} or 'auto'")
    out["cpu"] = cpu
    # How torch tensors are read (only once torch is imported: info() imports nothing):
    # through torch's C functions, or through each tensor's methods (slower), with why.
    out["torch_reader"] = core.torch_reader()
    out["cuda"] = cuda.info()
    out["fallbacks"] = _kernels.fallbacks()
    return out
