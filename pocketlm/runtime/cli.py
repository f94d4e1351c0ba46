"""`pocketlm info MODEL`: a model on the survey's axes and its analytic costs."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from pocketlm.cli_support import output_console
from pocketlm.model.config import ModelConfig
from pocketlm.model.describe import cost_summary, survey_axes


def print_info(cfg: ModelConfig, context: int, console: Console | None = None) -> None:
    console = console or output_console()
    axes = Table(title=f"{cfg.name or 'model'}: architecture on the survey's axes", show_header=False)
    for k, v in survey_axes(cfg).items():
        axes.add_row(k.replace("_", " "), str(v))
    console.print(axes)
    c = cost_summary(cfg, context)
    t = Table(title=f"analytic costs (context {context})", show_header=False)
    t.add_row("parameters", f"{c['params_total']:,} (non-embedding {c['params_non_embedding']:,})")
    if c["params_active"] != c["params_total"]:
        t.add_row("active parameters", f"{c['params_active']:,}")
    t.add_row("GFLOPs / token", f"prefill {c['gflops_per_token_prefill']:.3f}, decode {c['gflops_per_token_decode']:.3f}")
    t.add_row("KV cache", f"{c['kv_bytes_per_token_bf16']:,} B/token bf16; {c['kv_cache_mib_bf16']:.1f} MiB at {context}")
    t.add_row("weights", f"fp32 {c['weights_mib_fp32']:.1f} MiB, bf16 {c['weights_mib_bf16']:.1f}, "
              f"int8 {c['weights_mib_int8']:.1f}, int4 {c['weights_mib_int4']:.1f}")
    console.print(t)


def register(app: typer.Typer) -> None:
    @app.command()
    def info(model: str = typer.Argument(..., help="model directory, config JSON, or survey catalog name"),
             context: int = typer.Option(1024, min=1, help="context length for FLOPs and KV-cache figures"),
             as_json: bool = typer.Option(False, "--json", help="print JSON instead of tables")) -> None:
        """Show a model's architecture on the survey's axes and its analytic costs."""
        from pocketlm.runtime import resolve

        cfg = resolve(model).config
        if as_json:
            typer.echo(json.dumps({"axes": survey_axes(cfg), "costs": cost_summary(cfg, context)}, default=str))
        else:
            print_info(cfg, context)
