"""QFM-IQM: no-reference image quality assessment with quality-aware feature matching."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["ScoreResult", "Scorer", "__version__", "load_model", "reuse_freed_memory"]

if TYPE_CHECKING:
    from qfm_iqm.api import ScoreResult, Scorer, load_model

from qfm_iqm.utils.allocator import reuse_freed_memory


def __getattr__(name: str) -> Any:
    """Import the scoring API on first use, so ``import qfm_iqm`` stays light."""
    if name in ("ScoreResult", "Scorer", "load_model"):
        from qfm_iqm import api

        return getattr(api, name)
    raise AttributeError(f"module 'qfm_iqm' has no attribute {name!r}")
