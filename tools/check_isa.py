"""Checks that each CPU instruction-set build in fusedopt._core only reaches code it may run.

The CPU loops are compiled once per target (baseline, avx2, avx512) and linked into one
module. If a function with vague linkage (an inline function or template instantiated out
of line: a weak/COMDAT symbol) is emitted by both the baseline and the AVX-512 object,
the linker keeps one copy, possibly the AVX-512 one, and the baseline path then executes
AVX-512 instructions: SIGILL on a CPU without them. This tool proves that does not happen,
on the very binary that ships (a wheel or a .so; no symbols needed, it may be stripped):

1. It finds each target's kernel table in the binary: a pointer to the target's name
   string followed by pointers to functions (the R_X86_64_RELATIVE relocations of
   .data.rel.ro), and takes those functions as roots.
2. It delimits functions by their unwind entries (.eh_frame FDEs), disassembles the module
   and follows every direct call, tail jump and function-address load from the roots.
3. It classifies every reached instruction by its encoding (legacy, VEX 0xC4/0xC5, EVEX
   0x62) and its registers, and requires: nothing VEX or EVEX, and no instruction beyond
   x86-64-v1, from the baseline table; nothing EVEX and no zmm, ymm16-31 or mask register
   from the avx2 table. Calls through the PLT (libc, libm) are outside the module and
   dispatch on their own.

With --objects BUILD_DIR it also lists, per per-target object file, the symbols with
global or weak binding it defines (only kernel_table_<target> should be there) and any
symbol that more than one of them defines, which is where the linker could mix them up.

Exit status 0 when every check passes. Needs binutils (objdump, readelf, nm).
"""

from __future__ import annotations

import argparse
import bisect
import re
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter
from pathlib import Path

LEGACY_PREFIXES = {0x66, 0x67, 0xF2, 0xF3, 0x2E, 0x3E, 0x26, 0x64, 0x65, 0x36, 0xF0}
# Instructions that need more than x86-64-v1 (SSE2) without a VEX/EVEX encoding.
BEYOND_V1 = {
    # SSE3, SSSE3
    "addsubps", "addsubpd", "haddps", "haddpd", "hsubps", "hsubpd", "lddqu", "movddup",
    "movshdup", "movsldup", "pshufb", "palignr", "pabsb", "pabsw", "pabsd", "phaddw", "phaddd",
    "phsubw", "phsubd", "pmaddubsw", "pmulhrsw", "psignb", "psignw", "psignd",
    # SSE4.1, SSE4.2
    "blendps", "blendpd", "blendvps", "blendvpd", "pblendvb", "pblendw", "dpps", "dppd",
    "extractps", "insertps", "pextrb", "pextrd", "pextrq", "pinsrb", "pinsrd", "pinsrq",
    "pminsb", "pminsd", "pminuw", "pminud", "pmaxsb", "pmaxsd", "pmaxuw", "pmaxud", "pmulld",
    "pmuldq", "pcmpeqq", "pcmpgtq", "packusdw", "ptest", "roundps", "roundpd", "roundss",
    "roundsd", "mpsadbw", "phminposuw", "movntdqa", "pcmpestri", "pcmpestrm", "pcmpistri",
    "pcmpistrm", "crc32",
    "pmovsxbw", "pmovsxbd", "pmovsxbq", "pmovsxwd", "pmovsxwq", "pmovsxdq",
    "pmovzxbw", "pmovzxbd", "pmovzxbq", "pmovzxwd", "pmovzxwq", "pmovzxdq",
    # scalar extensions: POPCNT, LZCNT (runs as BSR, with another result, on older CPUs),
    # MOVBE. BMI1/BMI2 are VEX-encoded and caught as such.
    "popcnt", "lzcnt", "movbe",
}
INSN_RE = re.compile(r"^\s*([0-9a-f]+):\t((?:[0-9a-f]{2} )+)\s*\t(\S+)\s*(.*)$")
TARGET_RE = re.compile(r"^([0-9a-f]+)(?: <([^>]*)>)?")
LEA_RE = re.compile(r"#\s*([0-9a-f]+)")
BRANCH = re.compile(r"^(call|jmp|j[a-z]{1,3})$")


def run(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def encoding(raw: bytes) -> str:
    i = 0
    while i < len(raw) and raw[i] in LEGACY_PREFIXES:
        i += 1
    if i < len(raw) and 0x40 <= raw[i] <= 0x4F:  # REX (never precedes VEX/EVEX)
        return "legacy"
    if i < len(raw) and raw[i] in (0xC4, 0xC5):  # LES/LDS are invalid in 64-bit mode
        return "vex"
    if i < len(raw) and raw[i] == 0x62:  # BOUND is invalid in 64-bit mode
        return "evex"
    return "legacy"


class Module:
    def __init__(self, path: Path):
        self.path = path
        self.sections = self._sections()
        self.functions = self._fdes()  # sorted [(start, end)]
        self.starts = [s for s, _ in self.functions]
        self.relocs = self._relative_relocs()  # offset -> addend
        self.exported = self._exported()  # name -> address of functions this module defines
        self.insns = self._disassemble()  # sorted [(addr, raw, mnemonic, operands)]
        self.insn_addrs = [a for a, *_ in self.insns]

    def _sections(self):
        out = {}
        for line in run("readelf", "-W", "-S", str(self.path)).splitlines():
            m = re.match(r"\s*\[\s*\d+\]\s+(\S+)\s+\S+\s+([0-9a-f]+)\s+([0-9a-f]+)\s+([0-9a-f]+)", line)
            if m:
                out[m[1]] = (int(m[2], 16), int(m[3], 16), int(m[4], 16))  # addr, offset, size
        return out

    def _fdes(self):
        ranges = set()
        for line in run("readelf", "-W", "--debug-dump=frames", str(self.path)).splitlines():
            m = re.search(r"FDE cie=\S+ pc=([0-9a-f]+)\.\.([0-9a-f]+)", line)
            if m:
                ranges.add((int(m[1], 16), int(m[2], 16)))
        return sorted(ranges)

    def _relative_relocs(self):
        out = {}
        for line in run("readelf", "-W", "-r", str(self.path)).splitlines():
            f = line.split()
            if len(f) >= 4 and f[2] == "R_X86_64_RELATIVE":
                out[int(f[0], 16)] = int(f[3], 16)
        return out

    def _exported(self):
        out = {}
        for line in run("nm", "-D", "--defined-only", str(self.path)).splitlines():
            f = line.split()
            if len(f) == 3 and f[1] in "TtWi":
                out[f[2]] = int(f[0], 16)
        return out

    def _disassemble(self):
        out = []
        text = run("objdump", "-d", "--insn-width=16", "-j", ".text", str(self.path))
        for line in text.splitlines():
            m = INSN_RE.match(line)
            if m:
                out.append((int(m[1], 16), bytes.fromhex(m[2].replace(" ", "")), m[3], m[4]))
        return out

    def function_at(self, addr):
        i = bisect.bisect_right(self.starts, addr) - 1
        if i >= 0 and self.functions[i][0] <= addr < self.functions[i][1]:
            return self.functions[i]
        return None

    def string_addrs(self, s: str):
        """Virtual addresses where the NUL-terminated string s lies in .rodata."""
        addr, off, size = self.sections[".rodata"]
        data = self.path.read_bytes()[off:off + size]
        needle = s.encode() + b"\0"
        out, i = [], data.find(needle)
        while i >= 0:  # tails of longer strings too: the linker merges string tails
            out.append(addr + i)
            i = data.find(needle, i + 1)
        return out

    def kernel_tables(self, name: str):
        """Each {name, fn, fn, ...} table: the list of its function pointers."""
        tables = []
        names = set(self.string_addrs(name))
        for off, addend in sorted(self.relocs.items()):
            if addend not in names:
                continue
            fns, p = [], off + 8
            while p in self.relocs and self.function_at(self.relocs[p]) and \
                    self.function_at(self.relocs[p])[0] == self.relocs[p]:
                fns.append(self.relocs[p])
                p += 8
            if len(fns) >= 4:
                tables.append((off, fns))
        return tables

    def body(self, fn):
        lo = bisect.bisect_left(self.insn_addrs, fn[0])
        hi = bisect.bisect_left(self.insn_addrs, fn[1])
        return self.insns[lo:hi]

    def reach(self, roots):
        """Functions reachable from roots by direct calls, jumps and address loads; PLT
        callees by name; and the number of indirect calls and jumps seen on the way.

        A call through the PLT to a function this module exports itself (a symbol with
        default visibility, which another object could interpose) is followed to the
        module's own definition, where the dynamic linker binds it by default."""
        seen, plt, indirect = set(), Counter(), 0
        todo = [self.function_at(r) for r in roots]
        while todo:
            fn = todo.pop()
            if fn is None or fn in seen:
                continue
            seen.add(fn)
            for _, _, mnem, ops in self.body(fn):
                target = None
                if BRANCH.match(mnem):
                    if ops.startswith("*"):
                        # switch tables jump within the function; calls leave it
                        indirect += mnem == "call" or "(%rip)" not in ops
                        continue
                    m = TARGET_RE.match(ops)
                    if m:
                        target = int(m[1], 16)
                        if m[2] and m[2].endswith("@plt"):
                            name = m[2][:-4]
                            plt[name] += 1
                            if name not in self.exported:
                                continue
                            target = self.exported[name]
                elif mnem == "lea" and "(%rip)" in ops:
                    m = LEA_RE.search(ops)
                    if m:
                        target = int(m[1], 16)
                if target is not None and not (fn[0] <= target < fn[1]):
                    callee = self.function_at(target)
                    if callee is not None and (mnem != "lea" or callee[0] == target):
                        todo.append(callee)
        return seen, plt, indirect


def violations(module: Module, functions, isa: str):
    """(address, encoding, mnemonic, operands) of each instruction the isa may not run."""
    bad = []
    for fn in sorted(functions):
        for addr, raw, mnem, ops in module.body(fn):
            enc = encoding(raw)
            if isa == "baseline":
                wrong = enc != "legacy" or mnem in BEYOND_V1 or re.search(r"%[yz]mm", ops)
            elif isa == "avx2":
                wrong = enc == "evex" or re.search(r"%zmm|%[xy]mm(1[6-9]|2\d|3[01])\b|%k[0-7]\b", ops)
            else:
                wrong = False
            if wrong:
                bad.append((addr, enc, mnem, ops))
    return bad


def census(module: Module, functions):
    enc = Counter()
    regs = Counter()
    for fn in functions:
        for _, raw, _, ops in module.body(fn):
            enc[encoding(raw)] += 1
            for r in ("xmm", "ymm", "zmm"):
                if f"%{r}" in ops:
                    regs[r] += 1
    return enc, regs


def check_module(so: Path, label: str) -> bool:
    header = so.read_bytes()[:20]
    if header[:4] != b"\x7fELF" or int.from_bytes(header[18:20], "little") != 0x3E:
        print(f"{label}: not an x86-64 ELF module; there is one CPU build, nothing to check")
        return True
    module = Module(so)
    print(f"{label}: {len(module.functions)} functions (by unwind entries), "
          f"{len(module.insns)} instructions")
    ok = True
    reached_by = {}
    for isa in ("baseline", "avx2", "avx512"):
        tables = module.kernel_tables(isa)
        if not tables:
            if isa == "baseline":
                print("  baseline: kernel table NOT FOUND")
                ok = False
            else:
                print(f"  {isa}: no kernel table (target not built)")
            continue
        if len(tables) != 1:
            print(f"  {isa}: {len(tables)} candidate tables, expected one")
            ok = False
        off, roots = tables[0]
        funcs, plt, indirect = module.reach(roots)
        reached_by[isa] = funcs
        enc, regs = census(module, funcs)
        bad = violations(module, funcs, isa)
        ok &= not bad
        print(f"  {isa}: table at {off:#x}, {len(roots)} entries, {len(funcs)} functions reached, "
              f"{sum(enc.values())} instructions: {enc['legacy']} legacy, {enc['vex']} VEX, "
              f"{enc['evex']} EVEX; registers xmm {regs['xmm']}, ymm {regs['ymm']}, "
              f"zmm {regs['zmm']}; calls out: {dict(plt) or 'none'}; indirect: {indirect} "
              f"-> {'OK' if not bad else 'FAIL'}")
        for addr, e, mnem, ops in bad[:20]:
            print(f"    {addr:#x}: {e} {mnem} {ops}")
        if len(bad) > 20:
            print(f"    ... {len(bad) - 20} more")
    shared = set()
    for a in reached_by:
        for b in reached_by:
            if a < b:
                shared |= reached_by[a] & reached_by[b]
    # Harmless for correctness when the shared code suits the lowest table (checked above),
    # but a sign that the targets' objects define a symbol in common.
    print(f"  functions reached from more than one table: {len(shared)}"
          + (" (WARNING: the per-target builds share code)" if shared else ""))
    # Every VEX instruction of the module must be reachable from the avx2 or avx512 table
    # and every EVEX one from the avx512 table; code for a higher target that the walk did
    # not reach from its own table would be reached some other way (an indirect call).
    allowed = {"vex": reached_by.get("avx2", set()) | reached_by.get("avx512", set()),
               "evex": reached_by.get("avx512", set())}
    for enc in ("vex", "evex"):
        fns = {module.function_at(a) for a, raw, _, _ in module.insns if encoding(raw) == enc}
        fns.discard(None)
        stray = fns - allowed[enc]
        ok &= not stray
        print(f"  functions with {enc.upper()} code: {len(fns)}, of which outside the reach of "
              f"{'the avx2 and avx512 tables' if enc == 'vex' else 'the avx512 table'}: "
              f"{len(stray)}{' -> FAIL' if stray else ''}")
        for fn in sorted(stray)[:10]:
            print(f"    {fn[0]:#x}..{fn[1]:#x}")
    return ok


def check_objects(build_dir: Path) -> bool:
    objs = {}
    for o in sorted(build_dir.rglob("*kernels_isa.cpp.o")):
        m = re.search(r"fusedopt_cpu_(\w+)\.dir", str(o))
        if m:
            objs[m[1]] = o
    if not objs:
        print(f"objects: no fusedopt_cpu_*/kernels_isa.cpp.o under {build_dir}")
        return False
    ok = True
    defined = {}
    for isa, o in objs.items():
        syms = {}
        for line in run("nm", "--defined-only", str(o)).splitlines():
            f = line.split()
            if len(f) == 3 and f[1] not in "tdbrn":  # not local
                syms[f[2]] = f[1]
        defined[isa] = syms
        text = run("objdump", "-d", "--insn-width=16", str(o))
        n_zmm = len(re.findall(r"%zmm", text))
        n_ymm = len(re.findall(r"%ymm", text))
        undef = sorted(line.split()[-1] for line in run("nm", "-u", str(o)).splitlines())
        print(f"  {isa}: {o.relative_to(build_dir)}: non-local definitions "
              f"{sorted(f'{n} ({t})' for n, t in syms.items())}; undefined {undef or 'none'}; "
              f"zmm operands {n_zmm}, ymm operands {n_ymm}")
        expected = {n for n in syms if n.startswith("_ZN8fusedopt3cpu") and "kernel_table_" in n}
        extra = set(syms) - expected
        if extra:
            print(f"    global or weak symbols besides the table: {sorted(extra)}")
            ok = False
    names = Counter(n for syms in defined.values() for n in syms)
    dup = sorted(n for n, c in names.items() if c > 1)
    print(f"  symbols defined by more than one target object: {dup or 'none'}")
    return ok and not dup


# A deliberately unhygienic pair of per-target objects for --self-test: axpy is a template
# (vague linkage), so both objects emit it as a weak symbol and the linker keeps the first.
SELF_TEST_SOURCE = r"""
#include <cstdint>
namespace toy {
template <class T>
__attribute__((noinline)) void axpy(T* __restrict y, const T* __restrict x, T a, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}
struct Table {
  const char* name;
  void (*f[4])(float*, const float*, float, int64_t);
};
namespace {
void f0(float* y, const float* x, float a, int64_t n) { axpy(y, x, a, n); }
void f1(float* y, const float* x, float a, int64_t n) { axpy(y, x, a + 1, n); }
void f2(float* y, const float* x, float a, int64_t n) { axpy(y, x, a + 2, n); }
void f3(float* y, const float* x, float a, int64_t n) { axpy(y, x, a + 3, n); }
#define S2(x) #x
#define S(x) S2(x)
const Table kTable = {S(ISA), {f0, f1, f2, f3}};
}  // namespace
#define FN2(isa) kernel_table_##isa
#define FN(isa) FN2(isa)
const Table& FN(ISA)() { return kTable; }
}  // namespace toy
"""


def self_test(tmp: Path) -> bool:
    """The check must fail a module where the baseline table reaches AVX-512 code through a
    weak symbol, and pass the same code once the symbol has internal linkage."""
    # The same source with axpy in an anonymous namespace: internal linkage.
    internal = SELF_TEST_SOURCE.replace("namespace toy {\ntemplate",
                                        "namespace toy {\nnamespace {\ntemplate")
    internal = internal.replace("struct Table", "}  // namespace\nstruct Table")
    assert internal.count("namespace {") == 2
    cases = {  # label: (source, extra flags, expected result)
        "weak": (SELF_TEST_SOURCE, [], False),  # called through the PLT
        "weak, hidden": (SELF_TEST_SOURCE, ["-fvisibility=hidden"], False),  # direct calls
        "internal": (internal, [], True),
    }
    results = {}
    for label, (text, extra, _) in cases.items():
        src = tmp / f"toy-{label.replace(', ', '-')}.cpp"
        src.write_text(text)
        objs = []
        for isa, flags in (("avx512", ["-mavx512f", "-mprefer-vector-width=512"]), ("baseline", [])):
            obj = src.with_suffix(f".{isa}.o")
            subprocess.run(["c++", "-O3", "-fPIC", f"-DISA={isa}", *flags, *extra, "-c",
                            str(src), "-o", str(obj)], check=True)
            objs.append(str(obj))
        so = src.with_suffix(".so")
        subprocess.run(["c++", "-shared", "-o", str(so), *objs], check=True)  # avx512 first
        print(f"self-test, axpy with {label} linkage, AVX-512 object linked first:")
        results[label] = check_module(so, str(so.name))
    ok = all(results[label] is expected for label, (_, _, expected) in cases.items())
    print(f"self-test: {'PASS' if ok else 'FAIL'} (expected the weak cases to fail and the "
          f"internal one to pass; got {results})")
    return ok


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("binaries", nargs="*", type=Path,
                        help="wheels (.whl) or extension modules (.so) to check")
    parser.add_argument("--objects", type=Path, metavar="BUILD_DIR",
                        help="also check the per-target object files of this CMake build")
    parser.add_argument("--self-test", action="store_true",
                        help="first show that the check catches a weak-symbol leak (needs c++)")
    args = parser.parse_args(argv)
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        if args.self_test:
            ok &= self_test(Path(tmp))
        for b in args.binaries:
            if b.suffix == ".whl":
                with zipfile.ZipFile(b) as z:
                    names = [n for n in z.namelist() if re.search(r"/_core[.].*\.so$", n)]
                    if not names:
                        print(f"{b.name}: no fusedopt/_core*.so inside")
                        ok = False
                    for n in names:
                        ok &= check_module(Path(z.extract(n, tmp)), f"{b.name}:{n}")
            else:
                ok &= check_module(b, str(b))
    if args.objects:
        print(f"per-target objects in {args.objects}:")
        ok &= check_objects(args.objects)
    print("ISA check:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
