"""python -m fusedopt verify: the user's check of every kernel against its references
(fusedopt/_verify.py). It passes on a correct build, fails on a kernel that is one ulp off,
and says why it cannot check CUDA kernels where none can run."""

from __future__ import annotations

import fusedopt.cuda
import numpy as np
import pytest
from fusedopt import _kernels, _verify

SMALL = [0, 1, 17, 1023, 70_001]  # the command's sizes up to 2^20 + 3, made smaller for time


@pytest.fixture
def small(monkeypatch):
    monkeypatch.setattr(_verify, "SIZES", SMALL)


def test_every_case_passes(small, capsys):
    assert _verify.main([]) == 0
    out = capsys.readouterr().out
    total = len(_verify.DTYPES) * len(_verify.CASES)
    assert f"{total} passed, 0 failed" in out
    assert out.count("identical") == total


def test_a_kernel_one_ulp_off_fails(small, monkeypatch, capsys):
    """The native SGD kernel nudged by one ulp in its first param: the exact comparison
    fails those cases (and only those), and the command exits 1."""
    sgd = _kernels.sgd_

    def nudged(params, *args, **kwargs):
        out = sgd(params, *args, **kwargs)
        if kwargs.get("backend") == "native" and params and params[1].size:
            params[1][0] = np.nextafter(params[1][0], np.inf)
        return out

    monkeypatch.setattr(_kernels, "sgd_", nudged)
    assert _verify.main([]) == 1
    out = capsys.readouterr().out
    failed = [line.split()[0] for line in out.splitlines() if line.endswith("FAIL")]
    sgd_cases = [name for name, kernel, *_ in _verify.CASES if kernel == "sgd_"]
    assert sorted(set(failed)) == sorted(sgd_cases) and len(failed) == len(_verify.DTYPES) * len(sgd_cases)


@pytest.mark.skipif(fusedopt.cuda.unavailable_reason() is None, reason="a GPU is here: test_cuda.py runs it")
def test_cuda_without_a_gpu_says_why(capsys):
    assert _verify.main(["--device", "cuda"]) == 2
    assert fusedopt.cuda.unavailable_reason() in capsys.readouterr().err
