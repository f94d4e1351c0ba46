"""One insight's result: the survey's claim beside what this machine measured, with a verdict, and the
files that show it. Every insight module has `run(out_dir, quick) -> Record`."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from pocketlm.insights.analysis import VERDICTS
from pocketlm.utils import atomic_write_text


@dataclass
class Record:
    name: str
    title: str
    claim: str  # the survey's statement
    command: str  # the command that reproduces it
    measured: dict[str, Any]  # the numbers the verdict rests on
    verdict: str  # agree | partly | disagree | skipped
    summary: str  # one or two sentences: what was measured and why the verdict
    figure: str | None = None
    csv: str | None = None
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # this process's and its profiling workers' CPU time: what a quiet core would need
    quick: bool = False
    machine: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict {self.verdict!r} is not one of {VERDICTS}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def machine() -> dict[str, Any]:
    """CPU model, cores and the load average when the insight ran (other work may share the machine)."""
    from pocketlm.profile.system import cpu_model

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "load_avg": [round(v, 2) for v in os.getloadavg()]}


def cpu_time() -> float:
    """CPU seconds of this process and of the child processes it has waited for (profiling workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def run_insight(name: str, fn: Callable[[Path, bool], Record], out_dir: Path, quick: bool) -> Record:
    """Run one insight into out_dir/name, time it (wall and CPU), and write its record.json there."""
    folder = out_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    load_before = machine()
    t0, cpu0 = time.perf_counter(), cpu_time()
    record = fn(folder, quick)
    record.seconds = round(time.perf_counter() - t0, 1)
    record.cpu_seconds = round(cpu_time() - cpu0, 1)
    record.quick = quick
    if quick and "--quick" not in record.command:
        record.command = record.command.replace(" --out", " --quick --out")
    record.machine = {**load_before, "load_avg_after": machine()["load_avg"]}
    atomic_write_text(folder / "record.json", json.dumps(record.to_dict(), indent=2, default=str))
    return record


def markdown(records: list[Record], base: Path | None = None) -> str:
    """A summary table and one section per insight (links relative to `base`)."""
    def rel(p: str | None) -> str | None:
        if p is None:
            return None
        return os.path.relpath(p, base) if base is not None else p

    lines = ["| # | insight | verdict | wall time (s) | CPU (s) |", "|---|---|---|---:|---:|"]
    lines += [f"| {i} | {r.title} | **{r.verdict}** | {r.seconds} | {r.cpu_seconds or '-'} |"
              for i, r in enumerate(records, 1)]  # 0: not recorded (records older than the CPU clock)
    for r in records:
        lines += ["", f"### {r.title}", "", f"*Survey:* {r.claim}", "", f"`{r.command}`", "",
                  f"**{r.verdict}** — {r.summary}", ""]
        lines += [f"- {k}: {_fmt(v)}" for k, v in r.measured.items()]
        if r.figure:
            lines += ["", f"![{r.name}]({rel(r.figure)})"]
        if r.csv:
            lines += ["", f"Table: `{rel(r.csv)}`"]
        m = r.machine
        if m:
            cpu = f", {r.cpu_seconds} s CPU" if r.cpu_seconds else ""
            lines += ["", f"({r.seconds} s{' with --quick' if r.quick else ''}{cpu}; {m.get('cpu')}, "
                          f"{m.get('cores')} cores, load average {m.get('load_avg', ['?'])[0]} -> "
                          f"{m.get('load_avg_after', ['?'])[0]})"]
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return ", ".join(f"{k} {_fmt(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(x) for x in v)
    return str(v)
