"""GPT-NeoX (Pythia): LayerNorm, partial RoPE, parallel residual with two norms, q/k/v fused per head."""

from __future__ import annotations

from typing import Any

from pocketlm.interop.families.base import (HEADS3, QKV, QKV_BIAS, Family, activation, gelu_new, hf_common,
                                            read_rope, weight_and_bias, write_rope)
from pocketlm.interop.families.base import GGUFArch, failed_rules
from pocketlm.interop.families.llama import (GGUF_ATTN_QKV, GGUF_EMBED, GGUF_FFN, GGUF_HEAD, GGUF_NORMS, blocks,
                                             graph_rules, half_rope_rules, transformer_hparams)
from pocketlm.model.config import ModelConfig

# block tensors NeoX and BLOOM name alike
NEOX_BLOCK = weight_and_bias({"mlp.up_proj": "mlp.dense_h_to_4h", "mlp.down_proj": "mlp.dense_4h_to_h",
                              "attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm"})


def read_gpt_neox(c: Any) -> dict[str, Any]:
    h = c.num_attention_heads
    return dict(
        vocab_size=c.vocab_size, d_model=c.hidden_size, n_layer=c.num_hidden_layers, n_head=h,
        max_seq_len=c.max_position_embeddings, qkv_bias=bool(c.attention_bias), attn_out_bias=bool(c.attention_bias),
        ffn_type="standard", intermediate_size=c.intermediate_size, activation=activation(c.hidden_act, "gpt_neox"),
        mlp_bias=True, norm="layernorm", norm_bias=True, norm_eps=c.layer_norm_eps,
        parallel_residual=bool(c.use_parallel_residual), tie_embeddings=bool(c.tie_word_embeddings), **read_rope(c))


def write_gpt_neox(cfg: ModelConfig) -> dict[str, Any]:
    return dict(hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.heads(0),
                intermediate_size=cfg.ffn_dim(0), hidden_act=gelu_new(cfg.activation), layer_norm_eps=cfg.norm_eps,
                use_parallel_residual=cfg.parallel_residual, attention_bias=cfg.qkv_bias, **write_rope(cfg),
                **hf_common(cfg))


# ---- GGUF: llama.cpp's gptneox: q, k, v as one tensor of their rows in that order, RoPE on halves ----
GPTNEOX_GGUF = GGUFArch(
    "gptneox", {**GGUF_EMBED, **blocks({**GGUF_NORMS, **GGUF_ATTN_QKV, **GGUF_FFN}), **GGUF_HEAD},
    lambda cfg: {**transformer_hparams(cfg), "parallel_residual": cfg.parallel_residual},
    lambda cfg: graph_rules(cfg, norm=("layernorm",), norm_bias=(True,), residual=("parallel", "pre"),
                            ffn="standard", act=("gelu", "gelu_tanh"), positions=("rope", "rope_partial"),
                            qkv_bias=(True,), out_bias=(True,), mlp_bias=(True,)) + failed_rules(half_rope_rules(cfg)))

FAMILIES = (
    Family(
        "gpt_neox", "GPTNeoXForCausalLM", read_gpt_neox, write_gpt_neox, "gpt_neox.layers.{i}.",
        {"embed.weight": "gpt_neox.embed_in.weight", "final_norm.weight": "gpt_neox.final_layer_norm.weight",
         "final_norm.bias": "gpt_neox.final_layer_norm.bias", "lm_head.weight": "embed_out.weight"},
        {**NEOX_BLOCK, **weight_and_bias({"attn.o_proj": "attention.dense"})},
        packed=(("attention.query_key_value.weight", QKV, HEADS3),
                ("attention.query_key_value.bias", QKV_BIAS, HEADS3)),
        ignore=("attention.bias", "attention.masked_bias", "rotary_emb.inv_freq"),
        lm_head_aliases=("lm_head.weight",),
        picks=lambda cfg: cfg.parallel_residual, pick_order=81, gguf=GPTNEOX_GGUF),
)
