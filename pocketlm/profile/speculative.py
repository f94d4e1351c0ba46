"""`pocketlm profile TARGET --draft SMALL`: speculative decoding measured against the target alone.

Both runs decode the same prompt greedily in this process, alternating every repeat; decode time is
time(prompt + n new) - time(prompt + 1 new), so the prefill cancels out. Reported: the draft's
acceptance rate, tokens per target forward, ms per new token each way and their ratio (the speedup),
and whether the outputs were identical (greedy speculative decoding must give the target's tokens)."""

from __future__ import annotations

import statistics
import time

import torch

from pocketlm.model.speculative import SpeculativeError, check_pair, speculative_generate
from pocketlm.profile.setting import ProfileError
from pocketlm.runtime import ModelRef


def check_draft(target: ModelRef, draft: ModelRef, longest: int, k: int) -> None:
    """One tokenizer for both (vocabulary sizes; the tokenizer files where both ship them), k >= 1."""
    from pocketlm.interop.vocab import TokenizerMismatch, check_same_tokenizer

    if k < 1:
        raise ProfileError(f"--k {k}: the draft must propose at least one token per round")
    if draft.config.vocab_size != target.config.vocab_size:
        raise ProfileError(f"--draft {draft.text}: its vocabulary ({draft.config.vocab_size} tokens) differs from "
                           f"{target.name}'s ({target.config.vocab_size}); the draft must share the target's tokenizer")
    if target.kind == "checkpoint" and draft.kind == "checkpoint":
        try:
            check_same_tokenizer({target.name: target.path, draft.text: draft.path})
        except TokenizerMismatch as e:
            raise ProfileError(f"--draft {draft.text}: {e}") from e
    if longest + k + 1 > draft.config.max_seq_len and draft.config.positions == "learned":
        raise ProfileError(f"--draft {draft.text}: context {longest + k + 1} exceeds its {draft.config.max_seq_len} "
                           "positions; use a shorter --depth / --gen or a smaller --k")


def time_speculative(target, draft, depth: int, n_gen: int, k: int, repeat: int, warmup: int) -> dict:
    """Greedy decode of `n_gen` tokens after a `depth`-token prompt, target alone vs with `draft`."""
    vocab = target.config.vocab_size
    prompt = torch.randint(0, vocab, (1, max(depth, 1)), generator=torch.Generator().manual_seed(depth))
    try:
        check_pair(target, draft, prompt.shape[1] + n_gen + k + 1)
    except SpeculativeError as e:
        raise ProfileError(f"--draft: {e}") from e

    def alone(n: int):
        return target.generate(prompt, max_new_tokens=n), None

    def spec(n: int):
        return speculative_generate(target, draft, prompt, max_new_tokens=n, k=k)

    for _ in range(max(warmup, 1)):
        alone(2), spec(2)
    times: dict[str, list[float]] = {"alone": [], "speculative": []}
    outputs, stats = {}, None
    for _ in range(repeat):
        for name, run in (("alone", alone), ("speculative", spec)):
            t0 = time.perf_counter()
            outputs[name], run_stats = run(n_gen)
            t1 = time.perf_counter()
            run(1)
            times[name].append((t1 - t0) - (time.perf_counter() - t1))
            stats = run_stats or stats
    ms = {name: statistics.median(v) * 1e3 / max(n_gen - 1, 1) for name, v in times.items()}
    return {"k": k, "depth": depth, "n_gen": n_gen, **stats.to_dict(),
            "alone_ms_per_token": ms["alone"], "speculative_ms_per_token": ms["speculative"],
            "speedup": ms["alone"] / ms["speculative"],
            "same_output": bool(torch.equal(outputs["alone"][0], outputs["speculative"][0]))}


def speculative_line(result: dict) -> str:
    s = result["speculative"]
    return (f"speculative k={s['k']} (draft {result['setting']['draft']}): acceptance {s['acceptance_rate']:.2f}, "
            f"{s['tokens_per_target_forward']:.2f} tokens per target forward, {s['alone_ms_per_token']:.1f} -> "
            f"{s['speculative_ms_per_token']:.1f} ms/token ({s['speedup']:.2f}x), "
            f"output {'identical' if s['same_output'] else 'DIFFERS'}")
