"""What every structured importance method returns, and which models structured pruning can slice.

Scores are per *query head*, per *kv group*, per FFN channel and per residual (embedding) channel; larger
means more important. A kv group's score is the sum of its query heads' unless a method scores it itself
(first-order Taylor adds the k/v rows' own terms)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from pocketlm.model.config import ModelConfig


class StructuredError(ValueError):
    """A model, shape or target structured pruning cannot serve; the message says why and what to do."""


@dataclass
class Importance:
    method: str
    heads: Tensor  # [L, H] per query head
    ffn: Tensor  # [L, I] per FFN channel
    embed: Tensor  # [C] per residual-stream channel
    kv_groups: Tensor | None = None  # [L, K]; None: sum of each group's query heads
    block_influence: Tensor | None = None  # [L], when the scoring pass measured it on the way (activation)

    def group_scores(self, cfg: ModelConfig) -> Tensor:
        """[L, K] importance of each kv group (with its query heads)."""
        if self.kv_groups is not None:
            return self.kv_groups
        L, H = self.heads.shape
        return self.heads.reshape(L, cfg.kv_heads(0), H // cfg.kv_heads(0)).sum(-1)


def check_sliceable(cfg: ModelConfig) -> None:
    """Raise StructuredError unless `cfg` is a dense, standard-attention, pre-norm model with uniform widths."""
    problems = []
    if cfg.attention != "standard":
        problems.append("MLA attention (slice its latent ranks instead)")
    if cfg.n_experts:
        problems.append("mixture of experts (prune experts with `pocketlm moe`)")
    if cfg.norm_placement != "pre":
        problems.append(f"norm_placement {cfg.norm_placement!r} (only pre-norm)")
    if cfg.block_repeat != 1 or cfg.shared_ffn:
        problems.append("shared blocks or a shared FFN")
    if cfg.embed_proj_dim:
        problems.append("an embedding projection (OPT-350m)")
    if cfg.qk_norm == "full":
        problems.append("qk_norm 'full' (norms across all heads)")
    if any(isinstance(getattr(cfg, f), list) for f in ("n_head", "n_kv_head", "intermediate_size")):
        problems.append("per-layer widths")
    if problems:
        raise StructuredError(f"{cfg.name or 'this model'}: structured pruning does not support "
                              + "; ".join(problems))


def aggregate(x: Tensor, seq: str, batch: str) -> Tensor:
    """Minitron's aggregation of per-token magnitudes x [B, T, n] >= 0 over the sequence then the batch:
    'mean' or 'l2' along each axis; returns [n]. For sums over many batches, `batch='l2'` returns the
    sum of squares (take the root once at the end) and 'mean' the sum."""
    per_seq = x.mean(1) if seq == "mean" else x.pow(2).sum(1).sqrt()
    return per_seq.sum(0) if batch == "mean" else per_seq.pow(2).sum(0)


def finish(total: Tensor, batch: str, count: int) -> Tensor:
    return total / max(count, 1) if batch == "mean" else total.sqrt()


AGGREGATIONS = ("mean", "l2")


def check_aggregation(seq: str, batch: str) -> None:
    for axis, v in (("sequence", seq), ("batch", batch)):
        if v not in AGGREGATIONS:
            raise StructuredError(f"{axis} aggregation {v!r} unknown; choose one of {AGGREGATIONS}")


def zeros(cfg: ModelConfig) -> tuple[Tensor, Tensor, Tensor]:
    L = cfg.n_layer
    return torch.zeros(L, cfg.heads(0)), torch.zeros(L, cfg.ffn_dim(0)), torch.zeros(cfg.d_model)
