"""`pocketlm fit MODEL --max-memory 400MB --min-decode-tok-s 30 --out DIR`: a thin layer over `fit.search.fit`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pocketlm.cli_support import output_console
from pocketlm.fit.budget import Budget


def register(app: typer.Typer) -> None:
    from pocketlm.fit.config import FitConfig

    @app.command("fit")
    def fit_cmd(
        model: str = typer.Argument(..., help="catalog name (random weights), HF / pocketlm directory, or config .json"),
        max_memory: Optional[str] = typer.Option(None, help="model memory in the runtime, e.g. 400MB, 1.5GiB"),
        min_decode_tok_s: Optional[str] = typer.Option(None, help="decode speed floor (tokens/s)"),
        max_disk: Optional[str] = typer.Option(None, help="weight files on disk, e.g. 250MB"),
        max_prefill_ms: Optional[str] = typer.Option(None, help="prefill of --prompt tokens, milliseconds"),
        runtime: str = typer.Option(FitConfig.runtime, help="torch | llamacpp"),
        candidates: Optional[str] = typer.Option(None, help="axes, e.g. 'precision=int8,int4;prune_nm=none,2:4' "
                                                 "(default: every registered builder's values)"),
        quality: str = typer.Option(",".join(FitConfig.quality), help="kl | ppl, then task names scored on the "
                                    "front, e.g. kl,arc_easy,hellaswag"),
        calib: str = typer.Option(FitConfig.calib, help="calibration for pruning, SOURCE:NxL"),
        tokens: int = typer.Option(FitConfig.tokens, help="held-out tokens for KL / perplexity"),
        distill_tokens: int = typer.Option(FitConfig.distill_tokens, help="distillation tokens for each "
                                           "structured-pruning candidate (0: prune only)"),
        prompt: int = typer.Option(FitConfig.prompt, help="prompt tokens of the prefill test"),
        context: int = typer.Option(FitConfig.context, help="context the KV cache and decode test are sized for"),
        gen: int = typer.Option(FitConfig.gen, help="tokens per decode test"),
        repeat: int = typer.Option(FitConfig.repeat), threads: int = typer.Option(FitConfig.threads),
        margin: float = typer.Option(FitConfig.margin, help="cost-model margin before a candidate goes unmeasured"),
        task_limit: int = typer.Option(FitConfig.task_limit, help="examples per task in --quality"),
        out: Path = typer.Option(Path("fit_out"), help="folder: model/, fit.sqlite, fit_report.*, report.html"),
    ) -> None:
        """Find the best model that fits a device budget: predict, measure, and write the Pareto front."""
        from pocketlm.fit.search import fit

        budget = Budget.parse(max_memory, min_decode_tok_s, max_disk, max_prefill_ms)
        cfg = FitConfig(model=model, budget=budget, runtime=runtime, candidates=candidates,
                        quality=tuple(q.strip() for q in quality.split(",") if q.strip()), calib=calib,
                        tokens=tokens, distill_tokens=distill_tokens, prompt=prompt, context=context, gen=gen,
                        repeat=repeat, threads=threads, margin=margin, task_limit=task_limit)
        report = fit(cfg, out)
        console = output_console()
        console.print(report["sections"][0]["markdown"])
        console.print(report["sections"][1]["markdown"])
        console.print(f"\nreport: {out / 'report.html'}")
