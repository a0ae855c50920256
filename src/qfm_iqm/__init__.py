"""QFM-IQM: no-reference image quality assessment with quality-aware feature matching."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qfm_iqm.version import __version__

__all__ = ["QualityMetric", "ScoreResult", "Scorer", "__version__", "create_metric", "list_models", "load_model",
           "reuse_freed_memory"]

if TYPE_CHECKING:
    from qfm_iqm.api import ScoreResult, Scorer, load_model
    from qfm_iqm.metric import QualityMetric, create_metric, list_models

from qfm_iqm.utils.allocator import reuse_freed_memory

_LAZY = {"ScoreResult": "api", "Scorer": "api", "load_model": "api",
         "QualityMetric": "metric", "create_metric": "metric", "list_models": "metric"}


def __getattr__(name: str) -> Any:
    """Import the scoring API on first use, so ``import qfm_iqm`` stays light."""
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f"qfm_iqm.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'qfm_iqm' has no attribute {name!r}")
