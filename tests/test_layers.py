"""The C++ layers (tools/check_layers.py): the tree keeps them, and a break is caught."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHECK = ROOT / "tools" / "check_layers.py"

pytestmark = pytest.mark.skipif(not (CHECK.is_file() and (ROOT / "csrc").is_dir()),
                                reason="needs the source tree (csrc/ and tools/)")


def _check(*args):
    return subprocess.run([sys.executable, str(CHECK), *args], capture_output=True, text=True)


def test_the_tree_keeps_its_layers():
    result = _check()
    assert result.returncode == 0, result.stderr


def test_an_include_of_the_emulation_from_cuda_fails(tmp_path):
    csrc = tmp_path / "csrc"
    shutil.copytree(ROOT / "csrc", csrc)
    launch = csrc / "cuda" / "launch.cuh"
    launch.write_text(launch.read_text() + '#include "cuda_emulation/controls.h"\n')
    result = _check("--csrc", str(csrc))
    assert result.returncode == 1
    assert "csrc/cuda/launch.cuh" in result.stderr
    assert "cuda/ is below cuda_emulation/" in result.stderr
    assert "cycle between folders" in result.stderr


def test_the_checker_catches_what_its_self_test_plants():
    result = _check("--self-test")
    assert result.returncode == 0, result.stderr
