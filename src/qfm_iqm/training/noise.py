"""Semantic noisy matching: a FIFO feature memory, the adversarial matcher and norm-matched noise."""

from __future__ import annotations

import torch
from torch import Tensor


class FeatureMemory:
    """FIFO queue of ``(semantic descriptor, global vector, token map, label, image id)`` entries.

    Entries are detached copies; token maps may be stored in a lower precision. ``image_id`` lets the
    matcher exclude every stored view of the image being perturbed.
    """

    def __init__(self, capacity: int, token_dtype: torch.dtype = torch.float16) -> None:
        if capacity < 1:
            raise ValueError(f"memory capacity must be positive, got {capacity}")
        self.capacity = capacity
        self.token_dtype = token_dtype
        self.semantic: Tensor | None = None
        self.globals: Tensor | None = None  # the decoder-width global vectors c
        self.tokens: Tensor | None = None
        self.labels = torch.full((capacity,), float("nan"))
        self.image_ids = torch.full((capacity,), -1, dtype=torch.long)
        self.pointer = 0
        self.size = 0

    def _allocate(self, semantic: Tensor, globals_: Tensor, tokens: Tensor) -> None:
        device = semantic.device
        self.semantic = torch.zeros(self.capacity, semantic.shape[1], device=device)
        self.globals = torch.zeros(self.capacity, globals_.shape[1], dtype=self.token_dtype, device=device)
        self.tokens = torch.zeros(self.capacity, *tokens.shape[1:], dtype=self.token_dtype, device=device)
        self.labels = self.labels.to(device)
        self.image_ids = self.image_ids.to(device)

    @torch.no_grad()
    def push(self, semantic: Tensor, globals_: Tensor, tokens: Tensor, labels: Tensor, image_ids: Tensor) -> None:
        """Enqueue a batch, overwriting the oldest entries once full."""
        if self.semantic is None:
            self._allocate(semantic, globals_, tokens)
        count = semantic.shape[0]
        if count > self.capacity:
            semantic, globals_, tokens, labels, image_ids = (
                t[-self.capacity :] for t in (semantic, globals_, tokens, labels, image_ids)
            )
            count = self.capacity
        slots = (self.pointer + torch.arange(count, device=self.semantic.device)) % self.capacity
        self.semantic[slots] = semantic.detach().float()
        self.globals[slots] = globals_.detach().to(self.token_dtype)
        self.tokens[slots] = tokens.detach().to(self.token_dtype)
        self.labels[slots] = labels.detach().float().to(self.labels.device)
        self.image_ids[slots] = image_ids.to(self.image_ids.device)
        self.pointer = int((self.pointer + count) % self.capacity)
        self.size = min(self.size + count, self.capacity)

    def state_dict(self) -> dict:
        state = {"labels": self.labels, "image_ids": self.image_ids, "pointer": self.pointer, "size": self.size}
        if self.semantic is not None:
            state.update(semantic=self.semantic, globals=self.globals, tokens=self.tokens)
        return state

    def load_state_dict(self, state: dict) -> None:
        self.labels = state["labels"].clone()
        self.image_ids = state["image_ids"].clone()
        self.pointer = int(state["pointer"])
        self.size = int(state["size"])
        if "semantic" in state:
            self.semantic = state["semantic"].clone()
            self.globals = state["globals"].clone().to(self.token_dtype)
            self.tokens = state["tokens"].clone().to(self.token_dtype)


@torch.no_grad()
def match_semantic_noise(
    semantic: Tensor, labels: Tensor, image_ids: Tensor, memory: FeatureMemory, quality_tolerance: float
) -> tuple[Tensor, Tensor]:
    """For each sample pick the most semantically different memory entry of equivalent quality.

    Candidates are entries with ``|y_i - y_j| <= quality_tolerance`` that are not a view of the same
    image; among them the entry of lowest cosine similarity wins. Returns ``(indices, found)``:
    memory slots (B,) and a mask (B,) that is False where a sample has no candidate. The similarities
    are float32 even inside autocast (in bf16 near-equal ones would tie or swap).
    """
    if memory.semantic is None or memory.size == 0:
        empty = torch.zeros(semantic.shape[0], dtype=torch.long, device=semantic.device)
        return empty, torch.zeros_like(empty, dtype=torch.bool)
    stored = slice(0, memory.size)
    with torch.autocast(semantic.device.type, enabled=False):
        similarity = semantic.float() @ memory.semantic[stored].T
    quality_gap = (labels.float().unsqueeze(1) - memory.labels[stored].unsqueeze(0)).abs()
    candidate = (quality_gap <= quality_tolerance) & (image_ids.unsqueeze(1) != memory.image_ids[stored].unsqueeze(0))
    similarity = similarity.masked_fill(~candidate, float("inf"))
    indices = similarity.argmin(dim=1)
    return indices, candidate.any(dim=1)


def norm_matched_noise(tokens: Tensor, noise_tokens: Tensor, strength: float) -> Tensor:
    """``strength * ||F_i|| / ||F_j|| * F_j`` per sample, with no gradient through the noise, in the
    dtype of ``tokens``; the norms and the scaling are computed in float32 (the memory keeps float16).

    Works for token maps (B, N, d) and global vectors (B, d) alike."""
    own_tokens, noise = tokens.detach().float(), noise_tokens.float()
    own = own_tokens.flatten(1).norm(dim=1)
    other = noise.flatten(1).norm(dim=1).clamp_min(1e-12)
    scale = (strength * own / other).view(-1, *([1] * (tokens.dim() - 1)))
    return (scale * noise).to(tokens.dtype)
