"""Decode speed: pocketlm vs transformers eager and vs llama.cpp on the same random SmolLM-135M-shaped weights.

Per precision, every runner decodes in this one process, alternating every repeat (absolute
numbers drift ±20% between processes and more under load: read the ratios):
- fp32 / bf16: transformers; pocketlm on each single path (`linear` = nn.Linear as loaded,
  `transposed`, `mkldnn` = oneDNN-packed) and on the automatic per-device choice (`auto`,
  `pocketlm.runtime.kernel_choice`); llama.cpp F32 / F16 (bf16 is compared with F16, llama.cpp's
  16-bit CPU type);
- int8 / int4 (RTN, bf16 activations; int4 groups of 32): pocketlm with the kernels on bf16
  activations (`plain`) and the automatic choice; llama.cpp Q8_0 / Q4_0 (blocks of 32);
- `pocketlm_auto_torch`: the automatic choice among torch's own paths only (each shape's fastest
  non-`gemv` path in the same timings): what pocketlm's own kernels (`pocketlm.model.cpu_gemv`) add;
- `--compiled`: the automatic choice again, decoding in the torch.compile'd flat step
  (`generate(..., compile=True)`, `pocketlm.model.flat_decode`); its first-call cost is `compile_s`;
- `pocketlm_auto_native` (unless `--no-native`): the automatic choice's kernels decoding in pocketlm's
  native step (`generate(..., native=True)`, `pocketlm.model.native_decode`: one C call per token,
  neither torch eager nor torch.compile); `decode_choice` is what `kernel_choice.choose_decode` picks
  for that model (eager or native, timed on it) and `choice_vs_best` the best of the two rows' time
  over the chosen one's.
The GGUF files come from pocketlm's `export_gguf` of the same weights; llama.cpp runs only when
llama-cpp-python is installed.

Batch 1, greedy. Decode time = time(prompt + N new) - time(prompt + 1 new), so prefill cancels out.
Achieved bandwidth = bytes of weights read per token (every linear's weights once) x tokens/s,
against a ceiling measured in the same run (the best of several full reads of a 512 MiB tensor).

    python benchmarks/bench_decode.py [--threads 2] [--repeat 3] [--precisions fp32,bf16,int8,int4]
                                      [--new 64] [--prompt 64] [--rss] [--compiled] [--no-singles]
                                      [--no-transformers] [--no-native]

`--rss` also runs `pocketlm profile` settings (each in a fresh process) for the peak RSS of fp32
decode: pocketlm with the automatic choice and forced `--pack` vs llama.cpp F32.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import transformers

from pocketlm.interop import load_model
from pocketlm.model.linears import INT_LINEARS
from pocketlm.model.quantize import quantize_model
from pocketlm.runtime import kernel_choice

SMOLLM_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                   num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                   rms_norm_eps=1e-5, tie_word_embeddings=True, rope_theta=10000.0)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.bfloat16, "int4": torch.bfloat16}
GGUF = {"fp32": "F32", "bf16": "F16", "int8": "Q8_0", "int4": "Q4_0"}


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


def read_bandwidth(mib: int = 512, repeat: int = 5) -> float:
    """Bytes/s of the best full read of a large tensor (a sum): the ceiling a decode step, which reads every
    weight once, is held against."""
    src = torch.ones(mib << 18)  # fp32: mib MiB
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        src.sum()
        best = min(best, time.perf_counter() - t0)
    return src.numel() * src.element_size() / best


def bytes_per_token(model) -> int:
    """Bytes a decode step reads from weights: every linear layer's tensors (a tied head counts once)."""
    seen, total = set(), 0
    for module in model.modules():
        if isinstance(module, kernel_choice.PackedLinear):
            total += module.nbytes
            continue
        if not isinstance(module, (torch.nn.Linear, kernel_choice.TransposedLinear, kernel_choice.CpuGemvLinear,
                                   *INT_LINEARS)):
            continue
        for t in list(module.parameters(recurse=False)) + list(module.buffers(recurse=False)):
            if t is not None and t.untyped_storage().data_ptr() not in seen:
                seen.add(t.untyped_storage().data_ptr())
                total += t.untyped_storage().nbytes()
    return total


def pocketlm_runners(base, precision: str, cache: kernel_choice.KernelCache, singles: bool = True) -> tuple[dict, dict]:
    """{name: model} on each single path (`singles`), on the automatic choice, and on the automatic choice
    among torch's own paths only (`pocketlm_auto_torch`: each shape's fastest non-`gemv` path in the
    same timings); and what each holds."""
    dtype = DTYPES[precision]
    models = {}
    if precision in ("fp32", "bf16"):
        plain = copy.deepcopy(base).to(dtype).eval().fuse()
        for path in kernel_choice.FLOAT_PATHS if singles else ():
            m = copy.deepcopy(plain)
            kernel_choice.apply_plan(m, dict.fromkeys(kernel_choice.kernel_shapes(m), path))
            models[f"pocketlm_{path}"] = m
    else:
        plain = quantize_model(copy.deepcopy(base).to(dtype).eval(), precision, 32)
        if singles:
            models["pocketlm_plain"] = plain
    auto = copy.deepcopy(plain)
    t0 = time.perf_counter()
    plan = kernel_choice.choose_kernels(auto, cache)
    info = {"choice_s": time.perf_counter() - t0, "plan": plan}
    models["pocketlm_auto"] = auto
    machine = kernel_choice.machine_key()
    torch_plan = {}
    for key in plan:
        seconds = cache.lookup(machine, key)["seconds"]
        torch_plan[key] = min((p for p in seconds if p not in kernel_choice.GEMV_PATHS), key=seconds.get)
    info["torch_plan"] = torch_plan
    if torch_plan != plan:
        shapes = kernel_choice.kernel_shapes(plain)
        torch_only = plain if not singles or precision in ("fp32", "bf16") else copy.deepcopy(plain)
        kernel_choice.apply_plan(torch_only, {n: torch_plan[s.key] for n, s in shapes.items()}, shapes)
        models["pocketlm_auto_torch"] = torch_only
    return models, info


def llama_runner(base, precision: str, threads: int, tmp: Path, n_ctx: int):
    """A generate(prompt, n) over llama.cpp on `base` exported by pocketlm at the matching GGUF type."""
    try:
        import llama_cpp
    except ImportError:
        return None
    from pocketlm.export.gguf import export_gguf

    qtype = GGUF[precision]
    src = copy.deepcopy(base).to(torch.float32 if qtype == "F32" else torch.bfloat16)
    path = export_gguf(src, tmp / f"model-{qtype}.gguf", qtype, threads=threads)
    del src
    llm = llama_cpp.Llama(str(path), n_ctx=n_ctx, n_batch=n_ctx, n_threads=threads, n_threads_batch=threads,
                          use_mmap=True, verbose=False, seed=0)

    def gen(prompt: torch.Tensor, n: int):
        llm.reset()
        llm.eval(prompt[0].tolist())
        for _ in range(n - 1):
            llm.eval([int(llm.scores[llm.n_tokens - 1].argmax())])

    gen.llm, gen.file_bytes = llm, path.stat().st_size
    return gen


def measure_precision(base, hf, precision: str, args, cache, tmp: Path, ceiling: float) -> dict:
    models, info = pocketlm_runners(base, precision, cache, args.singles)
    runners = {name: (lambda p, n, m=m: m.generate(p, max_new_tokens=n)) for name, m in models.items()}
    auto = models["pocketlm_auto"]
    if args.native:  # the automatic choice's kernels in the native step; and which step the runtime would pick
        from pocketlm.model.native_decode import native_unsupported

        if native_unsupported(auto) is None:
            runners["pocketlm_auto_native"] = lambda p, n: auto.generate(p, max_new_tokens=n, native=True)
            info["decode_choice"] = kernel_choice.choose_decode(auto, cache)
            auto.transforms = dataclasses.replace(auto.transforms, decode="eager")  # the pocketlm_auto row stays eager
        else:
            info["decode_choice"] = {"step": "eager", "reason": native_unsupported(auto)}
    if args.compiled:  # the automatic choice's kernels in the compiled flat decode step (first call compiles)
        runners["pocketlm_auto_compiled"] = lambda p, n: auto.generate(p, max_new_tokens=n, compile=True)
    if precision in ("fp32", "bf16") and args.transformers:
        hf_m = hf.to(DTYPES[precision])

        def hf_gen(p, n):
            with torch.inference_mode():
                return hf_m.generate(p, attention_mask=torch.ones_like(p), max_new_tokens=n, min_new_tokens=n,
                                     do_sample=False, eos_token_id=None, pad_token_id=0)

        runners = {"transformers": hf_gen, **runners}
    llama = llama_runner(base, precision, args.threads, tmp, args.prompt + args.new + 8)
    if llama is not None:
        runners["llamacpp"] = llama
    prompt = torch.randint(0, SMOLLM_135M["vocab_size"], (1, args.prompt), generator=torch.Generator().manual_seed(0))
    if precision == "fp32" and args.transformers:  # every path decodes the transformers tokens
        ref = hf_gen(prompt, 8)
        assert all(torch.equal(m.generate(prompt, max_new_tokens=8), ref) for m in models.values()), "tokens differ"
    t0 = time.perf_counter()
    if "pocketlm_auto_native" in runners:  # the same kernels, the same rounding: recorded, not asserted
        info["native_tokens_equal"] = torch.equal(runners["pocketlm_auto_native"](prompt, 8),
                                                  models["pocketlm_auto"].generate(prompt, max_new_tokens=8))
    if args.compiled:  # kernels that round activations to int8 (cpu_gemv's VNNI paths) may flip a near-tie
        ref = models["pocketlm_auto"].generate(prompt, max_new_tokens=8)  # of random weights: recorded, not asserted
        compiled_same = torch.equal(runners["pocketlm_auto_compiled"](prompt, 8), ref)
    compile_s = time.perf_counter() - t0
    times = decode_times(runners, prompt, args.new, args.repeat)
    n = args.new - 1
    out = {"kernels": info["plan"], "torch_kernels": info["torch_plan"], "choice_s": round(info["choice_s"], 2), "tok_s": {}, "bandwidth_GBs": {}}
    if args.compiled:
        out["compile_s"], out["compiled_tokens_equal"] = round(compile_s, 1), compiled_same
    for name, t in times.items():
        out["tok_s"][name] = round(n / t, 2)
        weights_of = "pocketlm_auto" if name in ("pocketlm_auto_compiled", "pocketlm_auto_native") else name
        same_weights = models.get(weights_of, models["pocketlm_auto"])
        read = llama.file_bytes if name == "llamacpp" else bytes_per_token(same_weights)
        out["bandwidth_GBs"][name] = round(read * n / t / 1e9, 2)
    out["bandwidth_of_ceiling"] = {k: round(v * 1e9 / ceiling, 3) for k, v in out["bandwidth_GBs"].items()}
    singles = [k for k in times if k.startswith("pocketlm_") and not k.startswith("pocketlm_auto")]
    if singles:
        best = min(singles, key=times.get)
        out["auto_vs_best_single"] = round(times[best] / times["pocketlm_auto"], 3)
        out["best_single"] = best
    if "pocketlm_auto_native" in times:
        out["decode_choice"], out["native_tokens_equal"] = info["decode_choice"], info["native_tokens_equal"]
        chosen = "pocketlm_auto_native" if info["decode_choice"]["step"] == "native" else "pocketlm_auto"
        out["choice_vs_best"] = round(min(times["pocketlm_auto"], times["pocketlm_auto_native"]) / times[chosen], 3)
    if "pocketlm_auto_torch" in times:
        out["auto_vs_auto_torch"] = round(times["pocketlm_auto_torch"] / times["pocketlm_auto"], 3)
    for yardstick in ("transformers", "llamacpp"):
        if yardstick in times:
            out[f"auto_vs_{yardstick}"] = round(times[yardstick] / times["pocketlm_auto"], 3)
            for step in ("compiled", "native"):
                if f"pocketlm_auto_{step}" in times:
                    out[f"{step}_vs_{yardstick}"] = round(times[yardstick] / times[f"pocketlm_auto_{step}"], 3)
    if llama is not None:
        llama.llm.close()
    del models, runners
    gc.collect()
    return out


def peak_rss(args) -> dict:
    """Peak RSS of fp32 decode, each in a fresh process (`pocketlm profile`): auto, --pack, llama.cpp F32."""
    from pocketlm.profile.runner import run_setting
    from pocketlm.profile.setting import Setting

    out = {}
    base = dict(model="SmolLM-135M", threads=args.threads, prompts=(args.prompt,), gen=16, depths=(args.prompt,),
                repeat=1, warmup=1)
    for name, extra in (("pocketlm_auto", {}), ("pocketlm_mkldnn", {"pack": True}),
                        ("pocketlm_linear", {"pack": False}), ("llamacpp_F32", {"backend": "llamacpp"})):
        try:
            r = run_setting(Setting(**base, **extra), timeout=900)
        except Exception as e:  # llama.cpp not installed, a worker killed: say so, keep the others
            out[name] = f"failed: {e}"
            continue
        out[name] = round(r["memory"]["peak_rss_bytes"] / 2**20, 1)
    if isinstance(out.get("llamacpp_F32"), float):
        for k, v in out.items():
            if k != "llamacpp_F32" and isinstance(v, float):
                out[f"{k}_vs_llamacpp"] = round(v / out["llamacpp_F32"], 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--precisions", default="fp32,bf16,int8,int4")
    ap.add_argument("--kernel-cache", default=None, help="kernel decisions JSON (default: the user cache)")
    ap.add_argument("--rss", action="store_true", help="also measure fp32 peak RSS in fresh processes")
    ap.add_argument("--compiled", action="store_true",
                    help="also time the automatic choice in the torch.compile'd flat decode step (compiles per precision)")
    ap.add_argument("--native", action=argparse.BooleanOptionalAction, default=True,
                    help="--no-native: skip the native decode step's row (pocketlm_auto_native)")
    ap.add_argument("--singles", action=argparse.BooleanOptionalAction, default=True,
                    help="--no-singles: skip the single-path runners (linear / transposed / mkldnn / plain)")
    ap.add_argument("--transformers", action=argparse.BooleanOptionalAction, default=True,
                    help="--no-transformers: skip the transformers runner (llama.cpp stays)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**SMOLLM_135M)).eval()
    cache = kernel_choice.KernelCache(args.kernel_cache)
    ceiling = read_bandwidth()
    results = {}
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        base = load_model(d).eval()
        for precision in args.precisions.split(","):
            r = results[precision] = measure_precision(base, hf, precision, args, cache, Path(d), ceiling)
            print(f"{precision}: " + "  ".join(f"{k} {v:.1f} tok/s" for k, v in r["tok_s"].items())
                  + (f" | auto/best single {r['auto_vs_best_single']:.2f}x ({r['best_single']})"
                     if "best_single" in r else "")
                  + "".join(f" | auto/{y} {r[f'auto_vs_{y}']:.2f}x" for y in ("transformers", "llamacpp")
                            if f"auto_vs_{y}" in r)
                  + "".join(f" | {step}/{y} {r[f'{step}_vs_{y}']:.2f}x" for step in ("compiled", "native")
                            for y in ("transformers", "llamacpp") if f"{step}_vs_{y}" in r), flush=True)
    report = {"bench": "decode", "threads": args.threads, "prompt": args.prompt, "new": args.new,
              "torch": torch.__version__, "transformers": transformers.__version__,
              "machine": kernel_choice.machine_key(args.threads), "read_ceiling_GBs": round(ceiling / 1e9, 2),
              "results": results}
    if args.rss:
        report["peak_rss_mb"] = peak_rss(args)
        print("peak RSS (MB): " + json.dumps(report["peak_rss_mb"]))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
