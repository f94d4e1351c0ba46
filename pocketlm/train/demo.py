"""The `pocketlm demo` section for training: the tiny reference model (trained or loaded from cache)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from pocketlm.train.fixtures import trained_preset


def demo_section(out_dir: Path) -> dict:
    """Train (or load the cached) tiny preset on the bundled corpus, copy it to out_dir/tiny_model
    (pocketlm checkpoint + tokenizer) and report validation loss against chance plus samples."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cached_dir, summary = trained_preset("tiny")
    model_dir = out_dir / "tiny_model"
    shutil.rmtree(model_dir, ignore_errors=True)
    shutil.copytree(cached_dir, model_dir)
    curve = Path(summary["loss_curve"])
    figure = ""
    if curve.is_file():
        shutil.copy(curve, out_dir / "tiny_loss_curve.png")
        figure = "\n![tiny loss curve](tiny_loss_curve.png)\n"
    manifest = json.loads((Path(summary["data_dir"]) / "manifest.json").read_text())
    rejects = ", ".join(f"{k}: {v}" for k, v in manifest["rejects_by_stage"].items()) or "none"
    samples = "\n\n".join("> " + " ".join(s.split()) for s in summary["samples"])
    markdown = (
        f"Pretrained the `tiny` preset ({summary['params'] / 1e6:.2f} M parameters, Llama-style) on the "
        f"bundled TinyStories + Alice corpus: `pocketlm data prepare` kept {manifest['documents']['kept']} of "
        f"{manifest['documents']['read']} documents (rejected by stage: {rejects}) and trained a "
        f"{manifest['tokenizer']['vocab_size']}-token byte-level BPE. {summary['steps']} WSD steps "
        f"({summary['tokens'] / 1e6:.2f} M tokens, {summary['tokens_per_s']:,.0f} tokens/s, "
        f"MFU {summary['mfu']:.0%} of measured matmul throughput), the decay phase mixing in the "
        f"high-quality split.\n\n"
        f"| metric | value |\n|---|---|\n"
        f"| validation loss (nats/token) | {summary['val_loss']:.3f} |\n"
        f"| chance (ln vocab) | {summary['chance_loss']:.3f} |\n"
        f"| validation perplexity | {2.718281828 ** summary['val_loss']:.1f} |\n"
        f"{figure}\nSamples (temperature 0.8, top-k 40, seeds 0-2, not selected):\n\n{samples}\n")
    metrics = {"val_loss": summary["val_loss"], "chance_loss": summary["chance_loss"],
               "params": summary["params"], "tokens_per_s": summary["tokens_per_s"], "mfu": summary["mfu"],
               "train_tokens": summary["tokens"]}
    return {"title": "Build & train: the tiny reference model", "markdown": markdown, "metrics": metrics,
            "model_dir": str(model_dir)}
