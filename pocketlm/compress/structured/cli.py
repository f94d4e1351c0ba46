"""`pocketlm prune-structured` and `pocketlm shrink`: thin layers over pocketlm.compress.structured."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

TARGET_HELP = "parameters to keep: a ratio (0.5x, 50%) or a count (67M); candidate shapes are ranked by KL"


def register(app: typer.Typer) -> None:
    @app.command("prune-structured")
    def prune_structured_cmd(
        model: str = typer.Argument(..., help="model folder (Hugging Face or pocketlm) or catalog name"),
        out: Path = typer.Option(..., "--out", help="folder for the pruned model (Hugging Face when a family fits)"),
        target_params: Optional[str] = typer.Option(None, help=TARGET_HELP),
        width: Optional[float] = typer.Option(None, help="keep this share of FFN and residual channels"),
        depth: Optional[float] = typer.Option(None, help="keep this share of layers"),
        n_layer: Optional[int] = typer.Option(None, help="layers to keep"),
        n_head: Optional[int] = typer.Option(None, help="query heads to keep (GQA: whole groups or even within)"),
        n_kv_head: Optional[int] = typer.Option(None, help="kv heads to keep"),
        intermediate: Optional[int] = typer.Option(None, help="FFN channels to keep"),
        d_model: Optional[int] = typer.Option(None, help="residual (embedding) channels to keep"),
        method: str = typer.Option("activation", help="width importance: activation (Minitron), magnitude, taylor"),
        layer_method: str = typer.Option("block_influence", help="layer importance: block_influence or removal_kl"),
        contiguous: bool = typer.Option(False, help="drop one contiguous run of layers"),
        calib: str = typer.Option("bundled:64x256", help="calibration SOURCE:NxL"),
        tokenizer: Optional[str] = typer.Option(None, help="tokenizer folder/file when the model has none"),
        max_candidates: int = typer.Option(12, help="candidate shapes ranked for --target-params"),
        per_layer: bool = typer.Option(False, "--per-layer", help="heterogeneous widths: each shape's kv groups "
                                       "and FFN channels shared out over the layers by importance (saved in "
                                       "pocketlm's format; `pocketlm export gguf` writes llama.cpp's deci arch)"),
        as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
    ) -> None:
        """Remove heads, FFN channels, embedding channels and layers: a standard, smaller model."""
        from pocketlm.compress.structured.checkpoint import prune_structured_checkpoint

        report = prune_structured_checkpoint(
            model, out, calib=calib, target_params=target_params, method=method, layer_method=layer_method,
            contiguous=contiguous, max_candidates=max_candidates, tokenizer=tokenizer, progress=not as_json,
            per_layer=per_layer,
            width=width, depth=depth, n_layer=n_layer, n_head=n_head, n_kv_head=n_kv_head,
            intermediate=intermediate, d_model=d_model)
        if as_json:
            typer.echo(json.dumps(report))
            return
        for row in report["ranking"]:
            typer.echo(f"  {row['shape']:<24} {row['params']:>12,}" + (f"  KL {row['kl']:.4f}" if "kl" in row else "")
                       + (f"  heads {row['per_layer']['n_head']} FFN {row['per_layer']['intermediate']}"
                          if "per_layer" in row else ""))
        typer.echo(f"{report['params_before']:,} -> {report['params_after']:,} parameters ({report['ratio']:.2f}x); "
                   f"wrote {out} ({report['format']})")

    @app.command("shrink")
    def shrink_cmd(
        teacher: Path = typer.Argument(..., help="teacher model folder (pocketlm or Hugging Face, with its tokenizer)"),
        out: Path = typer.Option(..., "--out", help="run folder: rounds, checkpoints, model/, hf/, report.md"),
        target_params: str = typer.Option("0.5x", help=TARGET_HELP),
        tokens: str = typer.Option("20M", help="distillation tokens in all (split over the rounds)"),
        steps: int = typer.Option(1, "--steps", "--rounds", help="prune-then-distil rounds (Minitron's iterative)"),
        data: Optional[Path] = typer.Option(None, help="token shards (default: the bundled corpus)"),
        method: str = typer.Option("activation", help="width importance: activation, magnitude, taylor"),
        layer_method: str = typer.Option("block_influence", help="layer importance: block_influence or removal_kl"),
        calib: str = typer.Option("64x128", help="NxL windows of the training data for importance and ranking"),
        candidates: int = typer.Option(1, help="distil the top K ranked shapes briefly and keep the lowest "
                                       "validation loss (Minitron's candidate selection); 1: the top shape"),
        candidate_tokens: Optional[str] = typer.Option(None, help="tokens of each candidate's short distillation "
                                                       "(default: a tenth of a round's)"),
        batch_size: int = typer.Option(16),
        seq_len: int = typer.Option(128),
        lr: float = typer.Option(1e-3),
        temperature: float = typer.Option(1.0),
        alpha: float = typer.Option(1.0, help="weight of logit KL (1 - alpha: cross-entropy)"),
        threads: Optional[int] = typer.Option(None),
        progress: bool = typer.Option(True, "--progress/--no-progress"),
    ) -> None:
        """Prune to the target (best ranked shape), distil from the teacher on the token budget, evaluate, report."""
        from pocketlm.compress.structured.shapes import parse_count
        from pocketlm.compress.structured.shrink import ShrinkConfig, shrink

        scfg = ShrinkConfig(target_params=target_params, tokens=parse_count(tokens, 0), rounds=steps, method=method,
                            layer_method=layer_method, calib=calib, batch_size=batch_size, seq_len=seq_len, lr=lr,
                            temperature=temperature, alpha=alpha, threads=threads, progress=progress,
                            candidates=candidates,
                            candidate_tokens=None if candidate_tokens is None else parse_count(candidate_tokens, 0))
        result = shrink(teacher, out, scfg, data_dir=data)
        f = result.report["final"]
        typer.echo(f"{f['shape']}: {f['params']:,} parameters ({f['ratio']:.2f}x), val loss {f['val_loss']:.4f} "
                   f"(teacher {result.report['teacher_val_loss']:.4f}), KL {f['kl']:.4f}; wrote {out}/report.md")
