"""Model adapters for the scorer: one small interface over pocketlm and transformers models.

Scoring needs ``forward`` (logits for padded token batches) and, to compute an example's shared
prefix once, a KV cache: ``prefill`` a batch of prefixes, ``select`` cache rows (one per choice)
and ``extend`` each row with its own continuation. Models that are only a callable
``logits = model(input_ids, attention_mask)`` get ``forward`` alone (``supports_cache`` False).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class ModelInputError(ValueError):
    """The model or tokenizer handed to the evaluator cannot be used."""


def _hf_max_length(config: Any, tokenizer: Any, default: int = 2048) -> int:
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    tml = getattr(tokenizer, "model_max_length", None)
    if isinstance(tml, int) and 0 < tml < 10**12:
        return tml
    return default


class Backend:
    """Callable-only model: ``model(input_ids, attention_mask) -> logits``."""

    supports_cache = False

    def __init__(self, model: Any, max_length: int = 2048):
        self.model = model
        self.max_length = max_length
        params = list(model.parameters()) if hasattr(model, "parameters") else []
        self.device = params[0].device if params else torch.device("cpu")

    def forward(self, ids: Tensor, mask: Tensor, positions: Tensor | None = None, keep: int = 0) -> Tensor:
        """Logits [B, keep, V] of the last `keep` positions (all positions when keep is 0)."""
        logits = self.model(ids, mask)
        return logits[:, -keep:] if keep else logits

    def prefill(self, ids: Tensor, mask: Tensor, positions: Tensor, capacity: int, keep: int = 1) -> tuple[Tensor, Any]:
        raise NotImplementedError

    def select(self, cache: Any, rows: Tensor) -> Any:
        raise NotImplementedError

    def extend(self, cache: Any, ids: Tensor, mask: Tensor, positions: Tensor) -> Tensor:
        raise NotImplementedError


class HFBackend(Backend):
    """A transformers ``*ForCausalLM`` (DynamicCache prefix reuse, explicit position ids)."""

    supports_cache = True

    def __init__(self, model: Any, tokenizer: Any = None, max_length: int | None = None):
        super().__init__(model, max_length or _hf_max_length(model.config, tokenizer))

    def forward(self, ids, mask, positions=None, keep=0):
        return self.model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep).logits

    def prefill(self, ids, mask, positions, capacity, keep=1):
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                         logits_to_keep=keep)
        return out.logits, out.past_key_values

    def select(self, cache, rows):
        cache.batch_select_indices(rows)
        return cache

    def extend(self, cache, ids, mask, positions):
        return self.model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                          use_cache=True).logits


class PocketBackend(Backend):
    """A pocketlm ``Transformer`` (preallocated KVCache)."""

    supports_cache = True

    def __init__(self, model: Any, max_length: int | None = None):
        super().__init__(model, max_length or int(model.config.max_seq_len))

    def _logits(self, ids, mask, positions, cache, keep):
        h, _ = self.model.forward_hidden(ids, mask, cache, positions)
        return self.model.logits(h[:, -keep:] if keep else h)

    def forward(self, ids, mask, positions=None, keep=0):
        return self._logits(ids, mask, positions, None, keep)

    def prefill(self, ids, mask, positions, capacity, keep=1):
        cache = self.model.new_cache(ids.shape[0], capacity)
        return self._logits(ids, mask, positions, cache, keep), cache

    def select(self, cache, rows):
        return cache.select_rows(rows)

    def extend(self, cache, ids, mask, positions):
        return self.model(ids, mask, cache=cache, position_ids=positions)


def make_backend(model: Any, tokenizer: Any = None, max_length: int | None = None) -> Backend:
    """Pick the adapter for a pocketlm Transformer, a transformers model, or a plain callable."""
    if isinstance(model, Backend):
        return model
    if hasattr(model, "new_cache") and hasattr(model, "forward_hidden"):
        return PocketBackend(model, max_length)
    if hasattr(model, "config") and hasattr(model, "generation_config"):
        return HFBackend(model, tokenizer, max_length)
    if callable(model):
        return Backend(model, max_length or 2048)
    raise ModelInputError(f"cannot evaluate a {type(model).__name__}: pass a pocketlm Transformer, a transformers "
                          "causal LM, or a callable model(input_ids, attention_mask) -> logits")
