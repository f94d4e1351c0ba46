"""BLOOM: ALiBi positions, a LayerNorm right after the embedding, q/k/v fused per head."""

from __future__ import annotations

from typing import Any

from pocketlm.interop.families.base import HEADS3, QKV, QKV_BIAS, Family, UnsupportedModelError, hf_common
from pocketlm.model.config import ModelConfig


def read_bloom(c: Any) -> dict[str, Any]:
    if c.apply_residual_connection_post_layernorm:
        raise UnsupportedModelError("bloom: apply_residual_connection_post_layernorm=true is not supported")
    return dict(
        vocab_size=c.vocab_size, d_model=c.hidden_size, n_layer=c.n_layer, n_head=c.n_head,
        max_seq_len=getattr(c, "seq_length", None) or 2048, qkv_bias=True, attn_out_bias=True, positions="alibi",
        ffn_type="standard", intermediate_size=4 * c.hidden_size, activation="gelu_tanh", mlp_bias=True,
        norm="layernorm", norm_bias=True, norm_eps=c.layer_norm_epsilon, embed_norm=True,
        tie_embeddings=bool(c.tie_word_embeddings))


def write_bloom(cfg: ModelConfig) -> dict[str, Any]:
    common = hf_common(cfg)
    common.pop("max_position_embeddings")  # BLOOM's config calls the context length seq_length
    return dict(hidden_size=cfg.d_model, n_layer=cfg.n_layer, n_head=cfg.heads(0), layer_norm_epsilon=cfg.norm_eps,
                seq_length=cfg.max_seq_len, **common)


FAMILIES = (
    Family(
        "bloom", "BloomForCausalLM", read_bloom, write_bloom, "transformer.h.{i}.",
        {"embed.weight": "transformer.word_embeddings.weight",
         "embed_norm.weight": "transformer.word_embeddings_layernorm.weight",
         "embed_norm.bias": "transformer.word_embeddings_layernorm.bias",
         "final_norm.weight": "transformer.ln_f.weight", "final_norm.bias": "transformer.ln_f.bias",
         "lm_head.weight": "lm_head.weight"},
        {"attn.o_proj.weight": "self_attention.dense.weight", "attn.o_proj.bias": "self_attention.dense.bias",
         "mlp.up_proj.weight": "mlp.dense_h_to_4h.weight", "mlp.up_proj.bias": "mlp.dense_h_to_4h.bias",
         "mlp.down_proj.weight": "mlp.dense_4h_to_h.weight", "mlp.down_proj.bias": "mlp.dense_4h_to_h.bias",
         "attn_norm.weight": "input_layernorm.weight", "attn_norm.bias": "input_layernorm.bias",
         "mlp_norm.weight": "post_attention_layernorm.weight", "mlp_norm.bias": "post_attention_layernorm.bias"},
        packed=(("self_attention.query_key_value.weight", QKV, HEADS3),
                ("self_attention.query_key_value.bias", QKV_BIAS, HEADS3)),
        picks=lambda cfg: cfg.positions == "alibi", pick_order=60),
)
