"""Decode latency per token of one SmolLM-135M-shaped model at each weight format, in one process.

fp32 (nn.Linear), fp32 and bf16 packed for CPU (oneDNN, fused q/k/v and gate/up), int8 and int4
(group 32) weight-only; variants alternate every round, median ms/token at depth 128. With
--compile, each packed / quantized variant is also timed under torch.compile (compiled once, up
front; about a minute per variant).

    python benchmarks/bench_decode_dtypes.py [--threads 2] [--rounds 3] [--steps 30] [--compile [--compile-only
        'fp32 packed,ckpt NAME']] [--checkpoint DIR] [--rtn-checkpoint] [--native]

`--checkpoint DIR` adds a saved quantized checkpoint of the same shape (`bench_quant_perf.py --save`:
GPTQ int4 g64) opened by the runtime as `pocketlm eval` / `profile` open it; repeat it for several
(e.g. `--save-bf16`'s), each named by its folder. `--rtn-checkpoint` writes one itself first: the
same weights through `pocketlm.compress.quantize.quantize(model, "rtn", 4, 64)` (what `pocketlm
quantize --method rtn --group-size 64` runs; the default layout: block matrices int4, the rest fp32)
and `save_native`, named `ckpt rtn`.

`--native` adds, for every variant the native step covers, the same model decoding in pocketlm's
native step (`model/native_decode.py`, one C call per token; named `... native`), and each
checkpoint opened with the per-device kernel choice (`open_model(..., pack=None)`, `... auto`)
decoding eagerly and natively: issue 11's "int4 checkpoint vs packed fp32" in each runtime.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from pocketlm.model.quantize import quantize_model
from pocketlm.model.config import ModelConfig
from pocketlm.model.packing import pack_for_cpu
from pocketlm.model.transformer import Transformer
from pocketlm.profile.timing import compile_model

SMOLLM_135M = ModelConfig(vocab_size=49152, d_model=576, n_layer=30, n_head=9, n_kv_head=3, intermediate_size=1536,
                          max_seq_len=2048, name="SmolLM-135M-shaped")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--depth", type=int, default=128)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd variants")
    ap.add_argument("--compile-only", default="", help="with --compile: only these variants (comma list, e.g. "
                    "'fp32 packed,ckpt DIRNAME'; each compile takes about a minute)")
    ap.add_argument("--checkpoint", action="append", default=[], help="also time this saved (e.g. GPTQ int4) "
                    "checkpoint, opened by the runtime at its stored precision (repeatable)")
    ap.add_argument("--rtn-checkpoint", action="store_true", help="also quantize the weights by RTN int4 g64, save "
                    "them as a pocketlm checkpoint and time it (`ckpt rtn`)")
    ap.add_argument("--native", action="store_true", help="also time each variant in pocketlm's native decode step")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = Transformer(SMOLLM_135M).eval()
    variants = {
        "fp32": copy.deepcopy(base),
        "fp32 packed": pack_for_cpu(copy.deepcopy(base)),
        "bf16 packed": pack_for_cpu(copy.deepcopy(base).to(torch.bfloat16)),
        "int8": quantize_model(copy.deepcopy(base), "int8", 32),
        "int4": quantize_model(copy.deepcopy(base).to(torch.bfloat16), "int4", 32),
    }
    checkpoints = []
    paths = {f"ckpt {Path(path).name}": path for path in args.checkpoint}
    if args.rtn_checkpoint:
        from pocketlm.compress.quantize import quantize
        from pocketlm.interop import save_native

        tmp = tempfile.TemporaryDirectory()
        rtn = copy.deepcopy(base)
        quantize(rtn, "rtn", 4, 64)
        save_native(rtn, Path(tmp.name) / "rtn")
        paths["ckpt rtn"] = Path(tmp.name) / "rtn"
        del rtn
    for name, path in paths.items():
        from pocketlm.runtime import open_model

        checkpoints.append(name)
        variants[name] = open_model(path).eval()
        if args.native:
            variants[f"{name} auto"] = open_model(path, pack=None, decode_step="eager").eval()
    if args.native:
        from pocketlm.model.native_decode import NativeDecoder, native_unsupported

        for name in list(variants):
            if native_unsupported(variants[name]) is None:
                variants[f"{name} native"] = NativeDecoder(variants[name])
            else:
                print(f"{name}: no native step ({native_unsupported(variants[name])})")
    if args.compile:
        torch._dynamo.config.recompile_limit = 64  # the compiled models share Transformer.forward's cache
        chosen = [n for n in args.compile_only.split(",") if n]
        for name in chosen or ["fp32 packed", "bf16 packed", "int8", "int4"] + checkpoints:
            t0 = time.perf_counter()
            variants[f"{name} compiled"], _ = compile_model(variants[name], args.depth, args.depth + args.steps + 8,
                                                            "cpu")
            print(f"compiled {name} in {time.perf_counter() - t0:.0f} s", flush=True)
    ids = torch.randint(0, SMOLLM_135M.vocab_size, (1, args.depth))
    times: dict[str, list[float]] = {k: [] for k in variants}
    with torch.inference_mode():
        for _ in range(args.rounds):
            for name, model in variants.items():
                cache = model.new_cache(1, args.depth + args.steps + 8)  # a compiled model forwards new_cache
                model(ids, cache=cache, last_only=True)
                x = torch.tensor([[5]])
                for _ in range(3):
                    model(x, cache=cache, last_only=True)
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    model(x, cache=cache, last_only=True)
                times[name].append((time.perf_counter() - t0) / args.steps * 1e3)
    ms = {k: statistics.median(v) for k, v in times.items()}
    for name, t in ms.items():
        print(f"{name:24s} {t:7.2f} ms/token   {ms['fp32'] / t:5.2f}x fp32   {ms['fp32 packed'] / t:5.2f}x fp32 packed")
    print(json.dumps({"bench": "decode_dtypes", "threads": args.threads, "depth": args.depth, "ms_per_token": ms}))


if __name__ == "__main__":
    main()
