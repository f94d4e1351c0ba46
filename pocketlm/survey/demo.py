"""The survey section of `pocketlm demo`: trend figures and tables, shares vs the published ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pocketlm.survey.capabilities import best_per_metric, write_capabilities
from pocketlm.survey.figures import write_trends
from pocketlm.survey.trends import compare_published, half_year_counts, published, study_entries


def demo_section(out_dir: Path) -> dict[str, Any]:
    """Write the survey's trend and capability figures/CSVs under out_dir; summarise shares vs published."""
    out_dir = Path(out_dir)
    entries = study_entries()
    files = {**write_trends(out_dir, entries), **write_capabilities(out_dir)}
    rows = {src: compare_published(entries, src) for src in ("survey", "config")}
    within = {src: sum(r.within for r in rs) for src, rs in rows.items()}
    worst = {src: max(abs(r.diff_pp) for r in rs) for src, rs in rows.items()}
    counts_match = half_year_counts(entries) == published()["half_year_counts"]
    best = best_per_metric()
    lines = [
        f"The catalog holds the {len(entries)} models the survey's statistics count "
        f"(56 firm + 6 candidates for its 3 uncertain slots); models per half-year "
        f"{'match' if counts_match else 'do not match'} the published counts.",
        "",
        "| axis | category | published % | survey labels % | verified configs % |",
        "|---|---|---|---|---|",
    ]
    for a, b in zip(rows["survey"], rows["config"]):
        flag = "" if a.within else " (gap)"
        lines.append(f"| {a.axis} | {a.category} | {a.published:.0f} | {a.share:.1f}{flag} | {b.share:.1f} |")
    lines += ["",
              f"Within 3 points: {within['survey']}/{len(rows['survey'])} shares from the survey's own labels, "
              f"{within['config']}/{len(rows['config'])} from the verified configs; every gap is explained in "
              "docs/survey.md (label corrections such as Phi-3-mini and MiniCPM-2B being MHA, and FFN-ratio/norm "
              "slices the published figure groups differently).",
              "",
              "Best SLM per capability (leaderboard): " + "; ".join(f"{k} {m} ({v})" for k, (m, v) in best.items()),
              "",
              f"![architecture trends]({files['architecture_png'].name}) "
              f"![shares]({files['shares_png'].name}) ![datasets]({files['datasets_png'].name}) "
              f"![capabilities]({files['capabilities_png'].name})"]
    metrics = {"models": len(entries), "half_year_counts_match": counts_match,
               "shares_within_3pp_survey_labels": within["survey"], "shares_within_3pp_configs": within["config"],
               "shares_total": len(rows["survey"]), "max_gap_pp_survey_labels": round(worst["survey"], 1),
               "max_gap_pp_configs": round(worst["config"], 1),
               "files": sorted(p.name for p in files.values())}
    return {"title": "Survey: 62 small language models, 2022-2024", "markdown": "\n".join(lines), "metrics": metrics}
