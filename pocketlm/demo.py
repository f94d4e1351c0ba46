"""`pocketlm demo`: every capability, offline, on data bundled in the repo, into one report.

Steps (each a `demo_section` of its capability folder, run in order):
build/train a tiny model -> describe it (survey axes, analytic costs, a sample) -> survey trends
-> evaluate -> profile -> shrink (pruning) -> merge (WARM) -> quant (RTN/GPTQ/AWQ) -> structured (prune +
distill) -> insights (the cheap ones) -> fit (a device budget).
The report is `report.md` + `report.json` + `report.html` (one self-contained page) in the output folder.
"""

from __future__ import annotations

import json
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import typer
from rich.console import Console

from pocketlm.htmlreport import write_report_html
from pocketlm.utils import atomic_write_text

console = Console()
STEPS = ("train", "model", "survey", "evaluate", "profile", "shrink", "merge", "quant", "structured",
         "insights", "fit")  # in order; each later step uses train's model


def _model_section(model_dir: Path) -> dict[str, Any]:
    """Architecture, analytic costs and a greedy sample of the demo model."""
    import torch

    from pocketlm.interop import load_model, load_tokenizer
    from pocketlm.runtime.cli import print_info
    from pocketlm.model.describe import cost_summary, survey_axes

    model = load_model(model_dir)
    cfg = model.config
    print_info(cfg, context=cfg.max_seq_len, console=console)
    tok = load_tokenizer(model_dir)
    prompt = "Once upon a time"
    if tok is not None:
        ids = torch.tensor([tok.encode(prompt)])
    else:
        ids = torch.tensor([[1, 2, 3, 4]])
    out = model.generate(ids, max_new_tokens=40, temperature=0.0)
    sample = tok.decode(out[0]) if tok is not None else " ".join(map(str, out[0].tolist()))
    axes = survey_axes(cfg)
    c = cost_summary(cfg, context=cfg.max_seq_len)
    md = [f"Model `{model_dir}`: {c['params_total']:,} parameters "
          f"({c['params_non_embedding']:,} non-embedding).", "",
          "| axis | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in axes.items()] + [
          "", f"Decode cost: {c['gflops_per_token_decode'] * 1e3:.2f} MFLOPs/token at context {c['context']}; "
          f"KV cache {c['kv_bytes_per_token_bf16']:,} B/token (bf16).", "",
          f"Greedy sample from *{prompt}*:", "", "> " + sample.replace("\n", " ")]
    return {"title": "The model", "markdown": "\n".join(md), "metrics": {"axes": axes, "costs": c, "sample": sample}}


def run_demo(out_dir: Path, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    unknown = sorted(set(skip) - set(STEPS[1:]))
    if unknown:
        raise ValueError(f"--skip {', '.join(unknown)}: choose from {', '.join(STEPS[1:])} (train always runs: "
                         "the later steps use its model, cached after the first run)")
    out_dir.mkdir(parents=True, exist_ok=True)
    sections: list[dict[str, Any]] = []
    failures: list[str] = []

    def step(name: str, fn: Callable[[], dict[str, Any]], folder: Path | None = None) -> dict[str, Any]:
        if name in skip:
            return {}
        console.rule(f"[bold]{name}")
        t0 = time.perf_counter()
        try:
            section = fn()
        except Exception:
            failures.append(name)
            console.print(traceback.format_exc())
            section = {"title": name, "markdown": "**failed**:\n```\n" + traceback.format_exc() + "```", "metrics": {}}
        section["seconds"] = round(time.perf_counter() - t0, 1)
        if folder is not None:
            section["markdown"] = _relink(section["markdown"], folder, out_dir)
        sections.append(section)
        return section

    from pocketlm.compress.demo import demo_section as shrink_section
    from pocketlm.compress.merge_demo import demo_section as merge_section
    from pocketlm.compress.quant_demo import run_quant_demo
    from pocketlm.compress.structured_demo import demo_section as structured_section
    from pocketlm.evaluate.demo import demo_section as evaluate_section
    from pocketlm.fit.demo import demo_section as fit_section
    from pocketlm.insights.demo import demo_section as insights_section
    from pocketlm.profile.demo import demo_section as profile_section
    from pocketlm.survey.demo import demo_section as survey_section
    from pocketlm.train.demo import demo_section as train_section

    trained = step("train", lambda: train_section(out_dir / "train"), out_dir / "train")
    if "model_dir" not in trained:  # training failed: nothing to describe, evaluate or profile
        return _write_report(out_dir, None, sections, failures)
    model_dir = Path(trained["model_dir"])
    step("model", lambda: _model_section(model_dir))
    step("survey", lambda: survey_section(out_dir / "survey"), out_dir / "survey")
    step("evaluate", lambda: evaluate_section(model_dir, out_dir / "evaluate"), out_dir / "evaluate")
    step("profile", lambda: profile_section(model_dir, out_dir / "profile"), out_dir / "profile")
    step("shrink", lambda: shrink_section(model_dir, out_dir / "shrink"), out_dir / "shrink")
    step("merge", lambda: merge_section(model_dir, out_dir / "merge"), out_dir / "merge")
    step("quant", lambda: run_quant_demo(out_dir / "quant", model_dir), out_dir / "quant")
    step("structured", lambda: structured_section(model_dir, out_dir / "structured"), out_dir / "structured")
    step("insights", lambda: insights_section(out_dir / "insights"), out_dir / "insights")
    step("fit", lambda: fit_section(model_dir, out_dir / "fit"), out_dir / "fit")
    return _write_report(out_dir, model_dir, sections, failures)


def _write_report(out_dir: Path, model_dir: Path | None, sections: list[dict[str, Any]],
                  failures: list[str]) -> dict[str, Any]:
    report = {"model_dir": model_dir and str(model_dir), "sections": sections, "failures": failures}
    md = ["# pocketlm demo report", ""]
    for s in sections:
        md += [f"## {s['title']} ({s['seconds']} s)", "", s["markdown"], ""]
    atomic_write_text(out_dir / "report.md", "\n".join(md))
    atomic_write_text(out_dir / "report.json", json.dumps(report, indent=2, default=str))
    write_report_html(out_dir / "report.html", "pocketlm demo report", sections)
    return report


def _relink(markdown: str, folder: Path, out_dir: Path) -> str:
    """Point a section's relative links (written beside its own files) at its subfolder."""
    import re

    def fix(m: re.Match) -> str:
        target = m.group(2)
        if "://" in target or target.startswith("/") or not (folder / target).exists():
            return m.group(0)
        return f"{m.group(1)}({(folder / target).relative_to(out_dir)})"

    return re.sub(r"(!?\[[^\]]*\])\(([^)\s]+)\)", fix, markdown)


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(out: Path = typer.Option(Path("demo_out"), help="folder for the report and artifacts"),
             skip: list[str] = typer.Option([], help=f"steps to skip ({', '.join(STEPS[1:])})")) -> None:
        """Run every capability on bundled data (train -> describe -> evaluate -> profile) and write a report."""
        report = run_demo(out, tuple(skip))
        console.print(f"\nreport: {out / 'report.md'}")
        if report["failures"]:
            console.print(f"[red]failed steps: {', '.join(report['failures'])}")
            raise typer.Exit(1)
