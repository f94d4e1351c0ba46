"""Prefill time of W8A8 (SmoothQuant layers on torch._int_mm) against bf16 and weight-only int8, one process.

    python benchmarks/bench_w8a8.py --model SmolLM-135M --tokens 256 --threads 1

The model is the catalog architecture with seeded random weights (speed does not depend on the values;
W8A8 is built without the smoothing walk, which changes no shapes). Each variant runs `--repeat` prefills
of one `--tokens`-token sequence after a warm-up; the median is reported with the ratios to bf16.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pocketlm.compress.quantize.smoothquant import smoothquant  # noqa: E402
from pocketlm.model.quantize import quantize_model  # noqa: E402
from pocketlm.profile.system import cpu_model  # noqa: E402
from pocketlm.runtime import open_model  # noqa: E402


def prefill_ms(model, ids: torch.Tensor, repeat: int) -> float:
    with torch.inference_mode():
        model(ids)
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            model(ids)
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="SmolLM-135M")
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base = open_model(args.model, "fp32")
    ids = torch.randint(0, base.config.vocab_size, (1, args.tokens), generator=torch.Generator().manual_seed(0))
    w8a8 = copy.deepcopy(base)
    smoothquant(w8a8, None, smooth=False)
    variants = {"bf16": copy.deepcopy(base).to(torch.bfloat16),
                "int8 weight-only (bf16 activations)": quantize_model(copy.deepcopy(base).to(torch.bfloat16), "int8"),
                "W8A8 (torch._int_mm)": w8a8}
    ms = {name: prefill_ms(m, ids, args.repeat) for name, m in variants.items()}
    print(f"{args.model} prefill of {args.tokens} tokens, {args.threads} thread(s), median of {args.repeat}")
    print("| variant | ms | vs bf16 |\n|---|---|---|")
    for name, t in ms.items():
        print(f"| {name} | {t:.1f} | {ms['bf16'] / t:.2f}x |")
    print(f"{cpu_model()}, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
