"""A process-wide memory-allocator setting that makes CPU inference and training faster.

PyTorch allocates CPU tensors with ``malloc``. By default glibc serves blocks of more than a few MB
with fresh ``mmap`` pages and hands them back on ``free``, so every large activation of every forward
pass is page-faulted in again on its first write. Measured on 2 CPU cores: filling a new 43 MB tensor
took 12.3 ms this way and 1.1 ms with the setting below, and a Lite0 forward pass over 9 crops went
from 99.7 ms to 65.3 ms (scores unchanged: the arithmetic is the same).
"""

from __future__ import annotations

import ctypes
import sys

__all__ = ["reuse_freed_memory"]

_M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
_M_MMAP_MAX = -4
_KEEP_ALL = 2**31 - 1


def reuse_freed_memory() -> bool:
    """Make glibc ``malloc`` keep freed memory for reuse instead of returning it to the system.

    Every allocation then comes from the heap (``M_MMAP_MAX`` = 0) and the heap is never trimmed,
    so large tensors reuse pages that are already mapped. Peak memory stays that of the largest
    working set. This changes the whole process; the ``qfm-iqm`` command calls it at start-up, and
    a Python program may call it once before scoring or training. Returns whether the setting was
    applied: ``False`` (and nothing changes) where the C library is not glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # no symbol table to search, or not glibc (e.g. musl)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _KEEP_ALL))
