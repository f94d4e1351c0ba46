"""`eval kl`: KL(base || other) and top-1 agreement of next-token distributions on a text.

Both models must share a tokenizer (same vocabulary); the text is cut into windows of the base
model's context length and every position's distribution is compared.
"""

from __future__ import annotations

from typing import Any

import torch

from .backends import make_backend


@torch.inference_mode()
def next_token_kl(base: Any, other: Any, tokenizer: Any, text: str, window: int = 512,
                  max_tokens: int | None = None) -> dict[str, float]:
    """Mean/max per-token KL(base || other) in nats, top-1 agreement, and both models' NLL/token."""
    ids = tokenizer.encode(text)
    if max_tokens:
        ids = ids[:max_tokens]
    if len(ids) < 2:
        raise ValueError("the text encodes to fewer than 2 tokens; give a longer --text file")
    ba, bb = make_backend(base, tokenizer), make_backend(other, tokenizer)
    window = min(window, ba.max_length, bb.max_length)
    kl_sum, kl_max, agree, n, nll_a, nll_b = 0.0, 0.0, 0, 0, 0.0, 0.0
    for start in range(0, len(ids) - 1, window):
        chunk = torch.tensor(ids[start:start + window + 1])[None]
        inp, tgt = chunk[:, :-1], chunk[0, 1:]
        mask = torch.ones_like(inp)
        la = ba.forward(inp.to(ba.device), mask.to(ba.device))[0].float().log_softmax(-1).cpu()
        lb = bb.forward(inp.to(bb.device), mask.to(bb.device))[0].float().log_softmax(-1).cpu()
        if la.shape[-1] != lb.shape[-1]:
            raise ValueError(f"vocabularies differ ({la.shape[-1]} vs {lb.shape[-1]}): KL needs models that share "
                             "a tokenizer")
        kl = (la.exp() * (la - lb)).sum(-1)
        kl_sum += float(kl.sum())
        kl_max = max(kl_max, float(kl.max()))
        agree += int((la.argmax(-1) == lb.argmax(-1)).sum())
        nll_a -= float(la.gather(-1, tgt[:, None]).sum())
        nll_b -= float(lb.gather(-1, tgt[:, None]).sum())
        n += tgt.numel()
    return {"tokens": n, "kl_mean": kl_sum / n, "kl_max": kl_max, "top1_agreement": agree / n,
            "nll_base": nll_a / n, "nll_other": nll_b / n}
