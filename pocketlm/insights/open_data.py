"""Insight 9: open-data vs closed-data SLMs on each task group over time, from the survey leaderboard's
scores in the catalog (open data: every pre-training dataset the model names is public)."""

from __future__ import annotations

from collections import defaultdict
from datetime import date
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pocketlm.insights.analysis import verdict  # noqa: E402
from pocketlm.insights.record import Record  # noqa: E402
from pocketlm.survey.figures import save_figure, write_csv  # noqa: E402

CLAIM = ("SLMs trained on open datasets are closing the gap with those trained on closed data on commonsense "
         "tasks, while the gap stays large on problem solving and math.")
GROUPS = ("commonsense", "problem_solving", "math")


def scored_entries(first_year: int = 2022) -> list[dict]:
    """Catalog models released from `first_year` with leaderboard scores, marked open or closed data."""
    from pocketlm.survey.catalog import load_catalog

    rows = []
    for e in load_catalog():
        if e.year < first_year or not any(e.leaderboard.get(g) is not None for g in GROUPS):
            continue
        rows.append({"model": e.name, "release": e.release, "year": e.year, "params": e.params_official,
                     "data": "open" if e.datasets else "closed",
                     **{g: e.leaderboard.get(g) for g in GROUPS}})
    return rows


def yearly_gaps(rows: list[dict]) -> dict[str, dict[int, dict]]:
    """{group: {year: {"open": best open score, "closed": best closed score, "gap": closed - open}}};
    years where one side has no score are left out."""
    best: dict[tuple[str, int, str], float] = {}
    for r in rows:
        for g in GROUPS:
            if r[g] is not None:
                key = (g, r["year"], r["data"])
                best[key] = max(best.get(key, float("-inf")), r[g])
    out: dict[str, dict[int, dict]] = defaultdict(dict)
    for (g, year, _), _v in sorted(best.items()):
        o, c = best.get((g, year, "open")), best.get((g, year, "closed"))
        if o is not None and c is not None:
            out[g][year] = {"open": o, "closed": c, "gap": c - o, "relative_gap": (c - o) / c}
    return dict(out)


def run(out_dir: Path, quick: bool = False) -> Record:
    rows = scored_entries()
    gaps = yearly_gaps(rows)
    cs, ps = gaps["commonsense"], gaps["problem_solving"]
    last, prev = max(cs), sorted(cs)[-2]
    checks = [cs[last]["relative_gap"] < ps[last]["relative_gap"],
              cs[last]["relative_gap"] <= cs[prev]["relative_gap"]]
    math = gaps.get("math", {})
    if last in math:
        checks.append(cs[last]["relative_gap"] < math[last]["relative_gap"])
    table = [{"group": g, "year": y, **{k: round(v, 4) for k, v in d.items()}} for g, by in gaps.items()
             for y, d in by.items()]
    csv = write_csv(table, out_dir / "open_vs_closed.csv")
    write_csv(rows, out_dir / "scores.csv")
    fig = _figure(rows, out_dir / "open_vs_closed.png")
    summary = (f"best closed minus best open, relative to closed — commonsense: "
               + ", ".join(f"{y} {d['relative_gap']:+.0%}" for y, d in cs.items())
               + "; problem solving: " + ", ".join(f"{y} {d['relative_gap']:+.0%}" for y, d in ps.items())
               + ("; math: " + ", ".join(f"{y} {d['relative_gap']:+.0%}" for y, d in math.items()) if math else "")
               + f". In {last} the commonsense gap is "
               + ("smaller" if checks[0] else "not smaller") + " than the problem-solving gap, and "
               + ("no larger" if checks[1] else "larger") + f" than in {prev}.")
    return Record("open_data", "Open-data vs closed-data SLMs over time", CLAIM,
                  "pocketlm insights open_data --out insights_out",
                  {"models": len(rows), "open": sum(r["data"] == "open" for r in rows),
                   **{f"{g}_gap_by_year": {y: f"{d['closed']:.3g} vs {d['open']:.3g}" for y, d in by.items()}
                      for g, by in gaps.items()}},
                  verdict(checks), summary, str(fig), str(csv))


def _figure(rows: list[dict], path: Path) -> Path:
    fig, axes = plt.subplots(1, len(GROUPS), figsize=(16, 4.6))
    for ax, g in zip(axes, GROUPS):
        for data, color in (("open", "tab:green"), ("closed", "tab:gray")):
            pts = [(date(*map(int, r["release"].split("-")[:2]), 15), r[g]) for r in rows
                   if r["data"] == data and r[g] is not None]
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], color=color, s=22, label=f"{data} data")
        ax.set_title(g.replace("_", " "))
        ax.tick_params(axis="x", rotation=30)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Survey leaderboard scores of open-data vs closed-data SLMs against release date")
    fig.tight_layout()
    return save_figure(fig, path)
