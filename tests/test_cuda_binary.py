"""tools/check_cuda_binary.py: the compile-time half of the numerics contract, on the binary.

The rules are tested on listings in cuobjdump's format, each broken in one way; the tool
itself on probe kernels compiled by nvcc (its self-test) and on the installed
fusedopt._cuda, where nvcc, cuobjdump and nvdisasm are found.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parent.parent / "tools" / "check_cuda_binary.py"
if not TOOL.is_file():  # a wheel's test run copies tests/ without tools/
    pytest.skip("tools/check_cuda_binary.py is not beside the tests", allow_module_level=True)
_spec = importlib.util.spec_from_file_location("check_cuda_binary", TOOL)
ccb = importlib.util.module_from_spec(_spec)
sys.modules["check_cuda_binary"] = ccb  # dataclasses look their module up
_spec.loader.exec_module(ccb)

UPDATE = "_ZN8fusedopt4cuda13update_kernelINS_4math8AdamRuleIfLb0ELNS2_11WeightDecayE0ELb0EEEfNS2_10AdamCoeffsIdEELi4EEEvNS0_12UpdateParamsIT1_XT2_EEE"  # noqa: E501
REDUCE = "_ZN8fusedopt4cuda12_GLOBAL__N_113finish_kernelENS1_10FinishArgsE"
CLEAN_PTX = ["ld.global.v4.f32", "mul.rn.f32", "add.rn.f32", "sub.rn.f64", "div.rn.f32", "sqrt.rn.f32",
             "cvt.rn.f32.f64", "setp.nan.f32", "neg.f32", "mul.wide.s32", "add.s64"]
CLEAN_SASS = ["LDC", "LDG.E.128", "FMUL", "FFMA", "MUFU.RSQ", "STG.E.128", "EXIT"]


def listing(kernels: dict, sm: str = "90", ptx: bool = True, maxntid: int = 256):
    """cuobjdump's -ptx, -res-usage and -sass output for `kernels`:
    name -> dict(ptx=[opcodes], sass=[opcodes], reg=, stack=, local=)."""
    head = ("\nFatbin {kind} code:\n================\narch = sm_{sm}\ncode version = [1,8]\n"
            "host = linux\ncompile_size = 64bit\n")
    ptx_text = ""
    if ptx:
        ptx_text = head.format(kind="ptx", sm=sm) + f"\n.version 9.0\n.target sm_{sm}\n.address_size 64\n"
        for name, k in kernels.items():
            ptx_text += (f"\n.visible .entry {name}(\n.param .align 8 .b8 {name}_param_0[64]\n)\n"
                         f".maxntid {maxntid}, 1, 1\n{{\n")
            ptx_text += ".reg .f32 %f<8>;\n"
            for i, op in enumerate(k.get("ptx", CLEAN_PTX)):
                pred = "@%p1 " if i % 3 == 1 else ""
                ptx_text += f"{pred}{op} %f{i}, %f1, %f2;\n"
            ptx_text += "ret;\n\n}\n"
    res = "Resource usage:\n Common:\n  GLOBAL:0\n"
    for name, k in kernels.items():
        res += (f" Function {name}:\n  REG:{k.get('reg', 40)} STACK:{k.get('stack', 0)} SHARED:0 "
                f"LOCAL:{k.get('local', 0)} CONSTANT[0]:33104 TEXTURE:0 SURFACE:0 SAMPLER:0\n")
    res_text = head.format(kind="elf", sm=sm) + res
    sass = head.format(kind="elf", sm=sm) + f"\n\tcode for sm_{sm}\n\t.target\tsm_{sm}\n\n"
    for name, k in kernels.items():
        sass += f"\t\tFunction : {name}\n\t.headerflags\t@\"EF_CUDA_SM{sm}\"\n"
        for i, op in enumerate(k.get("sass", CLEAN_SASS)):
            pred = ("@!P0 ", "@P1 ", "@UP0 ", "")[i % 4]
            text = op if " " in op else f"{op} R1, R2"  # a branch comes with its target
            sass += f"        /*{i * 16:04x}*/              {pred}{text} ;   /* 0x000fe20000000800 */\n"
            sass += "                                                   /* 0x000fe20000000800 */\n"
        sass += "\t\t..........\n\n"
    return ptx_text, res_text, sass


def findings_of(kernels, **kw):
    return ccb.evaluate("probe", *listing(kernels, **{k: v for k, v in kw.items() if k != "archs"}),
                        archs_spec=kw.get("archs"), quiet=True)


def problems_of(kernels, **kw):
    return findings_of(kernels, **kw).problems


@pytest.mark.parametrize("opcode, why", [
    ("add.rn.f32", None), ("mul.rn.f64", None), ("div.rn.f32", None), ("sqrt.rn.f64", None),
    ("sub.rz.f32", None), ("add.rn.f16x2", None), ("cvt.rn.f32.f64", None), ("cvt.rzi.s32.f32", None),
    ("setp.lt.f32", None), ("neg.f32", None), ("abs.f64", None), ("max.f32", None), ("ld.global.f32", None),
    ("add.s32", None), ("mul.wide.s32", None), ("mul.lo.s64", None), ("mov.f32", None),
    ("rcp.rn.f64", None), ("rcp.rn.f32", None), ("max.NaN.f32", None), ("testp.finite.f32", None),
    ("sqrt.f32", "no explicit rounding"), ("rcp.f64", "no explicit rounding"),
    ("fma.rn.f32x2", "fused"), ("rcp.approx.ftz.f64", "not IEEE"),
    ("add.f32", "no explicit rounding"), ("mul.f64", "no explicit rounding"),
    ("sub.f32", "no explicit rounding"),
    ("div.f32", "no explicit rounding"), ("fma.rn.f32", "fused"), ("fma.rn.f64", "fused"),
    ("mad.rn.f32", "fused"), ("fma.rn.bf16", "fused"), ("rsqrt.approx.f32", "approximate"),
    ("ex2.approx.ftz.f32", "approximate"), ("div.approx.f32", "not IEEE"),
    ("div.full.f32", "not IEEE"), ("sqrt.approx.ftz.f32", "not IEEE"), ("add.rn.ftz.f32", "not IEEE"),
    ("cvt.rn.ftz.f32.f64", "not IEEE"),
])
def test_ptx_rule(opcode, why):
    got = ccb.ptx_problem(opcode)
    if why is None:
        assert got is None
    else:
        assert got is not None and why in got


@pytest.mark.parametrize("spec, sass, ptx", [
    ("75-real;80-real;86-real;89-real;90", {"75", "80", "86", "89", "90"}, {"90"}),
    ("90", {"90"}, {"90"}), ("90-real", {"90"}, set()), ("90-virtual", set(), {"90"}),
    ("90a-real, 100", {"90a", "100"}, {"100"}),
])
def test_expected_archs(spec, sass, ptx):
    assert ccb.expected_archs(spec) == (sass, ptx)


@pytest.mark.parametrize("spec", ["", " ", "all", "all-major", "native", "80;native"])
def test_lists_without_a_fixed_set_are_not_compared(spec):
    assert ccb.expected_archs(spec) is None
    assert problems_of({UPDATE: {}}, archs=spec) == []


def test_expected_archs_refuses_what_it_cannot_read():
    with pytest.raises(ValueError, match="sm_90"):
        ccb.expected_archs("sm_90")
    assert ccb.main(["--archs", "sm_90"]) == 2


def test_what_cannot_be_checked_exits_2(tmp_path):
    assert ccb.main([str(tmp_path / "missing.so")]) == 2
    (tmp_path / "empty.whl").write_bytes(b"not a zip")
    assert ccb.main([str(tmp_path / "empty.whl")]) == 2


@pytest.mark.parametrize("regs, block, sm, threads", [
    (32, 256, 90, 2048), (64, 256, 90, 1024), (74, 256, 90, 768), (88, 256, 90, 512),
    (255, 256, 75, 256), (32, 256, 75, 1024), (40, 256, 86, 1536), (16, 32, 90, 1024),
    (16, 32, 86, 512), (40, 256, 110, None),
])
def test_threads_per_sm(regs, block, sm, threads):
    assert ccb.threads_per_sm(regs, block, sm) == threads


def test_a_clean_listing_passes():
    kernels = {UPDATE: {}, REDUCE: {"sass": ["LDG.E.64", "DADD", "STG.E.64", "EXIT"]}}
    assert problems_of(kernels) == []
    assert problems_of(kernels, archs="90") == []
    # Without PTX the rounding rules have nothing to read: a note, not a problem.
    assert problems_of(kernels, ptx=False, archs="90-real") == []


@pytest.mark.parametrize("change, expect", [
    ({"ptx": CLEAN_PTX + ["add.f32"]}, "add.f32 x1 in "),
    ({"ptx": CLEAN_PTX + ["fma.rn.f32", "fma.rn.f32"]}, "fma.rn.f32 x2"),
    ({"ptx": CLEAN_PTX + ["div.approx.ftz.f32"]}, "not IEEE-exact"),
    ({"ptx": ["ld.global.f32", "sub.f32"]}, "sub.f32 x1"),  # a predicated instruction
    # addresses are 0x10 apart: "BRA 0x10" branches back to the second instruction
    ({"sass": ["LDC", "LDG.E.128", "LDL.LU", "FMUL", "STG.E.128", "BRA 0x10", "EXIT"]},
     "local memory in its 16-byte vector loop (LDL.LU at 0x20)"),
    ({"sass": ["LDC", "STL.64", "LDG.E.128", "FMUL", "STG.E.128", "BRA.U !UP0, 0x10", "EXIT"]},
     "local memory in its 16-byte vector loop (STL.64 at 0x10)"),
    # a loop without loads nested in the vector loop leaves it the loop that streams
    ({"sass": ["LDC", "LDG.E.128", "LDL", "ISETP", "BRA 0x30", "STG.E.128", "BRA 0x10", "EXIT"]},
     "local memory in its 16-byte vector loop (LDL at 0x20)"),
    # two branches back to one target: the loop runs to the last
    ({"sass": ["LDC", "LDG.E.128", "BRA 0x10", "LDL", "BRA 0x10", "STG.E.128", "EXIT"]},
     "local memory in its 16-byte vector loop (LDL at 0x30)"),
    # a subroutine called from the loop (placed after EXIT) is part of it
    ({"sass": ["LDC", "LDG.E.128", "CALL.REL.NOINC 0x60", "STG.E.128", "BRA 0x10", "EXIT", "STL",
               "RET.REL.NODEC R20 0x0", "BRA 0x80"]},
     "local memory in its 16-byte vector loop (STL at 0x60)"),
    ({"sass": ["LDC", "LDG.E.ENL2.256", "LDL", "STG.E.128", "BRA 0x10", "EXIT"]},
     "local memory in its 16-byte vector loop (LDL at 0x20)"),
    ({"sass": ["LDG.E", "FMUL", "STG.E.128"]}, "no 16-byte LDG"),
    ({"sass": ["LDG.E.128", "FMUL", "STG.E.64"]}, "no 16-byte STG"),
])
def test_each_broken_rule_is_a_problem(change, expect):
    problems = problems_of({UPDATE: change, REDUCE: {"sass": ["LDG.E", "EXIT"]}})
    assert len(problems) >= 1 and any(expect in p for p in problems), problems


@pytest.mark.parametrize("sass, warned", [
    # An innermost scalar loop streaming through local memory: the misaligned path.
    (["LDC", "LDG.E", "STL", "STG.E", "BRA 0x10", "LDG.E.128", "STG.E.128", "EXIT"], True),
    # A spill outside every loop, and one kept across an outer loop (the walk over chunks)
    # around an inner vector loop: paid per chunk, noted only.
    (CLEAN_SASS + ["LDL.LU"], False),
    (["LDC", "STL", "LDG.E.128", "FMUL", "BRA 0x20", "LDL", "STG.E.128", "BRA 0x10", "EXIT"], False),
    # A loop without global loads (a search over the launch's table) may use local memory.
    (["LDC", "LDL", "ISETP", "BRA 0x10", "LDG.E.128", "STG.E.128", "EXIT"], False),
])
def test_local_memory_outside_vector_loops_is_not_refused(sass, warned, capsys):
    found = ccb.evaluate("probe", *listing({UPDATE: {"sass": sass, "stack": 8}}))
    out = capsys.readouterr().out
    assert found.problems == []
    if warned:
        assert len(found.warnings) == 1 and "local memory in a scalar loop" in found.warnings[0]
    else:
        assert found.warnings == []
        assert "local memory outside the streaming loops" in out and "stack frames of 8 B" in out


def test_several_architectures_and_cubins():
    """cuobjdump lists one section per cubin: two per architecture here, two architectures,
    PTX for one; a broken kernel is found in the second cubin of the second architecture."""
    other = "_ZN8fusedopt4cuda13update_kernelINS_4math7SgdRuleIfLb0ELNS2_11WeightDecayE0ELNS2_8MomentumE0ELb0EEEfNS2_9SgdCoeffsIdEELi2EEEvNS0_12UpdateParamsIT1_XT2_EEE"  # noqa: E501
    parts = [listing({UPDATE: {}}, sm="80", ptx=False), listing({other: {}}, sm="80", ptx=False),
             listing({UPDATE: {}}, sm="90"), listing({other: {"sass": ["LDG.E", "STG.E.128"]}}, sm="90")]
    ptx, res, sass = ("".join(p[i] for p in parts) for i in range(3))
    found = ccb.evaluate("probe", ptx, res, sass, archs_spec="80-real;90", quiet=True)
    name = ccb.short(other, ccb.demangle([other]))
    assert found.problems == [f"sm_90: {name} has no 16-byte LDG (no vector path)"]
    assert ccb.evaluate("probe", ptx, res, sass, archs_spec="80;90", quiet=True).problems[0] == \
        "PTX for ['90'], but the list '80;90' asks for ['80', '90']"


def test_the_launch_bound_comes_from_the_ptx(capsys):
    ccb.evaluate("probe", *listing({UPDATE: {"reg": 74}}, maxntid=512))
    assert "float: Adam 74 (512)" in capsys.readouterr().out


def test_the_architectures_must_match_the_list():
    kernels = {UPDATE: {}}
    assert any("asks for ['75', '90']" in p for p in problems_of(kernels, archs="75-real;90"))
    assert any("PTX for ['90'], but" in p for p in problems_of(kernels, archs="90-real"))
    assert any("PTX for [], but" in p for p in problems_of(kernels, ptx=False, archs="90"))
    assert any("asks for ['90a']" in p for p in problems_of(kernels, archs="90a"))


def test_no_device_code_is_a_problem():
    assert ccb.evaluate("empty.so", "", "", "", quiet=True).problems == ["empty.so: no device code found"]


def test_report_names_registers_and_occupancy(capsys):
    ccb.evaluate("probe", *listing({UPDATE: {"reg": 74}}))
    out = capsys.readouterr().out
    assert "float: Adam 74 (768)" in out and "at 256 per block, of 2048" in out


# --- the tool on real binaries ---------------------------------------------------------

def _tools_or_skip():
    missing = [t for t in ("cuobjdump", "nvdisasm") if ccb.find_tool(t) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not found (CUDA toolkit, or "
                    "pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm)")


def test_self_test_on_probe_kernels(tmp_path, capsys):
    """The project's flags give clean code; --fmad=true, fast math and a local array don't."""
    _tools_or_skip()
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not found")
    ok = ccb.self_test(tmp_path, nvcc)
    out = capsys.readouterr().out
    assert ok, out
    assert "project flags: as expected: clean" in out


def test_the_installed_cuda_module(capsys):
    _tools_or_skip()
    module = ccb.installed_module()
    if module is None:
        pytest.skip("fusedopt._cuda was not built")
    problems, warnings = ccb.check(module)
    out = capsys.readouterr().out
    assert problems == [], out
    if warnings:  # e.g. a newer ptxas, or an architecture list set for this run
        print("\n".join(f"WARNING: {w}" for w in warnings))
    assert "update kernels" in out


def test_tools_found_in_any_site_packages_on_the_path(tmp_path, monkeypatch):
    """The PyPI builds of cuobjdump are found in site-packages other than this
    interpreter's own (a venv made with --system-site-packages, a user site), and nothing
    is taken from a file that cannot run."""
    tool = tmp_path / "nvidia" / "cu13" / "bin" / "cuobjdump"
    tool.parent.mkdir(parents=True)
    tool.write_text("#!/bin/sh\n")
    monkeypatch.setenv("PATH", "")
    for var in ("CUDA_HOME", "CUDA_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(ccb.sys, "path", [*sys.path, str(tmp_path)])
    monkeypatch.setattr(ccb.Path, "is_file", lambda self: self == tool)  # hide any real toolkit
    assert ccb.find_tool("cuobjdump") is None  # not executable
    tool.chmod(0o755)
    assert ccb.find_tool("cuobjdump") == tool
