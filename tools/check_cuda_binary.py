"""Checks the device code that ships in fusedopt._cuda, without a GPU.

The CUDA tests prove the numerics contract on the GPU they run on. This check proves the
parts of it that are fixed at compile time, on the very binary that ships (the module, or a
wheel holding it), for every architecture in it, and on machines that have no GPU:

1. Rounding (on the PTX the binary embeds). Every floating-point add, sub, mul, div, sqrt
   and rcp names its IEEE rounding (.rn and kin). PTX lets ptxas fuse a mul and an add that
   name none into an FMA, so an op without it is a contraction waiting to happen whatever
   the flags of the day. Nothing fused, approximate or flushing appears at all: no fma or
   mad (the math is written without FMA, like the CPU kernels: an fma here is a
   contraction by the front end or an intrinsic), no .approx, no .full (div.full is
   approximate), no .ftz, no rsqrt, ex2, lg2, sin, cos or tanh.
2. Memory path (on the machine code of every architecture, SASS). Every update kernel has
   16-byte global loads and stores (LDG/STG .128), the vector path the launcher is built
   around, and no kernel touches local memory (LDL/STL: a spilled register or a stack
   array) inside a 16-byte vector loop, where it would cost per element. Loops are read
   from the branches: one runs from a backward branch's target to the last branch back to
   it, with the subroutines it calls (the slow paths of IEEE division, placed after EXIT).
   The loops that load global memory with no such loop nested in them are where a kernel
   spends its time per element (the loop around them walks chunks). Local memory in such
   a loop without 16-byte loads (the path of misaligned views) is a warning; elsewhere
   (ptxas keeping a value across the walk over chunks, paid per chunk) it is reported
   with the stack frame's size.
3. Resources (from the binary's resource table). The registers per thread of the update
   kernels, with the threads per SM they leave room for at the kernels' block size.

PTX is embedded only for architectures built without "-real" (cmake/cuda.cmake's default
list embeds compute_90's, the CUDA wheel's compute_120's); a build with none gets the
machine-code and resource checks, and says so.
With --archs LIST (CMake's CUDA_ARCHITECTURES syntax) it also checks that the binary holds
exactly the machine code and PTX that list asks for.

--self-test first compiles small probe kernels with nvcc: with the project's numerics flags
(read from csrc/cuda/CMakeLists.txt) they must pass; with --fmad=true, with
-use_fast_math, and with a dynamically indexed local array in a 16-byte loop they must
fail, each for its reason, and with that array in a scalar loop give the warning. That
shows the check can fail, and that the project's flags give clean code.

Needs cuobjdump and nvdisasm: from the CUDA toolkit, or from PyPI
(pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm). Exit status 0 when every check
passes, 1 when one fails, 2 when the check cannot run.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parent.parent

FLOAT_TYPES = {"f16", "f16x2", "bf16", "bf16x2", "f32", "f32x2", "f64"}
ROUNDINGS = {"rn", "rz", "rm", "rp"}
# Arithmetic that rounds as its modifier says; add, sub and mul without one may be fused.
NEEDS_ROUNDING = {"add", "sub", "mul", "div", "sqrt", "rcp"}
# Fused, or approximate whatever their modifiers say.
FORBIDDEN_OPS = {"fma", "mad", "rsqrt", "ex2", "lg2", "sin", "cos", "tanh"}
FORBIDDEN_MODIFIERS = {"approx", "full", "ftz"}
# The update kernels: the ones the 16-byte vector path is for (mangled name).
UPDATE_KERNEL = "update_kernel"
# Per compute capability: the most resident threads and blocks of an SM (the CUDA
# programming guide's table). Every one has 64K 32-bit registers per SM, allocated per warp
# in units of 256. Others: registers are reported without the threads they leave room for.
SM_LIMITS = {75: (1024, 16), 80: (2048, 32), 86: (1536, 16), 87: (1536, 16), 89: (1536, 24),
             90: (2048, 32), 100: (2048, 32), 103: (2048, 32), 120: (1536, 32), 121: (1536, 32)}
REGISTERS_PER_SM = 65536
# CMake architecture values that name no fixed list: the binary cannot be compared with them.
OPEN_ARCH_LISTS = {"all", "all-major", "native"}


@dataclass
class Kernel:
    name: str                       # mangled
    registers: int | None = None
    stack: int = 0                  # bytes of stack frame per thread
    sass: list = field(default_factory=list)  # (address, opcode, operands), in order

    def ops(self) -> set[str]:
        return {op for _, op, _ in self.sass}


@dataclass
class Arch:
    name: str                                        # "90", "90a", "100f": after sm_ / compute_
    kernels: dict = field(default_factory=dict)      # mangled name -> Kernel (machine code)
    ptx_ops: Counter | None = None                   # (entry, opcode) -> count; None: no PTX
    ptx_entries: dict = field(default_factory=dict)  # mangled name -> .maxntid threads or None

    @property
    def number(self) -> int:
        return arch_order(self.name)[0]


def arch_order(name: str) -> tuple[int, str]:
    """Sorts "90" before "90a" before "100": by the compute capability, then the suffix."""
    return int(re.match(r"\d+", name).group()), name


# --- finding the tools -----------------------------------------------------------------

def tool_dirs() -> list[Path]:
    """Where cuobjdump and nvdisasm may be: PATH, the toolkit, the PyPI packages."""
    dirs = [Path(p) for p in os.environ.get("PATH", "").split(os.pathsep) if p]
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            dirs.append(Path(os.environ[var]) / "bin")
    dirs.append(Path("/usr/local/cuda/bin"))
    # nvidia-cuda-cuobjdump / nvidia-cuda-nvdisasm install into site-packages/nvidia/cuXX/bin:
    # this interpreter's, and any other on its path (a venv's system or user site-packages).
    sites = [sysconfig.get_paths()[key] for key in ("purelib", "platlib")] + [p for p in sys.path if p]
    for site in dict.fromkeys(sites):
        dirs.extend(sorted((Path(site) / "nvidia").glob("cu*/bin"), reverse=True))
    return dirs


def find_tool(name: str) -> Path | None:
    for d in tool_dirs():
        p = d / name
        if p.is_file() and os.access(p, os.X_OK):
            return p
    return None


class ToolMissing(RuntimeError):
    pass


def tool_env(extra_path: Path | None = None) -> dict[str, str]:
    """The environment for the toolkit's programs: without a sanitizer's preload (the tests
    may run under tools/sanitize.sh), with `extra_path` searched first."""
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    if extra_path is not None:
        env["PATH"] = f"{extra_path}{os.pathsep}{env.get('PATH', '')}"
    return env


def run_cuobjdump(binary: Path, *args: str) -> str:
    cuobjdump = find_tool("cuobjdump")
    if cuobjdump is None:
        raise ToolMissing("cuobjdump not found (CUDA toolkit, or pip install nvidia-cuda-cuobjdump)")
    nvdisasm = None
    if "-sass" in args:  # cuobjdump runs nvdisasm from PATH
        nvdisasm = find_tool("nvdisasm")
        if nvdisasm is None:
            raise ToolMissing("nvdisasm not found (CUDA toolkit, or pip install nvidia-cuda-nvdisasm)")
    env = tool_env(nvdisasm.parent if nvdisasm else None)
    res = subprocess.run([str(cuobjdump), *args, str(binary)], capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"cuobjdump {' '.join(args)} {binary.name} failed: {res.stderr.strip()}")
    return res.stdout


# --- parsing ---------------------------------------------------------------------------

ARCH_LINE = re.compile(r"^\s*arch = sm_(\d+[a-z]?)\s*$")
PTX_ENTRY = re.compile(r"^\s*(?:\.visible\s+|\.weak\s+)?\.(?:entry|func)\s+(?:\([^)]*\)\s*)?([\w$]+)")
PTX_MAXNTID = re.compile(r"^\s*\.maxntid\s+(\d+)(?:\s*,\s*(\d+))?(?:\s*,\s*(\d+))?")
# An instruction, after an optional "{" (inline asm on one line) and predicate.
PTX_INSTRUCTION = re.compile(r"^\s*(?:\{\s*)?(?:@!?%\w+\s+)?([a-z][a-z0-9]*(?:\.[A-Za-z0-9]+)*)\s")
SASS_CODE_FOR = re.compile(r"^\s*code for sm_(\d+[a-z]?)\s*$")
SASS_FUNCTION = re.compile(r"^\s*Function\s*:\s*(\S+)\s*$")
SASS_INSTRUCTION = re.compile(
    r"^\s*/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*(?:\.[A-Z0-9_]+)*)([^;]*);")
SASS_TARGET = re.compile(r"0x([0-9a-f]+)\s*$")
RES_FUNCTION = re.compile(r"^\s*Function\s+([^:\s]+):\s*$")
RES_VALUES = re.compile(r"\b(REG|STACK|SHARED|LOCAL):(\d+)")


def split_sections(text: str, header: str) -> list[tuple[str, list[str]]]:
    """cuobjdump's "Fatbin ptx code:" / "Fatbin elf code:" sections, with their arch."""
    sections: list[tuple[str, list[str]]] = []
    current: list[str] | None = None
    arch = None
    for line in text.splitlines():
        if line.startswith("Fatbin "):
            current = [] if line.startswith(header) else None
            arch = None
            if current is not None:
                sections.append(("?", current))
            continue
        if current is None:
            continue
        m = ARCH_LINE.match(line)
        if m and arch is None:
            arch = m.group(1)
            sections[-1] = (arch, current)
            continue
        current.append(line)
    return sections


def parse_ptx(text: str, archs: dict[str, Arch]) -> None:
    for name, lines in split_sections(text, "Fatbin ptx code"):
        arch = archs.setdefault(name, Arch(name))
        if arch.ptx_ops is None:
            arch.ptx_ops = Counter()
        entry = None
        for line in lines:
            m = PTX_ENTRY.match(line)
            if m:
                entry = m.group(1)
                arch.ptx_entries.setdefault(entry, None)
                continue
            m = PTX_MAXNTID.match(line)
            if m and entry is not None:
                threads = 1
                for g in m.groups():
                    threads *= int(g) if g else 1
                arch.ptx_entries[entry] = threads
                continue
            m = PTX_INSTRUCTION.match(line)
            if m and not line.lstrip().startswith("."):
                arch.ptx_ops[(entry, m.group(1))] += 1


def parse_sass(text: str, archs: dict[str, Arch]) -> None:
    arch = kernel = None
    for line in text.splitlines():
        m = SASS_CODE_FOR.match(line)
        if m:
            arch = archs.setdefault(m.group(1), Arch(m.group(1)))
            kernel = None
            continue
        m = SASS_FUNCTION.match(line)
        if m and arch is not None:
            kernel = arch.kernels.setdefault(m.group(1), Kernel(m.group(1)))
            continue
        m = SASS_INSTRUCTION.match(line)
        if m and kernel is not None:
            kernel.sass.append((int(m.group(1), 16), m.group(2), m.group(3).strip()))


def parse_resources(text: str, archs: dict[str, Arch]) -> None:
    for name, lines in split_sections(text, "Fatbin elf code"):
        arch = archs.setdefault(name, Arch(name))
        function = None
        for line in lines:
            m = RES_FUNCTION.match(line)
            if m:
                function = m.group(1)
                continue
            values = dict(RES_VALUES.findall(line))
            if function is not None and "REG" in values:
                k = arch.kernels.setdefault(function, Kernel(function))
                k.registers, k.stack = int(values["REG"]), int(values.get("STACK", 0))
                function = None


# --- the rules -------------------------------------------------------------------------

def ptx_float_op(opcode: str) -> tuple[str, list[str]] | None:
    """(base, modifiers) of a PTX instruction on floating-point types, else None."""
    base, *mods = opcode.lower().split(".")
    return (base, mods) if FLOAT_TYPES.intersection(mods) else None


def ptx_problem(opcode: str) -> str | None:
    """Why a PTX instruction breaks the numerics contract, or None."""
    parsed = ptx_float_op(opcode)
    if parsed is None:
        return None
    base, mods = parsed
    if base in FORBIDDEN_OPS:
        return "fused or approximate operation"
    bad = FORBIDDEN_MODIFIERS.intersection(mods)
    if bad:
        return f"{'/'.join(sorted(bad))}: not IEEE-exact"
    if base in NEEDS_ROUNDING and not ROUNDINGS.intersection(mods):
        return "no explicit rounding: ptxas may contract it into an FMA"
    return None


def is_local_memory(op: str) -> bool:
    return op.split(".")[0] in ("LDL", "STL")


def is_wide_access(op: str, base: str) -> bool:
    """A global load or store (base LDG or STG) of 16 bytes or more."""
    parts = op.split(".")
    return parts[0] == base and bool({"128", "256"}.intersection(parts[1:]))


@dataclass
class Loop:
    lo: int              # the first address: a backward branch's target
    hi: int              # the last branch back to it
    body: list           # (address, opcode): its range, and the subroutines called from it

    @property
    def vector(self) -> bool:
        """Has 16-byte (or wider) global loads."""
        return any(is_wide_access(op, "LDG") for _, op in self.body)


def loops_of(kernel: Kernel) -> list[Loop]:
    """The kernel's loops, from its backward branches. A loop's body includes the code of
    the subroutines it calls (the slow paths of IEEE division, say: placed after EXIT)."""
    at = {a: i for i, (a, _, _) in enumerate(kernel.sass)}
    ends: dict[int, int] = {}
    for addr, op, operands in kernel.sass:
        m = SASS_TARGET.search(operands) if op.split(".")[0] == "BRA" else None
        if m and int(m.group(1), 16) <= addr:
            target = int(m.group(1), 16)
            ends[target] = max(ends.get(target, addr), addr)

    def body(lo: int, hi: int) -> list[tuple[int, str]]:
        seen: set[int] = set()
        todo = [(lo, hi)]
        out = []
        while todo:
            first, last = todo.pop()
            i = at.get(first)
            while i is not None and i < len(kernel.sass) and kernel.sass[i][0] not in seen:
                addr, op, operands = kernel.sass[i]
                if last is not None and addr > last:
                    break
                seen.add(addr)
                out.append((addr, op))
                if op.startswith("CALL"):
                    m = SASS_TARGET.search(operands)
                    if m and int(m.group(1), 16) in at:
                        todo.append((int(m.group(1), 16), None))  # to its RET
                if last is None and op.startswith("RET"):
                    break
                i += 1
        return sorted(out)

    return [Loop(lo, hi, body(lo, hi)) for lo, hi in sorted(ends.items())]


def streaming_loops(kernel: Kernel) -> list[Loop]:
    """The loops where a kernel spends its time per element: the ones that load global
    memory with no loop nested in them that does (an outer loop walks chunks)."""
    loads = [lp for lp in loops_of(kernel) if any(op.split(".")[0] == "LDG" for _, op in lp.body)]
    return [lp for lp in loads
            if not any(o is not lp and lp.lo <= o.lo and o.hi <= lp.hi for o in loads)]


def threads_per_sm(registers: int, block: int, sm: int) -> int | None:
    """Resident threads per SM at `registers` per thread and `block` threads per block, or
    None where this architecture's limits are not in SM_LIMITS."""
    if sm not in SM_LIMITS:
        return None
    max_threads, max_blocks = SM_LIMITS[sm]
    per_warp = -(-registers * 32 // 256) * 256
    warps = REGISTERS_PER_SM // per_warp if per_warp else 10**9
    blocks = min(warps // -(-block // 32), max_blocks)
    return min(blocks * block, max_threads)


def demangle(names: list[str]) -> dict[str, str]:
    cxxfilt = shutil.which("c++filt")
    if not cxxfilt or not names:
        return {n: n for n in names}
    res = subprocess.run([cxxfilt], input="\n".join(names), capture_output=True, text=True, env=tool_env())
    out = res.stdout.splitlines()
    return dict(zip(names, out)) if res.returncode == 0 and len(out) == len(names) else {n: n for n in names}


def short(name: str, pretty: dict[str, str]) -> str:
    """A kernel's demangled name without namespaces and without its parameter list."""
    s = re.sub(r"fusedopt::(math|cuda)::|\(anonymous namespace\)::|^void ", "", pretty.get(name, name))
    if s.endswith(")"):
        depth = 0
        for i in range(len(s) - 1, -1, -1):
            depth += {")": 1, "(": -1}.get(s[i], 0)
            if depth == 0:
                return s[:i]
    return s


def update_family(mangled: str) -> tuple[str, str] | None:
    """('Adam', 'float') for an update kernel, from its mangled name (so no demangler is
    needed), else None."""
    m = re.search(r"update_kernelINS_4math\d+(\w+?)RuleI([fd])", mangled)
    return (m.group(1), {"f": "float", "d": "double"}[m.group(2)]) if m else None


def expected_archs(spec: str) -> tuple[set[str], set[str]] | None:
    """(machine code, PTX) architectures asked for by a CMake CUDA_ARCHITECTURES list, or
    None for a list that names no fixed set (empty, all, all-major, native)."""
    items = [i for i in re.split(r"[;,\s]+", spec.strip()) if i]
    if not items or any(i in OPEN_ARCH_LISTS for i in items):
        return None
    sass, ptx = set(), set()
    for item in items:
        m = re.fullmatch(r"(\d+[a-z]?)(?:-(real|virtual))?", item)
        if not m:
            raise ValueError(f"cannot read architecture {item!r} of {spec!r}")
        name, kind = m.group(1), m.group(2)
        if kind != "virtual":
            sass.add(name)
        if kind != "real":
            ptx.add(name)
    return sass, ptx


class Findings(NamedTuple):
    problems: list[str]  # the check fails on any
    warnings: list[str]  # reported, not refused


def check(binary: Path, archs_spec: str | None = None, quiet: bool = False) -> Findings:
    """Runs every check on one module."""
    return evaluate(binary.name, run_cuobjdump(binary, "-ptx"), run_cuobjdump(binary, "-res-usage"),
                    run_cuobjdump(binary, "-sass"), archs_spec, quiet)


class _Report:
    def __init__(self, pretty: dict[str, str]):
        self.pretty = pretty
        self.problems: list[str] = []
        self.warnings: list[str] = []
        self.lines: list[str] = []

    def name(self, mangled: str) -> str:
        return short(mangled, self.pretty)


def evaluate(label: str, ptx: str, resources: str, sass: str, archs_spec: str | None = None,
             quiet: bool = False) -> Findings:
    """The checks on cuobjdump's -ptx, -res-usage and -sass listings of one binary."""
    archs: dict[str, Arch] = {}
    parse_ptx(ptx, archs)
    parse_resources(resources, archs)
    parse_sass(sass, archs)
    if not archs:
        return Findings([f"{label}: no device code found"], [])
    names = sorted({n for a in archs.values() for n in list(a.kernels) + list(a.ptx_entries)})
    report = _Report(demangle(names))
    order = sorted(archs, key=arch_order)
    with_code = [n for n in order if archs[n].kernels]
    with_ptx = [n for n in order if archs[n].ptx_ops is not None]
    report.lines.append(f"{label}: machine code for {', '.join('sm_' + n for n in with_code) or '(none)'}; "
                        f"PTX for {', '.join('compute_' + n for n in with_ptx) or '(none)'}")
    if not with_ptx:
        report.lines.append("  no PTX embedded (a build of -real architectures only): the rounding "
                            "rules have nothing to read")
    elif set(with_code) - set(with_ptx):
        report.lines.append(f"  the rounding rules read the PTX embedded; the machine code of "
                            f"{', '.join('sm_' + n for n in with_code if n not in with_ptx)} "
                            "was compiled from PTX that is not")
    compare_archs(archs_spec, with_code, with_ptx, report)
    # The launch bound, from any PTX: the source gives every update kernel the same one.
    block = next((t for a in archs.values() for n, t in a.ptx_entries.items()
                  if UPDATE_KERNEL in n and t), None)
    for name in order:
        check_rounding(archs[name], report)
        check_machine_code(archs[name], block, report)
    if not quiet:
        print("\n".join(report.lines))
    return Findings(report.problems, report.warnings)


def compare_archs(spec: str | None, with_code: list[str], with_ptx: list[str], report: _Report) -> None:
    if spec is None:
        return
    wanted = expected_archs(spec)
    if wanted is None:
        report.lines.append(f"  the list {spec!r} names no fixed set of architectures: not compared")
        return
    for what, have, want in (("machine code", set(with_code), wanted[0]), ("PTX", set(with_ptx), wanted[1])):
        if have != want:
            report.problems.append(f"{what} for {sorted(have, key=arch_order)}, but the list {spec!r} "
                                   f"asks for {sorted(want, key=arch_order)}")


def check_rounding(arch: Arch, report: _Report) -> None:
    """Rule 1, on one architecture's PTX."""
    if arch.ptx_ops is None:
        return
    arithmetic = Counter()
    for (entry, op), n in arch.ptx_ops.items():
        why = ptx_problem(op)
        if why:
            report.problems.append(f"compute_{arch.name}: {op} x{n} in {report.name(entry or '?')}: {why}")
        elif (ptx_float_op(op) or ("",))[0] in NEEDS_ROUNDING:
            arithmetic[op] += n
    counts = ", ".join(f"{op} {n}" for op, n in sorted(arithmetic.items(), key=lambda kv: -kv[1]))
    report.lines.append(f"  compute_{arch.name}: {len(arch.ptx_entries)} entries; floating-point "
                        f"arithmetic, {sum(arithmetic.values())} in all: {counts or 'none'}")


def check_machine_code(arch: Arch, block: int | None, report: _Report) -> None:
    """Rules 2 and 3, on one architecture's machine code and resource table."""
    if not arch.kernels:
        return
    updates = 0
    before = len(report.problems) + len(report.warnings)
    spills: list[tuple[str, int]] = []  # local memory that no streaming loop touches
    for mangled, k in sorted(arch.kernels.items()):
        kernel = report.name(mangled)
        if not k.sass:
            report.problems.append(f"sm_{arch.name}: {kernel} has a resource entry but no disassembled code")
            continue
        ops = k.ops()
        if UPDATE_KERNEL in mangled:
            updates += 1
            for base in ("LDG", "STG"):
                if not any(is_wide_access(op, base) for op in ops):
                    report.problems.append(f"sm_{arch.name}: {kernel} has no 16-byte {base} (no vector path)")
        in_loops: set[int] = set()
        for loop in streaming_loops(k):
            local = [(a, op) for a, op in loop.body if is_local_memory(op)]
            in_loops.update(a for a, _ in local)
            if not local:
                continue
            where = ", ".join(f"{op} at {a:#x}" for a, op in local)
            if loop.vector:
                report.problems.append(f"sm_{arch.name}: {kernel} uses local memory in its 16-byte "
                                       f"vector loop ({where})")
            else:
                report.warnings.append(f"sm_{arch.name}: {kernel} uses local memory in a scalar "
                                       f"loop ({where})")
        outside = any(is_local_memory(op) and a not in in_loops for a, op, _ in k.sass)
        if outside or (k.stack and not in_loops):
            spills.append((kernel, k.stack))
    found = len(report.problems) + len(report.warnings) - before
    report.lines.append(f"  sm_{arch.name}: {len(arch.kernels)} kernels ({updates} update kernels): "
                        f"{found or 'no'} problems or warnings in the machine code")
    if spills:
        sizes = sorted({s for _, s in spills})
        frames = f"{sizes[0]}" if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"
        report.lines.append(
            f"    local memory outside the streaming loops (ptxas keeping a value across the walk over "
            f"chunks: paid per chunk, not per element) in {len(spills)} kernel{'s' * (len(spills) != 1)}, "
            f"stack frames of {frames} B: " + "; ".join(n for n, _ in spills[:3])
            + ("; ..." if len(spills) > 3 else ""))
    most: dict[tuple[str, str], int] = {}
    for mangled, k in arch.kernels.items():
        family = update_family(mangled)
        if family and k.registers is not None:
            most[family] = max(most.get(family, 0), k.registers)
    if not most:
        return
    room = block is not None and arch.number in SM_LIMITS
    line = "    most registers per thread"
    if room:
        line += (f" (and the threads per SM they leave room for at {block} per block, "
                 f"of {SM_LIMITS[arch.number][0]})")
    for storage in sorted({s for _, s in most}, reverse=True):
        items = sorted((r, f) for (f, s), r in most.items() if s == storage)
        line += f"\n      {storage}: " + ", ".join(
            f"{f} {r}" + (f" ({threads_per_sm(r, block, arch.number)})" if room else "") for r, f in items)
    report.lines.append(line)


# --- self-test -------------------------------------------------------------------------

PROBE = r"""
__global__ void probe(const float* __restrict__ a, const float* __restrict__ b,
                      float* __restrict__ c, int n, int k) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  float x = a[i] * b[i] + c[i];      // contracted into an FMA under --fmad=true
  x = x / (b[i] + 1.0f);             // approximate under -use_fast_math
  c[i] = sqrtf(x);
#if defined(PROBE_LOCAL_ARRAY) || defined(PROBE_LOCAL_ARRAY_VECTOR)
  float scratch[64] = {};            // indexed at run time: lives in local memory
  for (int j = 0; j < k; ++j) {      // a loop streaming global memory through it
#ifdef PROBE_LOCAL_ARRAY_VECTOR
    const float4 v = reinterpret_cast<const float4*>(a)[(i + j) % (n / 4)];  // 16-byte loads
    scratch[(i + j) & 63] += v.x + v.y + v.z + v.w;
#else
    scratch[(i + j) & 63] += a[(i + j) % n];
#endif
  }
  c[i] += scratch[k & 63];
#endif
}
"""


def project_numerics_flags() -> list[str]:
    text = (REPO / "csrc" / "cuda" / "CMakeLists.txt").read_text()
    m = re.search(r"set\(FUSEDOPT_NVCC_NUMERICS\s+([^)]*)\)", text)
    if not m:
        raise RuntimeError("FUSEDOPT_NVCC_NUMERICS not found in csrc/cuda/CMakeLists.txt")
    return m.group(1).split()


def self_test(tmp: Path, nvcc: str, arch: int = 90) -> bool:
    """Probe kernels: clean with the project's flags, caught with each unsafe one."""
    src = tmp / "probe.cu"
    src.write_text(PROBE)
    flags = project_numerics_flags()
    cases = [  # (label, flags, words a problem (or warning) must contain; None: clean)
        ("project flags", flags, None, None),
        ("--fmad=true", [f.replace("--fmad=false", "--fmad=true") for f in flags], "fused", None),
        ("-use_fast_math", ["-use_fast_math"], "not IEEE-exact", None),
        ("a local array in a 16-byte loop", flags + ["-DPROBE_LOCAL_ARRAY_VECTOR"],
         "local memory in its 16-byte vector loop", None),
        ("a local array in a scalar loop", flags + ["-DPROBE_LOCAL_ARRAY"], None,
         "local memory in a scalar loop"),
    ]
    ok = True
    for i, (label, extra, problem, warning) in enumerate(cases):
        out = tmp / f"probe{i}.fatbin"
        cmd = [nvcc, "-fatbin", "-O3", f"-gencode=arch=compute_{arch},code=[compute_{arch},sm_{arch}]",
               *extra, "-o", str(out), str(src)]
        res = subprocess.run(cmd, capture_output=True, text=True, env=tool_env())
        if res.returncode != 0:
            print(f"self-test: nvcc failed for {label}: {res.stderr.strip()}")
            return False
        problems, warnings = check(out, quiet=True)
        good = True
        for found, expect in ((problems, problem), (warnings, warning)):
            good &= any(expect in p for p in found) if expect else not found
        ok &= good
        print(f"self-test, probe with {label}: {'as expected' if good else 'WRONG'}: "
              + "; ".join([f"problem: {p}" for p in problems] + [f"warning: {w}" for w in warnings]
                          or ["clean"]))
    print(f"self-test: {'PASS' if ok else 'FAIL'}")
    return ok


# --- main ------------------------------------------------------------------------------

def modules_in(path: Path, tmp: Path) -> list[Path]:
    """The _cuda module(s) of a .so, a wheel, or an installed fusedopt."""
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if re.fullmatch(r"fusedopt/_cuda\..*\.so", n)]
            for n in names:
                z.extract(n, tmp)
        return [tmp / n for n in names]
    return [path]


def installed_module() -> Path | None:
    try:
        import importlib.util
        spec = importlib.util.find_spec("fusedopt._cuda")
    except ImportError:
        return None
    return Path(spec.origin) if spec and spec.origin else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("binary", nargs="?", type=Path,
                        help="fusedopt/_cuda*.so or a wheel (default: the installed fusedopt._cuda)")
    parser.add_argument("--archs",
                        help="the CUDA_ARCHITECTURES list the binary was built for, to check against")
    parser.add_argument("--self-test", action="store_true",
                        help="first show on probe kernels compiled with nvcc that the check can fail")
    parser.add_argument("--nvcc", default=os.environ.get("CUDACXX") or shutil.which("nvcc") or "nvcc")
    args = parser.parse_args(argv)
    binary = args.binary or installed_module()
    if binary is None:
        return cannot("fusedopt._cuda is not installed; name a module or wheel")
    if not binary.is_file():
        return cannot(f"{binary} is not a file")
    if args.archs is not None:
        try:
            expected_archs(args.archs)
        except ValueError as e:
            return cannot(str(e))
    ok = True
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if args.self_test:
                ok &= self_test(Path(tmp), args.nvcc)
            modules = modules_in(binary, Path(tmp))
            if not modules:
                return cannot(f"no fusedopt/_cuda module in {binary}")
            for module in modules:
                problems, warnings = check(module, args.archs)
                for w in warnings:
                    print(f"WARNING: {w}")
                for p in problems:
                    print(f"PROBLEM: {p}")
                print(f"{module.name}: {'FAIL' if problems else 'PASS'} "
                      f"({len(problems)} problems, {len(warnings)} warnings)")
                ok &= not problems
    except (RuntimeError, OSError, zipfile.BadZipFile) as e:  # ToolMissing, cuobjdump's errors
        return cannot(str(e))
    return 0 if ok else 1


def cannot(why: str) -> int:
    print(f"check_cuda_binary: cannot check: {why}", file=sys.stderr)
    return 2

if __name__ == "__main__":
    sys.exit(main())
