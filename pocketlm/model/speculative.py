"""Speculative decoding: a small draft model proposes k tokens, the target checks them in one forward.

Leviathan et al. 2023 ("Fast Inference from Transformers via Speculative Decoding") and Chen et
al. 2023 ("Accelerating LLM Decoding with Speculative Sampling"). Each round the draft samples
d_1..d_k from its distributions q_1..q_k; the target runs once over (pending tokens, d_1..d_k) and
gives p_1..p_{k+1}. Draft token d_i is kept with probability min(1, p_i(d_i) / q_i(d_i)); at the
first rejection the token is drawn from norm(max(0, p_i - q_i)) instead, and if all k are kept a
bonus token is drawn from p_{k+1}. Every emitted token is then distributed exactly as the target
alone would sample it. At temperature 0 both distributions are one-hot (argmax), so a draft token
is kept iff it is the target's argmax, and the output is the target's own greedy output.

Both models keep a KV cache. A rejection rolls a cache back by shortening it (`cache.length`):
slots past the length are overwritten by the next forward and never read before. Ring caches of
sliding-window layers overwrite old slots in place, so such models must fit their window here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from pocketlm.model.transformer import KVCache, Transformer, next_token_probs


class SpeculativeError(ValueError):
    """A draft / target pair or request speculative decoding cannot take; the message says the fix."""


@dataclass
class SpeculativeStats:
    """What one speculative generation did: drafted and kept tokens, forwards of each model."""

    proposed: int = 0
    accepted: int = 0
    target_forwards: int = 0
    draft_forwards: int = 0
    new_tokens: int = 0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0

    @property
    def tokens_per_target_forward(self) -> float:
        return self.new_tokens / self.target_forwards if self.target_forwards else 0.0

    def to_dict(self) -> dict:
        return {"proposed": self.proposed, "accepted": self.accepted, "acceptance_rate": self.acceptance_rate,
                "target_forwards": self.target_forwards, "draft_forwards": self.draft_forwards,
                "new_tokens": self.new_tokens, "tokens_per_target_forward": self.tokens_per_target_forward}


def check_pair(target: Transformer, draft: Transformer, max_len: int) -> None:
    """Raise SpeculativeError unless `draft` can propose tokens for `target` over `max_len` slots."""
    if draft.config.vocab_size != target.config.vocab_size:
        raise SpeculativeError(
            f"the draft's vocabulary ({draft.config.vocab_size} tokens) differs from the target's "
            f"({target.config.vocab_size}); speculative decoding needs one tokenizer: pick a draft model of "
            "the target's family (e.g. a smaller checkpoint trained with the same tokenizer)")
    for name, model in (("target", target), ("draft", draft)):
        cfg = model.config
        if any(cfg.is_sliding(layer) and cfg.sliding_window < max_len for layer in range(cfg.n_stored_layers)):
            raise SpeculativeError(
                f"the {name} has sliding-window layers ({cfg.sliding_window} tokens) shorter than prompt + new "
                f"tokens + k ({max_len}): their ring caches cannot roll back; generate fewer tokens")
        if cfg.positions == "learned" and max_len > cfg.max_seq_len:
            raise SpeculativeError(f"prompt + new tokens + k ({max_len}) exceed the {name}'s {cfg.max_seq_len} "
                                   "learned positions; generate fewer tokens or lower k")


def _forward(model: Transformer, cache: KVCache, tokens: Tensor) -> Tensor:
    """Logits [n, V] for `tokens` [n] fed after what `cache` holds."""
    return model(tokens[None], cache=cache)[0].float()


def _probs(logits: Tensor, temperature: float, top_k: int | None, top_p: float | None) -> Tensor:
    if temperature <= 0:  # greedy: the argmax as a one-hot distribution
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    return next_token_probs(logits, temperature, top_k, top_p)


def _draw(probs: Tensor, greedy: bool, generator: torch.Generator | None) -> int:
    if greedy:
        return int(probs.argmax())
    return int(torch.multinomial(probs, 1, generator=generator))


def verify(p: Tensor, q: Tensor, drafted: list[int], greedy: bool,
           generator: torch.Generator | None) -> tuple[int, int]:
    """The rejection rule: (how many drafted tokens to keep, the token that follows them).

    p: the target's distributions [k + 1, V] after each drafted prefix; q: the draft's [k, V]."""
    for i, d in enumerate(drafted):
        if greedy:
            keep = int(p[i].argmax()) == d
        else:
            ratio = p[i, d] / q[i, d]  # q[i, d] > 0: d was drawn from q[i]
            keep = bool(ratio >= 1) or float(torch.rand((), generator=generator)) < float(ratio)
        if not keep:
            if greedy:
                return i, int(p[i].argmax())
            residual = (p[i] - q[i]).clamp(min=0)
            total = float(residual.sum())
            return i, _draw(residual / total if total > 0 else p[i], False, generator)
    return len(drafted), _draw(p[len(drafted)], greedy, generator)


@torch.inference_mode()
def speculative_generate(target: Transformer, draft: Transformer, input_ids: Tensor, max_new_tokens: int = 32,
                         k: int = 4, temperature: float = 0.0, top_k: int | None = None,
                         top_p: float | None = None, stop_tokens: tuple[int, ...] | list[int] = (),
                         seed: int | None = None) -> tuple[Tensor, SpeculativeStats]:
    """Prompt + new tokens [1, T + n] as `target.generate` would give them, and what the draft saved.

    One prompt (batch 1, no padding); `k` >= 1 tokens drafted per round."""
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise SpeculativeError(f"speculative decoding takes one prompt [1, T]; got shape {tuple(input_ids.shape)} "
                               "(run prompts one at a time)")
    if k < 1:
        raise SpeculativeError(f"k={k}: the draft must propose at least one token per round")
    T = input_ids.shape[1]
    max_len = T + max_new_tokens + k + 1
    check_pair(target, draft, max_len)
    greedy = temperature <= 0
    generator = None if seed is None else torch.Generator(device=input_ids.device).manual_seed(seed)
    stats = SpeculativeStats()
    caches = {"target": target.new_cache(1, max_len), "draft": draft.new_cache(1, max_len)}
    tokens = input_ids[0].tolist()
    stops = set(stop_tokens)
    while len(tokens) - T < max_new_tokens:
        n_draft = min(k, max_new_tokens - (len(tokens) - T) - 1)  # room for the target's own token after them
        drafted, q_rows = [], []
        pending = torch.tensor(tokens[caches["draft"].length:], device=input_ids.device)
        for _ in range(n_draft):
            q = _probs(_forward(draft, caches["draft"], pending)[-1], temperature, top_k, top_p)
            stats.draft_forwards += 1
            drafted.append(_draw(q, greedy, generator))
            q_rows.append(q)
            pending = torch.tensor(drafted[-1:], device=input_ids.device)
        fed = torch.tensor(tokens[caches["target"].length:] + drafted, device=input_ids.device)
        p = _probs(_forward(target, caches["target"], fed)[-(n_draft + 1):], temperature, top_k, top_p)
        stats.target_forwards += 1
        kept, nxt = verify(p, torch.stack(q_rows) if q_rows else p[:0], drafted, greedy, generator)
        stats.proposed += n_draft
        stats.accepted += kept
        new = drafted[:kept] + [nxt]
        for i, tok in enumerate(new):
            if tok in stops:
                new = new[:i + 1]
                break
        tokens += new
        for cache in caches.values():  # roll back to the committed tokens (the last one is fed next round)
            cache.length = min(cache.length, len(tokens) - 1)
        if stops & set(new):
            break
    out = torch.tensor(tokens[:T + max_new_tokens], dtype=input_ids.dtype, device=input_ids.device)[None]
    stats.new_tokens = out.shape[1] - T
    return out, stats
