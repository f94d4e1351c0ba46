"""`pocketlm fit` on a SmolLM-135M-shaped model (llama.cpp runtime, the default search): wall time, the
share of candidates measured, and fit's choice against "Q8_0 everything" / "Q4_K_M everything" measured
in the same run (quality and cost ratios).

    python benchmarks/bench_fit.py --max-memory 150MB --min-decode-tok-s 15 --out /tmp/bench_fit

Targets (issue 15): <= 30 minutes on 2 cores, <= 25% of the candidates measured. The model has random
weights (the catalog architecture) and no tokenizer, so quality is KL on seeded random tokens; rerunning
the same command resumes from the folder's fit.sqlite (delete it for an uncached time).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="SmolLM-135M")
    p.add_argument("--runtime", default="llamacpp")
    p.add_argument("--max-memory", default="150MB")
    p.add_argument("--min-decode-tok-s", default="15")
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("/tmp/bench_fit"))
    a = p.parse_args()
    from pocketlm.fit.budget import Budget
    from pocketlm.fit.config import FitConfig
    from pocketlm.fit.search import fit

    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    report = fit(FitConfig(a.model, Budget.parse(max_memory=a.max_memory, min_decode_tok_s=a.min_decode_tok_s),
                           runtime=a.runtime, tokens=a.tokens, threads=a.threads), a.out)
    wall = time.perf_counter() - t0
    c = report["counts"]
    chosen = report["chosen_record"]
    rows = {"wall_s": round(wall, 1), "load_start": load, "load_end": os.getloadavg()[0],
            "considered": c["considered"], "cost_measurements": c["measurement_processes"],
            "measured_share": c["measurement_processes"] / c["considered"], "chosen": report["chosen"],
            "verify_misses": report["verify"]["misses"] if report["verify"] else None}
    for b in report["baselines"]:
        if chosen and b["measured"] and b["quality"]:
            rows[b["candidate"]] = {
                "fits": not b["misses"], "kl_chosen_over_baseline": (chosen["quality"]["kl_mean"] /
                                                                     max(b["quality"]["kl_mean"], 1e-12)),
                "decode_ms_ratio": chosen["measured"]["decode_ms"] / b["measured"]["decode_ms"],
                "memory_ratio": chosen["measured"]["memory_bytes"] / b["measured"]["memory_bytes"]}
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
