"""Released (trained) QFM-IQM models shipped inside the package, and the tool that makes a release copy.

A released model ``<stem>`` is the checkpoint pair ``qfm_iqm/weights/<stem>.safetensors`` +
``<stem>.json`` (package data). Its JSON records what a user needs to trust a score: the model (backbone
and preprocessing), score scale, training data, training settings, code version and the training command.

The JSON of every model checkpoint (format :data:`MODEL_FORMAT`) holds each fact once: ``model`` (with its
``preprocessing``), ``training`` (the options, less :data:`UNRECORDED_OPTIONS`), the training data and
``score_scale``. Checkpoints of format ``qfm-iqm/1`` repeated the model inside ``training`` (``settings`` in
release copies) and recorded the machine-local ``feature_cache_dir``; they load as they are.

Every checkpoint (release or training run) may also record its test grid (``eval_grid`` of its training
settings; :func:`scoring_grid`) and a calibrated score interval (``interval``; :func:`recorded_interval`,
:func:`record_interval`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields
from pathlib import Path

from qfm_iqm.version import __version__
from qfm_iqm.data.records import LabelScale
from qfm_iqm.inference.score_map import ConformalInterval
from qfm_iqm.utils.files import checkpoint_paths

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
MODEL_FORMAT = "qfm-iqm/2"
READABLE_FORMATS = ("qfm-iqm/1", MODEL_FORMAT)
# training options a checkpoint's ``training`` leaves out: the model has its own section, and the feature
# cache's folder belongs to the machine that trained
UNRECORDED_OPTIONS = ("model", "feature_cache_dir")
RELEASE_KEYS = ("score_scale", "training_data", "training", "command")
DEFAULT_GRID = 3  # test crops per side of checkpoints that record none
# The scale of checkpoints that record none (plain training runs): the model's own [0, 1] output.
NORMALISED_SCALE = LabelScale(low=0.0, high=1.0, higher_is_better=True, name="normalised")


@dataclass(frozen=True)
class PretrainedModel:
    """A registered release: its name, file stem in ``qfm_iqm/weights`` and a one-line description."""

    name: str
    filename_stem: str
    description: str

    @property
    def weights_path(self) -> Path:
        return WEIGHTS_DIR / f"{self.filename_stem}.safetensors"

    @property
    def installed(self) -> bool:
        return self.weights_path.is_file() and self.weights_path.with_suffix(".json").is_file()


_PRETRAINED: dict[str, PretrainedModel] = {}


def register_pretrained(name: str, filename_stem: str, description: str) -> None:
    """Register a released model stored as ``qfm_iqm/weights/<filename_stem>.{safetensors,json}``."""
    if name in _PRETRAINED:
        raise ValueError(f"released model {name!r} is already registered")
    _PRETRAINED[name] = PretrainedModel(name, filename_stem, description)


def list_pretrained() -> list[str]:
    """Names of the registered released models, sorted (installed or not)."""
    return sorted(_PRETRAINED)


def release_name(name: str) -> str | None:
    """The registered release ``name`` refers to, spelt with hyphens or underscores
    (``qfm_iqm_lite0_livec`` is ``qfm-iqm-lite0-livec``); ``None`` if it names none."""
    wanted = name.replace("_", "-")
    return next((known for known in _PRETRAINED if known.replace("_", "-") == wanted), None)


def get_pretrained(name: str) -> PretrainedModel:
    """The registered release called ``name`` (hyphens or underscores; ``KeyError`` naming the available ones otherwise)."""
    known = release_name(name)
    if known is None:
        raise KeyError(f"unknown released model {name!r}; available: {', '.join(list_pretrained())}")
    return _PRETRAINED[known]


DEFAULT_MODEL = "qfm-iqm-lite0-livec-v2-2"
register_pretrained(
    DEFAULT_MODEL,
    "qfm_iqm_lite0_livec_v2_2",
    "QFM-IQM v2.2: v2.1 + a damage head ranked on nine kinds of damage, fitted on 744 LIVE Challenge photos, "
    "its 90% range calibrated on the other 186 (split conformal); scores photos at 500 px; MOS 0-100 "
    "(default; model card: qfm_iqm/weights/README.md)",
)
register_pretrained(
    "qfm-iqm-lite0-livec-v2-1",
    "qfm_iqm_lite0_livec_v2_1",
    "QFM-IQM v2.1: v2's recipe fitted on 744 LIVE Challenge photos, its 90% range calibrated on the other 186 "
    "(split conformal); scores photos at 500 px; MOS 0-100",
)
register_pretrained(
    "qfm-iqm-lite0-livec-v2",
    "qfm_iqm_lite0_livec_v2",
    "QFM-IQM v2: frozen multi-stage EfficientNet-Lite0, semantic noise and degradation ranking, trained on "
    "all 930 LIVE Challenge photos; MOS 0-100 with a 90% range borrowed from the recipe's protocol splits",
)
register_pretrained(
    "qfm-iqm-lite0-livec",
    "qfm_iqm_lite0_livec",
    "QFM-IQM v1: fine-tuned EfficientNet-Lite0 (last stage) trained on LIVE Challenge; MOS 0-100",
)


def resolve_model(name_or_path: str | Path) -> Path:
    """The checkpoint file or folder of a released model name or of a user's checkpoint path.

    Raises:
        FileNotFoundError: a registered release whose files are not installed, a name that is
            neither registered nor an existing path, or a protocol results folder (the message names
            its ``split_*`` model folders).
    """
    if isinstance(name_or_path, str) and release_name(name_or_path) is not None:
        release = get_pretrained(name_or_path)
        if not release.installed:
            raise FileNotFoundError(
                f"released model {release.name!r} is not installed: {release.weights_path} (and its .json) "
                "are missing from this copy of qfm-iqm; install a build that ships it, or pass a trained "
                "checkpoint folder or .safetensors file instead"
            )
        return release.weights_path
    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"{str(name_or_path)!r} is neither a released model ({', '.join(list_pretrained())}) "
            "nor an existing checkpoint folder or file"
        )
    splits = sorted(p.name for p in path.glob("split_*") if (p / "model.safetensors").is_file()) if path.is_dir() else []
    if splits and not (path / "model.safetensors").exists():
        raise FileNotFoundError(
            f"{path} is a protocol results folder, not a checkpoint: its models are in "
            f"{', '.join(splits)}; pass one of them, e.g. {path / splits[0]}"
        )
    return path


def export_release(
    checkpoint_dir: str | Path, out_dir: str | Path, stem: str, extra_config: dict, half: bool = True
) -> Path:
    """Write the release copy ``<out_dir>/<stem>.{safetensors,json}`` of a trained checkpoint.

    Floating-point tensors are stored as fp16 when ``half`` (they are cast back to float32 on load).
    The JSON records ``model``, ``backbone``, ``preprocessing``, ``score_scale``, ``training_data``,
    ``settings``, ``command``, ``code_version`` and ``release``, and the checkpoint's ``interval`` when
    it records one. ``settings``, ``command``, ``code_version`` and ``training_data`` default to the
    source checkpoint's ``training``, ``command``, ``code_version`` and
    ``dataset``/``split_seed``/``train_size`` entries, ``score_scale``
    (``{"name", "low", "high", "higher_is_better"}``) to the checkpoint's; ``extra_config`` overrides
    or adds any entry.

    Returns the path of the written ``.safetensors`` file.
    """
    from qfm_iqm.utils.checkpoint import load_checkpoint, save_checkpoint  # torch: only here

    weights_path, _ = checkpoint_paths(checkpoint_dir)
    tensors, config = load_checkpoint(checkpoint_dir)
    if not isinstance(config, dict) or config.get("format") not in READABLE_FORMATS:
        raise ValueError(f"{checkpoint_dir} is not a model checkpoint of format {' or '.join(READABLE_FORMATS)}")
    training_data = {k: config[k] for k in ("dataset", "split_seed", "train_size") if k in config}
    release = {
        "format": MODEL_FORMAT,
        "model": config["model"],
        "score_scale": config.get("score_scale"),
        "training_data": training_data or None,
        "training": training_settings(config),
        "command": config.get("command"),
        "code_version": config.get("code_version", __version__),
        "release": {
            "name": stem,
            "dtype": "float16" if half else "float32",
            "exported_with": __version__,
            "source_sha256": hashlib.sha256(weights_path.read_bytes()).hexdigest(),
        },
    }
    if "interval" in config:
        release["interval"] = config["interval"]
    release.update(extra_config)
    missing = [key for key in RELEASE_KEYS if release.get(key) is None]
    if missing:
        raise ValueError(f"release of {checkpoint_dir} needs {', '.join(missing)} (pass them in extra_config)")
    LabelScale(**release["score_scale"])  # validates the scale
    if half:
        tensors = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
        overflow = [k for k, v in tensors.items() if v.is_floating_point() and not bool(v.isfinite().all())]
        if overflow:
            raise ValueError(f"tensors overflow float16: {', '.join(overflow[:5])}; export with half=False")
    return save_checkpoint(out_dir, tensors, release, name=stem)


def read_checkpoint_json(checkpoint: str | Path) -> dict:
    """A checkpoint's JSON, read without torch and not checked (loading the model checks it): what the
    command line needs to check a ``score -o`` file before it loads the model."""
    path = checkpoint_paths(checkpoint)[1]
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"corrupt checkpoint file {path}: {'nested too deeply' if isinstance(exc, RecursionError) else exc}") from exc
    if not isinstance(info, dict):
        raise ValueError(f"corrupt checkpoint file {path}: not a JSON object")
    return info


def training_settings(info: dict) -> dict | None:
    """The training options a checkpoint's JSON ``info`` records (``training``; ``settings`` in release
    copies of format ``qfm-iqm/1``), less :data:`UNRECORDED_OPTIONS` (which that format also held), or
    ``None`` where it records none."""
    settings = info.get("training") or info.get("settings")
    if not isinstance(settings, dict):
        return None
    return {key: value for key, value in settings.items() if key not in UNRECORDED_OPTIONS}


def scoring_grid(info: dict, grid: int | None = None) -> int:
    """The test grid (crops per side) to score with: ``grid`` when given, else the ``eval_grid`` that a
    checkpoint's JSON ``info`` records in its training settings, else :data:`DEFAULT_GRID`."""
    if grid is not None:
        return grid
    return (training_settings(info) or {}).get("eval_grid", DEFAULT_GRID)


def score_scale(info: dict) -> LabelScale:
    """The scale a checkpoint's JSON records (:data:`NORMALISED_SCALE` if none; keys of newer versions
    left out)."""
    if "score_scale" not in info:
        return NORMALISED_SCALE
    return LabelScale(**{field.name: info["score_scale"][field.name] for field in fields(LabelScale)})


def recorded_interval(info: dict) -> ConformalInterval | None:
    """The calibrated interval a checkpoint's JSON records (on the normalised [0, 1] scale), if any."""
    return ConformalInterval.from_dict(info["interval"]) if "interval" in info else None


def record_interval(checkpoint: str | Path, interval: ConformalInterval) -> Path:
    """Record ``interval`` (normalised [0, 1] scale, unscaled) as the ``interval`` entry of a checkpoint's
    JSON, replacing any recorded before; return the weights path.

    The edited JSON is checked like any checkpoint's before anything is written. The weights are
    rewritten too (their metadata holds the JSON's hash), then the JSON, each atomically.
    """
    from qfm_iqm.inference.checkpoint import check_model_checkpoint  # torch: only here
    from qfm_iqm.utils.checkpoint import inspect_checkpoint, load_tensors, save_checkpoint

    weights_path, _ = checkpoint_paths(checkpoint)
    header, config = inspect_checkpoint(checkpoint)
    if isinstance(config, dict):
        config = {**config, "interval": interval.to_dict()}
    check_model_checkpoint(config, header, checkpoint)  # also refuses JSON of anything but a model
    return save_checkpoint(weights_path.parent, load_tensors(checkpoint), config, name=weights_path.stem)
