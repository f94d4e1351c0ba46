"""Insight 4: quantization helps decode more than prefill — the same models at each precision, on pocketlm's
torch runtime and (when llama-cpp-python is installed) on llama.cpp."""

from __future__ import annotations

from pathlib import Path

from pocketlm.insights.analysis import verdict
from pocketlm.insights.bench import by_depth, by_prompt, profile_models
from pocketlm.insights.plots import paired_bars
from pocketlm.insights.record import Record
from pocketlm.survey.figures import write_csv
from pocketlm.utils import cache_root

CLAIM = ("Quantization cuts decode latency more than prefill latency: decode streams every weight per token "
         "(memory-bound), prefill is compute-bound, where dequantizing costs as much as it saves.")
TORCH = ("fp32", "bf16", "int8", "int4")
LLAMACPP = ("F16", "Q8_0", "Q4_K_M")


def llama_cpp_available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


def run(out_dir: Path, quick: bool = False, threads: int = 1) -> Record:
    models = ["SmolLM-135M"] if quick else ["SmolLM-135M", "SmolLM-360M"]
    prompt, depth = (32, 32) if quick else (128, 64)
    backends = {"torch": TORCH}
    if llama_cpp_available():
        backends["llamacpp"] = LLAMACPP
    # the GGUF files of the random-weight models are a function of config and seed: exported once, then reused
    gguf_dir = cache_root() / "gguf"
    gguf_dir.mkdir(parents=True, exist_ok=True)
    rows, speedups = [], {}
    for model in models:
        for backend, dtypes in backends.items():
            results = profile_models({d: model for d in dtypes}, {d: d for d in dtypes}, backend=backend,
                                     threads=threads, prompts=(prompt,), gen=4 if quick else 8, depths=(depth,),
                                     repeat=2 if quick else 3, warmup=1, skip_unsupported=True,
                                     gguf_dir=str(gguf_dir) if backend == "llamacpp" else None)
            base = dtypes[0]
            pre0, dec0 = by_prompt(results[base])[prompt], by_depth(results[base])[depth]
            for d in dtypes:
                pre, dec = by_prompt(results[d])[prompt], by_depth(results[d])[depth]
                rows.append({"model": model, "backend": backend, "dtype": d, f"prefill{prompt}_ms": round(pre, 3),
                             f"decode_d{depth}_ms": round(dec, 3), "prefill_speedup": round(pre0 / pre, 3),
                             "decode_speedup": round(dec0 / dec, 3),
                             "weights_mb": round(results[d]["memory"]["weights_bytes"] / 2**20, 1)})
                if d != base:
                    speedups[f"{model} {backend} {d} vs {base}"] = (pre0 / pre, dec0 / dec)
    wins = [dec > pre for pre, dec in speedups.values()]
    csv = write_csv(rows, out_dir / "quantization.csv")
    fig = paired_bars(out_dir / "quantization.png",
                      f"Speed-up over each runtime's float baseline ({TORCH[0]} torch, {LLAMACPP[0]} llama.cpp"
                      f"{'' if 'llamacpp' in backends else ': not installed'}), {threads} thread",
                      list(speedups), {f"prefill {prompt} tokens": [p for p, _ in speedups.values()],
                                       f"decode at depth {depth}": [d for _, d in speedups.values()]},
                      "speed-up (x)", reference=1.0)
    summary = (f"decode gained more than prefill in {sum(wins)} of {len(wins)} (model, runtime, precision) pairs"
               + ("" if "llamacpp" in backends else "; llama-cpp-python is not installed, torch only") + ".")
    return Record("quantization", "Quantization: decode vs prefill", CLAIM,
                  "pocketlm insights quantization --out insights_out",
                  {"speedup_prefill_decode": {k: f"{p:.2f}x / {d:.2f}x" for k, (p, d) in speedups.items()},
                   "backends": list(backends)},
                  verdict(wins), summary, str(fig), str(csv))
