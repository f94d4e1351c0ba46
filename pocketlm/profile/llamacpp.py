"""Measure a model through llama.cpp (llama-cpp-python): export it to GGUF, then time prefill and
decode and read memory the same way as the torch backend.

llama-cpp-python is an optional extra: `pip install llama-cpp-python==0.3.36` compiles llama.cpp from
source (about 5 minutes on 2 cores).
"""

from __future__ import annotations

import gc
import tempfile
import time
from pathlib import Path

import numpy as np

from pocketlm.profile.source import ProfileError, malloc_trim

# pocketlm dtype names -> GGUF tensor types; GGUF names pass through
DTYPE_TO_GGUF = {"fp32": "F32", "fp16": "F16", "bf16": "BF16", "int8": "Q8_0", "int4": "Q4_0"}


def gguf_type(dtype: str) -> str:
    from pocketlm.export.gguf import GGUF_TYPES

    q = DTYPE_TO_GGUF.get(dtype.lower(), dtype.upper())
    if q not in GGUF_TYPES:
        raise ProfileError(f"llamacpp backend: unknown dtype {dtype!r}; use one of {tuple(DTYPE_TO_GGUF)} "
                           f"or a GGUF type {GGUF_TYPES}")
    return q


def require_llama_cpp():
    try:
        import llama_cpp
    except ImportError as e:
        raise ProfileError("backend llamacpp needs llama-cpp-python: pip install llama-cpp-python==0.3.36 "
                           "(compiles llama.cpp from source, ~5 min)") from e
    return llama_cpp


def kv_bytes_f16(cfg, n_ctx: int) -> int:
    """llama.cpp's default KV cache: F16 keys and values for every layer and context slot."""
    return cfg.n_layer * 2 * cfg.kv_heads(0) * cfg.dim_head * n_ctx * 2


def _summ(times: list[float]) -> dict:
    from pocketlm.profile.timing import summarize

    return summarize(times)


def run_llamacpp(setting: dict) -> dict:
    from pocketlm.export.gguf import export_gguf
    from pocketlm.profile.source import build_model, resolve
    from pocketlm.profile.system import peak_rss_bytes, reset_peak_rss, rss_bytes
    from pocketlm.profile.worker import check_setting, model_info

    llama_cpp = require_llama_cpp()
    spec = resolve(setting["model"])
    cfg = spec.config
    check_setting(cfg, setting)
    qtype = gguf_type(setting["dtype"])
    threads = int(setting["threads"])
    with tempfile.TemporaryDirectory(prefix="pocketlm-gguf-") as tmp:
        path = Path(tmp) / f"model-{qtype}.gguf"
        model = build_model(spec, "fp32" if qtype == "F32" else "bf16", seed=setting.get("seed", 0), pack=False)
        t0 = time.perf_counter()
        export_gguf(model, path, qtype, threads=threads)
        export_s = time.perf_counter() - t0
        info = model_info(cfg)
        if "params" not in info:
            info["params"] = sum(p.numel() for p in model.parameters())
        del model
        gc.collect()
        malloc_trim()
        file_bytes = path.stat().st_size
        longest = max(setting["prompts"] + [d + setting["gen"] for d in setting["depths"]])
        n_ctx = longest + 1
        rss_base = rss_bytes()
        reset_peak_rss()
        t0 = time.perf_counter()
        # n_batch = n_ctx: llama-cpp-python keeps one logits row per batch slot, indexed by position
        llm = llama_cpp.Llama(str(path), n_ctx=n_ctx, n_batch=n_ctx,
                              n_ubatch=max(setting["prompts"]), n_threads=threads, n_threads_batch=threads,
                              use_mmap=True, verbose=False, seed=0)
        load_s = time.perf_counter() - t0
        try:
            rss_loaded = rss_bytes()
            rng = np.random.default_rng(0)
            vocab = cfg.vocab_size
            r, w = setting["repeat"], setting["warmup"]
            prefill = []
            for n in setting["prompts"]:
                toks = rng.integers(0, vocab, n).tolist()
                times = []
                for i in range(w + r):
                    llm.reset()
                    t0 = time.perf_counter()
                    llm.eval(toks)
                    if i >= w:
                        times.append(time.perf_counter() - t0)
                s = _summ(times)
                s.update({"n_prompt": n, "tok_s": n / (s["median_ms"] / 1e3), "times_s": times})
                prefill.append(s)
            peak_after_prefill = peak_rss_bytes()
            decode = []
            for depth in setting["depths"]:
                per_token, rates = [], []
                for i in range(r + (1 if w else 0)):
                    llm.reset()
                    if depth:
                        llm.eval(rng.integers(0, vocab, depth).tolist())
                    tok = int(rng.integers(0, vocab))
                    steps = []
                    for _ in range(setting["gen"]):
                        t0 = time.perf_counter()
                        llm.eval([tok])
                        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
                        steps.append(time.perf_counter() - t0)
                    if w and i == 0:
                        continue
                    per_token += steps
                    rates.append(len(steps) / sum(steps))
                s = _summ(per_token)
                s.update({"depth": depth, "n_gen": setting["gen"], "tok_s": 1e3 / s["median_ms"],
                          "tok_s_mean_run": float(np.median(rates)), "tok_s_min_run": min(rates),
                          "tok_s_max_run": max(rates)})
                decode.append(s)
            peak = peak_rss_bytes()
        finally:
            llm.close()
    kv = kv_bytes_f16(cfg, n_ctx)
    growth = peak_after_prefill - rss_base
    memory = {"weights_bytes": file_bytes, "kv_cache_bytes": kv, "activation_bytes": None,
              "other_bytes": growth - file_bytes - kv, "rss_growth_bytes": growth,
              "peak_rss_bytes": peak, "rss_base_bytes": rss_base, "rss_after_load_bytes": rss_loaded,
              "kv_len": n_ctx, "n_prompt": max(setting["prompts"]),
              "note": "llama.cpp allocates KV (F16) and compute buffers at load; 'other' holds its "
                      "compute buffers, and weights are the GGUF file (memory-mapped)."}
    return {"model_info": info, "gguf_type": qtype, "export_s": export_s, "load_s": load_s,
            "memory": memory, "disk_bytes": file_bytes, "disk_bytes_kind": "GGUF file",
            "prefill": prefill, "decode": decode, "run_peak_rss_bytes": peak,
            "weight_bytes_per_token": file_bytes}
