"""The llama.cpp backend (llama-cpp-python): export the model to GGUF, then time prefill and decode
and read memory the same way as the torch backend.

llama-cpp-python is an optional extra: `pip install llama-cpp-python==0.3.36` compiles llama.cpp from
source (about 5 minutes on 2 cores).
"""

from __future__ import annotations

import gc
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from pocketlm.model.config import ModelConfig
from pocketlm.profile.setting import ProfileError, Setting
from pocketlm.profile.system import peak_rss_bytes, reset_peak_rss, rss_bytes
from pocketlm.profile.timing import decode_stats, prefill_stats
from pocketlm.runtime import ModelRef, open_model, release_memory

# pocketlm dtype names -> GGUF tensor types; GGUF names pass through
DTYPE_TO_GGUF = {"fp32": "F32", "fp16": "F16", "bf16": "BF16", "int8": "Q8_0", "int4": "Q4_0"}


class LlamaCppBackend:
    name = "llamacpp"

    def check(self, ref: ModelRef, setting: Setting) -> None:
        from pocketlm.export.gguf import unsupported_reasons

        if setting.device != "cpu":
            raise ProfileError("the llamacpp backend is measured on CPU here; drop it for --device cuda")
        require_llama_cpp()
        gguf_type(setting.dtype)
        if setting.gguf_file and not Path(setting.gguf_file).is_file():
            raise ProfileError(f"gguf_file {setting.gguf_file} does not exist; give a GGUF file exported from "
                               f"{ref.name}, or leave it out to export one")
        reasons = unsupported_reasons(ref.config)
        if reasons:
            raise ProfileError(f"{ref.name} cannot run in llama.cpp: " + "; ".join(reasons)
                               + ". Use --backend torch.")

    def measure(self, ref: ModelRef, setting: Setting) -> dict:
        llama_cpp = require_llama_cpp()
        qtype = gguf_type(setting.dtype)
        n_ctx = setting.longest + 1
        with tempfile.TemporaryDirectory(prefix="pocketlm-gguf-") as tmp:
            if setting.gguf_file:  # the caller's file, timed as it is (fit: the very file it scored)
                path, export_s = Path(setting.gguf_file), None
            else:
                cached = cached_gguf(ref, setting, qtype)
                path, export_s = _export(ref, setting, qtype, cached or Path(tmp) / f"model-{qtype}.gguf")
            file_bytes = path.stat().st_size
            rss_base = rss_bytes()
            reset_peak_rss()
            t0 = time.perf_counter()
            # n_batch = n_ctx: llama-cpp-python keeps one logits row per batch slot, indexed by position
            llm = llama_cpp.Llama(str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=max(setting.prompts),
                                  n_threads=setting.threads, n_threads_batch=setting.threads,
                                  use_mmap=True, verbose=False, seed=0)
            load_s = time.perf_counter() - t0
            try:
                rss_loaded = rss_bytes()
                rng = np.random.default_rng(0)
                vocab = ref.config.vocab_size
                prefill = [_time_prefill(llm, n, vocab, setting, rng) for n in setting.prompts]
                peak_after_prefill = peak_rss_bytes()
                decode = [_time_decode(llm, d, vocab, setting, rng) for d in setting.depths]
                peak = peak_rss_bytes()
            finally:
                llm.close()
        kv = kv_bytes_f16(ref.config, n_ctx)
        growth = peak_after_prefill - rss_base
        memory = {"weights_bytes": file_bytes, "kv_cache_bytes": kv, "activation_bytes": None,
                  "other_bytes": growth - file_bytes - kv, "rss_growth_bytes": growth,
                  "peak_rss_bytes": peak, "rss_base_bytes": rss_base, "rss_after_load_bytes": rss_loaded,
                  "kv_len": n_ctx, "n_prompt": max(setting.prompts),
                  "note": "llama.cpp allocates KV (F16) and compute buffers at load; 'other' holds its "
                          "compute buffers, and weights are the GGUF file (memory-mapped)."}
        return {"gguf_type": qtype, "export_s": export_s, "load_s": load_s, "memory": memory,
                "disk_bytes": file_bytes, "disk_bytes_kind": "GGUF file", "prefill": prefill, "decode": decode,
                "run_peak_rss_bytes": peak, "weight_bytes_per_token": file_bytes}


def gguf_type(dtype: str) -> str:
    from pocketlm.export.gguf import GGUF_TYPES

    q = DTYPE_TO_GGUF.get(dtype.lower(), dtype.upper())
    if q not in GGUF_TYPES:
        raise ProfileError(f"llamacpp backend: unknown dtype {dtype!r}; use one of {tuple(DTYPE_TO_GGUF)} "
                           f"or a GGUF type {GGUF_TYPES}")
    return q


def require_llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError as e:
        raise ProfileError("backend llamacpp needs llama-cpp-python: pip install llama-cpp-python==0.3.36 "
                           "(compiles llama.cpp from source, ~5 min)") from e
    return llama_cpp


def kv_bytes_f16(cfg: ModelConfig, n_ctx: int) -> int:
    """llama.cpp's default KV cache: F16 keys and values for every layer and context slot (MLA as
    pocketlm writes it: decompressed per-head keys and values)."""
    if cfg.attention == "mla":
        per_slot = cfg.heads(0) * (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim + cfg.v_head_dim) * cfg.n_layer
    else:
        per_slot = sum(2 * cfg.kv_heads(i) * cfg.dim_head for i in range(cfg.n_layer))
    return per_slot * n_ctx * 2


def cached_gguf(ref: ModelRef, setting: Setting, qtype: str) -> Path | None:
    """Where `setting.gguf_dir` keeps this model's GGUF file, or None (no cache dir, or a checkpoint:
    only random weights are a function of the config and seed, so only they are cached). The name
    holds a hash of the config, so a changed catalog entry is exported again."""
    if not setting.gguf_dir or ref.kind not in ("catalog", "config"):
        return None
    import hashlib
    import json

    key = hashlib.sha256(json.dumps(ref.config.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:12]
    return Path(setting.gguf_dir) / f"{ref.name}-{key}-seed{setting.seed}-{qtype}.gguf"


def _export(ref: ModelRef, setting: Setting, qtype: str, path: Path) -> tuple[Path, float | None]:
    """The GGUF file of the model (from fp32 for F32, else bf16) and the seconds the export took
    (None: a cached file, `cached_gguf`, was reused; export_gguf writes atomically, so it is whole)."""
    from pocketlm.export.gguf import export_gguf

    if path.exists() and path == cached_gguf(ref, setting, qtype):
        return path, None
    model = open_model(ref, "fp32" if qtype == "F32" else "bf16", seed=setting.seed)
    t0 = time.perf_counter()
    export_gguf(model, path, qtype, threads=setting.threads)
    export_s = time.perf_counter() - t0
    del model
    gc.collect()
    release_memory()
    return path, export_s


def _time_prefill(llm, n_prompt: int, vocab: int, setting: Setting, rng: np.random.Generator) -> dict:
    tokens = rng.integers(0, vocab, n_prompt).tolist()
    times = []
    for i in range(setting.warmup + setting.repeat):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(tokens)
        if i >= setting.warmup:
            times.append(time.perf_counter() - t0)
    return prefill_stats(times, n_prompt)


def _time_decode(llm, depth: int, vocab: int, setting: Setting, rng: np.random.Generator) -> dict:
    """Greedy steps after a `depth`-token context; with warm-up, the first run is not counted."""
    per_token, rates = [], []
    for i in range(setting.repeat + (1 if setting.warmup else 0)):
        llm.reset()
        if depth:
            llm.eval(rng.integers(0, vocab, depth).tolist())
        tok = int(rng.integers(0, vocab))
        steps = []
        for _ in range(setting.gen):
            t0 = time.perf_counter()
            llm.eval([tok])
            tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            steps.append(time.perf_counter() - t0)
        if setting.warmup and i == 0:
            continue
        per_token += steps
        rates.append(len(steps) / sum(steps))
    return decode_stats(per_token, rates, depth, setting.gen)
