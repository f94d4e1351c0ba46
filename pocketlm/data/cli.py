"""`pocketlm data prepare`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from pocketlm.data import bundled_corpus_files


def register(app: typer.Typer) -> None:
    data_app = typer.Typer(help="Prepare training data: dedup, filter, decontaminate, tokenize, shard.",
                           no_args_is_help=True)

    @data_app.command("prepare")
    def prepare_cmd(
        inputs: Optional[list[Path]] = typer.Argument(None, help="text/jsonl/parquet files or folders "
                                                      "(default: the bundled corpus)"),
        out: Path = typer.Option(..., "--out", "-o", help="output folder for shards + manifest.json"),
        tokenizer: Optional[Path] = typer.Option(None, help="existing tokenizer.json or SentencePiece "
                                                 ".model (default: train a byte-level BPE)"),
        vocab_size: int = typer.Option(2048, help="vocabulary size when training the BPE"),
        text_field: str = typer.Option("text", help="field/column holding the text in jsonl/parquet"),
        min_words: int = typer.Option(50, help="Gopher rule: minimum words per document"),
        near_dup_threshold: float = typer.Option(0.7, help="MinHash Jaccard threshold for near duplicates"),
        quality_reference: Optional[list[Path]] = typer.Option(None, help="high-quality reference texts "
                                                               "for the perplexity filter (default: cross-fit)"),
        max_perplexity_quantile: float = typer.Option(0.98, help="reject documents above this "
                                                      "perplexity quantile"),
        hq_fraction: float = typer.Option(0.3, help="share of training docs (lowest perplexity) in the hq split"),
        decontaminate: Optional[Path] = typer.Option(None, help="folder of evaluation sets "
                                                     "(e.g. ../shared/data/eval) for 13-gram decontamination"),
        val_fraction: float = typer.Option(0.05, help="share of documents held out for validation"),
        seed: int = typer.Option(0),
    ) -> None:
        """Read, normalise, deduplicate, filter, decontaminate, tokenize and pack into token shards."""
        from pocketlm.data.dedup import NearDupConfig
        from pocketlm.data.prepare import PrepareConfig, prepare
        from pocketlm.data.quality import HeuristicConfig

        from pocketlm.utils import check_writable

        check_writable(out, "--out", ("manifest.json",), "dataset")
        files = [str(p) for p in (inputs or bundled_corpus_files())]
        cfg = PrepareConfig(
            inputs=files, out_dir=str(out), text_field=text_field,
            tokenizer=str(tokenizer) if tokenizer else None, vocab_size=vocab_size,
            near_dup=NearDupConfig(threshold=near_dup_threshold),
            heuristics=HeuristicConfig(min_words=min_words),
            quality_reference=[str(p) for p in quality_reference] if quality_reference else None,
            max_perplexity_quantile=max_perplexity_quantile, hq_fraction=hq_fraction,
            decontaminate=str(decontaminate) if decontaminate else None,
            val_fraction=val_fraction, seed=seed)
        manifest = prepare(cfg)
        summary = {k: manifest[k] for k in ("documents", "rejects_by_stage")}
        summary["tokens"] = {k: v["tokens"] for k, v in manifest["splits"].items()}
        typer.echo(json.dumps(summary, indent=2))
        typer.echo(f"wrote {out}/manifest.json, shards and rejects.jsonl")

    app.add_typer(data_app, name="data")
