"""Checks the device code that ships in fusedopt._cuda, without a GPU.

The CUDA tests prove the numerics contract on the GPU they run on. This check proves the
parts of it that are fixed at compile time, on the very binary that ships (the module, or a
wheel holding it), for every architecture in it, and on machines that have no GPU:

1. Rounding (on the PTX the binary embeds). Every floating-point add, sub, mul, div and
   sqrt names its IEEE rounding (.rn and kin). PTX lets ptxas fuse a mul and an add that
   name none into an FMA, so an op without it is a contraction waiting to happen whatever
   the flags of the day. Nothing fused, approximate or flushing appears at all: no fma or
   mad (the math is written without FMA, like the CPU kernels: an fma here is a
   contraction by the front end or an intrinsic), no .approx, no .full (div.full is
   approximate), no .ftz, no rcp, rsqrt, ex2, lg2, sin, cos or tanh.
2. Memory path (on the machine code of every architecture, SASS). Every update kernel has
   16-byte global loads and stores (LDG/STG .128), the vector path the launcher is built
   around, and no kernel touches local memory (LDL/STL: a spilled register or a stack
   array) inside a 16-byte vector loop, where it would cost per element. Loops are read
   from the branches: one runs from a backward branch's target to the last branch back to
   it, and the innermost ones that load global memory are where a kernel spends its time.
   Local memory in an innermost scalar loop (the path of misaligned views) is a warning;
   elsewhere (ptxas keeping a value in memory across the walk over chunks, paid per chunk)
   it is reported with the stack frame's size.
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

FLOAT_TYPES = {"f16", "f16x2", "bf16", "bf16x2", "f32", "f64"}
ROUNDINGS = {"rn", "rz", "rm", "rp"}
NEEDS_ROUNDING = {"add", "sub", "mul", "div", "sqrt"}
FORBIDDEN_OPS = {"fma", "mad", "rcp", "rsqrt", "ex2", "lg2", "sin", "cos", "tanh"}
FORBIDDEN_MODIFIERS = {"approx", "full", "ftz"}
# The update kernels: the ones the 16-byte vector path is for (mangled name).
UPDATE_KERNEL = "update_kernel"
# Per architecture: the most resident threads of an SM. Every one of them has 64K 32-bit
# registers per SM, allocated per warp in units of 256.
MAX_THREADS_PER_SM = {75: 1024, 80: 2048, 86: 1536, 87: 2048, 89: 1536, 90: 2048,
                      100: 2048, 103: 2048, 120: 1536, 121: 1536}
REGISTERS_PER_SM = 65536
MAX_BLOCKS_PER_SM = 16


@dataclass
class Kernel:
    name: str                       # mangled
    registers: int | None = None
    stack: int | None = None
    local: int | None = None
    shared: int | None = None
    max_threads: int | None = None  # .maxntid from the PTX (the launch bound)
    sass_ops: Counter = field(default_factory=Counter)
    sass: list = field(default_factory=list)  # (address, opcode, operands), in order


@dataclass
class Arch:
    sm: int
    kernels: dict = field(default_factory=dict)   # name -> Kernel (machine code)
    ptx_ops: Counter | None = None               # None: no PTX for this architecture
    ptx_entries: dict = field(default_factory=dict)  # name -> .maxntid


# --- finding the tools -----------------------------------------------------------------

def tool_dirs() -> list[Path]:
    """Where cuobjdump and nvdisasm may be: PATH, the toolkit, the PyPI packages."""
    dirs = [Path(p) for p in os.environ.get("PATH", "").split(os.pathsep) if p]
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            dirs.append(Path(os.environ[var]) / "bin")
    dirs.append(Path("/usr/local/cuda/bin"))
    # nvidia-cuda-cuobjdump / nvidia-cuda-nvdisasm install into site-packages/nvidia/cuXX/bin.
    for key in ("purelib", "platlib"):
        base = Path(sysconfig.get_paths()[key]) / "nvidia"
        dirs.extend(sorted(base.glob("cu*/bin"), reverse=True))
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

ARCH_LINE = re.compile(r"^\s*arch = sm_(\d+)[a-z]?\s*$")
PTX_ENTRY = re.compile(r"^\s*(?:\.visible\s+|\.weak\s+)?\.(?:entry|func)\s+(?:\([^)]*\)\s*)?([\w$]+)")
PTX_MAXNTID = re.compile(r"^\s*\.maxntid\s+(\d+)(?:\s*,\s*(\d+))?(?:\s*,\s*(\d+))?")
PTX_INSTRUCTION = re.compile(r"^\s*(?:@!?%\w+\s+)?([a-z][a-z0-9]*(?:\.[a-z0-9]+)*)\s")
SASS_CODE_FOR = re.compile(r"^\s*code for sm_(\d+)[a-z]?\s*$")
SASS_FUNCTION = re.compile(r"^\s*Function\s*:\s*(\S+)\s*$")
SASS_INSTRUCTION = re.compile(
    r"^\s*/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*(?:\.[A-Z0-9_]+)*)([^;]*);")
SASS_TARGET = re.compile(r"0x([0-9a-f]+)\s*$")
RES_FUNCTION = re.compile(r"^\s*Function\s+([^:\s]+):\s*$")
RES_VALUES = re.compile(r"\b(REG|STACK|SHARED|LOCAL):(\d+)")


def split_sections(text: str, header: str) -> list[tuple[int, list[str]]]:
    """cuobjdump's "Fatbin ptx code:" / "Fatbin elf code:" sections, with their sm."""
    sections: list[tuple[int, list[str]]] = []
    current: list[str] | None = None
    sm = None
    for line in text.splitlines():
        if line.startswith("Fatbin "):
            current = [] if line.startswith(header) else None
            sm = None
            if current is not None:
                sections.append((0, current))
            continue
        if current is None:
            continue
        m = ARCH_LINE.match(line)
        if m and sm is None:
            sm = int(m.group(1))
            sections[-1] = (sm, current)
            continue
        current.append(line)
    return sections


def parse_ptx(text: str, archs: dict[int, Arch]) -> None:
    for sm, lines in split_sections(text, "Fatbin ptx code"):
        arch = archs.setdefault(sm, Arch(sm))
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


def parse_sass(text: str, archs: dict[int, Arch]) -> None:
    arch = kernel = None
    for line in text.splitlines():
        m = SASS_CODE_FOR.match(line)
        if m:
            arch = archs.setdefault(int(m.group(1)), Arch(int(m.group(1))))
            kernel = None
            continue
        m = SASS_FUNCTION.match(line)
        if m and arch is not None:
            kernel = arch.kernels.setdefault(m.group(1), Kernel(m.group(1)))
            continue
        m = SASS_INSTRUCTION.match(line)
        if m and kernel is not None:
            kernel.sass_ops[m.group(2)] += 1
            kernel.sass.append((int(m.group(1), 16), m.group(2), m.group(3).strip()))


def parse_resources(text: str, archs: dict[int, Arch]) -> None:
    for sm, lines in split_sections(text, "Fatbin elf code"):
        arch = archs.setdefault(sm, Arch(sm))
        name = None
        for line in lines:
            m = RES_FUNCTION.match(line)
            if m:
                name = m.group(1)
                continue
            values = dict(RES_VALUES.findall(line))
            if name is not None and "REG" in values:
                k = arch.kernels.setdefault(name, Kernel(name))
                k.registers, k.stack = int(values["REG"]), int(values.get("STACK", 0))
                k.local, k.shared = int(values.get("LOCAL", 0)), int(values.get("SHARED", 0))
                name = None


# --- the rules -------------------------------------------------------------------------

def ptx_problem(opcode: str) -> str | None:
    """Why a PTX instruction breaks the numerics contract, or None."""
    base, *mods = opcode.split(".")
    if not FLOAT_TYPES.intersection(mods):
        return None
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


def local_in_streaming_loops(kernel: Kernel) -> list[tuple[int, str, bool]]:
    """The local-memory instructions inside an innermost loop that loads global memory,
    where a kernel spends its time per element, each with whether that loop is a 16-byte
    vector loop. A loop is the span from a backward branch's target to the last branch back
    to it; innermost: no other loop starts in it. Local memory in an outer loop (the walk
    over chunks) is paid per chunk."""
    ends: dict[int, int] = {}
    for addr, op, operands in kernel.sass:
        m = SASS_TARGET.search(operands) if op.split(".")[0] == "BRA" else None
        if m and int(m.group(1), 16) <= addr:
            target = int(m.group(1), 16)
            ends[target] = max(ends.get(target, addr), addr)
    out = []
    for lo, hi in ends.items():
        if any(lo < t <= hi for t in ends):
            continue  # not innermost
        body = [(a, op) for a, op, _ in kernel.sass if lo <= a <= hi]
        if not any(op.split(".")[0] == "LDG" for _, op in body):
            continue
        vector = any(is_wide_access(op, "LDG") for _, op in body)
        out.extend((a, op, vector) for a, op in body if is_local_memory(op))
    return sorted(out)


def is_wide_access(op: str, base: str) -> bool:
    parts = op.split(".")
    return parts[0] == base and "128" in parts[1:]


def threads_per_sm(registers: int, block: int, sm: int) -> int:
    """Resident threads per SM at `registers` per thread and `block` threads per block."""
    per_warp = -(-registers * 32 // 256) * 256
    warps = REGISTERS_PER_SM // per_warp if per_warp else 10**9
    blocks = min(warps // -(-block // 32), MAX_BLOCKS_PER_SM)
    return min(blocks * block, MAX_THREADS_PER_SM.get(sm, 2048))


def demangle(names: list[str]) -> dict[str, str]:
    cxxfilt = shutil.which("c++filt")
    if not cxxfilt or not names:
        return {n: n for n in names}
    res = subprocess.run([cxxfilt], input="\n".join(names), capture_output=True, text=True)
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


def update_family(label: str) -> tuple[str, str] | None:
    """('Adam', 'float') for an update kernel's short name, else None."""
    m = re.match(r"update_kernel<(\w+?)Rule<(\w+)", label)
    return (m.group(1), m.group(2)) if m else None


def expected_archs(spec: str) -> tuple[set[int], set[int]]:
    """(machine code, PTX) architectures asked for by a CMake CUDA_ARCHITECTURES list."""
    sass, ptx = set(), set()
    for item in re.split(r"[;,\s]+", spec.strip()):
        if not item:
            continue
        m = re.fullmatch(r"(\d+)[a-z]?(?:-(real|virtual))?", item)
        if not m:
            raise ValueError(f"cannot read architecture {item!r}")
        sm, kind = int(m.group(1)), m.group(2)
        if kind != "virtual":
            sass.add(sm)
        if kind != "real":
            ptx.add(sm)
    return sass, ptx


class Findings(NamedTuple):
    problems: list[str]  # the check fails on any
    warnings: list[str]  # reported, not refused


def check(binary: Path, archs_spec: str | None = None, quiet: bool = False) -> Findings:
    """Runs every check on one module."""
    return evaluate(binary.name, run_cuobjdump(binary, "-ptx"), run_cuobjdump(binary, "-res-usage"),
                    run_cuobjdump(binary, "-sass"), archs_spec, quiet)


def evaluate(label: str, ptx: str, resources: str, sass: str, archs_spec: str | None = None,
             quiet: bool = False) -> Findings:
    """The checks on cuobjdump's -ptx, -res-usage and -sass listings of one binary."""
    archs: dict[int, Arch] = {}
    parse_ptx(ptx, archs)
    parse_resources(resources, archs)
    parse_sass(sass, archs)
    problems: list[str] = []
    warnings: list[str] = []
    say = (lambda *a: None) if quiet else print
    if not archs:
        return Findings([f"{label}: no device code found"], [])
    names = sorted({n for a in archs.values() for n in list(a.kernels) + list(a.ptx_entries)})
    pretty = demangle(names)
    sass_archs = {sm for sm, a in archs.items() if a.kernels}
    ptx_archs = {sm for sm, a in archs.items() if a.ptx_ops is not None}
    say(f"{label}: machine code for sm_{', sm_'.join(map(str, sorted(sass_archs))) or '(none)'}; "
        f"PTX for {', '.join(f'compute_{s}' for s in sorted(ptx_archs)) or '(none)'}")
    if archs_spec is not None:
        want_sass, want_ptx = expected_archs(archs_spec)
        if want_sass != sass_archs:
            problems.append(f"machine code for {sorted(sass_archs)}, but the list {archs_spec!r} "
                            f"asks for {sorted(want_sass)}")
        if want_ptx != ptx_archs:
            problems.append(f"PTX for {sorted(ptx_archs)}, but the list {archs_spec!r} "
                            f"asks for {sorted(want_ptx)}")

    for sm in sorted(archs):
        a = archs[sm]
        # 1. rounding, on the PTX
        if a.ptx_ops is None:
            say(f"  sm_{sm}: no PTX embedded: the rounding check needs a build with PTX "
                "(an architecture without -real)")
        else:
            fp = Counter()
            for (entry, op), n in a.ptx_ops.items():
                why = ptx_problem(op)
                if why:
                    problems.append(f"compute_{sm}: {op} x{n} in {short(entry or '?', pretty)}: {why}")
                elif FLOAT_TYPES.intersection(op.split(".")[1:]) and op.split(".")[0] in NEEDS_ROUNDING:
                    fp[op] += n
            say(f"  compute_{sm}: {len(a.ptx_entries)} entries; floating-point arithmetic: "
                + (", ".join(f"{op} {n}" for op, n in sorted(fp.items(), key=lambda kv: -kv[1])) or "none"))
        # 2. memory path, on the machine code; 3. resources
        if not a.kernels:
            continue
        updates = 0
        before = len(problems)
        spills: list[tuple[str, int, int]] = []  # local memory outside the streaming loops
        for name, k in sorted(a.kernels.items()):
            label = short(name, pretty)
            if k.sass_ops:
                hot = local_in_streaming_loops(k)
                where = ", ".join(f"{op} at {a:#x}" for a, op, _ in hot)
                if any(vector for _, _, vector in hot):
                    problems.append(f"sm_{sm}: {label} uses local memory in its 16-byte vector loop "
                                    f"({where})")
                elif hot:
                    warnings.append(f"sm_{sm}: {label} uses local memory in a scalar loop ({where})")
                elif any(is_local_memory(op) for op in k.sass_ops) or k.stack or k.local:
                    spills.append((label, k.stack or 0, k.local or 0))
                if UPDATE_KERNEL in name:
                    updates += 1
                    for base in ("LDG", "STG"):
                        if not any(is_wide_access(op, base) for op in k.sass_ops):
                            problems.append(f"sm_{sm}: {label} has no 16-byte {base} (no vector path)")
            elif k.registers is not None:
                problems.append(f"sm_{sm}: {label} has a resource entry but no disassembled code")
        line = (f"  sm_{sm}: {len(a.kernels)} kernels ({updates} update kernels): "
                f"{len(problems) - before or 'no'} problems in the machine code")
        if spills:
            low, high = min(s for _, s, _ in spills), max(s for _, s, _ in spills)
            line += (f"\n    local memory outside the streaming loops (ptxas's spills, paid at most once "
                     f"per chunk, not per element) in {len(spills)} kernel{'s' * (len(spills) != 1)}, "
                     f"stack frames of {low if low == high else f'{low}-{high}'} B: "
                     + "; ".join(lbl for lbl, _, _ in spills[:3]) + ("; ..." if len(spills) > 3 else ""))
        block = next((t for o in archs.values() for n, t in o.ptx_entries.items()
                      if UPDATE_KERNEL in n and t), None)  # the launch bound, from any PTX
        most: dict[tuple[str, str], int] = {}
        for name, k in a.kernels.items():
            family = update_family(short(name, pretty))
            if family and k.registers is not None:
                most[family] = max(most.get(family, 0), k.registers)
        if most:
            line += "\n    most registers per thread"
            if block:
                line += (f" (and the threads per SM they leave room for at {block} per block, "
                         f"of {MAX_THREADS_PER_SM.get(sm, 2048)})")
            for storage in sorted({s for _, s in most}, reverse=True):
                items = sorted((r, f) for (f, s), r in most.items() if s == storage)
                line += f"\n      {storage}: " + ", ".join(
                    f"{f} {r}" + (f" ({threads_per_sm(r, block, sm)})" if block else "") for r, f in items)
        say(line)
    return Findings(problems, warnings)


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
        print("check_cuda_binary: fusedopt._cuda is not installed; name a module or wheel", file=sys.stderr)
        return 2
    ok = True
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if args.self_test:
                ok &= self_test(Path(tmp), args.nvcc)
            modules = modules_in(binary, Path(tmp))
            if not modules:
                print(f"check_cuda_binary: no fusedopt/_cuda module in {binary}", file=sys.stderr)
                return 2
            for module in modules:
                problems, warnings = check(module, args.archs)
                for w in warnings:
                    print(f"WARNING: {w}")
                for p in problems:
                    print(f"PROBLEM: {p}")
                print(f"{module.name}: {'FAIL' if problems else 'PASS'} "
                      f"({len(problems)} problems, {len(warnings)} warnings)")
                ok &= not problems
    except ToolMissing as e:
        print(f"check_cuda_binary: cannot check: {e}", file=sys.stderr)
        return 2
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
