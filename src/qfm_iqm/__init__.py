"""QFM-IQM: no-reference image quality assessment with quality-aware feature matching."""

__version__ = "0.1.0"
