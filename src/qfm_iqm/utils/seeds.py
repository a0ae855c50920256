"""Seeds that depend only on what they seed, never on worker count, rank or sampling order."""

from __future__ import annotations

import zlib

import numpy as np


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed determined only by (seed, epoch, index)."""
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def path_seed(path: object) -> int:
    """A 32-bit seed of an image's path: the same photo is damaged the same way in every run."""
    return zlib.crc32(str(path).encode())
