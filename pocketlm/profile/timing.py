"""Prefill and decode latency of a pocketlm Transformer, with warm-up, repeats, median and spread;
and the torch.compile'd runtime, compiled up front so compiling stays out of the timings."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def summarize(values: list[float]) -> dict:
    """Median, min, max, and the interquartile range of a list of seconds, in milliseconds."""
    ms = sorted(v * 1e3 for v in values)
    q = statistics.quantiles(ms, n=4) if len(ms) >= 2 else [ms[0]] * 3
    return {"median_ms": statistics.median(ms), "min_ms": ms[0], "max_ms": ms[-1],
            "iqr_ms": q[2] - q[0], "n": len(ms)}


def _tokens(n: int, vocab: int, device: str, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (1, n), generator=g).to(device)


@torch.inference_mode()
def time_prefill(model, n_prompt: int, repeat: int, warmup: int, device: str = "cpu") -> dict:
    """Seconds to run an `n_prompt`-token prompt into an empty KV cache and produce next-token logits."""
    vocab = model.config.vocab_size
    ids = _tokens(n_prompt, vocab, device, seed=n_prompt)
    times = []
    for i in range(warmup + repeat):
        cache = model.new_cache(1, n_prompt + 1)
        sync(device)
        t0 = time.perf_counter()
        model(ids, cache=cache, last_only=True)
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
        del cache
    return prefill_stats(times, n_prompt)


def prefill_stats(times: list[float], n_prompt: int) -> dict:
    """Summary of prefill runs of `n_prompt` tokens (every backend reports these keys)."""
    out = summarize(times)
    out.update({"n_prompt": n_prompt, "tok_s": n_prompt / (out["median_ms"] / 1e3), "times_s": times})
    return out


@torch.inference_mode()
def decode_steps(model, depth: int, n_gen: int, device: str = "cpu",
                 on_step: Callable[[int], None] | None = None) -> list[float]:
    """Per-token seconds of `n_gen` greedy decode steps after a `depth`-token context (prefilled, untimed)."""
    vocab = model.config.vocab_size
    cache = model.new_cache(1, depth + n_gen + 1)
    if depth:
        model(_tokens(depth, vocab, device, seed=depth), cache=cache, last_only=True)
    tok = _tokens(1, vocab, device, seed=1)
    times = []
    for _ in range(n_gen):
        sync(device)
        t0 = time.perf_counter()
        logits = model(tok, cache=cache, last_only=True)
        tok = logits[:, -1].argmax(-1, keepdim=True)
        sync(device)
        times.append(time.perf_counter() - t0)
        if on_step:
            on_step(len(times))
    return times


def time_decode(model, depth: int, n_gen: int, repeat: int, warmup: int, device: str = "cpu") -> dict:
    """Decode latency at context depth `depth`: per-token median over all repeats, tokens/s per repeat."""
    if warmup:
        decode_steps(model, depth, min(n_gen, 4), device)
    per_token: list[float] = []
    rates: list[float] = []
    for _ in range(repeat):
        steps = decode_steps(model, depth, n_gen, device)
        per_token += steps
        rates.append(len(steps) / sum(steps))
    return decode_stats(per_token, rates, depth, n_gen)


def decode_stats(per_token: list[float], rates: list[float], depth: int, n_gen: int) -> dict:
    """Summary of decode runs: per-token seconds over all runs, and each run's tokens/s."""
    out = summarize(per_token)
    out.update({
        "depth": depth, "n_gen": n_gen,
        "tok_s": 1e3 / out["median_ms"],  # from the median token: robust to a busy machine
        "tok_s_mean_run": statistics.median(rates), "tok_s_min_run": min(rates), "tok_s_max_run": max(rates),
    })
    return out


def compile_model(model, n_prompt: int, longest: int, device: str):
    """The compiled runtime and the seconds of its first calls.

    Where the flat decode step covers the model (`pocketlm.model.flat_decode`): decode steps run one
    torch.compile'd flat function on a static KV cache (one graph per power-of-two cache size,
    compiled here for the sizes a profile meets), prefill runs eagerly. Otherwise the module tree is
    compiled with dynamic shapes: an eager pass over `longest` positions first builds the lazy tables
    (RoPE) at full size, then the first calls compile the three shapes a profile meets (a prefill, a
    decode step after it, a decode step into an empty cache). Any later specialization lands in the
    timing warm-up; `compiled.compile_s` (flat step) keeps counting it. The eager `model` is kept for
    the breakdown, whose hooks need module boundaries."""
    from pocketlm.model.flat_decode import FlatDecoder, cache_size, flat_unsupported

    vocab = model.config.vocab_size
    with torch.inference_mode():
        if flat_unsupported(model) is None and device == "cpu":
            compiled = FlatDecoder(model, compile=True)
            t0 = time.perf_counter()
            for size in sorted({cache_size(n_prompt + 2), cache_size(longest + 1)}):
                cache = compiled.new_cache(1, size)
                compiled(torch.randint(0, vocab, (1, 1), device=device), cache=cache, last_only=True)
            return compiled, time.perf_counter() - t0
        model(torch.zeros(1, longest, dtype=torch.long, device=device), last_only=True)
        compiled = torch.compile(model, dynamic=True)
        t0 = time.perf_counter()
        cache = model.new_cache(1, n_prompt + 2)
        tok = compiled(torch.randint(0, vocab, (1, n_prompt), device=device), cache=cache, last_only=True).argmax(-1)
        compiled(tok, cache=cache, last_only=True)
        compiled(tok, cache=model.new_cache(1, 2), last_only=True)
    return compiled, time.perf_counter() - t0
