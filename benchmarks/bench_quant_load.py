"""Opening a quantized model: RTN-quantizing a float checkpoint on open vs loading a saved int8/int4 checkpoint.

    python benchmarks/bench_quant_load.py --model SmolLM-135M --repeat 3

For each scheme: `open_model(float_dir, scheme)` (load fp32 weights, quantize) against
`open_model(quantized_dir)` (the saved codes, scales and zeros straight into the kernels), in the same
run; also the save time and the files' sizes. Medians over --repeat; logits of both paths are checked equal.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pocketlm.interop import save_native  # noqa: E402
from pocketlm.profile.system import cpu_model  # noqa: E402
from pocketlm.runtime import open_model  # noqa: E402


def median_s(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="SmolLM-135M")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ids = torch.arange(1, 17)[None]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        float_dir = save_native(open_model(args.model, "fp32"), Path(tmp) / "fp32")
        for scheme in ("int8", "int4"):
            quantize_s, quantized = median_s(lambda: open_model(float_dir, scheme), args.repeat)
            t0 = time.perf_counter()
            q_dir = save_native(quantized, Path(tmp) / scheme)
            save_s = time.perf_counter() - t0
            load_s, loaded = median_s(lambda: open_model(q_dir), args.repeat)
            with torch.inference_mode():
                same = torch.equal(quantized(ids), loaded(ids))
            mib = (q_dir / "model.safetensors").stat().st_size / 2**20
            rows.append({"scheme": scheme, "open_and_quantize_s": quantize_s, "save_s": save_s, "load_s": load_s,
                         "speedup": quantize_s / load_s, "file_mib": mib, "identical_logits": same})
        fp32_mib = (float_dir / "model.safetensors").stat().st_size / 2**20
    print(f"{args.model}, {args.threads} threads, {cpu_model()}; fp32 checkpoint {fp32_mib:.0f} MiB")
    print(f"{'scheme':6s} {'open+quantize s':>15s} {'load saved s':>12s} {'speedup':>8s} {'save s':>7s} "
          f"{'file MiB':>8s} identical")
    for r in rows:
        print(f"{r['scheme']:6s} {r['open_and_quantize_s']:15.2f} {r['load_s']:12.2f} {r['speedup']:7.1f}x "
              f"{r['save_s']:7.2f} {r['file_mib']:8.0f} {r['identical_logits']}")
    print(json.dumps({"bench": "quant_load", "model": args.model, "rows": rows}))


if __name__ == "__main__":
    main()
