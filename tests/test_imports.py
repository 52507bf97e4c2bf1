"""The Python import graph (import-linter contracts in pyproject.toml): the tree keeps them,
and a planted break is caught.

The planted breaks go into a copy of python/fusedopt's .py files in a temporary directory,
analysed with the same contracts. An editable install puts a finder for fusedopt ahead of the
path, which would hand import-linter the checkout instead of the copy; the copy is therefore
analysed through a small wrapper that drops any finder resolving fusedopt elsewhere and checks
that the package found is the copy, and the unplanted copy is checked to pass as well.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "python" / "fusedopt"
CONFIG = ROOT / "pyproject.toml"

pytestmark = pytest.mark.skipif(not (SOURCE.is_dir() and CONFIG.is_file()),
                                reason="needs the source tree (python/fusedopt and pyproject.toml)")

needs_linter = pytest.mark.skipif(
    importlib.util.find_spec("importlinter") is None,
    reason="import-linter is not installed (pip install import-linter; CI does)",
)

# Runs lint-imports with sys.argv[1] (the directory holding the copy) as the only place that
# fusedopt can be found, or exits with 3 if fusedopt still resolves elsewhere; the rest of
# sys.argv goes to lint-imports (which exits with 1 when a contract is broken).
_WRAPPER = """
import importlib.util, os, sys
where = os.path.realpath(sys.argv[1])
sys.path.insert(0, where)

def _elsewhere(finder):
    find = getattr(finder, "find_spec", None)
    spec = find("fusedopt", None) if find is not None else None
    return spec is not None and not os.path.realpath(spec.origin or "").startswith(where + os.sep)

sys.meta_path[:] = [finder for finder in sys.meta_path if not _elsewhere(finder)]
origin = importlib.util.find_spec("fusedopt").origin
if not os.path.realpath(origin).startswith(where + os.sep):
    print(f"fusedopt resolves to {origin}, not to the copy in {where}", file=sys.stderr)
    sys.exit(3)
from importlinter.cli import lint_imports_command
sys.argv = ["lint-imports", *sys.argv[2:]]
sys.exit(lint_imports_command())
"""

LAYERS = "Python layers: entry points and tooling > public API > kernels > dispatch > support > coefficients"
CYCLES = "No import cycles between sibling modules or packages"
LIBRARY_DEPS = "The library does not import the tooling's third-party packages"


def _copy(tmp_path: Path) -> Path:
    """python/fusedopt's .py files (subpackages included, nothing compiled) under tmp_path/src."""
    src = tmp_path / "src"
    for path in SOURCE.rglob("*.py"):
        if "__pycache__" in path.parts:
            continue
        target = src / "fusedopt" / path.relative_to(SOURCE)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    shutil.copyfile(CONFIG, tmp_path / "pyproject.toml")
    return src


def _lint_copy(tmp_path: Path, src: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", _WRAPPER, str(src), "--no-cache", "--no-logo",
         str(tmp_path / "pyproject.toml")],
        cwd=src, capture_output=True, text=True, timeout=120,
    )


def _verdicts(output: str) -> dict[str, str]:
    """Contract name -> KEPT or BROKEN, from lint-imports' report (a long name may wrap)."""
    text = " ".join(output.split())
    names = (LAYERS, CYCLES, LIBRARY_DEPS)
    verdicts = {}
    for name in names:
        for verdict in ("KEPT", "BROKEN"):
            if f"{name} {verdict}" in text:
                verdicts[name] = verdict
    assert set(verdicts) == set(names), output
    return verdicts


def test_the_tree_keeps_its_import_contracts():
    command = shutil.which("lint-imports")
    if command is None:
        pytest.skip("lint-imports is not installed (pip install import-linter; CI does)")
    result = subprocess.run([command, "--no-cache", "--no-logo"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout, result.stdout


@needs_linter
def test_an_unplanted_copy_keeps_them(tmp_path):
    result = _lint_copy(tmp_path, _copy(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert set(_verdicts(result.stdout).values()) == {"KEPT"}


@needs_linter
@pytest.mark.parametrize(
    ("module", "line", "broken", "shown"),
    [
        # A cycle: _dispatch imports _arrays.
        pytest.param("_arrays.py", "from fusedopt import _dispatch", {LAYERS, CYCLES},
                     "fusedopt._arrays -> fusedopt._dispatch", id="arrays-imports-dispatch"),
        # An arrow from the bottom to the top, and a cycle through optim.
        pytest.param("_coeffs.py", "from fusedopt import optim", {LAYERS, CYCLES},
                     "fusedopt._coeffs -> fusedopt.optim", id="coeffs-imports-optim"),
        # The library reaching into the tooling (which imports it), from inside a function.
        pytest.param("reference.py", "def _planted():\n    from fusedopt.bench import cases",
                     {LAYERS, CYCLES}, "fusedopt.reference -> fusedopt.bench.cases",
                     id="reference-imports-bench"),
        # Two siblings of one layer.
        pytest.param("optim.py", "from fusedopt import reference", {LAYERS},
                     "fusedopt.optim -> fusedopt.reference", id="optim-imports-reference"),
        # A third-party package of the tooling's, in the library.
        pytest.param("_dispatch.py", "import matplotlib", {LIBRARY_DEPS},
                     "fusedopt._dispatch -> matplotlib", id="dispatch-imports-matplotlib"),
    ],
)
def test_a_planted_import_breaks_its_contract(tmp_path, module, line, broken, shown):
    src = _copy(tmp_path)
    planted = src / "fusedopt" / module
    planted.write_text(planted.read_text() + f"\n{line}  # planted\n")
    result = _lint_copy(tmp_path, src)
    assert result.returncode == 1, result.stdout + result.stderr
    verdicts = _verdicts(result.stdout)
    assert {name for name, verdict in verdicts.items() if verdict == "BROKEN"} == broken, result.stdout
    assert shown in result.stdout, result.stdout
