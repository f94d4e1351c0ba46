"""Run a selection of insights in order and write the collected report (insights.md + insights.json)."""

from __future__ import annotations

import importlib
import json
import traceback
from pathlib import Path
from typing import Sequence

from pocketlm.insights.record import Record, markdown, run_insight
from pocketlm.utils import atomic_write_text

# name -> module, in the order: runtime (random weights) first, then training and data
INSIGHTS = {
    "gqa": "pocketlm.insights.gqa",
    "architecture": "pocketlm.insights.architecture",
    "memory": "pocketlm.insights.memory",
    "quantization": "pocketlm.insights.quantization",
    "hardware": "pocketlm.insights.hardware",
    "icl": "pocketlm.insights.icl",
    "filtering": "pocketlm.insights.filtering",
    "overtraining": "pocketlm.insights.overtraining",
    "open_data": "pocketlm.insights.open_data",
}
RUNTIME = ("gqa", "architecture", "memory", "quantization", "hardware")


def check_names(names: Sequence[str]) -> list[str]:
    """The names in suite order (all when empty); unknown names get one error listing the choices."""
    unknown = [n for n in names if n not in INSIGHTS]
    if unknown:
        raise ValueError(f"unknown insight(s) {', '.join(unknown)}; choose from {', '.join(INSIGHTS)}")
    return [n for n in INSIGHTS if n in names] if names else list(INSIGHTS)


def run_suite(names: Sequence[str], out_dir: str | Path, quick: bool = False,
              keep_going: bool = True) -> tuple[list[Record], list[str]]:
    """Run each named insight into out_dir/<name>; returns the records and the names that failed (their
    tracebacks in out_dir/<name>/error.txt). Writes out_dir/insights.md and insights.json."""
    out = Path(out_dir)
    records, failed = [], []
    for name in check_names(names):
        module = importlib.import_module(INSIGHTS[name])
        try:
            records.append(run_insight(name, module.run, out, quick))
        except Exception:
            if not keep_going:
                raise
            failed.append(name)
            atomic_write_text(out / name / "error.txt", traceback.format_exc())
    atomic_write_text(out / "insights.md", "# Insights reproduced on this device\n\n" + markdown(records, out) + (
        f"\n\nFailed: {', '.join(failed)} (see <name>/error.txt)\n" if failed else "\n"))
    atomic_write_text(out / "insights.json", json.dumps({"records": [r.to_dict() for r in records],
                                                         "failed": failed}, indent=2, default=str))
    return records, failed
