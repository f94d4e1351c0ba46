"""Kernel-level speed of weight-only quantization on this CPU: one decode step's (M=1) and one prefill
chunk's (M=64, 256) matmuls over every linear layer of a SmolLM-135M-shaped model.

    python benchmarks/bench_quant.py --threads 1,2 --rounds 5

Variants: fp32 F.linear, fp32 with pre-transposed weights, bf16 F.linear, int8 per-channel
(`_weight_int8pack_mm`), int4 group 32 / 64 (`_weight_int4pack_mm_for_cpu`), and — to show why the
layers cast activations to bf16 — int4 with fp32 activations. Rounds interleave the variants; each
reports the median time of one pass over all layers, and GB/s of weights streamed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pocketlm.model.quantize import rtn_linear  # noqa: E402
from pocketlm.profile.system import cpu_model, memory_bandwidth_gbs  # noqa: E402


def smollm_shapes() -> list[tuple[int, int]]:
    """(out, in) of every linear in SmolLM-135M: 30 x (q, k, v, o, gate, up, down) + the LM head."""
    layer = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)]
    return layer * 30 + [(49152, 576)]


def variants(weights: list[torch.Tensor]) -> dict[str, tuple[list, int, torch.dtype]]:
    def lin(w):
        m = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
        m.weight.data = w
        return m

    out: dict[str, tuple[list, int, torch.dtype]] = {}
    out["fp32 F.linear"] = ([lambda x, w=w: F.linear(x, w) for w in weights],
                            sum(w.numel() * 4 for w in weights), torch.float32)
    wt = [w.t().contiguous() for w in weights]
    out["fp32 x @ W^T (pre-transposed)"] = ([lambda x, w=w: x @ w for w in wt],
                                            sum(w.numel() * 4 for w in weights), torch.float32)
    wb = [w.bfloat16() for w in weights]
    out["bf16 F.linear"] = ([lambda x, w=w: F.linear(x, w) for w in wb], sum(w.numel() * 2 for w in wb),
                            torch.bfloat16)
    q8 = [rtn_linear(lin(w), "int8") for w in weights]
    out["int8 weight-only"] = ([m.forward for m in q8], sum(m.weight_bytes() for m in q8), torch.bfloat16)
    for g in (32, 64):
        q4 = [rtn_linear(lin(w), "int4", g) for w in weights]
        out[f"int4 g{g}"] = ([m.forward for m in q4], sum(m.weight_bytes() for m in q4), torch.bfloat16)
    q4f = [rtn_linear(lin(w), "int4", 32, compute_dtype=torch.float32) for w in weights]
    out["int4 g32, fp32 activations"] = ([m.forward for m in q4f], sum(m.weight_bytes() for m in q4f),
                                         torch.float32)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--rows", default="1,64,256", help="activation rows M: 1 = decode, more = prefill")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    weights = [torch.randn(n, k) * 0.02 for n, k in smollm_shapes()]
    vs = variants(weights)
    results = []
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        bw = memory_bandwidth_gbs(threads=threads)
        for m in [int(r) for r in args.rows.split(",")]:
            xs = {(k, dt): torch.randn(m, k, dtype=dt) for k in (576, 1536) for dt in (torch.float32, torch.bfloat16)}
            times: dict[str, list[float]] = {name: [] for name in vs}
            skip = set()
            for _ in range(args.rounds + 1):
                for name, (fns, nbytes, dt) in vs.items():
                    if name in skip:
                        continue
                    t0 = time.perf_counter()
                    for fn, (n, k) in zip(fns, smollm_shapes()):
                        fn(xs[(k, dt)])
                    elapsed = time.perf_counter() - t0
                    times[name].append(elapsed)
                    if elapsed > 5:  # a pathologically slow path: one sample is enough
                        skip.add(name)
            for name, (fns, nbytes, dt) in vs.items():
                ts = times[name][1:] or times[name]
                med = statistics.median(ts)
                results.append({"threads": threads, "rows": m, "variant": name, "ms": med * 1e3,
                                "gb_s": nbytes / med / 1e9, "weight_mb": nbytes / 2**20,
                                "bandwidth_ceiling_gb_s": bw})
    print(f"SmolLM-135M linear layers ({len(smollm_shapes())} matmuls), {cpu_model()}")
    base = {(r["threads"], r["rows"]): r["ms"] for r in results if r["variant"] == "fp32 F.linear"}
    print(f"{'threads':>7s} {'M':>4s} {'variant':32s} {'ms':>9s} {'GB/s':>6s} {'vs fp32':>8s} {'ceiling GB/s':>12s}")
    for r in results:
        print(f"{r['threads']:7d} {r['rows']:4d} {r['variant']:32s} {r['ms']:9.2f} {r['gb_s']:6.1f} "
              f"{base[(r['threads'], r['rows'])] / r['ms']:7.2f}x {r['bandwidth_ceiling_gb_s']:12.1f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print(json.dumps({"speedup_vs_fp32": {f"{r['variant']}|t{r['threads']}|M{r['rows']}":
                                          base[(r["threads"], r["rows"])] / r["ms"] for r in results}}))


if __name__ == "__main__":
    main()
