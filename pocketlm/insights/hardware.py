"""Insight 5: hardware — the runtime grid on a CUDA GPU next to this CPU (the GPU's advantage is larger at
prefill than at decode). Skipped, and said so, where torch sees no CUDA device."""

from __future__ import annotations

from pathlib import Path

from pocketlm.insights.analysis import verdict
from pocketlm.insights.bench import by_depth, by_prompt, profile_models
from pocketlm.insights.record import Record
from pocketlm.survey.figures import write_csv

CLAIM = ("A GPU's advantage over a CPU is far larger at prefill (parallel, compute-bound) than at decode "
         "(sequential, memory-bound).")
MODELS = ("SmolLM-135M", "Qwen2.5-0.5B")


def run(out_dir: Path, quick: bool = False, threads: int = 0) -> Record:
    import torch

    command = "pocketlm insights hardware --out insights_out"
    if not torch.cuda.is_available():
        return Record("hardware", "Hardware: GPU vs CPU", CLAIM, command, {"cuda": False}, "skipped",
                      "torch sees no CUDA device on this machine, so the GPU half of the grid cannot run; rerun "
                      "this command on a machine with a GPU.")
    prompt, depth = (64, 64) if quick else (512, 256)
    rows, checks = [], []
    for model in MODELS[:1] if quick else MODELS:
        res = {dev: profile_models({dev: model}, device=dev, dtype="bf16" if dev == "cuda" else "fp32",
                                   threads=threads, prompts=(prompt,), gen=8, depths=(depth,), repeat=3)[dev]
               for dev in ("cpu", "cuda")}
        pre = by_prompt(res["cpu"])[prompt] / by_prompt(res["cuda"])[prompt]
        dec = by_depth(res["cpu"])[depth] / by_depth(res["cuda"])[depth]
        rows.append({"model": model, "gpu_prefill_speedup": round(pre, 2), "gpu_decode_speedup": round(dec, 2)})
        checks.append(pre > dec)
    csv = write_csv(rows, out_dir / "hardware.csv")
    return Record("hardware", "Hardware: GPU vs CPU", CLAIM, command,
                  {"gpu": torch.cuda.get_device_name(0), "rows": rows}, verdict(checks),
                  f"GPU speed-up over this CPU, prefill vs decode: "
                  + "; ".join(f"{r['model']} {r['gpu_prefill_speedup']}x / {r['gpu_decode_speedup']}x" for r in rows),
                  None, str(csv))
