"""Insight 6: in-context learning grows with size — a ladder of presets trained on the same data, scored
at 0/1/5 shots on a task tiny models can do above chance: `pattern_completion`, a synthetic
pattern-continuation task written as a task spec (pocketlm/evaluate/tasks/pattern_completion.yaml).

The task's records are generated here, once, by `write_pattern_task()` (seeded): each shows a repeating
sequence of simple story words ("cat dog cat dog cat") and asks for the next one among four choices."""

from __future__ import annotations

import json
import random
from pathlib import Path

from pocketlm.insights.analysis import verdict
from pocketlm.insights.record import Record
from pocketlm.survey.figures import write_csv
from pocketlm.utils import atomic_write_text

CLAIM = ("In-context learning improves with model size: larger SLMs gain more from few-shot demonstrations "
         "over zero-shot.")
TASK = "pattern_completion"
CHANCE = 0.25
WORDS = ("cat", "dog", "ball", "tree", "sun", "bird", "fish", "cake", "hat", "box", "car", "boat", "bed",
         "cup", "toy", "park", "red", "blue", "big", "happy")
LADDER = ("micro", "tiny", "small")
STEPS, QUICK_STEPS = 300, 40  # every rung sees the same batches: 16 x 128 tokens per step


def pattern_records(n: int = 200, seed: int = 0) -> list[dict]:
    """`n` items: a period-2 or period-3 word pattern shown for 5-8 items, the next item and 3 distractors."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        period = 2 + i % 2
        unit = rng.sample(WORDS, period)
        shown = rng.randint(5, 8)
        seq = [unit[k % period] for k in range(shown)]
        answer = unit[shown % period]
        others = [w for w in unit if w != answer] + rng.sample([w for w in WORDS if w not in unit], 4 - period + 1)
        choices = [answer] + others[:3]
        rng.shuffle(choices)
        records.append({"pattern": " ".join(seq), "choices": choices, "label": choices.index(answer)})
    return records


def write_pattern_task(data_root: Path, n: int = 200, seed: int = 0) -> Path:
    """The task's documents as JSON lines under data_root/eval/pattern_completion/."""
    path = data_root / "eval" / TASK / "pattern_completion.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in pattern_records(n, seed)))
    return path


def icl_verdict(gain5: list[float], best: float) -> str:
    """The few-shot gain must grow with size (strictly, smallest to largest rung, never shrinking between
    rungs), on a task some model does above chance (by 0.1): a ladder at chance shows nothing."""
    grows = all(b >= a for a, b in zip(gain5, gain5[1:])) and gain5[-1] > gain5[0]
    return verdict([grows, best > CHANCE + 0.1])


def run(out_dir: Path, quick: bool = False, ladder: tuple[str, ...] = LADDER) -> Record:
    from pocketlm.evaluate.icl import icl_study
    from pocketlm.runtime import open_model, open_tokenizer
    from pocketlm.train.fixtures import trained_preset

    steps = QUICK_STEPS if quick else STEPS
    models, losses = [], {}
    for name in ladder:
        model_dir, summary = trained_preset(name, steps=steps, batch_size=16, seq_len=128,
                                            warmup_steps=max(steps // 10, 1), eval_every=steps, ckpt_every=steps)
        losses[name] = summary["val_loss"]
        models.append((name, open_model(model_dir), open_tokenizer(model_dir), summary["params"]))
    shots = (0, 1, 5)
    study = icl_study(models, tasks=(TASK,), shots=shots, limit=60 if quick else 200, out_dir=out_dir)
    rows = study["rows"]
    score = {(r["model"], r["shots"]): r["score"] for r in rows}
    gain5 = [score[(m, 5)] - score[(m, 0)] for m in ladder]
    best = max(score.values())
    csv = write_csv(rows, out_dir / "icl.csv")
    params = {name: p for name, _, _, p in models}
    summary = ("5-shot gain over 0-shot by size: " + ", ".join(
        f"{m} ({params[m] / 1e6:.2f}M) {g:+.3f}" for m, g in zip(ladder, gain5))
        + f"; best score {best:.3f} (chance {CHANCE}); each rung trained {steps} steps on the same batches.")
    return Record("icl", "In-context learning grows with size", CLAIM, "pocketlm insights icl --out insights_out", {
        "metric": rows[0]["metric"], "params": params, "val_loss": {k: round(v, 3) for k, v in losses.items()},
        "scores": {m: " / ".join(f"{score[(m, k)]:.3f}" for k in shots) for m in ladder},
        "gain_5shot": {m: round(g, 3) for m, g in zip(ladder, gain5)}},
        icl_verdict(gain5, best), summary, str(out_dir / "icl_gain.png"), str(csv))
