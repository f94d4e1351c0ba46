"""A config on the survey's axes, plus its analytic costs, as plain data."""

from __future__ import annotations

from typing import Any

from pocketlm.model import costs
from pocketlm.model.config import ModelConfig

NORM_NAMES = {"layernorm": "LayerNorm", "rmsnorm": "RMSNorm"}
ACT_NAMES = {"relu": "ReLU", "gelu": "GELU", "gelu_tanh": "GELU-tanh", "silu": "SiLU"}


def survey_axes(cfg: ModelConfig) -> dict[str, Any]:
    """The survey's architecture axes for one config."""
    widths = {cfg.ffn_dim(i) for i in range(cfg.n_stored_layers)}
    ffn_ratio = (cfg.expert_dim if cfg.n_experts else cfg.ffn_dim(0)) / cfg.d_model
    sharing = []
    if cfg.tie_embeddings:
        sharing.append("tied embeddings")
    if cfg.block_repeat > 1:
        sharing.append(f"block-wise x{cfg.block_repeat}")
    if cfg.shared_ffn:
        sharing.append("shared FFN")
    norm = NORM_NAMES[cfg.norm] + ("" if cfg.norm_affine else " (non-parametric)")
    return {
        "attention": cfg.attention_kind,
        "ffn": ("MoE " if cfg.n_experts else "") + cfg.ffn_type,
        "ffn_ratio": round(ffn_ratio, 2),
        "activation": ACT_NAMES[cfg.activation],
        "norm": norm,
        "norm_placement": "parallel" if cfg.parallel_residual else cfg.norm_placement,
        "positions": cfg.positions + (f" ({cfg.rotary_fraction:g} of dims)" if cfg.rotary_fraction != 1 else ""),
        "vocab": cfg.vocab_size,
        "layers": cfg.n_layer,
        "d_model": cfg.d_model,
        "heads": f"{cfg.heads(0)} q / {cfg.kv_heads(0)} kv" if cfg.attention == "standard" else f"{cfg.heads(0)} (MLA)",
        "head_dim": cfg.dim_head if cfg.attention == "standard" else cfg.qk_nope_head_dim + cfg.qk_rope_head_dim,
        "sharing": ", ".join(sharing) or "none",
        "layer_wise_scaling": len(widths) > 1 or isinstance(cfg.n_head, list),
        "experts": f"{cfg.top_k}/{cfg.n_experts}" + (f" + {cfg.n_shared_experts} shared" if cfg.n_shared_experts else "")
        if cfg.n_experts else "-",
        "sliding_window": cfg.sliding_window or "-",
    }


def cost_summary(cfg: ModelConfig, context: int = 1024) -> dict[str, Any]:
    """Parameters, FLOPs per token and memory at `context` tokens, from the config alone."""
    p = costs.param_counts(cfg)
    f = costs.flops_per_token(cfg, context)
    return {
        "params_total": p["total"], "params_non_embedding": p["non_embedding"], "params_embedding": p["embedding"],
        "params_active": p["active"],
        "gflops_per_token_prefill": f["prefill"] / 1e9, "gflops_per_token_decode": f["decode"] / 1e9,
        "kv_bytes_per_token_bf16": costs.kv_cache_bytes_per_token(cfg, 2),
        "kv_cache_mib_bf16": costs.kv_cache_bytes(cfg, context, 2) / 2**20,
        "weights_mib_fp32": costs.weight_bytes(cfg, 32) / 2**20, "weights_mib_bf16": costs.weight_bytes(cfg, 16) / 2**20,
        "weights_mib_int8": costs.weight_bytes(cfg, 8) / 2**20, "weights_mib_int4": costs.weight_bytes(cfg, 4) / 2**20,
        "context": context,
    }
