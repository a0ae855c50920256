"""The allocator setting keeps freed memory mapped for reuse (checked in fresh processes)."""

from __future__ import annotations

import ctypes
import subprocess
import sys

import pytest

SCRIPT = """
import os, sys
import torch
from qfm_iqm.utils.allocator import reuse_freed_memory

applied = reuse_freed_memory() if sys.argv[1] == "on" else False
def resident_mib():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
before = resident_mib()
tensor = torch.ones(64 * 2**20 // 4)  # 64 MiB, written so that its pages are resident
del tensor
print(applied, resident_mib() - before)
"""


def _glibc() -> bool:
    try:
        return hasattr(ctypes.CDLL(None), "gnu_get_libc_version")
    except OSError:
        return False


@pytest.mark.skipif(not (sys.platform.startswith("linux") and _glibc()), reason="needs Linux with glibc")
def test_freed_tensor_memory_stays_mapped_only_with_the_setting() -> None:
    def run(mode: str) -> tuple[str, float]:
        out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
        applied, kept = out.stdout.split()
        return applied, float(kept)

    applied, kept = run("on")
    assert applied == "True" and kept > 48
    applied, kept = run("off")
    assert applied == "False" and kept < 16
