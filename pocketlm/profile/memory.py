"""Where a model's memory goes: weights, KV cache, activations / compute buffers, and the rest.

Each part is measured two ways where possible: bytes of the tensors themselves (what the part needs)
and the process RSS it added (what the OS charged). Activations are the peak of live bytes that
torch's allocator handed out during a forward pass (from the profiler's allocation events), and
"other" is what the RSS growth leaves unexplained (allocator slack, runtime buffers, thread stacks).
"""

from __future__ import annotations

import gc
import json
import tempfile
from pathlib import Path
from typing import Callable

import torch

from pocketlm.profile.system import peak_rss_bytes, reset_peak_rss, rss_bytes
from pocketlm.runtime import release_memory


def tensor_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's parameters and buffers (shared storage once) plus oneDNN-packed weights."""
    from pocketlm.model.packing import packed_bytes

    seen: set[int] = set()
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        storage = t.untyped_storage()
        if storage.data_ptr() in seen:
            continue
        seen.add(storage.data_ptr())
        total += storage.nbytes()
    return total + packed_bytes(model)


def allocator_peak_bytes(fn: Callable[[], object]) -> int:
    """Peak of (bytes allocated - bytes freed) by torch's allocator while `fn()` runs.

    Counts buffers created and released inside `fn` (activations, attention scores, logits, kernel
    workspaces that go through torch); tensors that existed before `fn` are not included.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as d:
        trace = Path(d) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    mem = [e for e in events if e.get("name") == "[memory]" and "args" in e]
    mem.sort(key=lambda e: (e.get("ts", 0), e["args"].get("Ev Idx", 0)))
    live = peak = 0
    for e in mem:
        if e["args"].get("Device Type", 0) != 0:  # CPU only
            continue
        live += int(e["args"]["Bytes"])
        peak = max(peak, live)
    return peak


def account_memory(model: torch.nn.Module, rss_base: int, max_len: int, n_prompt: int,
                   device: str = "cpu") -> dict:
    """Measure weights, KV cache (for `max_len` tokens) and the activations of an `n_prompt` prefill.

    `rss_base` is the process RSS before the model was built. Returns bytes per kind, the RSS growth
    from `rss_base` to the high-water mark of the prefill, and the unexplained rest ("other").
    """
    if device.startswith("cuda"):
        return _account_cuda(model, max_len, n_prompt)
    ids = torch.randint(0, model.config.vocab_size, (1, n_prompt))
    gc.collect()
    release_memory()
    rss_model = rss_bytes()
    weights = tensor_bytes(model)
    cache = model.new_cache(1, max_len)
    kv = cache.nbytes()
    rss_cache = rss_bytes()
    reset_peak_rss()
    with torch.inference_mode():
        model(ids, cache=cache, last_only=True)
    peak = peak_rss_bytes()
    cache.length = 0
    with torch.inference_mode():
        activations = allocator_peak_bytes(lambda: model(ids, cache=cache, last_only=True))
    growth = peak - rss_base
    explained = weights + kv + activations
    return {
        "weights_bytes": weights, "kv_cache_bytes": kv, "activation_bytes": activations,
        "other_bytes": growth - explained, "rss_growth_bytes": growth, "peak_rss_bytes": peak,
        "rss_base_bytes": rss_base,
        "rss_weights_bytes": rss_model - rss_base, "rss_kv_cache_bytes": rss_cache - rss_model,
        "rss_activation_bytes": peak - rss_cache, "kv_len": max_len, "n_prompt": n_prompt,
    }


def _account_cuda(model, max_len: int, n_prompt: int) -> dict:
    torch.cuda.synchronize()
    weights = tensor_bytes(model)
    cache = model.new_cache(1, max_len)
    kv = cache.nbytes()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    ids = torch.randint(0, model.config.vocab_size, (1, n_prompt), device="cuda")
    with torch.inference_mode():
        model(ids, cache=cache, last_only=True)
    torch.cuda.synchronize()
    activations = torch.cuda.max_memory_allocated() - before
    reserved = torch.cuda.max_memory_reserved()
    return {"weights_bytes": weights, "kv_cache_bytes": kv, "activation_bytes": activations,
            "other_bytes": reserved - weights - kv - activations, "rss_growth_bytes": reserved,
            "peak_rss_bytes": reserved, "kv_len": max_len, "n_prompt": n_prompt, "device_memory": True}
