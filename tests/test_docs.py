"""Every ```python block of README.md and docs/*.md runs, as a reader would run it.

Each block runs in a fresh subprocess of this interpreter, with a temporary directory as
its working directory and PYTHONPATH unset, so that nothing of the source tree is on its
path but what the installation put there: the block gets the installed fusedopt, with its
compiled modules. A block runs as written: it imports fusedopt, NumPy and whatever else
it uses itself. Test ids name the file and the line of the block's opening
fence (``README.md:L42``).

Only ```python blocks run. ```bash blocks are commands (building, benchmarks, CI steps)
and are not run here, nor are ```text blocks (sample output) or indented code.

An HTML comment on the line right above a block's fence changes how it runs (one or more
such lines, one directive each):

    <!-- doctest: skip (needs an NVIDIA GPU) -->   not run; the test skips with the reason
    <!-- doctest: needs torch -->                  skipped unless the module (or each of a
                                                   comma-separated list) is importable
    <!-- doctest: continue -->                     runs after the block before it in the
                                                   same file, in the same process

A continued block is skipped when the block it continues is.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if not (ROOT / "README.md").is_file():
    # tools/test_wheel.sh tests a wheel from a scratch copy of tests/ alone.
    pytest.skip("README.md and docs/ are not beside tests/ (a copy of the tests without the "
                "source tree)", allow_module_level=True)
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TIMEOUT_S = 300  # a block is an example: seconds, even on a loaded 2-core machine

_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")
_DIRECTIVE = re.compile(r"^\s*<!--\s*doctest:\s*(?P<body>.*?)\s*-->\s*$")


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    directives: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT).as_posix()}:L{self.line}"


def parse_blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file, with the doctest directives above each."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, indent = m["fence"], len(m["indent"])
        directives = []
        j = i - 1
        while j >= 0 and (d := _DIRECTIVE.match(lines[j])):
            directives.insert(0, d["body"])
            j -= 1
        body = []
        k = i + 1
        closing = re.compile(rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        while k < len(lines) and not closing.match(lines[k]):
            body.append(re.sub(rf"^ {{0,{indent}}}", "", lines[k]))  # the fence's indentation
            k += 1
        if k == len(lines):
            raise ValueError(f"{path.name}:{i + 1}: code block never closed")
        lang = (m["info"].split() or [""])[0].lower()
        blocks.append(Block(path, i + 1, lang, textwrap.dedent("\n".join(body)) + "\n", directives))
        i = k + 1
    return blocks


@dataclass
class Runnable:
    block: Block
    code: str  # the block, after the blocks it continues
    skip: str | None  # the reason it does not run here, if it does not


def _skip_reason(block: Block) -> str | None:
    for d in block.directives:
        if d.startswith("skip"):
            reason = d[len("skip"):].strip().strip("()").strip()
            return reason or "marked skip"
        if d.startswith("needs "):
            for module in d[len("needs "):].replace(",", " ").split():
                if importlib.util.find_spec(module) is None:
                    return f"needs {module}, which is not importable here"
        elif d != "continue":
            raise ValueError(f"{block.id}: unknown doctest directive {d!r} "
                             "(skip (reason), needs MODULE, continue)")
    return None


def runnables(path: Path) -> list[Runnable]:
    out: list[Runnable] = []
    previous: Runnable | None = None
    for block in parse_blocks(path):
        if block.lang != "python":
            if block.directives:
                raise ValueError(f"{block.id}: doctest directives on a {block.lang or 'plain'} "
                                 "block, which is never run")
            continue
        skip = _skip_reason(block)
        code = block.code
        if "continue" in block.directives:
            if previous is None:
                raise ValueError(f"{block.id}: 'continue' but no python block before it")
            code = previous.code + "\n" + code
            skip = skip or previous.skip
        previous = Runnable(block, code, skip)
        out.append(previous)
    return out


ALL = [r for path in DOC_FILES for r in runnables(path)]


def run_as_a_reader(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    script = cwd / "block.py"
    script.write_text(code, encoding="utf-8")
    return subprocess.run([sys.executable, str(script)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=TIMEOUT_S)


@pytest.mark.parametrize("runnable", ALL, ids=[r.block.id for r in ALL])
def test_block_runs(runnable: Runnable, tmp_path: Path) -> None:
    if runnable.skip:
        pytest.skip(runnable.skip)
    result = run_as_a_reader(runnable.code, tmp_path)
    if result.returncode != 0:
        numbered = "\n".join(f"{n:4} | {line}" for n, line in enumerate(runnable.code.splitlines(), 1))
        pytest.fail(f"{runnable.block.id} exited with {result.returncode}\n--- code\n{numbered}\n"
                    f"--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-6000:]}",
                    pytrace=False)


def test_the_readme_example_is_collected() -> None:
    # Guards the parser: a change that found no blocks would pass every test above.
    readme = [r for r in ALL if r.block.path.name == "README.md"]
    assert any(r.skip is None for r in readme), "no runnable python block found in README.md"
    assert any("continue" in r.block.directives for r in readme)


def test_a_failing_block_is_seen(tmp_path: Path) -> None:
    assert run_as_a_reader("raise SystemExit(3)\n", tmp_path).returncode == 3
