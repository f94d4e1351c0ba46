"""`pocketlm prune MODEL ...`: a thin layer over `pocketlm.compress.prune.checkpoint.prune_checkpoint`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

console = Console()


def prune_cmd(
    model: str = typer.Argument(..., help="HF or pocketlm model directory, a llama2.c .bin, or a catalog name (random weights)"),
    out: Path = typer.Option(..., "--out", help="output directory (written atomically)"),
    method: str = typer.Option("wanda", help="magnitude, wanda or sparsegpt"),
    sparsity: float = typer.Option(0.5, help="fraction of each matrix set to zero, in [0, 1)"),
    pattern: Optional[str] = typer.Option(None, help="N:M semi-structured pattern, e.g. 2:4 (N zeros per M inputs)"),
    owl: bool = typer.Option(False, "--owl", help="outlier-weighted per-block sparsity (wanda, sparsegpt)"),
    calib: str = typer.Option("bundled:128x512", help="calibration SOURCE:NxL: bundled, a task (wikitext2), "
                              "files/glob, or a data-prepare folder"),
    seed: int = typer.Option(0, help="calibration sampling seed"),
    skip: List[str] = typer.Option([], help="glob of matrix names to leave dense (repeatable), e.g. '*.down_proj'; "
                                    "routers are always skipped unless --recipe says otherwise"),
    tokenizer: Optional[Path] = typer.Option(None, help="tokenizer directory when the model has none"),
    recipe: Optional[Path] = typer.Option(None, help="recipe.yaml of an earlier run: repeat it exactly "
                                          "(overrides the method/sparsity/pattern/owl/calib/seed/skip flags)"),
    eval_text: Optional[Path] = typer.Option(None, help="held-out text for perplexity and KL (default: bundled "
                                             "TinyStories validation)"),
    eval_tokens: int = typer.Option(16384, help="at most this many held-out tokens"),
    measure: bool = typer.Option(True, help="measure perplexity, KL, decode latency and file size before/after"),
    gguf: Optional[str] = typer.Option(None, help="also write model.gguf of this type (F32, F16, Q8_0...)"),
    overwrite: bool = typer.Option(False, help="replace an existing --out directory"),
) -> None:
    """Prune a model (magnitude, Wanda, SparseGPT; unstructured or N:M; OWL) and write an HF directory + report."""
    from pocketlm.compress.prune.checkpoint import prune_checkpoint
    from pocketlm.compress.recipe import PruneRecipe
    from pocketlm.compress.targets import DEFAULT_SKIP

    if recipe is not None:
        rec = PruneRecipe.load(recipe)
    else:
        rec = PruneRecipe(method=method, sparsity=sparsity, pattern=pattern, owl=owl, calib=calib, seed=seed,
                          skip=list(DEFAULT_SKIP) + list(skip))
    report = prune_checkpoint(model, rec, out, tokenizer=tokenizer, eval_text=eval_text, eval_tokens=eval_tokens,
                              measure=measure, gguf=gguf, overwrite=overwrite, progress=True)
    ev = report.evaluation
    console.print(f"{rec.method} {rec.pattern or f'{rec.sparsity:.0%}'}{' + OWL' if rec.owl else ''}: realised "
                  f"sparsity {report.sparsity:.2%} over {len(report.matrices)} matrices in {report.wall_s:.1f} s, "
                  f"peak RSS {report.peak_rss_bytes / 2**20:.0f} MiB")
    if ev:
        console.print(f"held-out perplexity {ev['ppl_before']:.3f} -> {ev['ppl_after']:.3f}, KL {ev['kl_mean']:.4f} "
                      f"nats/token, top-1 agreement {ev['top1_agreement']:.1%} ({ev['tokens']} tokens)")
    for note in report.notes:
        console.print(note)
    console.print(f"wrote {out} (prune_report.json, recipe.yaml)")


def register(app: typer.Typer) -> None:
    app.command("prune")(prune_cmd)
