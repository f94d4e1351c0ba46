"""BLOOM: ALiBi positions, a LayerNorm right after the embedding, q/k/v fused per head."""

from __future__ import annotations

from typing import Any

from pocketlm.interop.families.base import (HEADS3, QKV, QKV_BIAS, Family, UnsupportedModelError, hf_common,
                                            weight_and_bias)
from pocketlm.interop.families.base import GGUFArch
from pocketlm.interop.families.gpt_neox import NEOX_BLOCK
from pocketlm.interop.families.llama import (GGUF_ATTN_QKV, GGUF_EMBED, GGUF_FFN, GGUF_HEAD, GGUF_NORMS, N, blocks,
                                             graph_rules, transformer_hparams, with_bias)
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


# ---- GGUF: llama.cpp's bloom (ALiBi with max bias 8, as BLOOM's slopes) ---------------------------------
BLOOM_GGUF = GGUFArch(
    "bloom", {**GGUF_EMBED, **with_bias({"embed_norm": N.TOKEN_EMBD_NORM}),
              **blocks({**GGUF_NORMS, **GGUF_ATTN_QKV, **GGUF_FFN}), **GGUF_HEAD},
    transformer_hparams,
    lambda cfg: graph_rules(cfg, norm=("layernorm",), norm_bias=(True,), ffn="standard", act=("gelu_tanh", "gelu"),
                            positions=("alibi",), qkv_bias=(True,), out_bias=(True,), mlp_bias=(True,),
                            embed_norm=True))

FAMILIES = (
    Family(
        "bloom", "BloomForCausalLM", read_bloom, write_bloom, "transformer.h.{i}.",
        {"embed.weight": "transformer.word_embeddings.weight", "lm_head.weight": "lm_head.weight",
         **weight_and_bias({"embed_norm": "transformer.word_embeddings_layernorm", "final_norm": "transformer.ln_f"})},
        {**NEOX_BLOCK, **weight_and_bias({"attn.o_proj": "self_attention.dense"})},
        packed=(("self_attention.query_key_value.weight", QKV, HEADS3),
                ("self_attention.query_key_value.bias", QKV_BIAS, HEADS3)),
        picks=lambda cfg: cfg.positions == "alibi", pick_order=60, gguf=BLOOM_GGUF),
)
