"""DEIQT's attention-panel decoder: a panel of learned queries reads the backbone's tokens."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class PanelOutput:
    """Per-member scores of the panel and, when asked for, the cross-attention maps."""

    member_scores: Tensor  # (B, L)
    cross_attention: Tensor | None = None  # (B, L, N), averaged over heads
    damage: Tensor | None = None  # (B,) the damage head's penalty, already subtracted from member_scores

    @property
    def score(self) -> Tensor:
        """The panel's verdict: the mean over members, (B,)."""
        return self.member_scores.mean(dim=1)

    @property
    def spread(self) -> Tensor:
        """Disagreement between members (population std), a per-image uncertainty, (B,)."""
        return self.member_scores.std(dim=1, unbiased=False)


class PanelDecoderLayer(nn.Module):
    """Pre-norm Transformer decoder layer: self-attention, cross-attention to tokens, GELU FFN."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm_self = nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm_cross = nn.LayerNorm(dim)
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm_ffn = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.ffn = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, queries: Tensor, tokens: Tensor, need_attention: bool = False) -> tuple[Tensor, Tensor | None]:
        x = self.norm_self(queries)
        queries = queries + self.self_attn(x, x, x, need_weights=False)[0]
        x = self.norm_cross(queries)
        attended, weights = self.cross_attn(x, tokens, tokens, need_weights=need_attention, average_attn_weights=True)
        queries = queries + attended
        queries = queries + self.ffn(self.norm_ffn(queries))
        return queries, weights


class AttentionPanelDecoder(nn.Module):
    """L panel members, each a learned embedding plus the image's global vector, score the tokens.

    ``forward(c, tokens)`` takes the global vector ``c`` (B, d) and token map ``tokens`` (B, N, d) and
    returns a :class:`PanelOutput` whose members are scored by one shared bias-free linear head (after
    a LayerNorm when ``final_norm``).
    """

    def __init__(
        self, dim: int = 384, panel_size: int = 6, num_heads: int = 6, mlp_ratio: float = 4.0, final_norm: bool = True
    ) -> None:
        super().__init__()
        self.panel = nn.Parameter(torch.empty(panel_size, dim))
        nn.init.trunc_normal_(self.panel, std=0.02)
        self.layer = PanelDecoderLayer(dim, num_heads, mlp_ratio)
        self.norm = nn.LayerNorm(dim) if final_norm else nn.Identity()
        self.head = nn.Linear(dim, 1, bias=False)

    @property
    def panel_size(self) -> int:
        return self.panel.shape[0]

    def forward(self, c: Tensor, tokens: Tensor, need_attention: bool = False) -> PanelOutput:
        queries = self.panel.unsqueeze(0) + c.unsqueeze(1)
        queries, attention = self.layer(queries, tokens, need_attention)
        member_scores = self.head(self.norm(queries)).squeeze(-1)
        return PanelOutput(member_scores, attention)
