"""The kernel choices behind pocketlm's CPU decode path, each against the alternative it replaced.

SmolLM-135M shapes (d 576, 9 query / 3 kv heads of 64, FFN 1536, vocab 49152), 2 threads:
1. GQA attention for one decode step: SDPA with `enable_gqa=True` vs repeating kv heads + SDPA;
2. one bf16 query: SDPA (flash kernel) vs `_attend_one_query` (heads grouped by kv head, fp32);
3. the linears of one decode step: `F.linear` vs pre-transposed `x @ W` vs oneDNN-packed;
4. the int4 matmuls of one decode step (fused q/k/v and gate/up, group 32), every layer its own
   weights, so they stream from memory as in a real step: the kernel's share of an int4 token.

    python benchmarks/bench_kernels.py [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from torch import nn

from pocketlm.model.quantize import rtn_linear
from pocketlm.model.packing import PackedLinear
from pocketlm.model.transformer import _attend_one_query

# (in, out, uses per decode step) for SmolLM-135M: q, k, v, o, gate, up, down per layer x 30, LM head
LINEARS = [(576, 576, 60), (576, 192, 60), (576, 1536, 60), (1536, 576, 30), (576, 49152, 1)]


def us(fn, n: int) -> float:
    for _ in range(5):
        fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    out: dict = {}

    cache = torch.randn(2, 1, 3, 1024, 64)  # a preallocated kv cache; attention reads a prefix view
    k, v = cache[0].narrow(2, 0, 200), cache[1].narrow(2, 0, 200)
    q = torch.randn(1, 9, 1, 64)
    gqa = us(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True), 50)
    rep = us(lambda: F.scaled_dot_product_attention(q, k.repeat_interleave(3, 1), v.repeat_interleave(3, 1)), 300)
    out["gqa_decode_fp32_us"] = {"sdpa_enable_gqa": gqa, "repeat_kv_sdpa": rep}
    print(f"1. GQA decode step, 200 keys, fp32: SDPA enable_gqa {gqa:8.1f} us   repeat kv + SDPA {rep:6.1f} us"
          f"   (repeat is {gqa / rep:.2f}x as fast)")
    qp, kp, vp = torch.randn(1, 9, 128, 64), torch.randn(1, 3, 128, 64), torch.randn(1, 3, 128, 64)
    gqa_p = us(lambda: F.scaled_dot_product_attention(qp, kp, vp, is_causal=True, enable_gqa=True), 50)
    rep_p = us(lambda: F.scaled_dot_product_attention(qp, kp.repeat_interleave(3, 1), vp.repeat_interleave(3, 1),
                                                      is_causal=True), 50)
    out["gqa_prefill128_fp32_us"] = {"sdpa_enable_gqa": gqa_p, "repeat_kv_sdpa": rep_p}
    print(f"1. GQA causal prefill, 128 tokens, fp32: SDPA enable_gqa {gqa_p:8.1f} us   repeat kv + SDPA "
          f"{rep_p:6.1f} us   (repeat is {gqa_p / rep_p:.2f}x as fast)")

    for S in (128, 512, 1024):
        kb, vb = (torch.randn(1, 3, S, 64, dtype=torch.bfloat16) for _ in range(2))
        qb = torch.randn(1, 9, 1, 64, dtype=torch.bfloat16)
        sdpa = us(lambda: F.scaled_dot_product_attention(qb, kb.repeat_interleave(3, 1), vb.repeat_interleave(3, 1),
                                                         scale=0.125), 200)
        ours = us(lambda: _attend_one_query(qb, kb, vb, None, 0.125, None), 200)
        out[f"one_query_bf16_{S}_us"] = {"repeat_kv_sdpa": sdpa, "attend_one_query": ours}
        print(f"2. one bf16 query, {S:4d} keys: repeat kv + SDPA {sdpa:6.1f} us   _attend_one_query {ours:6.1f} us"
              f"   ({sdpa / ours:.2f}x)")

    for dtype in (torch.float32, torch.bfloat16):
        total = {"F.linear": 0.0, "x @ W (pre-transposed)": 0.0, "oneDNN packed": 0.0}
        for n_in, n_out, uses in LINEARS:
            lin = nn.Linear(n_in, n_out, bias=False).to(dtype)
            w, wt, packed = lin.weight.detach(), lin.weight.detach().t().contiguous(), PackedLinear(lin)
            x = torch.randn(1, n_in, dtype=dtype)
            n = 300 if n_out < 5000 else 30
            total["F.linear"] += us(lambda: F.linear(x, w), n) * uses
            total["x @ W (pre-transposed)"] += us(lambda: x @ wt, n) * uses
            total["oneDNN packed"] += us(lambda: packed(x), n) * uses
        ms = {k: t / 1e3 for k, t in total.items()}
        out[f"decode_linears_{str(dtype)[6:]}_ms"] = ms
        print(f"3. all linears of one decode step, {str(dtype)[6:]}: "
              + "   ".join(f"{k} {t:5.1f} ms" for k, t in ms.items())
              + "   (weights cache-hot: a lower bound on the real step)")
    layers = [rtn_linear(nn.Linear(n_in, n_out, bias=False), "int4") for n_in, n_out in
              [(576, 960), (576, 576), (576, 3072), (1536, 576)] * 30 + [(576, 49152)]]
    xs = {n: torch.randn(1, n, dtype=torch.bfloat16) for n in (576, 1536)}
    kernel_ms = us(lambda: [torch._weight_int4pack_mm_for_cpu(xs[m.in_features], m.qweight, m.group_size,
                                                              m.scales_and_zeros) for m in layers], 20) / 1e3
    module_ms = us(lambda: [m(xs[m.in_features]) for m in layers], 20) / 1e3
    nbytes = sum(b.numel() * b.element_size() for m in layers for b in m.buffers())
    out["decode_int4_matmuls_ms"] = {"kernel": kernel_ms, "Int4Linear": module_ms}
    print(f"4. the 121 int4 matmuls of one decode step, weights streamed ({nbytes / 1e6:.0f} MB): kernel alone "
          f"{kernel_ms:5.2f} ms ({nbytes / kernel_ms / 1e6:.1f} GB/s)   through Int4Linear {module_ms:5.2f} ms")
    print(json.dumps({"bench": "kernels", "threads": args.threads, **out}))


if __name__ == "__main__":
    main()
