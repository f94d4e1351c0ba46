"""Minitron's finding on this machine (Muralidharan et al. 2024; Sreenivas et al. 2024): a model pruned
from a trained teacher and distilled on N tokens beats the same architecture trained from scratch on the
same N tokens, and beats the pruned model without distillation.

Arms, all at the same student shape and on the same batches of the same data:
- `pruned`: the best-ranked 0.5x shape, no training;
- `pruned + distilled`: `pocketlm shrink`, one round (logit KL on N tokens);
- `pruned + distilled, 2 rounds`: the iterative recipe at the same final shape target and N tokens;
- `scratch`: the pruned architecture, freshly initialised, trained with cross-entropy on N tokens (the
  distillation loop with alpha = 0, so loop, schedule and batches are the same);
- `scratch + distilled`: freshly initialised, logit KL on N tokens (isolates what pruning contributes).

`minitron_study(out_dir)` writes `minitron.json` and `minitron.png` and returns the payload.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from pocketlm.compress.structured.shrink import ShrinkConfig, shrink
from pocketlm.utils import atomic_write_text


def minitron_study(out_dir: str | Path, preset: str = "base", tokens: int = 160 * 16 * 128, target: str = "0.5x",
                   iterative: bool = True, threads: int | None = 1, progress: bool = False) -> dict[str, Any]:
    import torch

    from pocketlm.data.shards import TokenSplit
    from pocketlm.interop import load_model
    from pocketlm.model.costs import param_counts
    from pocketlm.train.batches import eval_windows
    from pocketlm.train.config import TrainConfig
    from pocketlm.train.distill import DistillConfig, distill
    from pocketlm.train.fixtures import trained_preset
    from pocketlm.train.loop import evaluate_loss
    from pocketlm.train.trainer import build_model

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    teacher_dir, summary = trained_preset(preset, progress=progress)
    data_dir = Path(summary["data_dir"])
    base = ShrinkConfig(target_params=target, tokens=tokens, rounds=1, batch_size=16, seq_len=128, lr=3e-3,
                        calib="64x128", threads=threads, progress=progress)
    one = shrink(teacher_dir, out / "shrink_1round", base, data_dir=data_dir)
    arms: dict[str, float] = {"pruned (no training)": one.report["rounds"][0]["pruned"]["val_loss"],
                              "pruned + distilled": one.report["final"]["val_loss"]}
    shapes = {"pruned + distilled": [one.report["final"]["shape"], one.report["final"]["params"]]}
    if iterative:
        two = shrink(teacher_dir, out / "shrink_2rounds", dataclasses.replace(base, rounds=2), data_dir=data_dir)
        arms["pruned + distilled, 2 rounds"] = two.report["final"]["val_loss"]
        shapes["pruned + distilled, 2 rounds"] = [[r["shape"], r["params"]] for r in two.report["rounds"]]
    student_cfg = one.student.config
    steps = one.report["rounds"][0]["steps"]
    teacher = load_model(teacher_dir).float().eval()
    for name, alpha in (("scratch", 0.0), ("scratch + distilled", 1.0)):
        tcfg = TrainConfig(data_dir=str(data_dir), out_dir=str(out / name.replace(" + ", "_").replace(" ", "_")),
                           seq_len=base.seq_len, batch_size=base.batch_size, steps=steps, lr=base.lr,
                           schedule="cosine", warmup_steps=min(20, steps // 10), eval_every=max(steps // 4, 1),
                           ckpt_every=max(steps // 4, 1), seed=base.seed + 1, progress=progress, threads=threads)
        student = build_model(student_cfg, tcfg)
        res = distill(teacher, student, tcfg, DistillConfig(temperature=base.temperature, alpha=alpha))
        arms[name] = res.val_loss
    val = eval_windows(TokenSplit.open(data_dir, "val"), base.seq_len, base.eval_windows)
    with torch.no_grad():
        teacher_loss = evaluate_loss(teacher, val)
    payload = {"preset": preset, "teacher_params": param_counts(teacher.config)["total"],
               "student_params": param_counts(student_cfg)["total"], "student_shape": one.report["final"]["shape"],
               "tokens": one.report["final"]["tokens"], "steps": steps, "teacher_val_loss": teacher_loss,
               "val_loss": arms, "shapes": shapes, "ranking": one.report["rounds"][0]["pruning"]["ranking"],
               "prune_distill_best": min(arms, key=arms.get).startswith("pruned + distilled"),
               "seconds": time.perf_counter() - t0, "threads": threads}
    atomic_write_text(out / "minitron.json", json.dumps(payload, indent=2))
    _figure(payload, out / "minitron.png")
    return payload


def _figure(p: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(p["val_loss"]) + ["teacher"]
    values = list(p["val_loss"].values()) + [p["teacher_val_loss"]]
    colors = ["tab:red" if "no training" in k else "tab:blue" if k.startswith("pruned") else "tab:orange"
              for k in p["val_loss"]] + ["tab:gray"]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    ax.bar(range(len(labels)), values, color=colors)
    ax.set_xticks(range(len(labels)), [lab.replace(", ", ",\n").replace(" + ", " +\n") for lab in labels], fontsize=8)
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:.3f}", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title(f"{p['preset']} teacher ({p['teacher_params']:,}) -> {p['student_shape']} ({p['student_params']:,}), "
                 f"{p['tokens']:,} tokens each", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
