"""Insight 6: in-context learning grows with size — a ladder of models trained on the same data, scored at
0/1/5 shots on two synthetic tasks whose few-shot demonstrations carry the answer: `repeat_answer` (the
demonstrations share it) and `key_value` (a random mapping to look up); task specs in
pocketlm/evaluate/tasks/, records and training sequences in `icl_tasks`.

For this insight only, the training corpus is the bundled stories plus "key = value" sequences of both kinds
(`icl_tasks.training_sequences`, 29 % of the tokens), so that the models can acquire the skills at all; every
rung trains on the same batches of that mixture, for the same steps."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from pocketlm.insights.analysis import verdict
from pocketlm.insights.icl_tasks import MAPPING_TASK, REPEAT_TASK, training_sequences
from pocketlm.insights.record import Record
from pocketlm.survey.figures import write_csv
from pocketlm.utils import atomic_write_text, cache_root

CLAIM = ("In-context learning improves with model size: larger SLMs gain more from few-shot demonstrations "
         "over zero-shot.")
TASKS = (REPEAT_TASK, MAPPING_TASK)
CHANCE = 0.25
# rung -> (preset, ModelConfig changes): micro 0.09M, mini 0.32M (between the presets), tiny 1.07M parameters;
# small (3.0M) is a fourth rung (`run(out, ladder=LADDER + ("small",))`): ~8 CPU minutes more than the three
RUNGS = {"micro": ("micro", {}), "mini": ("tiny", {"d_model": 64, "n_head": 2, "intermediate_size": 160,
                                                   "name": "pocketlm-mini"}),
         "tiny": ("tiny", {}), "small": ("small", {})}
LADDER = ("micro", "mini", "tiny")
STEPS, QUICK_STEPS = 600, 40  # every rung sees the same batches: 16 x 128 tokens per step
MIX_DOCUMENTS = 1400  # 29 % of the mixture's tokens (half mappings, half repeated answers)
SHOTS = (0, 1, 5)


def icl_verdict(gain5: list[float], best: float) -> str:
    """The few-shot gain must grow with size (strictly, smallest to largest rung, never shrinking between
    rungs), on a task some model does above chance (by 0.1): a ladder at chance shows nothing."""
    grows = all(b >= a for a, b in zip(gain5, gain5[1:])) and gain5[-1] > gain5[0]
    return verdict([grows, best > CHANCE + 0.1])


def mixed_data_dir(documents: int = MIX_DOCUMENTS) -> tuple[Path, dict]:
    """Token shards of the bundled corpus plus `documents` key = value sequences, with the bundled tokenizer;
    prepared once per input and cached. No Gopher/C4 rule and no perplexity cut (both would drop the
    synthetic lines, which is their job); exact and near duplicates are still removed."""
    from dataclasses import replace

    from pocketlm.data import bundled_corpus_files
    from pocketlm.data.prepare import PrepareConfig, prepare
    from pocketlm.data.shards import MANIFEST
    from pocketlm.insights.filtering import permissive
    from pocketlm.train.fixtures import bundled_data_dir

    texts = training_sequences(documents)
    bundled = bundled_data_dir()
    key = hashlib.sha256(json.dumps([bundled.name, texts]).encode()).hexdigest()[:16]
    dest = cache_root() / "data" / f"icl-mix-{key}"
    if (dest / MANIFEST).is_file():
        return dest, json.loads((dest / MANIFEST).read_text())
    src = dest.with_name(dest.name + ".src")
    src.mkdir(parents=True, exist_ok=True)
    synthetic = src / "key_value_sequences.jsonl"
    atomic_write_text(synthetic, "".join(json.dumps({"text": t}) + "\n" for t in texts))
    cfg = PrepareConfig([*map(str, bundled_corpus_files()), str(synthetic)], str(dest),
                        tokenizer=str(bundled / "tokenizer.json"))
    manifest = prepare(replace(cfg, heuristics=permissive(), max_perplexity_quantile=1.0), progress=False)
    shutil.rmtree(src, ignore_errors=True)
    return dest, manifest


def synthetic_token_share(data_dir: Path, manifest: dict, documents: int = MIX_DOCUMENTS) -> float:
    """The key = value sequences' share of the mixture's tokens (each + its end-of-text token)."""
    from pocketlm.data.tokenizer import TextTokenizer

    tok = TextTokenizer.load(data_dir / "tokenizer.json")
    synthetic = sum(len(ids) + 1 for ids in tok.encode_batch(training_sequences(documents)))
    return synthetic / sum(manifest["splits"][split]["tokens"] for split in ("train", "val"))  # hq: a subset


def run(out_dir: Path, quick: bool = False, ladder: tuple[str, ...] = LADDER) -> Record:
    from pocketlm.evaluate.icl import icl_study
    from pocketlm.runtime import open_model, open_tokenizer
    from pocketlm.train.fixtures import trained_preset

    steps = QUICK_STEPS if quick else STEPS
    data_dir, manifest = mixed_data_dir()
    mix = manifest["sources"]["key_value_sequences"]
    share = synthetic_token_share(data_dir, manifest)
    models, losses = [], {}
    for name in ladder:
        preset, model = RUNGS[name]
        model_dir, summary = trained_preset(preset, data_dir=data_dir, model=model, steps=steps, batch_size=16,
                                            seq_len=128, hq_weight=0.0, warmup_steps=max(steps // 10, 1),
                                            eval_every=steps, ckpt_every=steps)
        losses[name] = summary["val_loss"]
        models.append((name, open_model(model_dir), open_tokenizer(model_dir), summary["params"]))
    study = icl_study(models, tasks=TASKS, shots=SHOTS, limit=60 if quick else None, out_dir=out_dir)
    rows = study["rows"]
    score = {(r["model"], r["task"], r["shots"]): r["score"] for r in rows}
    mean = {(m, k): sum(score[(m, t, k)] for t in TASKS) / len(TASKS) for m in ladder for k in SHOTS}
    gain = {k: [mean[(m, k)] - mean[(m, 0)] for m in ladder] for k in SHOTS[1:]}
    best = max(score.values())
    csv = write_csv(rows, out_dir / "icl.csv")
    params = {name: p for name, _, _, p in models}
    summary = ("mean gain over 0-shot at 1 / 5 shots by size: " + ", ".join(
        f"{m} ({params[m] / 1e6:.2f}M) {g1:+.3f} / {g5:+.3f}" for m, g1, g5 in zip(ladder, gain[1], gain[5]))
        + f"; best score {best:.3f} (chance {CHANCE}); each rung trained {steps} steps on the same batches of the "
        f"bundled stories + {mix['documents_kept']} key = value sequences ({share:.0%} of the tokens).")
    return Record("icl", "In-context learning grows with size", CLAIM, "pocketlm insights icl --out insights_out", {
        "metric": rows[0]["metric"], "params": params, "val_loss": {k: round(v, 3) for k, v in losses.items()},
        **{f"{t}_0_1_5": {m: " / ".join(f"{score[(m, t, k)]:.3f}" for k in SHOTS) for m in ladder} for t in TASKS},
        "mean_gain_1shot": {m: round(g, 3) for m, g in zip(ladder, gain[1])},
        "mean_gain_5shot": {m: round(g, 3) for m, g in zip(ladder, gain[5])},
        "synthetic_share_of_tokens": round(share, 3), "steps": steps},
        icl_verdict(gain[5], best), summary, str(out_dir / "icl_gain.png"), str(csv))
