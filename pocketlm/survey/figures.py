"""PNG figures and CSV tables for `survey trends` and `survey capabilities` (matplotlib, Agg backend)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pocketlm.survey.catalog import CatalogEntry  # noqa: E402
from pocketlm.survey.trends import AXES, axis_table, compare_published, dataset_usage, study_entries  # noqa: E402
from pocketlm.utils import atomic_path, atomic_write_text  # noqa: E402

AXIS_TITLES = {"attention": "Attention type", "ffn_type": "FFN type", "ffn_ratio": "FFN intermediate ratio",
               "activation": "FFN activation", "norm": "Normalization", "vocab": "Vocabulary size"}


def save_figure(fig: Any, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path


def write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    atomic_write_text(path, buf.getvalue())
    return path


def trend_rows(entries: list[CatalogEntry], source: str) -> list[dict[str, Any]]:
    """Long table: axis, half_year, category, count."""
    rows = []
    for axis, (_, order) in AXES.items():
        table = axis_table(entries, axis, source)
        for hy, counts in table.items():
            for cat in order:
                if counts.get(cat):
                    rows.append({"source": source, "axis": axis, "half_year": hy, "category": cat,
                                 "count": counts[cat]})
    return rows


def architecture_figure(entries: list[CatalogEntry], source: str, path: Path) -> Path:
    """Six stacked-bar panels (one per axis): models per half-year, split by category (like the survey's Fig. 2)."""
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    cmap = plt.get_cmap("tab10")
    halves = sorted({hy for axis in AXES for hy in axis_table(entries, axis, source)})
    for ax, (axis, (_, order)) in zip(axes.flat, AXES.items()):
        table = axis_table(entries, axis, source)
        bottom = [0] * len(halves)
        for i, cat in enumerate(order):
            vals = [table.get(hy, {}).get(cat, 0) for hy in halves]
            if not any(vals):
                continue
            ax.bar(halves, vals, bottom=bottom, label=cat, color=cmap(i % 10), edgecolor="white", linewidth=0.5)
            bottom = [b + v for b, v in zip(bottom, vals)]
        ax.set_title(AXIS_TITLES[axis], fontsize=12)
        ax.set_ylabel("models")
        ax.tick_params(axis="x", rotation=30, labelsize=9)
        ax.legend(fontsize=8, loc="upper left", frameon=False)
        ax.set_ylim(0, max(bottom) * 1.45 + 1)
    label = "survey's labels" if source == "survey" else "verified configs"
    fig.suptitle(f"SLM architecture choices per half-year ({len(entries)} surveyed models, {label})", fontsize=14)
    fig.tight_layout()
    return save_figure(fig, path)


def shares_figure(source_rows: dict[str, list], path: Path) -> Path:
    """Published share vs recomputed share (both sources) for every published category."""
    pub_rows = source_rows["survey"]
    labels = [f"{r.axis}: {r.category}" for r in pub_rows]
    y = range(len(labels))
    fig, ax = plt.subplots(figsize=(9, 0.34 * len(labels) + 1.5))
    h = 0.27
    ax.barh([i - h for i in y], [r.published for r in pub_rows], height=h, label="published (Fig. 2)", color="#444")
    ax.barh(list(y), [r.share for r in pub_rows], height=h, label="survey labels", color="#1f77b4")
    ax.barh([i + h for i in y], [r.share for r in source_rows["config"]], height=h, label="verified configs",
            color="#ff7f0e")
    for i, r in enumerate(pub_rows):
        if not r.within:
            ax.text(max(r.share, r.published) + 1, i, "gap (see docs)", va="center", fontsize=7, color="#a00")
    ax.set_yticks(list(y))
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("share of surveyed models (%)")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Architecture shares: published vs recomputed from the catalog")
    fig.tight_layout()
    return save_figure(fig, path)


def dataset_figure(entries: list[CatalogEntry], path: Path) -> Path:
    """Models per year naming each open pre-training dataset."""
    usage = dataset_usage(entries)
    names = sorted({d for c in usage.values() for d in c}, key=lambda d: -sum(c.get(d, 0) for c in usage.values()))
    years = list(usage)
    fig, ax = plt.subplots(figsize=(10, 5))
    width = 0.8 / max(len(years), 1)
    cmap = plt.get_cmap("viridis")
    for j, year in enumerate(years):
        xs = [i + (j - (len(years) - 1) / 2) * width for i in range(len(names))]
        ax.bar(xs, [usage[year].get(d, 0) for d in names], width=width, label=str(year),
               color=cmap(j / max(len(years) - 1, 1)))
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=35, ha="right", fontsize=9)
    ax.set_ylabel("surveyed models using it")
    ax.set_title("Open pre-training datasets named by the surveyed SLMs, per release year")
    ax.legend(title="release year")
    fig.tight_layout()
    return save_figure(fig, path)


def write_trends(out_dir: str | Path, entries: list[CatalogEntry] | None = None) -> dict[str, Path]:
    """Write every trend table (CSV) and figure (PNG) under out_dir; returns name -> path."""
    out = Path(out_dir)
    entries = study_entries(entries)
    files: dict[str, Path] = {}
    rows = trend_rows(entries, "survey") + trend_rows(entries, "config")
    files["trends_csv"] = write_csv(rows, out / "architecture_trends.csv")
    compare = {s: compare_published(entries, s) for s in ("survey", "config")}
    cmp_rows = []
    for src, rs in compare.items():
        for r in rs:
            cmp_rows.append({"source": src, "axis": r.axis, "category": r.category, "count": r.count, "n": r.n,
                             "share_pct": round(r.share, 1), "published_pct": r.published,
                             "diff_pp": round(r.diff_pp, 1), "within_3pp": r.within, "explanation": r.explanation})
    files["shares_csv"] = write_csv(cmp_rows, out / "shares_vs_published.csv")
    usage = dataset_usage(entries)
    files["datasets_csv"] = write_csv([{"year": y, "dataset": d, "models": n} for y, c in usage.items()
                                  for d, n in sorted(c.items())], out / "dataset_usage.csv")
    files["architecture_png"] = architecture_figure(entries, "config", out / "architecture_trends.png")
    files["architecture_survey_png"] = architecture_figure(entries, "survey",
                                                           out / "architecture_trends_survey_labels.png")
    files["shares_png"] = shares_figure(compare, out / "shares_vs_published.png")
    files["datasets_png"] = dataset_figure(entries, out / "dataset_usage.png")
    return files
