"""The `pocketlm demo` section for merging: WARM on the tiny reference model (about a minute on 2 cores)."""

from __future__ import annotations

from pathlib import Path

from pocketlm.compress.studies import warm_study


def demo_section(model_dir: Path, out_dir: Path) -> dict:
    """Fine-tune the tiny preset three times (different data orders), merge the three with a mergekit
    `linear` recipe through `pocketlm merge`, and compare validation losses (`model_dir` is the demo's
    tiny model, which is the cached preset the study starts from)."""
    p = warm_study(out_dir, k=3, steps=16, batch_size=8, eval_windows=24)
    losses = p["val_loss"]
    rows = "\n".join(f"| {name} | {v:.4f} |" for name, v in losses.items())
    verdict = ("better than every fine-tune" if p["warm_minus_best"] < 0 else
               "better than their mean" if p["warm_minus_mean"] < 0 else "not better than their mean")
    m = p["merge"]
    markdown = (
        f"WARM (weight-averaged fine-tunes, Ramé et al. 2024): {p['k']} fine-tunes of the tiny model "
        f"({p['steps']} steps each, lr {p['lr']:g}, data orders differ), averaged by `pocketlm merge` from a "
        f"mergekit `linear` recipe ({m['tensors']} tensors streamed in {m['seconds']:.1f} s). The average is "
        f"**{verdict}** ({p['warm_minus_mean']:+.4f} nats/token against the mean, {p['warm_minus_best']:+.4f} "
        f"against the best).\n\n| model | validation loss (nats/token) |\n|---|---|\n{rows}\n\n![WARM](warm.png)\n")
    return {"title": "Shrink: model merging (WARM)", "markdown": markdown, "metrics": p}
