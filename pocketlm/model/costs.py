"""Analytic costs of a ModelConfig: parameters, FLOPs per token, KV-cache and weight bytes.

Counted from the config alone (no weights needed), so they work for a 3B catalog entry on a laptop.
Conventions:
- `embedding` = token embedding + learned positions + an untied LM head (the vocabulary-sized
  matrices); `non_embedding` = the rest (blocks, norms, projections);
- `active` = parameters used for one token (MoE: only top_k of the routed experts);
- FLOPs count a multiply-add as 2 and cover matmuls (weights and attention scores/values); norms,
  activations and softmax are ignored (< 1%).
"""

from __future__ import annotations

from pocketlm.model.config import ModelConfig


def _norm(cfg: ModelConfig, dim: int) -> int:
    if not cfg.norm_affine:
        return 0
    return dim * (2 if cfg.norm == "layernorm" and cfg.norm_bias else 1)


def _linear(n_in: int, n_out: int, bias: bool) -> int:
    return n_in * n_out + (n_out if bias else 0)


def _mlp(cfg: ModelConfig, width: int, gated: bool, bias: bool) -> int:
    C = cfg.d_model
    n_in = 2 if gated else 1
    return n_in * _linear(C, width, bias) + _linear(width, C, bias)


def attention_params(cfg: ModelConfig, layer: int) -> int:
    C = cfg.d_model
    H = cfg.heads(layer)
    if cfg.attention == "mla":
        qk = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim
        if cfg.q_lora_rank:
            q = _linear(C, cfg.q_lora_rank, cfg.qkv_bias) + _norm(cfg, cfg.q_lora_rank) + cfg.q_lora_rank * H * qk
        else:
            q = C * H * qk
        kv = (_linear(C, cfg.kv_lora_rank + cfg.qk_rope_head_dim, cfg.qkv_bias) + _norm(cfg, cfg.kv_lora_rank)
              + cfg.kv_lora_rank * H * (cfg.qk_nope_head_dim + cfg.v_head_dim))
        return q + kv + _linear(H * cfg.v_head_dim, C, cfg.attn_out_bias)
    K, D = cfg.kv_heads(layer), cfg.dim_head
    n = _linear(C, H * D, cfg.qkv_bias) + 2 * _linear(C, K * D, cfg.qkv_bias) + _linear(H * D, C, cfg.attn_out_bias)
    if cfg.qk_norm == "head":
        n += 2 * _norm(cfg, D)
    elif cfg.qk_norm == "full":
        n += _norm(cfg, H * D) + _norm(cfg, K * D)
    return n


def ffn_params(cfg: ModelConfig, layer: int) -> tuple[int, int]:
    """(total, active) parameters of one layer's FFN."""
    gated = cfg.ffn_type == "gated"
    if not cfg.is_moe(layer):
        n = _mlp(cfg, cfg.ffn_dim(layer), gated, cfg.mlp_bias)
        return n, n
    C, E, I = cfg.d_model, cfg.n_experts, cfg.expert_dim
    expert = 3 * C * I
    shared = 0
    if cfg.n_shared_experts:
        width = cfg.shared_expert_intermediate_size or cfg.n_shared_experts * I
        shared = _mlp(cfg, width, True, False) + (C if cfg.shared_expert_gate else 0)
    router = C * E
    return router + E * expert + shared, router + cfg.top_k * expert + shared


def block_norm_params(cfg: ModelConfig) -> int:
    n = _norm(cfg, cfg.d_model) * (1 if cfg.parallel_residual and cfg.parallel_shared_norm else 2)
    return n + (2 * _norm(cfg, cfg.d_model) if cfg.norm_placement == "sandwich" else 0)


def param_counts(cfg: ModelConfig) -> dict[str, int]:
    """Exact parameter counts: total, embedding, non_embedding, active (per token)."""
    C, V = cfg.d_model, cfg.vocab_size
    emb_dim = cfg.embed_proj_dim or C
    embedding = V * emb_dim
    if cfg.positions == "learned":
        embedding += (cfg.max_seq_len + cfg.learned_pos_offset) * C
    if not cfg.tie_embeddings:
        embedding += V * emb_dim
    other = V if cfg.lm_head_bias else 0
    if cfg.embed_proj_dim:
        other += 2 * emb_dim * C
    other += _norm(cfg, C) * (int(cfg.embed_norm) + int(cfg.final_norm))
    blocks = active_blocks = 0
    for i in range(cfg.n_stored_layers):
        attn = attention_params(cfg, i) + block_norm_params(cfg)
        ffn, ffn_active = (0, 0) if cfg.shared_ffn else ffn_params(cfg, i)
        blocks += attn + ffn
        active_blocks += attn + ffn_active
    if cfg.shared_ffn:
        shared = _mlp(cfg, cfg.ffn_dim(0), cfg.ffn_type == "gated", cfg.mlp_bias)
        blocks += shared
        active_blocks += shared
    total = embedding + other + blocks
    return {"total": total, "embedding": embedding, "non_embedding": total - embedding,
            "active": total - blocks + active_blocks}


def _attended(cfg: ModelConfig, layer: int, context: int) -> int:
    return min(context, cfg.sliding_window) if cfg.is_sliding(layer) else context


def flops_per_token(cfg: ModelConfig, context: int) -> dict[str, float]:
    """FLOPs for one token: `decode` at `context` tokens already cached; `prefill` averaged over
    the tokens of a `context`-long prompt."""
    C, V = cfg.d_model, cfg.vocab_size
    schedule = [i // cfg.block_repeat for i in range(cfg.n_layer)]
    weights = 2 * (cfg.embed_proj_dim or C) * V  # LM head
    if cfg.embed_proj_dim:
        weights += 2 * 2 * cfg.embed_proj_dim * C
    for layer in schedule:
        _, ffn_active = ffn_params(cfg, layer) if not cfg.shared_ffn else (0, _mlp(
            cfg, cfg.ffn_dim(0), cfg.ffn_type == "gated", cfg.mlp_bias))
        weights += 2 * (attention_params(cfg, layer) + ffn_active)

    def attention(ctx: int) -> float:
        total = 0.0
        for layer in schedule:
            H, n = cfg.heads(layer), _attended(cfg, layer, ctx)
            if cfg.attention == "mla":
                qk, vd = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim, cfg.v_head_dim
                total += 2 * n * H * (qk + vd)
            else:
                total += 2 * n * H * cfg.dim_head * 2
        return total

    def mla_expand(ctx: int) -> float:  # decode re-expands the cached latent every step
        if cfg.attention != "mla":
            return 0.0
        per = 2 * cfg.kv_lora_rank * cfg.heads(0) * (cfg.qk_nope_head_dim + cfg.v_head_dim)
        return sum(per * _attended(cfg, layer, ctx) for layer in schedule)

    decode = weights + attention(context + 1) + mla_expand(context + 1)
    prefill = weights + sum(attention(t + 1) for t in range(context)) / max(context, 1)
    return {"prefill": prefill, "decode": decode}


def kv_cache_bytes_per_token(cfg: ModelConfig, dtype_bytes: int = 2) -> int:
    """Cache bytes one token adds (all layers; sliding layers counted as if not yet full)."""
    total = 0
    for i in range(cfg.n_layer):
        layer = i // cfg.block_repeat
        if cfg.attention == "mla":
            total += (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * dtype_bytes
        else:
            total += 2 * cfg.kv_heads(layer) * cfg.dim_head * dtype_bytes
    return total


def kv_cache_bytes(cfg: ModelConfig, context: int, dtype_bytes: int = 2, batch_size: int = 1) -> int:
    """Bytes of a cache allocated for `context` tokens (sliding layers keep `sliding_window`)."""
    total = 0
    for i in range(cfg.n_layer):
        layer = i // cfg.block_repeat
        n = _attended(cfg, layer, context)
        if cfg.attention == "mla":
            total += n * (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * dtype_bytes
        else:
            total += n * 2 * cfg.kv_heads(layer) * cfg.dim_head * dtype_bytes
    return total * batch_size


def weight_bytes(cfg: ModelConfig, bits: float = 16) -> int:
    """Bytes of all weights at `bits` per parameter (quantization scales not included)."""
    return int(param_counts(cfg)["total"] * bits / 8)
