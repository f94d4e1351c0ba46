"""The survey's capability figure: commonsense / problem-solving / math score against release date.

Data: the survey leaderboard's aggregate scores (bundled leaderboard.csv; see ATTRIBUTION.md).
Commonsense = mean of 7 tasks, problem solving = mean of ARC-e, ARC-c, MMLU; math = GSM8K-based percent.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import date
from importlib import resources
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pocketlm.survey.catalog import DATA  # noqa: E402
from pocketlm.survey.figures import save_figure, write_csv  # noqa: E402

METRICS = (("commonsense", "Commonsense reasoning (mean of 7)", 1.0),
           ("problem_solving", "Problem solving (mean of 3)", 1.0),
           ("math", "Math (GSM8K, %)", 1.0))


@dataclass(frozen=True)
class Score:
    model: str
    release: date | None
    params: str
    commonsense: float | None
    problem_solving: float | None
    math: float | None
    baseline: bool


def _num(x: str) -> float | None:
    return float(x) if x.strip() else None


def _date(x: str) -> date | None:
    if not x.strip():
        return None
    y, m = x.strip().split(".")[:2]
    return date(int(y), int(m), 15)


def load_scores() -> list[Score]:
    text = resources.files(DATA).joinpath("leaderboard.csv").read_text()
    return [Score(r["model"], _date(r["release"]), r["params"], _num(r["commonsense"]), _num(r["problem_solving"]),
                  _num(r["math"]), r["baseline"] == "yes") for r in csv.DictReader(io.StringIO(text))]


def best_per_metric(scores: list[Score] | None = None) -> dict[str, tuple[str, float]]:
    """The top SLM (baselines excluded) per metric."""
    scores = load_scores() if scores is None else scores
    out = {}
    for key, _, _ in METRICS:
        vals = [(getattr(s, key), s.model) for s in scores if not s.baseline and getattr(s, key) is not None]
        v, m = max(vals)
        out[key] = (m, v)
    return out


def capability_figure(scores: list[Score], path: Path) -> Path:
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.2))
    for ax, (key, title, _) in zip(axes, METRICS):
        pts = [(s.release, getattr(s, key), s) for s in scores
               if s.release and s.release.year >= 2022 and getattr(s, key) is not None]
        slm = [(d, v, s) for d, v, s in pts if not s.baseline]
        base = [(d, v, s) for d, v, s in pts if s.baseline]
        ax.scatter([p[0] for p in slm], [p[1] for p in slm], s=22, color="#1f77b4", label="SLM", alpha=0.8)
        if base:
            ax.scatter([p[0] for p in base], [p[1] for p in base], s=60, marker="*", color="#d62728",
                       label="LLaMA-7B series")
        top = sorted(slm, key=lambda p: -p[1])[:2]
        for rank, (d, v, s) in enumerate(top):
            ax.annotate(s.model.split("/")[-1], (d, v), fontsize=7, xytext=(-110, 6 - 14 * rank),
                        textcoords="offset points", arrowprops={"arrowstyle": "-", "color": "#888", "lw": 0.6})
        ax.set_title(title)
        ax.set_xlabel("release date")
        ax.tick_params(axis="x", rotation=30)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle("SLM capability against release date, 2022-2024 (survey leaderboard data)", fontsize=13)
    fig.tight_layout()
    return save_figure(fig, path)


def write_capabilities(out_dir: str | Path) -> dict[str, Path]:
    out = Path(out_dir)
    scores = load_scores()
    rows = [{"model": s.model, "release": s.release.isoformat()[:7] if s.release else "", "params": s.params,
             "commonsense": s.commonsense, "problem_solving": s.problem_solving, "math": s.math,
             "baseline": s.baseline} for s in scores]
    return {"capabilities_csv": write_csv(rows, out / "capabilities.csv"),
            "capabilities_png": capability_figure(scores, out / "capabilities.png")}
