"""Figures: the matplotlib Agg backend (no display needed) and atomic PNG writing, shared by every stage."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .runio import atomic_path

__all__ = ["grouped_bars", "plt", "savefig"]


def plt():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def savefig(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt().close(fig)
    return path


def grouped_bars(ax: Any, groups: Sequence[str], series: dict[str, Any]) -> None:
    """One bar per (group, series), the series side by side within each group; ``series`` values are aligned
    with ``groups``."""
    width = 0.8 / max(1, len(series))
    x = np.arange(len(groups))
    for k, (label, y) in enumerate(series.items()):
        ax.bar(x + (k - (len(series) - 1) / 2) * width, np.asarray(y, dtype=float), width, label=label)
    ax.axhline(0, color="grey", lw=0.5)
