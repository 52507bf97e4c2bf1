"""The GPU benchmark's report logic (bench/gpu_bench.py), which runs without a GPU: the
table, the acceptance checks and the mixed tensor sizes the device check will use."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parent.parent / "bench" / "gpu_bench.py"


@pytest.fixture(scope="module")
def gpu_bench():
    spec = importlib.util.spec_from_file_location("gpu_bench", _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


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
