"""Training configuration: every constant of the method is an option with the spec's default."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from qfm_iqm.data.degradations import TRAINED_KINDS, check_kinds
from qfm_iqm.inference.pretrained import UNRECORDED_OPTIONS, training_settings
from qfm_iqm.models.qfm import ModelConfig

MODES = ("qfm", "deiqt")
TEACHERS = ("ema", "pretrained", "kernel_ridge", "none")
LOSSES = ("smooth_l1", "l1", "mse")
NOISE_TARGETS = ("tokens", "global", "both")
SEMANTIC_DESCRIPTORS = ("every_stage", "last_stage")
AMP_MODES = ("auto", "bf16", "fp16", "off")


_NUMBER_TYPES = {"int": int, "float": float, "float | None": float}


def _coerce(name: str, annotation: str, value: Any) -> Any:
    """Numbers written as text (YAML reads ``5e-5`` as a string) become the option's number type."""
    kind = _NUMBER_TYPES.get(annotation)
    if kind is None or value is None or isinstance(value, bool):
        return value
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"option {name!r} must be a number ({kind.__name__}), got {value!r}") from None
    if kind is int and number != float(value):
        raise ValueError(f"option {name!r} must be a whole number, got {value!r}")
    return number


@dataclass
class TrainConfig:
    """Options of one training run. ``mode="deiqt"`` turns semantic noise and distillation off.

    Defaults are the measured best on the default backbone (Lite0, LIVEC, 5 splits; see
    results/benchmark/livec-lite0): ``deiqt`` mode, because neither component improved on it there, and
    a backbone lr of 5e-5 with a 10x decoder/head lr and a cosine schedule, which beat DEIQT's recipe
    (2e-4 for everything, x0.1 every 3 epochs; configs/paper_recipe.yaml). ``mode="qfm"`` turns the
    method's components on with the spec's constants.
    """

    mode: str = "deiqt"
    model: ModelConfig = field(default_factory=ModelConfig)
    backbone_weights: str | None = None
    # optimisation
    epochs: int = 9
    batch_size: int = 16
    lr: float = 5e-5  # the backbone's; the decoder and head get lr * head_lr_scale
    head_lr_scale: float = 10.0
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    schedule: str = "cosine"  # "cosine", or "step" (x step_gamma every step_epochs)
    step_epochs: int = 3
    step_gamma: float = 0.1
    grad_clip: float | None = 1.0
    token_dropout: float = 0.0  # share of the tokens the decoder does not see in a training step (regularisation)
    loss: str = "smooth_l1"  # regression loss: "smooth_l1", "l1" or "mse"
    loss_scale: float = 1.0  # labels and predictions are multiplied by it inside the loss (100: raw MOS units)
    crops_per_image: int = 1  # random training crops of each image per epoch (DEIQT's patch_num)
    freeze_backbone: bool = False  # train projection + decoder only; the backbone's crops are cached
    crop_bank: int = 16  # with a frozen backbone: the fixed random crops per image the views are drawn from
    feature_cache_dir: str | None = None  # with a frozen backbone: keep its outputs there for later runs
    freeze_bn: bool = False  # keep BatchNorm statistics at their ImageNet values while fine-tuning
    amp: str = "auto"  # "auto" (CUDA: bf16, or fp16 where the GPU lacks bf16; CPU: off), "bf16", "fp16", "off"
    # semantic noisy matching
    noise: bool = True
    memory_factor: int = 8  # memory capacity = memory_factor * batch_size
    quality_tolerance: float = 0.05
    noise_strength: float = 0.3
    noise_weight: float = 1.0
    noise_target: str = "tokens"  # what the matched noise perturbs: "tokens", "global" (c, hence the queries), "both"
    semantic_descriptor: str = "every_stage"  # what "semantically different" compares: c of "every_stage" or "last_stage"
    # distillation
    teacher: str = "none"  # on validation neither teacher helped, with or without extra photos (docs/method.md)
    ema_decay: float = 0.999
    ema_warmup: bool = True  # the keep-rate rises to ema_decay over the lr warm-up (warmup_epochs)
    teacher_backbones: list[str] = field(default_factory=lambda: ["tf_efficientnet_lite0"])  # kernel_ridge's
    kd_weight: float = 1.0
    kd_views: int = 8  # extra teacher-labelled views per step
    kd_label_all: bool = False  # the teacher labels the KD views of labelled images too (else they keep their label)
    unlabeled_dir: str | None = None
    # degradation ranking: of two damaged versions of one crop the milder must score higher (off at 0)
    rank_weight: float = 0.0
    rank_pairs: int = 8  # degradation pairs per step, from the training (and unlabelled) images
    rank_margin: float = 0.02  # hinge margin on the normalised scale
    rank_kinds: list[str] = field(default_factory=lambda: list(TRAINED_KINDS))  # the kinds pairs are drawn from
    # kinds whose pairs train the damage head alone (the panel's share of their scores held fixed; needs
    # model.damage_head): as many pairs per step as rank_pairs, at the same margin and weight
    damage_kinds: list[str] = field(default_factory=list)
    # the damage head is pulled to 0 on the clean labelled crops (added to the ranking loss) and not fitted to
    # the labels, which the panel alone then fits; off: the label losses train the head too
    damage_anchor: bool = False
    damage_anchor_weight: float = 1.0  # the pull's weight against the damage pairs' hinge
    # data and evaluation
    eval_grid: int = 4  # test crops per side; 4 beat 3 on 25 of 25 LIVEC split models (docs/method.md)
    degradation_photos: int = 20  # test photos per split in the degradation check (0: no check)
    val_fraction: float = 0.2  # share of a split's training part held out for choices (the protocol)
    cache_images: bool = True
    num_workers: int = 0
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = ModelConfig.from_dict(self.model)
        for option in fields(self):
            setattr(self, option.name, _coerce(option.name, option.type, getattr(self, option.name)))
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.teacher not in TEACHERS:
            raise ValueError(f"teacher must be one of {TEACHERS}, got {self.teacher!r}")
        if self.mode == "deiqt" and self.teacher != "none":
            raise ValueError(f"teacher {self.teacher!r} has no effect in mode 'deiqt', which trains without "
                             "distillation: set teacher: none, or mode: qfm to distil")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        if self.noise_target not in NOISE_TARGETS:
            raise ValueError(f"noise_target must be one of {NOISE_TARGETS}, got {self.noise_target!r}")
        if self.semantic_descriptor not in SEMANTIC_DESCRIPTORS:
            raise ValueError(f"semantic_descriptor must be one of {SEMANTIC_DESCRIPTORS}, got {self.semantic_descriptor!r}")
        if self.crops_per_image < 1 or self.crop_bank < 1:
            raise ValueError("crops_per_image and crop_bank must be >= 1")
        if self.rank_weight < 0 or self.rank_pairs < 1 or self.rank_margin < 0 or self.degradation_photos < 0:
            raise ValueError("rank_weight, rank_margin and degradation_photos must be >= 0, rank_pairs >= 1")
        if not isinstance(self.rank_kinds, (list, tuple)) or not self.rank_kinds:
            raise ValueError(f"rank_kinds must be a non-empty list of degradation kinds, got {self.rank_kinds!r}")
        self.rank_kinds = list(check_kinds(self.rank_kinds))
        if not isinstance(self.damage_kinds, (list, tuple)):
            raise ValueError(f"damage_kinds must be a list of degradation kinds, got {self.damage_kinds!r}")
        self.damage_kinds = list(check_kinds(self.damage_kinds)) if self.damage_kinds else []
        if self.damage_kinds and not (self.model.damage_head and self.rank_weight > 0):
            raise ValueError("damage_kinds train the damage head: set model.damage_head: true and rank_weight > 0, "
                             "or leave damage_kinds empty")
        if self.damage_anchor and not self.damage_kinds:
            raise ValueError("damage_anchor holds the damage head at 0 on clean crops while damage_kinds rank it: "
                             "name damage_kinds, or set damage_anchor: false")
        if not self.damage_anchor_weight > 0:
            raise ValueError(f"damage_anchor_weight must be > 0 (1 is the default pull), got {self.damage_anchor_weight}")
        if self.damage_anchor_weight != 1.0 and not self.damage_anchor:
            raise ValueError("damage_anchor_weight weighs the pull of damage_anchor: set damage_anchor: true, "
                             "or leave damage_anchor_weight at 1")
        if not isinstance(self.teacher_backbones, (list, tuple)) or not self.teacher_backbones:
            raise ValueError(f"teacher_backbones must be a non-empty list of backbone names, got {self.teacher_backbones!r}")
        self.teacher_backbones = list(self.teacher_backbones)
        if not 0.0 <= self.token_dropout < 1.0:
            raise ValueError(f"token_dropout must be in [0, 1), got {self.token_dropout}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.schedule not in ("step", "cosine"):
            raise ValueError(f"schedule must be 'step' or 'cosine', got {self.schedule!r}")

    @property
    def use_noise(self) -> bool:
        """Semantic noisy matching is on (never in ``deiqt`` mode)."""
        return self.mode == "qfm" and self.noise and self.noise_weight > 0

    @property
    def ranked_kinds(self) -> tuple[str, ...]:
        """The degradation kinds the ranking loss trains on, the damage head's included (none when it is off)."""
        return tuple(dict.fromkeys(self.rank_kinds + self.damage_kinds)) if self.rank_weight > 0 else ()

    @property
    def distill(self) -> bool:
        """The distillation framework is on (never in ``deiqt`` mode)."""
        return self.mode == "qfm" and self.teacher != "none" and self.kd_weight > 0 and self.kd_views > 0

    def check_resources(self) -> None:
        """Fail at once, in one line (``ValueError``), where this machine cannot run these options: a
        misspelt or absent device, a backbone whose pretrained weights cannot be had (offline with an
        empty cache, a missing or corrupt ``backbone_weights`` file). Commands call it before they write
        anything; it loads the weights once (downloading them into the Hugging Face cache when online)."""
        from qfm_iqm.models.backbones import create_backbone
        from qfm_iqm.utils.distributed import local_device

        local_device(self.device)
        create_backbone(self.model.backbone, pretrained=True, weights_path=self.backbone_weights)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def recorded_options(self) -> dict[str, Any]:
        """The options a model checkpoint's ``training`` records: all but ``UNRECORDED_OPTIONS`` (the model
        is recorded once, in the checkpoint's ``model``; the feature cache's folder is machine-local)."""
        return {key: value for key, value in self.to_dict().items() if key not in UNRECORDED_OPTIONS}

    @classmethod
    def from_checkpoint(cls, info: dict[str, Any]) -> "TrainConfig":
        """The options of the run that wrote a model checkpoint's JSON ``info`` (its ``model`` and training
        settings; the unrecorded ``feature_cache_dir`` at its default)."""
        settings = training_settings(info)
        if settings is None or not isinstance(info.get("model"), dict):
            raise ValueError("the checkpoint records no training options (it has no 'training' and 'model' objects)")
        return cls.from_record({**settings, "model": info["model"]})

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> "TrainConfig":
        """:meth:`from_dict` of the options an earlier run recorded (a checkpoint, a results folder's
        ``method.json``): a teacher recorded beside mode ``deiqt``, which that mode never used (earlier
        versions allowed it), reads as ``none``."""
        if data.get("mode") == "deiqt" and data.get("teacher", "none") != "none":
            data = {**data, "teacher": "none"}
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown training option(s): {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def from_file(cls, path: str | Path) -> "TrainConfig":
        path = Path(path)
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of options, got {type(data).__name__}")
        return cls.from_dict(data)

    def with_overrides(self, assignments: list[str]) -> "TrainConfig":
        """Apply ``key=value`` overrides (values parsed as YAML; ``model.x=...`` reaches the model)."""
        data = self.to_dict()
        for assignment in assignments:
            key, sep, raw = assignment.partition("=")
            if not sep:
                raise ValueError(f"override {assignment!r} is not of the form key=value")
            target = data
            *parents, leaf = key.strip().split(".")
            for parent in parents:
                if not isinstance(target.get(parent), dict):
                    raise ValueError(f"override {assignment!r}: {parent!r} is not a group of options")
                target = target[parent]
            if leaf not in target:
                raise ValueError(f"override {assignment!r}: unknown option {key!r}")
            target[leaf] = yaml.safe_load(raw)
        return TrainConfig.from_dict(data)


def changed_options(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """The options whose values differ between two :meth:`TrainConfig.to_dict`-style dicts, by dotted
    name (nested dicts such as ``model`` key by key), sorted; tuples and lists count as equal."""
    changed = []
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            changed += changed_options(old, new, f"{prefix}{key}.")
        elif json.loads(json.dumps(old)) != json.loads(json.dumps(new)):
            changed.append(f"{prefix}{key}")
    return changed

