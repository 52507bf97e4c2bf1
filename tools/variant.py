"""Turns a copy of the fusedopt source (an unpacked sdist) into a wheel variant's source.

The CUDA build is published as its own distribution, as CuPy does (cupy-cuda12x,
cupy-cuda13x): ``fusedopt`` is the CPU wheel, ``fusedopt-cuda13`` the same package with
the CUDA module built for CUDA 13. Both install the import package ``fusedopt``, so a user
installs one or the other, never both. scikit-build-core cannot rename a project through
its overrides, so this script rewrites the copy's pyproject.toml: the distribution name,
the description, the CUDA setting (ON: the variant fails to build rather than silently
shipping without CUDA), the CuPy extra that matches the CUDA major version, and the
cibuildwheel settings that install nvcc in the manylinux image. Everything else (version,
sources, build options, tests) comes from the one pyproject.toml of the repository.

    python tools/variant.py cuda13 /tmp/wheels-x/src-cuda13   # edits that copy in place

Refuses to edit a directory that is a git work tree, so the repository's own
pyproject.toml cannot be changed by mistake.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

# CUDA 13 dropped Maxwell, Pascal and Volta: compute capability 7.5 (Turing) is the oldest.
# One cubin per major architecture family that differs (a cubin runs on later minor
# versions of its major), and PTX of the newest for GPUs newer than this list.
CUDA13_ARCHS = "75-real;80-real;86-real;89-real;90-real;100-real;110-real;120-real;120-virtual"

# NVIDIA's package repository for RHEL 8 (the manylinux_2_28 images are AlmaLinux 8).
_CUDA_REPO = "https://developer.download.nvidia.com/compute/cuda/repos/rhel8"
_CUDA13_BEFORE_ALL = (
    "dnf install -y dnf-plugins-core && "
    f"dnf config-manager --add-repo {_CUDA_REPO}/$(uname -m | sed s/aarch64/sbsa/)/cuda-rhel8.repo && "
    "dnf install -y cuda-nvcc-13-0 cuda-cudart-devel-13-0 cuda-cccl-13-0"
)

VARIANTS = {
    "cuda13": {
        "name": "fusedopt-cuda13",
        "description_suffix": " (CUDA 13 build: needs an NVIDIA driver >= 580)",
        "cuda": "ON",
        "archs": CUDA13_ARCHS,
        "cupy": "cupy-cuda13x>=14",
        "cibuildwheel": {
            "before-all": _CUDA13_BEFORE_ALL,
            "environment": {
                "FUSEDOPT_CUDA": "ON",
                "PATH": "/usr/local/cuda-13.0/bin:$PATH",
                "CUDACXX": "/usr/local/cuda-13.0/bin/nvcc",
            },
        },
    },
}


def _sub_once(pattern: str, repl: str, text: str, what: str) -> str:
    new, n = re.subn(pattern, repl, text, count=1, flags=re.MULTILINE)
    if n != 1:
        raise SystemExit(f"variant: cannot find {what} in pyproject.toml (pattern {pattern!r})")
    return new


def _toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def patch(text: str, v: dict) -> str:
    text = _sub_once(r'^name = "fusedopt"$', f"name = {_toml_str(v['name'])}", text,
                     "name = \"fusedopt\"")
    text = _sub_once(r'^(description = ".*)"$', lambda m: m[1] + v["description_suffix"] + '"',
                     text, "description")
    text = _sub_once(r'^(FUSEDOPT_CUDA = \{ env = "FUSEDOPT_CUDA", default = )"[A-Z]+"',
                     lambda m: m[1] + _toml_str(v["cuda"]), text,
                     "the FUSEDOPT_CUDA entry of [tool.scikit-build.cmake.define]")
    text = _sub_once(r'^FUSEDOPT_CUDA_ARCHS = \{ env = "FUSEDOPT_CUDA_ARCHS" \}$',
                     f'FUSEDOPT_CUDA_ARCHS = {{ env = "FUSEDOPT_CUDA_ARCHS", '
                     f'default = {_toml_str(v["archs"])} }}', text,
                     "the FUSEDOPT_CUDA_ARCHS entry of [tool.scikit-build.cmake.define]")
    text = _sub_once(r'^cuda = \[.*\]$', f"cuda = [{_toml_str(v['cupy'])}]", text,
                     "the cuda extra")
    # cibuildwheel: keys appended to [tool.cibuildwheel.linux] win over the earlier ones
    # only if they are not already there, so replace those keys in that table.
    cibw = v["cibuildwheel"]
    env = ", ".join(f"{k} = {_toml_str(val)}" for k, val in cibw["environment"].items())
    text = _sub_once(r'^before-all = .*$', f"before-all = {_toml_str(cibw['before-all'])}", text,
                     "before-all in [tool.cibuildwheel.linux]")
    text = _sub_once(r'^environment = \{ FUSEDOPT_CUDA = "OFF" \}$', f"environment = {{ {env} }}",
                     text, "environment in [tool.cibuildwheel.linux]")
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variant", choices=sorted(VARIANTS))
    parser.add_argument("source", type=Path, help="an unpacked sdist or other copy of the source")
    parser.add_argument("--print-archs", action="store_true",
                        help="print the variant's release CUDA architecture list and exit")
    args = parser.parse_args(argv)
    v = VARIANTS[args.variant]
    if args.print_archs:
        print(v["archs"])
        return 0
    if (args.source / ".git").exists():
        raise SystemExit(f"variant: {args.source} is a git work tree; run this on a copy")
    path = args.source / "pyproject.toml"
    text = patch(path.read_text(), v)
    try:
        import tomllib
    except ImportError:  # Python < 3.11: the edit is checked by the build instead
        tomllib = None
    if tomllib is not None:
        data = tomllib.loads(text)
        assert data["project"]["name"] == v["name"]
        assert data["tool"]["scikit-build"]["cmake"]["define"]["FUSEDOPT_CUDA"]["default"] == v["cuda"]
    path.write_text(text)
    # The sdist's PKG-INFO names the original distribution; the wheel's metadata comes from
    # pyproject.toml, but keep the copy self-consistent for anyone who builds an sdist from it.
    pkg_info = args.source / "PKG-INFO"
    if pkg_info.exists():
        pkg_info.write_text(re.sub(r"^Name: fusedopt$", f"Name: {v['name']}",
                                   pkg_info.read_text(), count=1, flags=re.MULTILINE))
    print(f"variant {args.variant}: {path} now builds {v['name']} (FUSEDOPT_CUDA={v['cuda']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
