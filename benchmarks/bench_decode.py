"""Decode speed: pocketlm vs transformers eager on the same random SmolLM-135M-shaped weights.

pocketlm runs twice: as loaded (nn.Linear), and packed for CPU inference
(`pocketlm.model.packing.pack_for_cpu`: oneDNN-prepacked weights, fused q/k/v and gate/up).

Batch 1, 128-token prompt, 128 new tokens (greedy), fp32 and bf16, 2 threads by default. Decode
time = time(prompt + 128 new) - time(prompt + 1 new), so prefill cancels out. Both runtimes are
measured in this one process, alternating every repeat, and the ratio is what to read (absolute numbers drift
±20% between processes on this VM).

    python benchmarks/bench_decode.py [--threads 2] [--repeat 3] [--dtypes fp32,bf16]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import copy

import torch
import transformers

from pocketlm.interop import load_model
from pocketlm.model.packing import pack_for_cpu

SMOLLM_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                   num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                   rms_norm_eps=1e-5, tie_word_embeddings=True, rope_theta=10000.0)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def decode_times(runners: dict, prompt: torch.Tensor, new: int, repeat: int) -> dict[str, float]:
    """Median decode seconds per runner; runners alternate every repeat so load drift hits all alike."""
    for gen in runners.values():
        gen(prompt, 2)  # warm-up
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeat):
        for name, gen in runners.items():
            t0 = time.perf_counter()
            gen(prompt, new)
            t1 = time.perf_counter()
            gen(prompt, 1)
            t2 = time.perf_counter()
            samples[name].append((t1 - t0) - (t2 - t1))
    return {name: statistics.median(v) for name, v in samples.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--dtypes", default="fp32,bf16")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**SMOLLM_135M)).eval()
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        ours_fp32 = load_model(d)
    prompt = torch.randint(0, SMOLLM_135M["vocab_size"], (1, args.prompt))
    results = {}
    for name in args.dtypes.split(","):
        dtype = DTYPES[name]
        hf_m, ours = hf.to(dtype), ours_fp32.to(dtype)
        packed = pack_for_cpu(copy.deepcopy(ours))

        def hf_gen(p, n):
            with torch.inference_mode():
                return hf_m.generate(p, attention_mask=torch.ones_like(p), max_new_tokens=n, min_new_tokens=n,
                                     do_sample=False, eos_token_id=None, pad_token_id=0)

        def our_gen(p, n):
            return ours.generate(p, max_new_tokens=n)

        def packed_gen(p, n):
            return packed.generate(p, max_new_tokens=n)

        if name == "fp32":
            assert torch.equal(hf_gen(prompt, 8), our_gen(prompt, 8)), "greedy tokens differ"
        times = decode_times({"transformers": hf_gen, "pocketlm": our_gen, "pocketlm_packed": packed_gen},
                             prompt, args.new, args.repeat)
        n = args.new - 1
        t_hf = times["transformers"]
        results[name] = {"transformers_tok_s": n / t_hf}
        line = f"{name}: transformers {n / t_hf:6.1f} tok/s"
        for key in ("pocketlm", "pocketlm_packed"):
            results[name][f"{key}_tok_s"] = n / times[key]
            results[name][f"{key}_ratio"] = t_hf / times[key]
            line += f"   {key} {n / times[key]:6.1f} tok/s ({t_hf / times[key]:.2f}x)"
        print(line)
    print(json.dumps({"bench": "decode", "threads": args.threads, "prompt": args.prompt, "new": args.new,
                      "torch": torch.__version__, "transformers": transformers.__version__, "results": results}))


if __name__ == "__main__":
    main()
