"""Figures shared by the insights: line panels over one x axis (matplotlib, Agg, written atomically)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pocketlm.survey.figures import save_figure  # noqa: E402


def line_panels(path: Path, title: str, xlabel: str, panels: Sequence[tuple[str, dict[str, tuple[list, list]]]],
                logx: bool = False, mark_x: float | None = None, mark_label: str = "") -> Path:
    """One panel per (ylabel, {series: (xs, ys)}); an optional vertical marker at `mark_x`."""
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.4), squeeze=False)
    for ax, (ylabel, series) in zip(axes[0], panels):
        for label, (xs, ys) in series.items():
            ax.plot(xs, ys, marker="o", label=label)
        if mark_x is not None:
            ax.axvline(mark_x, color="gray", ls="--", lw=1, label=mark_label or None)
        if logx:
            ax.set_xscale("log", base=2)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def paired_bars(path: Path, title: str, labels: Sequence[str], series: dict[str, Sequence[float]], ylabel: str,
                reference: float | None = None) -> Path:
    """Grouped bars: one group per label, one bar per series."""
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(labels) + 2), 4.6))
    width = 0.8 / len(series)
    for i, (name, values) in enumerate(series.items()):
        ax.bar([x + (i - (len(series) - 1) / 2) * width for x in range(len(labels))], values, width, label=name)
    if reference is not None:
        ax.axhline(reference, color="black", lw=0.8)
    ax.set_xticks(range(len(labels)), labels, rotation=25, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
