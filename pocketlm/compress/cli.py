"""`pocketlm merge`, `pocketlm upcycle`, `pocketlm moe`: thin layers over pocketlm.compress.

Each command group registers from its own function, so other shrink commands (prune, quantize)
add theirs beside these without touching them.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    register_merge(app)


def register_merge(app: typer.Typer) -> None:
    @app.command("merge")
    def merge_cmd(
        recipe: Path = typer.Argument(..., help="a mergekit YAML recipe (merge_method, base_model, models/slices, "
                                      "parameters), used unchanged"),
        out: Path = typer.Option(..., "--out", help="Hugging Face directory to write (atomically)"),
        seed: int = typer.Option(0, help="DARE's random drop: each tensor draws from a generator seeded by this"),
        overwrite: bool = typer.Option(False, help="replace --out if it exists"),
        shard_gb: float = typer.Option(4.0, help="largest safetensors shard, GiB"),
        as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
    ) -> None:
        """Merge models as a mergekit recipe says, streaming one tensor at a time (linear/WARM, slerp,
        task_arithmetic, ties, dare_linear, dare_ties, model_stock, passthrough)."""
        from pocketlm.compress.merge import merge

        result = merge(recipe, out, seed=seed, overwrite=overwrite, shard_bytes=int(shard_gb * 2**30),
                       progress=not as_json)
        if as_json:
            typer.echo(json.dumps(result.to_dict()))
        else:
            typer.echo(f"{result.method}: {result.tensors} tensors, {result.layers} layers, "
                       f"{result.bytes / 2**20:.1f} MiB in {result.seconds:.1f} s (peak RSS "
                       f"{result.peak_rss_mib:.0f} MiB) -> {result.out_dir}")
