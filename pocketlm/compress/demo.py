"""`pocketlm demo` section for shrinking: magnitude, Wanda and SparseGPT on the demo model, a perplexity
table and a figure of perplexity against sparsity, plus one pruned checkpoint with its measured report."""

from __future__ import annotations

from pathlib import Path

import torch

from pocketlm.compress.calibration import calibration_batches, encode_text
from pocketlm.compress.prune.checkpoint import DEFAULT_EVAL_TEXT, prune_checkpoint
from pocketlm.compress.prune.sweep import sweep, sweep_figure, sweep_table
from pocketlm.compress.recipe import PruneRecipe

SETTINGS = ("0.3", "0.5", "0.7", "2:4")
CALIB = "bundled:32x128"  # the demo model's trained context is 128 tokens


def demo_section(model_dir: Path, out_dir: Path) -> dict:
    """Prune `model_dir` by each method at 30/50/70% and 2:4; write the table, figure and a pruned folder."""
    from pocketlm.runtime import open_model, open_tokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, tok = open_model(model_dir), open_tokenizer(model_dir)
    calib, record = calibration_batches(CALIB, tok, seed=0)
    heldout = torch.tensor(encode_text(tok, DEFAULT_EVAL_TEXT.read_text())[:4096])
    rows = sweep(model, calib, heldout, calib.shape[1], SETTINGS)
    sweep_figure(rows, out_dir / "prune_sweep.png", "demo model: held-out perplexity vs sparsity")
    report = prune_checkpoint(model_dir, PruneRecipe(method="sparsegpt", pattern="2:4", calib=CALIB),
                              out_dir / "sparsegpt_2of4", eval_tokens=4096, overwrite=True)
    by = {(r["method"], r["setting"]): r["ppl"] for r in rows}
    rt = report.runtime
    markdown = "\n".join([
        f"Pruned the demo model's attention and FFN matrices (embeddings and LM head stay dense, as in the "
        f"reference code) with calibration `{record['spec']}` (seed 0) and scored the bundled corpus's "
        f"held-out documents, which training never reads ({heldout.numel()} tokens, windows of "
        f"{calib.shape[1]}). Perplexity:", "",
        sweep_table(rows), "",
        "![perplexity vs sparsity](prune_sweep.png)", "",
        f"At 50%: magnitude {by[('magnitude', '0.5')]:.2f}, Wanda {by[('wanda', '0.5')]:.2f}, SparseGPT "
        f"{by[('sparsegpt', '0.5')]:.2f}; at 2:4: Wanda {by[('wanda', '2:4')]:.2f}, SparseGPT "
        f"{by[('sparsegpt', '2:4')]:.2f} (the Wanda README's LLaMA-2-7B ordering is magnitude >> Wanda ~ "
        "SparseGPT at 50%, SparseGPT <= Wanda at 2:4).", "",
        f"`pocketlm prune {model_dir.name} --method sparsegpt --pattern 2:4 --calib {CALIB}` wrote "
        f"`sparsegpt_2of4/` (transformers loads it): realised sparsity {report.sparsity:.1%}, KL to dense "
        f"{report.evaluation['kl_mean']:.3f} nats/token, decode {rt['decode_before']['ms_per_token']:.2f} -> "
        f"{rt['decode_after']['ms_per_token']:.2f} ms/token, file {rt['file_bytes_before'] / 1e6:.2f} -> "
        f"{rt['file_bytes_after'] / 1e6:.2f} MB.", "",
        report.notes[-1]])
    metrics = {"sweep": rows, "sparsegpt_2of4": {"sparsity": report.sparsity, **report.evaluation,
                                                 "runtime": rt}}
    return {"title": "Shrink: pruning (magnitude, Wanda, SparseGPT)", "markdown": markdown, "metrics": metrics}
