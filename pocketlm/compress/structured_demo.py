"""The `pocketlm demo` section for structured pruning: `pocketlm shrink` on the demo model at a tiny token
budget (half the parameters, a few dozen distillation steps; well under a minute on 2 cores)."""

from __future__ import annotations

from pathlib import Path

from pocketlm.compress.structured.shrink import ShrinkConfig, report_markdown, shrink

DEMO = ShrinkConfig(target_params="0.5x", tokens=40 * 8 * 128, rounds=1, calib="32x128", batch_size=8,
                    seq_len=128, lr=3e-3, max_candidates=8, eval_windows=16, threads=1, progress=False)


def demo_section(model_dir: Path, out_dir: Path) -> dict:
    """Shrink `model_dir` to half its parameters (ranked shapes, Minitron importance, logit KL)."""
    res = shrink(model_dir, out_dir, DEMO, resume=False)
    r = res.report
    body = report_markdown(r).split("\n", 2)[2]  # without the page title
    first = r["rounds"][0]
    markdown = (f"`pocketlm shrink {Path(model_dir).name} --target-params 0.5x --tokens {DEMO.tokens}` pruned whole "
                f"heads, FFN channels, residual channels and layers (Minitron activation importance, block influence "
                f"for depth), kept the candidate shape with the lowest KL to the teacher, then distilled it "
                f"({first['steps']} steps). Validation loss: pruned {first['pruned']['val_loss']:.4f} -> distilled "
                f"{first['distilled']['val_loss']:.4f} (teacher {r['teacher_val_loss']:.4f}). The result "
                f"(`model/`, Hugging Face `hf/`, GGUF when exported) is a standard smaller model.\n\n"
                f"{body}\n![shrink](shrink.png)\n")
    return {"title": "Shrink: structured pruning + distillation (Minitron)", "markdown": markdown, "metrics": r}
