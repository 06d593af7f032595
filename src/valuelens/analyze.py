"""Compatibility alias: the analysis lives in :mod:`valuelens.analysis` (one module per section)."""

from .analysis import AnalyzeConfig, run_analyze

__all__ = ["AnalyzeConfig", "run_analyze"]
