"""`pocketlm fit` end to end: one or more budgets on one model, sharing one fit.sqlite; per budget the wall
time, the share of candidates measured, the front, the chosen artifact re-measured in a fresh process
against the budget, and fit's choice against "one type everywhere" (torch int8/int4, GGUF Q8_0/Q4_K_M)
measured in the same run (quality and cost ratios).

    python benchmarks/bench_fit.py --budget max_memory=150MB,min_decode_tok_s=15 --out /tmp/bench_fit
    python benchmarks/bench_fit.py --model small --runtime torch --budget max_disk=4MB \\
        --budget max_disk=2.5MB,min_decode_tok_s=100 --out /tmp/bench_fit_small

`--model small` (or tiny/base) is the preset trained on the bundled corpus (train.fixtures.trained_preset,
cached). Targets (issue 15): the 135M shape's default search <= 30 minutes on 2 cores, <= 25% of the
candidates measured. The catalog architecture has random weights and no tokenizer, so its quality is KL on
seeded random tokens. Budget i runs in OUT/budget<i> on a copy of the previous budget's fit.sqlite and built files
(.scratch: weights-* folders and each candidate's GGUF, hard-linked; as a user re-running with a new budget in
the same folder would); rerunning the same command resumes (delete OUT for an uncached
time).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _budget(text: str) -> dict:
    return dict(part.split("=", 1) for part in text.split(",") if part)


def _baseline_rows(report: dict) -> dict:
    chosen, rows = report["chosen_record"], {}
    for b in report["baselines"]:
        row = {"fits": not b["misses"], "misses": b["misses"]}
        if chosen and b["measured"] and b["quality"]:
            row.update(kl_chosen=chosen["quality"]["kl_mean"], kl_baseline=b["quality"]["kl_mean"],
                       decode_ms_ratio=chosen["measured"]["decode_ms"] / b["measured"]["decode_ms"],
                       memory_ratio=chosen["measured"]["memory_bytes"] / b["measured"]["memory_bytes"],
                       disk_ratio=chosen["measured"]["disk_bytes"] / b["measured"]["disk_bytes"])
        rows[b["candidate"]] = row
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="SmolLM-135M")
    p.add_argument("--runtime", default="llamacpp")
    p.add_argument("--budget", action="append", help="e.g. max_memory=150MB,min_decode_tok_s=15 (repeatable)")
    p.add_argument("--candidates", default=None)
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--distill-tokens", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("/tmp/bench_fit"))
    a = p.parse_args()
    from pocketlm.fit.budget import Budget
    from pocketlm.fit.config import FitConfig
    from pocketlm.fit.search import fit

    model = a.model
    if model in ("tiny", "small", "base"):
        from pocketlm.train.fixtures import trained_preset

        model = str(trained_preset(model)[0])
    budgets = a.budget or ["max_memory=150MB,min_decode_tok_s=15"]
    results, previous = [], None
    for i, text in enumerate(budgets):
        out = a.out / f"budget{i}"
        out.mkdir(parents=True, exist_ok=True)
        if previous is not None and not (out / "fit.sqlite").exists():  # the scores, the built files
            shutil.copy(previous / "fit.sqlite", out / "fit.sqlite")
            (out / ".scratch").mkdir(exist_ok=True)
            for built in (previous / ".scratch").iterdir():  # hard links: written once, never changed in place
                if built.name.startswith("weights-"):
                    shutil.copytree(built, out / ".scratch" / built.name, dirs_exist_ok=True, copy_function=os.link)
                elif built.is_file() and not built.name.startswith("."):
                    os.link(built, out / ".scratch" / built.name)
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        report = fit(FitConfig(model, Budget.parse(**_budget(text)), runtime=a.runtime, candidates=a.candidates,
                               tokens=a.tokens, distill_tokens=a.distill_tokens, threads=a.threads), out)
        c, v = report["counts"], report["verify"]
        results.append({
            "budget": text, "wall_s": round(time.perf_counter() - t0, 1), "load_start": load,
            "load_end": os.getloadavg()[0], "considered": c["considered"], "alive": c["alive"],
            "scored": c["scored"], "screened_out": c["screened_out"],
            "cost_measurements": c["measurement_processes"], "measured_this_run": c["measured_this_run"],
            "measured_share": c["measurement_processes"] / c["considered"], "front": report["front"],
            "chosen": report["chosen"], "verify": v and {"misses": v["misses"], **{
                k: v["measured"][k] for k in ("decode_tok_s", "prefill_ms", "memory_bytes", "disk_bytes")}},
            "prediction_error": report["prediction_error"], "screen_error": report["screen_error"],
            "baselines": _baseline_rows(report), "nearest": report["nearest"],
            "stage_seconds": report["stage_seconds"], "runtime_files_written": c["runtime_files_written"]})
        previous = out
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
