"""The QFM-IQM network: a timm backbone, a projection to the decoder width, the attention panel."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qfm_iqm.models.backbones import Backbone, create_backbone
from qfm_iqm.models.decoder import AttentionPanelDecoder, PanelOutput


LEGACY_RESIZE_RULES = ("resize_short_side", "max_short_side")  # model config fields before format qfm-iqm/2


@dataclass
class ModelConfig:
    """Everything needed to rebuild a QFM-IQM network (stored beside every checkpoint)."""

    backbone: str = "tf_efficientnet_lite0"
    dim: int = 384
    panel_size: int = 6
    num_heads: int = 6
    mlp_ratio: float = 4.0
    token_gate: bool = False
    multi_stage: bool = False  # tokens and c from every backbone stage (CNNs), see MultiStageProjection
    stage_grid: int = 7  # the common grid the stages are pooled to when ``multi_stage``
    final_norm: bool = True  # a LayerNorm between the decoder and the score head
    head_init: str = "default"  # projection/decoder/head weights: "default" (PyTorch's) or "deiqt" (see HEAD_INITS)
    damage_head: bool = False  # a penalty for synthetic damage read from the raw tokens, see DamageHead
    # the input the weights expect (``qfm_iqm.data.transforms.Preprocessing``): crop size and normalisation
    # (the backbone's, filled in when the network is built) and the training dataset's resize rules
    # (``resize_short_side``, e.g. SPAQ's large photos; ``max_short_side``, the viewing scale it was rated at)
    preprocessing: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        """From :meth:`to_dict`'s output; keys it does not know (a newer version's) are left out. The resize
        rules that configs of format ``qfm-iqm/1`` kept beside ``preprocessing`` are moved into it."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known.setdefault("multi_stage", False)  # checkpoints from before the option were single-stage
        rules = {key: data[key] for key in LEGACY_RESIZE_RULES if data.get(key) is not None}
        if rules:
            known["preprocessing"] = {**rules, **known.get("preprocessing", {})}
        return cls(**known)


@dataclass
class Encoded:
    """Decoder inputs of a batch: semantic descriptor, decoder-width global vector and tokens."""

    semantic: Tensor  # (B, C) L2-normalised backbone global vector, detached
    c: Tensor  # (B, d)
    tokens: Tensor  # (B, N, d)
    damage: Tensor | None = None  # (B,) the damage head's penalty, with ``ModelConfig.damage_head``


class StageProjection(nn.Module):
    """Projection of concatenated stage features (..., sum C_s) to the decoder width.

    Each stage is layer-normalised on its own first, so that every stage enters on the same scale
    whatever the magnitude of its activations; then one linear map mixes all stages.
    """

    def __init__(self, stage_channels: list[int], dim: int) -> None:
        super().__init__()
        self.stage_channels = list(stage_channels)
        self.norms = nn.ModuleList(nn.LayerNorm(width) for width in self.stage_channels)
        self.linear = nn.Linear(sum(self.stage_channels), dim)

    def forward(self, x: Tensor) -> Tensor:
        stages = x.split(self.stage_channels, dim=-1)
        return self.linear(torch.cat([norm(stage) for norm, stage in zip(self.norms, stages)], dim=-1))


class DamageHead(nn.Module):
    """A penalty (>= 0) for damage, read from the backbone's raw tokens and subtracted from every panel
    member's score (so the panel's spread is unchanged).

    It has a projection of its own: a loss that trains the head alone (``TrainConfig.damage_kinds``)
    leaves the panel's inputs as they were. Tokens are projected (each stage normalised first), passed
    through a GELU, averaged over positions and mapped to a softplus.
    """

    def __init__(self, stage_channels: list[int] | None, width: int, hidden: int) -> None:
        super().__init__()
        self.proj = (StageProjection(stage_channels, hidden) if stage_channels
                     else nn.Sequential(nn.LayerNorm(width), nn.Linear(width, hidden)))
        self.out = nn.Linear(hidden, 1)

    def forward(self, tokens: Tensor) -> Tensor:
        return F.softplus(self.out(F.gelu(self.proj(tokens)).mean(dim=1))).squeeze(-1)


HEAD_INITS = ("default", "deiqt")


def deiqt_init(module: nn.Module) -> None:
    """DEIQT's (and timm ViTs') initialisation: linear weights truncated-normal with std 0.02, zero
    biases, LayerNorms at (1, 0)."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.trunc_normal_(layer.weight, std=0.02)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.LayerNorm):
            nn.init.ones_(layer.weight)
            nn.init.zeros_(layer.bias)


class QFMIQM(nn.Module):
    """Backbone + attention-panel decoder. At inference it is a plain forward pass (no noise)."""

    def __init__(self, config: ModelConfig, backbone: Backbone) -> None:
        super().__init__()
        if config.head_init not in HEAD_INITS:
            raise ValueError(f"model.head_init must be one of {HEAD_INITS}, got {config.head_init!r}")
        self.backbone = backbone.use_stages(config.stage_grid) if config.multi_stage else backbone
        width = backbone.num_features
        if config.multi_stage:
            # tokens and c get projections of their own: c is then no linear function of the tokens
            self.proj = StageProjection(backbone.stage_channels, config.dim)
            self.proj_global: nn.Module | None = StageProjection(backbone.stage_channels, config.dim)
        else:
            self.proj = nn.Identity() if width == config.dim else nn.Linear(width, config.dim)
            self.proj_global = None
        self.gate = nn.Linear(config.dim, config.dim) if config.token_gate else None
        stages = backbone.stage_channels if config.multi_stage else None
        self.damage_head = DamageHead(stages, width, config.dim) if config.damage_head else None
        self.decoder = AttentionPanelDecoder(
            config.dim, config.panel_size, config.num_heads, config.mlp_ratio, config.final_norm
        )
        if config.head_init == "deiqt":
            for part in (self.proj, self.proj_global, self.gate, self.decoder, self.damage_head):
                if part is not None:
                    deiqt_init(part)
        cfg = backbone.pretrained_cfg
        backbone_input = {"input_size": cfg["input_size"], "mean": list(cfg["mean"]), "std": list(cfg["std"])}
        # a copy with the backbone's input filled in: the caller's config is left as it was given
        self.config = replace(config, preprocessing={**backbone_input, **config.preprocessing})

    def encode(self, images: Tensor) -> Encoded:
        return self.encode_features(*self.backbone(images))

    def encode_features(self, c: Tensor, tokens: Tensor) -> Encoded:
        """Decoder inputs from the backbone's output ``(c, tokens)`` (lets a frozen backbone be cached)."""
        semantic = F.normalize(c.detach().float(), dim=-1)
        proj_global = self.proj_global if self.proj_global is not None else self.proj
        damage = self.damage_head(tokens) if self.damage_head is not None else None
        return Encoded(semantic, proj_global(c), self.proj(tokens), damage)

    def encode_cached(self, outputs: Tensor) -> Encoded:
        """Decoder inputs from a frozen backbone's stored outputs (B, 1 + N, C): ``c`` first, then the
        tokens (the layout of ``qfm_iqm.training.feature_cache``), as :meth:`encode` gives them."""
        return self.encode_features(outputs[:, 0], outputs[:, 1:])

    def forward_cached(self, outputs: Tensor) -> PanelOutput:
        """Score a frozen backbone's stored outputs (B, 1 + N, C) (:meth:`encode_cached`), as :meth:`forward`
        scores the images they came from."""
        return self.decode(self.encode_cached(outputs))

    def decode(self, encoded: Encoded, need_attention: bool = False) -> PanelOutput:
        """Score decoder inputs; their tokens or ``c`` may carry semantic noise during training. The damage
        head's penalty, when there is one, is subtracted from every member's score."""
        c, tokens = encoded.c, encoded.tokens
        if self.gate is not None:
            tokens = tokens * torch.sigmoid(self.gate(c)).unsqueeze(1)
        output = self.decoder(c, tokens, need_attention)
        if encoded.damage is None:
            return output
        return PanelOutput(output.member_scores - encoded.damage.unsqueeze(1), output.cross_attention, encoded.damage)

    def forward(self, images: Tensor, need_attention: bool = False) -> PanelOutput:
        return self.decode(self.encode(images), need_attention)


_ARCHITECTURES: dict[str, dict] = {}


def register_architecture(name: str, **defaults) -> None:
    """Register a named QFM-IQM architecture (``ModelConfig`` defaults)."""
    _ARCHITECTURES[name] = defaults


register_architecture("qfm_iqm_lite0", backbone="tf_efficientnet_lite0")
register_architecture("qfm_iqm_vit_s16", backbone="deit3_small_patch16_224")


def list_architectures() -> list[str]:
    return sorted(_ARCHITECTURES)


def build_model(
    config: ModelConfig, pretrained_backbone: bool = True, backbone_weights: str | Path | None = None
) -> QFMIQM:
    """Build a network from a :class:`ModelConfig` (backbone weights as asked, head fresh)."""
    backbone = create_backbone(config.backbone, pretrained=pretrained_backbone, weights_path=backbone_weights)
    return QFMIQM(config, backbone)


def create_model(
    name: str = "qfm_iqm_lite0",
    pretrained_backbone: bool = True,
    backbone_weights: str | Path | None = None,
    **overrides,
) -> QFMIQM:
    """Create a QFM-IQM network by architecture name, e.g. ``create_model("qfm_iqm_lite0")``."""
    return build_model(architecture_config(name, **overrides), pretrained_backbone, backbone_weights)


def architecture_config(name: str, **overrides) -> ModelConfig:
    """The configuration of a registered architecture (``qfm_iqm_lite0`` or ``qfm-iqm-lite0``; ``overrides`` applied)."""
    name = name.replace("-", "_")
    if name not in _ARCHITECTURES:
        raise KeyError(f"unknown architecture {name!r}; available: {', '.join(list_architectures())}")
    return ModelConfig(**{**_ARCHITECTURES[name], **overrides})
