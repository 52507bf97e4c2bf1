"""The GPU benchmark's report logic (fusedopt/_gpu_bench.py, which bench/gpu_bench.py and
`python -m fusedopt bench --device cuda` run), which runs without a GPU: the table, the
acceptance checks, the mixed tensor sizes the device check will use, the chunk sweep on
the emulated kernels, and the command's answer where no GPU is."""

from __future__ import annotations

import pytest
from fusedopt import _gpu_bench


@pytest.fixture(scope="module")
def gpu_bench():
    return _gpu_bench


def test_selftest(gpu_bench, capsys):
    assert gpu_bench.selftest() == 0
    assert "selftest passed" in capsys.readouterr().out


def test_bytes_are_counted_per_array(gpu_bench):
    assert gpu_bench.step_bytes("adam", 10) == 7 * 4 * 10  # reads p g m v, writes p m v
    assert gpu_bench.step_bytes("sgd_momentum", 10) == 5 * 4 * 10
    assert gpu_bench.step_bytes("adagrad", 10) == 5 * 4 * 10


def test_mixed_sizes(gpu_bench):
    sizes = gpu_bench.mixed_sizes(1000, 2**26)
    assert len(sizes) == 1000 and sum(sizes) == 2**26 and min(sizes) >= 1
    assert max(sizes) > 20 * sorted(sizes)[500]  # mixed: a few large, many small
    assert sizes == gpu_bench.mixed_sizes(1000, 2**26)  # the same list every run


def test_chunk_sweep_runs_on_the_emulation(gpu_bench):
    """The sweep's measuring code, which otherwise runs only on a GPU, on the emulated
    kernels with host_cupy's arrays and wall-clock events: a result per layout and chunk
    size, and the module's chunk size put back."""
    emu = pytest.importorskip("fusedopt._cuda_emulated", reason="built without FUSEDOPT_CUDA_EMULATION=ON")
    import time
    import types

    import host_cupy
    import numpy as np

    class Event:
        def record(self, stream=None):
            self.t = time.perf_counter()

        def synchronize(self):
            pass

    rng = np.random.default_rng(0)
    fake = types.SimpleNamespace(
        float32=np.float32, zeros=host_cupy.zeros,
        random=types.SimpleNamespace(RandomState=lambda seed: types.SimpleNamespace(
            standard_normal=lambda n, dtype: host_cupy.asarray(rng.standard_normal(n).astype(dtype)))),
        cuda=types.SimpleNamespace(get_current_stream=host_cupy.cuda.get_current_stream, Event=Event,
                                   get_elapsed_time=lambda a, b: 1e3 * (b.t - a.t)),
        get_default_memory_pool=host_cupy.get_default_memory_pool)
    class Recording:  # the emulated module, noting every chunk size set and the launches' grids
        def __init__(self):
            self.sizes = []

        def __getattr__(self, name):
            return getattr(emu, name)

        def set_chunk_elements(self, n):
            self.sizes.append(n)
            return emu.set_chunk_elements(n)

    module = Recording()
    layouts = {"one": [70_001], "list": gpu_bench.mixed_sizes(20, 50_000)}
    emu.take_launches()
    shape = emu.set_device_shape(64, 16)  # one block per chunk: the grid shows the chunk size used
    try:
        sweep = gpu_bench.sweep_chunk_sizes(fake, module, layouts, warmup=1, reps=2)
    finally:
        emu.set_device_shape(*shape)
    grids = [grid for grid, _, _ in emu.take_launches()]
    assert module.sizes[0::2] == list(gpu_bench.SWEEP_CHUNKS) * 2  # each set, then put back
    # One tensor of 70,001: 3 steps (1 warm-up, 2 timed) per size; fewer blocks as chunks grow.
    one = [grids[3 * k] for k in range(len(gpu_bench.SWEEP_CHUNKS))]
    assert one == sorted(one, reverse=True) and one[0] > one[-1]
    assert [(r.layout, r.impl) for r in sweep] == [(layout, f"chunk {c}") for layout in layouts
                                                   for c in gpu_bench.SWEEP_CHUNKS]
    assert all(len(r.samples_ms) == 2 and r.bytes_moved == 28 * sum(layouts[r.layout]) for r in sweep)
    assert emu.chunk_elements() == emu.CHUNK_ELEMENTS


def test_command_without_a_gpu_says_why(capsys):
    import fusedopt.cuda

    if fusedopt.cuda.unavailable_reason() is None:
        pytest.skip("a GPU is here: bench/gpu_check.sh runs the benchmark")
    from fusedopt import _bench

    assert _bench.main(["--device", "cuda"]) == 2
    assert fusedopt.cuda.unavailable_reason() in capsys.readouterr().err
