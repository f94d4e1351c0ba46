"""`pocketlm demo` section: the insights that fit its time budget (about a minute) — memory, over-training
and open data from the bundled data, and GQA vs MHA at small depths — with --quick settings."""

from __future__ import annotations

from pathlib import Path

from pocketlm.insights.record import markdown
from pocketlm.insights.suite import INSIGHTS, run_suite

DEMO_INSIGHTS = ("gqa", "memory", "overtraining", "open_data")


def demo_section(out_dir: Path) -> dict:
    records, failed = run_suite(DEMO_INSIGHTS, out_dir, quick=True)
    if failed:
        raise RuntimeError(f"insights failed: {', '.join(failed)} (see {out_dir}/<name>/error.txt)")
    md = ("The survey's insights this demo can afford (`pocketlm insights --quick`; the full suite, with "
          "training runs, is `pocketlm insights --out DIR`, see docs/insights.md).\n\n" + markdown(records, out_dir)
          + "\n\nNot run here (training runs or minutes of timing): "
          + ", ".join(f"`pocketlm insights {n}`" for n in INSIGHTS if n not in DEMO_INSIGHTS) + ".")
    return {"title": "Insights", "markdown": md,
            "metrics": {r.name: {"verdict": r.verdict, "seconds": r.seconds, **r.measured} for r in records}}
