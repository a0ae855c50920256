"""Runs under ``torchrun``: process-group set-up, rank queries, gathering, sharding, sampling.

Outside ``torchrun`` (no process group) every helper acts as the single process of a world of one, so
the same code serves both. Collective helpers must be called by every rank, in the same order.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import Sampler

from qfm_iqm.utils.seeds import item_seed
from qfm_iqm.utils.device import usable_device

T = TypeVar("T")


def world_size() -> int:
    """Number of processes in the run (1 without a process group)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    """This process's global rank (0 without a process group)."""
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    """Whether this process logs and writes files (rank 0)."""
    return rank() == 0


def local_rank() -> int:
    """This process's rank on its node, as ``torchrun`` sets it (``LOCAL_RANK``)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def local_device(name: str) -> torch.device:
    """The device ``name`` means for this process: ``auto`` is CUDA when available, else the CPU;
    under ``torchrun`` an unnumbered ``cuda`` becomes this process's GPU, ``cuda:<LOCAL_RANK>``.

    Raises:
        ValueError: a misspelt device, or one this machine lacks (see :func:`usable_device`).
    """
    device = usable_device(name)
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        device = usable_device(f"cuda:{local_rank()}")
    return device


@contextmanager
def distributed_session(device: str = "auto") -> Iterator[None]:
    """Join the process group that ``torchrun`` describes in the environment for the duration.

    Nothing happens outside ``torchrun`` (no ``WORLD_SIZE`` variable) or when a group already exists.
    The backend is gloo for CPU tensors plus, when this process computes on a GPU, nccl for CUDA
    tensors. On leaving, ranks meet at a barrier (after success only) and the group is destroyed.
    """
    if dist.is_initialized() or "WORLD_SIZE" not in os.environ:
        yield
        return
    target = local_device(device)
    if target.type == "cuda":
        torch.cuda.set_device(target)
    dist.init_process_group(backend="cpu:gloo,cuda:nccl" if target.type == "cuda" else "gloo")
    try:
        yield
        dist.barrier()
    finally:
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every rank gets here."""
    if dist.is_initialized():
        dist.barrier()


def all_gather(tensor: Tensor) -> Tensor:
    """Every rank's ``tensor`` (the same shape on all ranks) stacked in rank order: (world, ...).

    The result carries no gradient.
    """
    tensor = tensor.detach().contiguous()
    if world_size() == 1:
        return tensor.unsqueeze(0)
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor)
    return torch.stack(parts)


def all_gather_uneven(tensor: Tensor) -> list[Tensor]:
    """Every rank's ``tensor``, in rank order, where the first dimension may differ between ranks."""
    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = all_gather(size).flatten().tolist()
    padded = tensor.new_zeros((max(sizes), *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor.detach()
    return [part[:count] for part, count in zip(all_gather(padded), sizes)]


def all_gather_json(obj: Any) -> list[Any]:
    """Every rank's JSON-serialisable ``obj``, in rank order (sent as UTF-8 bytes, never pickled)."""
    data = torch.frombuffer(bytearray(json.dumps(obj).encode("utf-8")), dtype=torch.uint8)
    return [json.loads(bytes(part.tolist()).decode("utf-8")) for part in all_gather_uneven(data)]


def all_gather_batch(tensors: Sequence[Tensor], head: int) -> list[Tensor]:
    """The global batch as one process would hold it, from every rank's part of it.

    Each rank's batch is its share of ``head`` leading rows (e.g. labelled images) followed by its
    share of the other rows (e.g. teacher-labelled views); the result holds the leading rows of all
    ranks in rank order, then the other rows of all ranks in rank order. No gradient.
    """
    gathered = []
    for tensor in tensors:
        parts = all_gather(tensor)
        gathered.append(torch.cat([parts[:, :head].flatten(0, 1), parts[:, head:].flatten(0, 1)]))
    return gathered


def average_across_ranks(values: Tensor) -> list[float]:
    """The mean over ranks of each entry of the 1-D tensor ``values``, reduced on its own device (on a
    GPU: no wait for the host until the one read of the result)."""
    if world_size() > 1:
        values = values.detach().clone()
        dist.all_reduce(values)
        values /= world_size()
    return values.tolist()


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is true on at least one rank."""
    if world_size() == 1:
        return flag
    value = torch.tensor([int(flag)])
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def shard(items: Sequence[T]) -> list[T]:
    """This rank's share of ``items``: every ``world``-th item from position ``rank`` (sizes differ by
    at most one, nothing is repeated or left out)."""
    return list(items[rank() :: world_size()])


class GlobalBatchSampler(Sampler[list[int]]):
    """Shuffled batches in which each global batch of ``global_batch`` indices is split across ranks.

    All ranks draw the same permutation of ``range(size)`` for an epoch (reseeded from ``seed``, the
    epoch and the pass, like ``DistributedSampler``) and each keeps its contiguous ``1/world`` of every
    global batch, so at each step the ranks together train on exactly the batch that one process
    would. The incomplete last global batch is dropped. ``set_epoch`` may start a pass part-way
    through (``start`` steps already done), for resuming.
    """

    def __init__(self, size: int, global_batch: int, seed: int) -> None:
        if size < global_batch:
            raise ValueError(f"{size} items are fewer than one batch of {global_batch}")
        if global_batch % world_size():
            raise ValueError(f"a global batch of {global_batch} does not split evenly across {world_size()} processes")
        self.size = size
        self.global_batch = global_batch
        self.local_batch = global_batch // world_size()
        self.seed = seed
        self.epoch = 0
        self.pass_index = 0
        self.start = 0

    @property
    def steps(self) -> int:
        """Global batches in one pass."""
        return self.size // self.global_batch

    def set_epoch(self, epoch: int, pass_index: int = 0, start: int = 0) -> None:
        """Select the permutation of pass ``pass_index`` of ``epoch`` and the first step to yield."""
        self.epoch, self.pass_index, self.start = epoch, pass_index, start

    def permutation(self) -> list[int]:
        """The order of this pass, determined only by (seed, epoch, pass)."""
        generator = torch.Generator().manual_seed(item_seed(self.seed, self.epoch, self.pass_index))
        return torch.randperm(self.size, generator=generator).tolist()

    def __len__(self) -> int:
        return self.steps - self.start

    def __iter__(self) -> Iterator[list[int]]:
        order = self.permutation()
        offset = rank() * self.local_batch
        for step in range(self.start, self.steps):
            first = step * self.global_batch + offset
            yield order[first : first + self.local_batch]
