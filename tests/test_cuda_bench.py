"""The GPU benchmark's report logic (fusedopt/bench/gpu_report.py and gpu.py, which
bench/gpu_bench.py and `python -m fusedopt bench --device cuda` run), which runs without a
GPU: the table, the acceptance checks, the mixed tensor sizes the device check will use,
the chunk sweep on the emulated kernels, and the command's answer where no GPU is."""

from __future__ import annotations

import pytest
from fusedopt.bench import gpu, gpu_report


def test_selftest(capsys):
    assert gpu_report.selftest() == 0
    assert "selftest passed" in capsys.readouterr().out


def test_bytes_are_counted_per_array():
    assert gpu_report.step_bytes("adam", 10) == 7 * 4 * 10  # reads p g m v, writes p m v
    assert gpu_report.step_bytes("sgd_momentum", 10) == 5 * 4 * 10
    assert gpu_report.step_bytes("adagrad", 10) == 5 * 4 * 10


def test_mixed_sizes():
    sizes = gpu_report.mixed_sizes(1000, 2**26)
    assert len(sizes) == 1000 and sum(sizes) == 2**26 and min(sizes) >= 1
    assert max(sizes) > 20 * sorted(sizes)[500]  # mixed: a few large, many small
    assert sizes == gpu_report.mixed_sizes(1000, 2**26)  # the same list every run


def test_chunk_sweep_runs_on_the_emulation():
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
    layouts = {"one": [70_001], "list": gpu_report.mixed_sizes(20, 50_000)}
    emu.take_launches()
    shape = emu.set_device_shape(64, 16)  # one block per chunk: the grid shows the chunk size used
    try:
        sweep = gpu.sweep_chunk_sizes(fake, module, layouts, warmup=1, reps=2)
    finally:
        emu.set_device_shape(*shape)
    grids = [grid for grid, _, _ in emu.take_launches()]
    assert module.sizes[0::2] == list(gpu_report.SWEEP_CHUNKS) * 2  # each set, then put back
    # One tensor of 70,001: 3 steps (1 warm-up, 2 timed) per size; fewer blocks as chunks grow.
    one = [grids[3 * k] for k in range(len(gpu_report.SWEEP_CHUNKS))]
    assert one == sorted(one, reverse=True) and one[0] > one[-1]
    assert [(r.layout, r.impl) for r in sweep] == [(layout, f"chunk {c}") for layout in layouts
                                                   for c in gpu_report.SWEEP_CHUNKS]
    assert all(len(r.samples_ms) == 2 and r.bytes_moved == 28 * sum(layouts[r.layout]) for r in sweep)
    assert emu.chunk_elements() == emu.CHUNK_ELEMENTS


def test_command_without_a_gpu_says_why(capsys):
    import fusedopt.cuda

    if fusedopt.cuda.unavailable_reason() is None:
        pytest.skip("a GPU is here: bench/gpu_check.sh runs the benchmark")
    from fusedopt.bench import cli

    assert cli.main(["--device", "cuda"]) == 2
    assert fusedopt.cuda.unavailable_reason() in capsys.readouterr().err


_END_TO_END = r"""
import ctypes, sys, time, types
import numpy as np
sys.path.insert(0, sys.argv[1])
import fusedopt, fusedopt._cuda_emulated as emu, host_cupy
from fusedopt.bench import gpu

host_cupy.install(emu)
cupy = host_cupy

class Event:  # wall-clock stand-ins for CUDA events: the emulation runs work when queued
    def record(self, stream=None):
        self.t = time.perf_counter()
    def synchronize(self):
        pass

rng = np.random.default_rng(0)
cupy.cuda.Event = Event
cupy.cuda.get_elapsed_time = lambda a, b: 1e3 * (b.t - a.t)
cupy.random = types.SimpleNamespace(RandomState=lambda seed: types.SimpleNamespace(
    standard_normal=lambda n, dtype: cupy.asarray(rng.standard_normal(n).astype(dtype))))
cupy.empty_like = lambda a: cupy.asarray(np.empty_like(a.get()))
cupy.cuda.runtime.memcpyAsync = lambda dst, src, n, kind, stream: ctypes.memmove(dst, src, n)
cupy.cuda.runtime.getDeviceProperties = lambda device: {"name": b"host emulation"}
cupy.cuda.runtime.driverGetVersion = lambda: 0
cupy.__version__ = "host stand-in"
if sys.argv[3] == "cut":  # a run stopped after its cases, as by gpu_check.sh's timeout
    def cut(*args, **kwargs):
        raise SystemExit(124)
    gpu.sweep_chunk_sizes = cut
sys.exit(gpu.measure(quick=True, reps=2, out=sys.argv[2], sizes=(70_001, 50_000)))
"""


def test_measure_end_to_end_on_the_emulation(tmp_path):
    """The whole benchmark run (fusedopt/bench/gpu.py: measure), which otherwise runs only
    on a GPU, on the emulated kernels with host_cupy's arrays at small sizes: every case
    and row it can make without a GPU measured, the rest (CuPy's ElementwiseKernel, stream
    capture, torch on CUDA) a row saying why, and the report and JSON written, also (marked
    "not finished") by a run stopped before its end."""
    pytest.importorskip("fusedopt._cuda_emulated", reason="built without FUSEDOPT_CUDA_EMULATION=ON")
    import json
    import subprocess
    import sys
    from pathlib import Path

    tests = Path(__file__).parent
    cut = subprocess.run([sys.executable, "-c", _END_TO_END, str(tests), str(tmp_path), "cut"],
                         capture_output=True, text=True, timeout=600)
    assert cut.returncode == 124, cut.stderr[-3000:]
    partial = json.loads((tmp_path / "gpu_bench.json").read_text())
    assert "not finished" in partial["meta"]["elapsed"] and not partial["chunk_sweep"]
    assert "not finished" in (tmp_path / "gpu_report.md").read_text()
    run = subprocess.run([sys.executable, "-c", _END_TO_END, str(tests), str(tmp_path), "whole"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert len(partial["results"]) == len(json.loads((tmp_path / "gpu_bench.json").read_text())["results"])
    report = (tmp_path / "gpu_report.md").read_text()
    data = json.loads((tmp_path / "gpu_bench.json").read_text())
    assert "not finished" not in data["meta"]["elapsed"] and report in run.stdout
    rows = {(r["rule"], r["layout"], r["impl"]): r for r in data["results"]}
    one, many = gpu_report.one_tensor_label(70_001), gpu_report.tensor_list_label(50_000)
    for rule in ("adam", "sgd_momentum", "adagrad"):
        for layout in (one, many):
            for impl in ("fusedopt (prepared Batch)", "fusedopt functional API", "fusedopt optim step",
                         "traffic roof (same loads/stores)"):
                assert len(rows[rule, layout, impl]["samples_ms"]) == 2, (rule, layout, impl)
            assert rows[rule, layout, "CuPy ElementwiseKernel"]["note"]
    assert rows["adam", one, gpu_report.GRAPH + "fusedopt capturable Adam"]["note"]
    assert len(data["chunk_sweep"]) == 2 * len(gpu_report.SWEEP_CHUNKS)
    copies = [r for r in data["results"] if r["rule"] == "copy"]
    assert [r["impl"].rsplit(", ", 1)[1] for r in copies] == ["before the cases", "after the cases"]
    assert data["copy_gbps"] == max(r["gbps"] for r in copies)


def test_copy_roof_is_the_faster_copy():
    """A copy timed while the GPU was still clocking up must not lower the roof (and so
    flatter every share of it), whichever of the two copies it was."""
    R = gpu_report.Result
    slow, fast = (R("copy", "x", f"copy {w}", [ms], 8 * 2**20) for w, ms in (("a", 0.004), ("b", 0.002)))
    adam = R("adam", "x", gpu_report.PREPARED, [0.001], 28 * 2**20)
    for order in ([slow, adam, fast], [fast, adam, slow]):
        assert gpu_report.copy_roof(order) == fast.gbps
    assert gpu_report.copy_roof([adam]) != gpu_report.copy_roof([adam])  # NaN: no copy measured


def test_targets_name_the_row_they_score():
    """Each torch target is scored for the prepared call and for the optimizer's step (on
    CuPy arrays and on torch tensors), and the rows are told apart exactly ("fusedopt optim
    step" is a prefix of the torch-tensor row's name)."""
    R, nbytes = gpu_report.Result, gpu_report.step_bytes("adam", 2**26)
    rows = [R("copy", "x", "copy", [0.5], 8 * 2**28),
            R("adam", gpu_report.TENSOR_LIST, gpu_report.TORCH_FUSED, [3.0], nbytes),
            R("adam", gpu_report.TENSOR_LIST, gpu_report.OPTIM_TORCH, [4.0], nbytes),
            R("adam", gpu_report.TENSOR_LIST, gpu_report.OPTIM, [2.0], nbytes),
            R("adam", gpu_report.TENSOR_LIST, gpu_report.PREPARED, [1.0], nbytes)]
    got = {what: (ok, fig) for what, ok, fig in gpu_report.acceptance(rows, gpu_report.copy_roof(rows))}
    target = "Adam f32 1,000-tensor list >= 1.3x torch fused Adam"
    assert got[f"{target} ({gpu_report.PREPARED})"] == (True, "3.00x")
    assert got[f"{target} ({gpu_report.OPTIM})"] == (True, "1.50x")
    assert got[f"{target} ({gpu_report.OPTIM_TORCH})"] == (False, "0.75x")
    assert got["Adam f32 2^28 >= 90% of copy bandwidth"][0] is None  # no 2^28 row
    table = gpu_report.format_table(rows, gpu_report.copy_roof(rows)).splitlines()
    torch_tensor_row = next(line for line in table if gpu_report.OPTIM_TORCH in line)
    assert torch_tensor_row.endswith("| 0.75x |"), torch_tensor_row  # the table says what the target scores
    assert next(line for line in table if f"| {gpu_report.TORCH_FUSED} |" in line).endswith("|  |")
