"""Teachers of the distillation framework: a mean-teacher copy of the student, or a frozen model."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn


class Teacher(nn.Module):
    """A frozen copy of a network that labels extra data; ``update`` follows the student (EMA only)."""

    def __init__(self, network: nn.Module, ema_decay: float | None = None, warmup_steps: int = 0) -> None:
        super().__init__()
        self.network = copy.deepcopy(network).eval().requires_grad_(False)
        self.ema_decay = ema_decay
        self.warmup_steps = warmup_steps
        self.updates = 0

    def train(self, mode: bool = True) -> "Teacher":
        """A teacher always stays in eval mode."""
        return super().train(False)

    def decay_at(self, step: int) -> float:
        """EMA keep-rate: rises linearly from 0 to ``ema_decay`` over ``warmup_steps`` updates, then
        stays there (so the configured decay is reached however short the run)."""
        assert self.ema_decay is not None
        if step >= self.warmup_steps:
            return self.ema_decay
        return self.ema_decay * step / self.warmup_steps

    @torch.no_grad()
    def update(self, student: nn.Module) -> None:
        """Move an EMA teacher towards the student; a pretrained teacher stays fixed."""
        if self.ema_decay is None:
            return
        decay = self.decay_at(self.updates)
        for mine, theirs in zip(self.network.parameters(), student.parameters()):
            mine.lerp_(theirs.detach(), 1.0 - decay)
        for mine, theirs in zip(self.network.buffers(), student.buffers()):
            mine.copy_(theirs)
        self.updates += 1

    @torch.no_grad()
    def pseudo_labels(self, inputs: Tensor, cached: bool = False) -> Tensor:
        """Scores of images, or of cached backbone outputs (B, 1 + N, C) when ``cached``."""
        if not cached:
            return self.network(inputs).score.float()
        encoded = self.network.encode_cached(inputs)
        return self.network.decode(encoded.c, encoded.tokens).score.float()
