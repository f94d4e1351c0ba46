"""Proxy tuning (Liu et al. 2024, "Tuning Language Models by Proxy", arXiv:2401.08565): steer a
base model at decode time with the difference between a small tuned model ("expert") and the same
small model untuned ("antiexpert"):

    logits = base + α · (expert − antiexpert)        (raw next-token logits, then softmax/argmax)

`ProxyTuned` behaves like a pocketlm Transformer where evaluation and generation need one:
`forward`, `forward_hidden` + `logits` (the three models' final hidden states travel side by side
and `logits` combines them, so the evaluator's prefix reuse and keep-last-k logic work unchanged),
`new_cache` (one KV cache per model, rows selected together) and `generate` (Transformer's own).
Each model runs its full batch; the three run one after another. The tokenizers are checked equal
when opened from directories. Model spec: `proxy:base=DIR,expert=DIR,anti=DIR[,alpha=1.0]`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from pocketlm.model.transformer import Transformer


class ProxyError(ValueError):
    """A proxy-tuning spec or model triple that cannot work together."""


@dataclass
class ProxyCache:
    """The three models' KV caches, advanced and row-selected together."""

    base: object
    expert: object
    anti: object

    @property
    def length(self) -> int:
        return self.base.length

    @length.setter
    def length(self, value: int) -> None:  # rewinding (profile reuses one cache across runs)
        for c in (self.base, self.expert, self.anti):
            c.length = value

    @property
    def max_len(self) -> int:
        return self.base.max_len

    def nbytes(self) -> int:
        return self.base.nbytes() + self.expert.nbytes() + self.anti.nbytes()

    def select_rows(self, index: Tensor) -> "ProxyCache":
        return ProxyCache(self.base.select_rows(index), self.expert.select_rows(index), self.anti.select_rows(index))


class ProxyTuned(nn.Module):
    """Next-token logits base + α (expert − antiexpert); see the module docstring."""

    def __init__(self, base: Transformer, expert: Transformer, anti: Transformer, alpha: float = 1.0):
        super().__init__()
        vocab = {m.config.vocab_size for m in (base, expert, anti)}
        if len(vocab) != 1:
            raise ProxyError(f"vocabulary sizes differ (base {base.config.vocab_size}, expert "
                             f"{expert.config.vocab_size}, antiexpert {anti.config.vocab_size}); proxy tuning adds "
                             "logits token by token, so the three models need one tokenizer")
        self.base, self.expert, self.anti, self.alpha = base, expert, anti, float(alpha)
        max_len = min(m.config.max_seq_len for m in (base, expert, anti))
        self.config = base.config.replace(max_seq_len=max_len, name=f"proxy({base.config.name or 'base'})")
        self.packed = False
        self._widths = [m.config.d_model for m in (base, expert, anti)]

    @property
    def models(self) -> tuple[Transformer, Transformer, Transformer]:
        return self.base, self.expert, self.anti

    def new_cache(self, batch_size: int, max_len: int, dtype: torch.dtype | None = None) -> ProxyCache:
        return ProxyCache(*(m.new_cache(batch_size, max_len, dtype) for m in self.models))

    def forward_hidden(self, input_ids: Tensor, attention_mask: Tensor | None = None, cache: ProxyCache | None = None,
                       position_ids: Tensor | None = None, collect_layers: bool = False) -> tuple[Tensor, list[Tensor]]:
        """The three final hidden states concatenated on the last axis: [B, T, C_base + C_exp + C_anti]."""
        caches = (cache.base, cache.expert, cache.anti) if cache is not None else (None, None, None)
        hs = [m.forward_hidden(input_ids, attention_mask, c, position_ids)[0].float()
              for m, c in zip(self.models, caches)]
        return torch.cat(hs, dim=-1), []

    def logits(self, h: Tensor) -> Tensor:
        hb, he, ha = h.split(self._widths, dim=-1)
        lb, le, la = (m.logits(x.to(next(m.parameters()).dtype)).float() for m, x in zip(self.models, (hb, he, ha)))
        return lb + self.alpha * (le - la)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, cache: ProxyCache | None = None,
                position_ids: Tensor | None = None, last_only: bool = False) -> Tensor:
        h, _ = self.forward_hidden(input_ids, attention_mask, cache, position_ids)
        return self.logits(h[:, -1:] if last_only else h)

    generate = Transformer.generate  # greedy / sampled decoding over the combined logits


# ---- the model spec -----------------------------------------------------------------------------------

ROLES = ("base", "expert", "anti")


def parse_spec(spec: str) -> tuple[dict[str, Path], float]:
    """`proxy:base=DIR,expert=DIR,anti=DIR[,alpha=A]` -> ({role: path}, alpha)."""
    if not spec.startswith("proxy:"):
        raise ProxyError(f"{spec!r} is not a proxy spec (proxy:base=DIR,expert=DIR,anti=DIR[,alpha=1.0])")
    parts: dict[str, str] = {}
    for item in spec[len("proxy:"):].split(","):
        key, sep, value = item.partition("=")
        if not sep or not value:
            raise ProxyError(f"{spec!r}: {item!r} is not key=value")
        parts[key.strip()] = value.strip()
    parts.setdefault("anti", parts.pop("antiexpert", ""))
    unknown = sorted(set(parts) - set(ROLES) - {"alpha"})
    missing = [r for r in ROLES if not parts.get(r)]
    if unknown or missing:
        raise ProxyError(f"{spec!r}: {'unknown ' + str(unknown) + '; ' if unknown else ''}"
                         f"{'missing ' + str(missing) + '; ' if missing else ''}give base=, expert=, anti= (and "
                         "optionally alpha=)")
    try:
        alpha = float(parts.get("alpha", 1.0))
    except ValueError:
        raise ProxyError(f"{spec!r}: alpha must be a number, got {parts['alpha']!r}") from None
    return {r: Path(parts[r]).expanduser() for r in ROLES}, alpha


def open_proxy(spec: str, precision: str = "fp32") -> ProxyTuned:
    """The proxy-tuned model a spec names, each part opened at `precision`; tokenizers checked equal."""
    from pocketlm.interop.vocab import TokenizerMismatch, check_same_tokenizer
    from pocketlm.runtime import open_model

    paths, alpha = parse_spec(spec)
    for role, p in paths.items():
        if not p.is_dir():
            raise ProxyError(f"{spec!r}: {role} {p} is not a model directory")
    try:
        check_same_tokenizer(paths, require=True)
    except TokenizerMismatch as e:
        raise ProxyError(str(e)) from e
    return ProxyTuned(*(open_model(paths[r], precision) for r in ROLES), alpha=alpha)


# ---- cost ------------------------------------------------------------------------------------------

def _weights_mib(model: nn.Module) -> float:
    seen = {id(p): p.numel() * p.element_size() for p in model.parameters()}
    return sum(seen.values()) / 2**20


@torch.no_grad()
def decode_cost(proxy: ProxyTuned, tokenizer, prompts: list[str], max_new_tokens: int = 32) -> dict:
    """Greedy decode of `prompts` (left-padded batch) by the base alone and by the proxy: texts,
    tokens/s, weight and KV-cache memory of each (the proxy's cost is three models' worth)."""
    import time

    enc = [tokenizer.encode(p) for p in prompts]
    T = max(len(e) for e in enc)
    pad = getattr(tokenizer, "pad_token_id", None) or 0
    ids = torch.tensor([[pad] * (T - len(e)) + e for e in enc])
    mask = torch.tensor([[0] * (T - len(e)) + [1] * len(e) for e in enc])
    report = {}
    for who, model in (("base", proxy.base), ("proxy", proxy)):
        t0 = time.perf_counter()
        out = model.generate(ids, mask, max_new_tokens=max_new_tokens)
        dt = time.perf_counter() - t0
        new = out[:, T:]
        kv = model.new_cache(len(prompts), T + max_new_tokens).nbytes() / 2**20
        report[who] = {"tokens_per_s": new.numel() / dt, "seconds": dt, "weights_mib": _weights_mib(model),
                       "kv_mib": kv, "texts": [tokenizer.decode(r.tolist()) for r in new]}
    report["ratio_tokens_per_s"] = report["proxy"]["tokens_per_s"] / report["base"]["tokens_per_s"]
    return report
