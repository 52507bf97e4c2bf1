#!/usr/bin/env python3
"""Checks that csrc/'s folders include each other only downwards.

Every `#include "..."` under csrc/ is resolved (next to the including file, else from
csrc/) and its folder compared with the including file's. An include into a higher layer,
into another folder of the same layer, or into a folder the order does not name fails, and
so does a cycle between folders. Angle includes (<cuda_runtime.h>, <launch_grid.cuh>) are
left alone: the include path picks them, which is how csrc/cuda_emulation/ stands in for
CUDA without csrc/cuda/ knowing it.

    python tools/check_layers.py              # the tree; exit 1 with a list of violations
    python tools/check_layers.py --self-test  # plants violations in a copy: they must fail
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

# The layers, lowest first. A folder may include itself and any folder of a lower layer;
# folders of one layer know nothing of each other.
LAYERS = (
    ("math",),  # the update rules, per element; no I/O, no platform
    ("common",),  # batches, dtypes, step coefficients: what both backends share
    ("cpu", "cuda"),  # the two backends
    ("bindings",),  # the modules: the one reader of arrays, coefficients from Python, no math
    ("cuda_emulation",),  # the CUDA module built and run on the host, for the tests
)

# Known violations, each with the work that removes it. An exception that no longer occurs
# fails too, so that it is deleted here when its include goes.
EXCEPTIONS: dict = {}

SOURCES = (".h", ".hpp", ".cuh", ".c", ".cc", ".cpp", ".cu")
INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*"([^"]+)"', re.MULTILINE)
RANK = {folder: rank for rank, layer in enumerate(LAYERS) for folder in layer}


def includes(csrc: Path):
    """(file, line, include as spelled, included file) for every quoted include, paths
    relative to csrc, resolved as the compiler does: next to the file, else from csrc/. The
    included file is None where neither has it."""
    for path in sorted(p for p in csrc.rglob("*") if p.suffix in SOURCES and p.is_file()):
        text = path.read_text(encoding="utf-8", errors="replace")
        for m in INCLUDE.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            target = None
            for base in (path.parent, csrc):
                candidate = (base / m.group(1)).resolve()
                if candidate.is_file():
                    target = candidate
                    break
            if target is not None:
                try:
                    target = target.relative_to(csrc.resolve()).as_posix()
                except ValueError:
                    target = "../" + m.group(1)  # outside csrc/: reported below
            yield path.relative_to(csrc).as_posix(), line, m.group(1), target


def folder(rel: str) -> str:
    return rel.split("/", 1)[0] if "/" in rel else "."


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """A cycle of folders (first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def check(csrc: Path) -> list[str]:
    """The violations under csrc, one message each."""
    errors = []
    used_exceptions = set()
    edges: dict[str, set[str]] = {}
    for src, line, spelled, target in includes(csrc):
        where = f"csrc/{src}:{line}"
        if target is None:
            errors.append(f'{where}: #include "{spelled}" resolves to no file under csrc/')
            continue
        if target.startswith("../"):
            errors.append(f'{where}: #include "{spelled}" reaches outside csrc/')
            continue
        a, b = folder(src), folder(target)
        if a == b:
            continue
        edges.setdefault(a, set()).add(b)
        if (src, target) in EXCEPTIONS:
            used_exceptions.add((src, target))
            continue
        for f in (a, b):
            if f not in RANK:
                errors.append(f"{where}: folder {f}/ is in no layer; add it to LAYERS in "
                              f"tools/check_layers.py")
        if a not in RANK or b not in RANK:
            continue
        if RANK[b] > RANK[a]:
            errors.append(f'{where}: #include "{spelled}": {a}/ is below {b}/ and may not '
                          f"include it")
        elif RANK[b] == RANK[a]:
            errors.append(f'{where}: #include "{spelled}": {a}/ and {b}/ are one layer and '
                          f"may not include each other")
    cycle = find_cycle(edges)
    if cycle:
        errors.append("cycle between folders: " + " -> ".join(f"{f}/" for f in cycle))
    for src, target in sorted(set(EXCEPTIONS) - used_exceptions):
        errors.append(f"csrc/{src} no longer includes {target}: delete its exception from "
                      f"EXCEPTIONS in tools/check_layers.py")
    return errors


def order() -> str:
    return " < ".join(", ".join(f"{f}/" for f in layer) for layer in LAYERS)


def self_test(csrc: Path) -> list[str]:
    """Plants violations in copies of csrc; returns what was not caught."""
    # what is planted -> (file, line appended to it, what the report must say)
    plants = {
        "an include upwards, closing a cycle": (
            "math/hd.h", '#include "common/batch.h"', ["csrc/math/hd.h:", "cycle between folders"]),
        "an include sideways": ("cpu/ranges.h", '#include "cuda/plan.h"', ["csrc/cpu/ranges.h:"]),
        "an include of the emulation": (
            "cuda/plan.cpp", '#include "cuda_emulation/controls.h"', ["csrc/cuda/plan.cpp:"]),
        "an include of a missing file": (
            "common/dtype.h", '#include "common/nowhere.h"', ["csrc/common/dtype.h:"]),
    }
    missed = []
    if check(csrc):
        missed.append("the tree itself fails; the self-test needs a clean tree")
        return missed
    for what, (victim, line, expected) in plants.items():
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / "csrc"
            shutil.copytree(csrc, copy)
            target = copy / victim
            target.write_text(target.read_text(encoding="utf-8") + line + "\n", encoding="utf-8")
            report = "\n".join(check(copy))
            for e in expected:
                if e not in report:
                    missed.append(f"{what} ({victim}: {line}): no {e!r} in the report")
    return missed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--csrc", type=Path, default=Path(__file__).resolve().parent.parent / "csrc")
    parser.add_argument("--self-test", action="store_true",
                        help="plant violations in a temporary copy and check that they fail")
    args = parser.parse_args(argv)
    if args.self_test:
        missed = self_test(args.csrc)
        for m in missed:
            print(f"self-test: {m}", file=sys.stderr)
        if not missed:
            print("self-test: every planted violation was caught")
        return 1 if missed else 0
    errors = check(args.csrc)
    for e in errors:
        print(e, file=sys.stderr)
    if errors:
        print(f"layer order (lowest first): {order()}", file=sys.stderr)
        return 1
    print(f"layers ok: {order()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
