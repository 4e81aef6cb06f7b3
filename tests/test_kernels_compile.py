"""Compile-check every ``kernels/*.cu`` with nvcc (skipped where nvcc is not on PATH)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from gpurisk.backends.gpu import MODULES, NVRTC_OPTIONS, kernel_dir

KERNELS = sorted(kernel_dir().glob("*.cu"))
#: entry points the Python side launches, per source file
ENTRIES = {f"{module}.cu": fns for module, fns in MODULES.items()}


def test_kernel_sources_ship_with_the_package():
    assert {k.name for k in KERNELS} == set(ENTRIES)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
@pytest.mark.parametrize("arch", ["sm_90", "sm_80"])
@pytest.mark.parametrize("source", KERNELS, ids=[k.name for k in KERNELS])
def test_kernel_compiles(source, arch, tmp_path):
    ptx = tmp_path / (source.stem + ".ptx")
    cmd = ["nvcc", f"-arch={arch}", "--ptx", *NVRTC_OPTIONS, "-Werror", "all-warnings", "-o", str(ptx), str(source)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    text = ptx.read_text()
    for entry in ENTRIES[source.name]:
        assert f".entry {entry}(" in text, f"{entry} missing from {source.name}"
