"""What a compressed model costs and keeps, measured against its dense original.

Perplexity follows the SparseGPT/Wanda evaluation (`eval_ppl_wikitext`): the held-out tokens are cut into
non-overlapping windows of L tokens and every next-token prediction inside a window is scored; KL(dense ||
compressed) and top-1 agreement are taken over the same positions.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
from torch import Tensor


class EvalTextError(ValueError):
    """Held-out text too short to score; the message says how much is needed."""


@torch.no_grad()
def window_logprobs(model: Any, ids: Tensor, window: int) -> list[Tensor]:
    """`model`'s next-token log-probabilities [window - 1, vocab] on each full window of `ids`: the dense
    side of `compare_on_tokens`, computed once when many candidates are compared with one original."""
    return [model(ids[w * window:(w + 1) * window][None])[0, :-1].float().log_softmax(-1)
            for w in range(ids.numel() // window)]


@torch.no_grad()
def compare_on_tokens(dense: Any, compressed: Any, ids: Tensor, window: int,
                      dense_logprobs: list[Tensor] | None = None) -> dict[str, float]:
    """Perplexity of both models, KL(dense || compressed) mean and 99th percentile over tokens (what
    `llama-perplexity --kl-divergence` reports) and top-1 agreement on `ids` [tokens]. `dense_logprobs`:
    `window_logprobs(dense, ids_or_longer, window)` from before (its first windows are these), so the
    original is not run again. `nll_diff_se`: the standard error of the mean log-perplexity difference,
    from its spread over windows (over tokens when there is one window), so a perplexity increase below
    ~2 x ppl x nll_diff_se is within the text's sampling noise. The spread is of paired differences (both
    models on the same window), far tighter than two perplexities' own errors; `window_nll_diffs` lists
    them, so two compressed models' increases can be compared pairwise too."""
    n_windows = ids.numel() // window
    if n_windows == 0:
        raise EvalTextError(f"held-out text has {ids.numel()} tokens, fewer than one window of {window}; "
                            "give a longer --eval-text file")
    nll_a = nll_b = kl = agree = 0.0
    count, per_token, window_diffs = 0, [], []
    for w in range(n_windows):
        chunk = ids[w * window:(w + 1) * window][None]
        la = dense_logprobs[w] if dense_logprobs is not None else dense(chunk)[0, :-1].float().log_softmax(-1)
        lb = compressed(chunk)[0, :-1].float().log_softmax(-1)
        tgt = chunk[0, 1:, None]
        token_nll_a, token_nll_b = -la.gather(-1, tgt)[:, 0].double(), -lb.gather(-1, tgt)[:, 0].double()
        nll_a += float(token_nll_a.sum())
        nll_b += float(token_nll_b.sum())
        token_diff = token_nll_b - token_nll_a
        window_diffs.append(token_diff.mean())
        token_kl = (la.exp() * (la - lb)).sum(-1)
        kl += float(token_kl.sum())
        per_token.append(token_kl)
        agree += float((la.argmax(-1) == lb.argmax(-1)).sum())
        count += tgt.shape[0]
    # one window: the token-level spread (tokens of a window are correlated, so this reads optimistic)
    spread = torch.stack(window_diffs) if n_windows > 1 else token_diff
    se = float(spread.std() / math.sqrt(spread.numel())) if spread.numel() > 1 else 0.0
    return {"tokens": count, "window": window, "ppl_before": math.exp(nll_a / count),
            "ppl_after": math.exp(nll_b / count), "kl_mean": kl / count,
            "kl_p99": float(torch.quantile(torch.cat(per_token).double(), 0.99)), "top1_agreement": agree / count,
            "nll_diff_se": se, "window_nll_diffs": [float(d) for d in window_diffs]}


def decode_latency(model: Any, depth: int = 64, n_gen: int = 32, repeat: int = 3) -> dict[str, float]:
    """Median greedy decode latency per token (ms) after a `depth`-token prompt, eager fp32 on this CPU."""
    from pocketlm.profile.timing import time_decode

    depth = min(depth, model.config.max_seq_len - n_gen - 1)
    out = time_decode(model, depth=depth, n_gen=n_gen, repeat=repeat, warmup=1)
    return {"ms_per_token": out["median_ms"], "iqr_ms": out["iqr_ms"], "depth": depth, "n_gen": n_gen}


def runtime_line(before: dict, after: dict, bytes_before: int, bytes_after: int) -> str:
    """The honest sentence about what unstructured / N:M sparsity buys in this runtime."""
    change = after["ms_per_token"] / before["ms_per_token"] - 1
    return (f"Zeros are stored densely: the weights file is {bytes_before / 1e6:.2f} MB before and "
            f"{bytes_after / 1e6:.2f} MB after, and measured decode latency went from {before['ms_per_token']:.2f} "
            f"to {after['ms_per_token']:.2f} ms/token ({change:+.0%}, within run-to-run noise unless large). "
            "Dense CPU kernels (and llama.cpp) multiply by the zeros, so this sparsity buys no speed or memory "
            "here; structured pruning (smaller matrices) and quantization (fewer bytes per weight) do. "
            "2:4 pays off only on sparse tensor cores (NVIDIA Ampere and later).")


def threads_note() -> str:
    return f"torch threads {torch.get_num_threads()}, CPUs {os.cpu_count()}"
