"""Decode speed of pocketlm's torch runtime against transformers (eager) and llama.cpp, on one set of
random SmolLM-135M-shaped weights, with achieved bandwidth against a measured ceiling.

    python benchmarks/bench_profile.py --threads 2 --gen 32 --rounds 3

Variants are interleaved round by round (the machine is shared; timings drift between processes),
and each reports the median per-token latency over all its rounds. Ratios come from this one run.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pocketlm.profile.system import cpu_model, memory_bandwidth_gbs, system_info  # noqa: E402
from pocketlm.runtime import open_model, resolve  # noqa: E402


def linear_bytes(model: torch.nn.Module) -> int:
    """Bytes a decode step streams: every linear / quantized-linear weight (unique storages) and norms."""
    from pocketlm.model.quantize import QUANT_LINEARS
    from pocketlm.model.packing import PackedLinear

    seen, total = set(), 0
    for m in model.modules():
        tensors = []
        if isinstance(m, PackedLinear):
            total += m.nbytes
        elif isinstance(m, torch.nn.Linear):
            tensors = [m.weight] + ([m.bias] if m.bias is not None else [])
        elif isinstance(m, QUANT_LINEARS):
            tensors = list(m.buffers())
        for t in tensors:
            if t.untyped_storage().data_ptr() not in seen:
                seen.add(t.untyped_storage().data_ptr())
                total += t.numel() * t.element_size()
    return total


class PocketDecoder:
    def __init__(self, model, depth: int):
        self.model, self.depth = model, depth

    @torch.inference_mode()
    def run(self, n: int) -> list[float]:
        m = self.model
        cache = m.new_cache(1, self.depth + n + 1)
        m(torch.randint(0, 1000, (1, self.depth)), cache=cache, last_only=True)
        tok, out = torch.tensor([[7]]), []
        for _ in range(n):
            t0 = time.perf_counter()
            tok = m(tok, cache=cache, last_only=True)[:, -1].argmax(-1, keepdim=True)
            out.append(time.perf_counter() - t0)
        return out


class HFDecoder:
    def __init__(self, path: Path, dtype: torch.dtype, depth: int):
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype,
                                                          attn_implementation="eager").eval()
        self.depth = depth

    @torch.inference_mode()
    def run(self, n: int) -> list[float]:
        out = self.model(torch.randint(0, 1000, (1, self.depth)), use_cache=True)
        past, tok, times = out.past_key_values, torch.tensor([[7]]), []
        for _ in range(n):
            t0 = time.perf_counter()
            out = self.model(tok, past_key_values=past, use_cache=True)
            past, tok = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
            times.append(time.perf_counter() - t0)
        return times


class LlamaCppDecoder:
    def __init__(self, path: Path, threads: int, depth: int, n_ctx: int):
        import llama_cpp

        self.llm = llama_cpp.Llama(str(path), n_ctx=n_ctx, n_batch=n_ctx, n_threads=threads,
                                   n_threads_batch=threads, verbose=False)
        self.depth = depth

    def run(self, n: int) -> list[float]:
        import numpy as np

        llm = self.llm
        llm.reset()
        llm.eval(list(range(1, self.depth + 1)))
        tok, times = 7, []
        for _ in range(n):
            t0 = time.perf_counter()
            llm.eval([tok])
            tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            times.append(time.perf_counter() - t0)
        return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="SmolLM-135M")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gen", type=int, default=32)
    ap.add_argument("--depth", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-llamacpp", action="store_true")
    ap.add_argument("--no-hf", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    spec = resolve(args.model)

    bw = max(memory_bandwidth_gbs(threads=args.threads) for _ in range(2))
    decoders: dict[str, object] = {}
    bytes_per_token: dict[str, int] = {}
    for dtype in ("fp32", "bf16", "int8", "int4"):
        model = open_model(spec, dtype, pack=True)  # as `pocketlm profile` opens it
        decoders[f"pocketlm {dtype}"] = PocketDecoder(model, args.depth)
        bytes_per_token[f"pocketlm {dtype}"] = linear_bytes(model)
    tmp = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    base = open_model(spec, "fp32")  # unpacked: HF and GGUF export read the plain layout
    if not args.no_hf:
        from pocketlm.interop import save_hf

        save_hf(base, tmp / "hf")
        for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            decoders[f"transformers eager {name}"] = HFDecoder(tmp / "hf", dt, args.depth)
            bytes_per_token[f"transformers eager {name}"] = bytes_per_token[f"pocketlm {name}"]
    if not args.no_llamacpp:
        try:
            from pocketlm.export.gguf import export_gguf

            for q in ("F32", "F16", "Q8_0", "Q4_0"):
                path = export_gguf(base, tmp / f"m-{q}.gguf", q)
                decoders[f"llama.cpp {q}"] = LlamaCppDecoder(path, args.threads, args.depth,
                                                             args.depth + args.gen + 8)
                bytes_per_token[f"llama.cpp {q}"] = path.stat().st_size
        except ImportError:
            print("llama-cpp-python not installed: skipping llama.cpp", file=sys.stderr)
    del base
    gc.collect()

    for d in decoders.values():  # warm-up
        d.run(4)
    per_token: dict[str, list[float]] = {k: [] for k in decoders}
    for r in range(args.rounds):
        for name, d in decoders.items():
            per_token[name] += d.run(args.gen)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    bw = max(bw, memory_bandwidth_gbs(threads=args.threads))

    results = {}
    for name, times in per_token.items():
        med = statistics.median(times)
        tok_s = 1.0 / med
        b = bytes_per_token[name]
        results[name] = {"ms_per_token": med * 1e3, "tok_s": tok_s, "bytes_per_token": b,
                         "achieved_gb_s": b * tok_s / 1e9, "fraction_of_ceiling": b * tok_s / 1e9 / bw,
                         "ceiling_tok_s": bw * 1e9 / b}
    ratios = {}
    get = lambda k: results.get(k, {}).get("tok_s")  # noqa: E731
    for a, b in (("pocketlm fp32", "transformers eager fp32"), ("pocketlm bf16", "transformers eager bf16"),
                 ("pocketlm int4", "pocketlm fp32"), ("pocketlm int8", "pocketlm fp32"),
                 ("pocketlm bf16", "pocketlm fp32"), ("pocketlm int4", "llama.cpp Q4_0"),
                 ("pocketlm fp32", "llama.cpp F32")):
        if get(a) and get(b):
            ratios[f"{a} / {b}"] = get(a) / get(b)

    print(f"\n{args.model} random weights, {args.threads} threads, decode at depth {args.depth}, "
          f"{args.gen} tokens x {args.rounds} rounds; {cpu_model()}")
    print(f"measured read bandwidth ceiling: {bw:.1f} GB/s\n")
    print(f"{'variant':28s} {'ms/token':>9s} {'tok/s':>8s} {'MB/token':>9s} {'GB/s':>6s} {'of ceiling':>10s} "
          f"{'ceiling tok/s':>13s}")
    for name, r in results.items():
        print(f"{name:28s} {r['ms_per_token']:9.2f} {r['tok_s']:8.1f} {r['bytes_per_token'] / 2**20:9.1f} "
              f"{r['achieved_gb_s']:6.1f} {100 * r['fraction_of_ceiling']:9.0f}% {r['ceiling_tok_s']:13.0f}")
    print()
    for k, v in ratios.items():
        print(f"{k:55s} {v:6.2f}x")
    doc = {"system": system_info(), "threads": args.threads, "bandwidth_gb_s": bw, "results": results,
           "ratios": ratios, "argv": sys.argv}
    if args.json:
        args.json.write_text(json.dumps(doc, indent=1))
    print(json.dumps({"ratios": ratios, "bandwidth_gb_s": bw}))


if __name__ == "__main__":
    main()
