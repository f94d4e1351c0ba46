"""GPT-2 (Cerebras-GPT, LaMini-GPT, ...): learned positions, Conv1D weights (stored transposed)."""

from __future__ import annotations

from typing import Any

from pocketlm.interop.families.base import (CAT, CONV1D, CONV1D_CAT, COPY, QKV, QKV_BIAS, Family,
                                            UnsupportedModelError, activation, gelu_new, hf_common, weight_and_bias)
from pocketlm.interop.families.base import GGUFArch, gguf_name
from pocketlm.interop.families.llama import (GGUF_ATTN_QKV, GGUF_EMBED, GGUF_FFN, GGUF_HEAD, GGUF_NORMS, N, blocks,
                                             graph_rules, transformer_hparams)
from pocketlm.model.config import ModelConfig


def read_gpt2(c: Any) -> dict[str, Any]:
    if c.scale_attn_by_inverse_layer_idx or c.reorder_and_upcast_attn or not c.scale_attn_weights:
        raise UnsupportedModelError("gpt2: scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn / "
                                    "unscaled attention are not supported")
    return dict(
        vocab_size=c.vocab_size, d_model=c.n_embd, n_layer=c.n_layer, n_head=c.n_head, max_seq_len=c.n_positions,
        qkv_bias=True, attn_out_bias=True, positions="learned", ffn_type="standard",
        intermediate_size=c.n_inner or 4 * c.n_embd, activation=activation(c.activation_function, "gpt2"),
        mlp_bias=True, norm="layernorm", norm_bias=True, norm_eps=c.layer_norm_epsilon,
        tie_embeddings=bool(c.tie_word_embeddings))


def write_gpt2(cfg: ModelConfig) -> dict[str, Any]:
    return dict(n_embd=cfg.d_model, n_layer=cfg.n_layer, n_head=cfg.heads(0), n_positions=cfg.max_seq_len,
                n_inner=cfg.ffn_dim(0), activation_function=gelu_new(cfg.activation),
                layer_norm_epsilon=cfg.norm_eps, **hf_common(cfg))


# ---- GGUF: llama.cpp's gpt2 (learned positions, q/k/v as one tensor) -------------------------------------
GPT2_GGUF = GGUFArch(
    "gpt2", {**GGUF_EMBED, "pos_embed.weight": gguf_name(N.POS_EMBD),
             **blocks({**GGUF_NORMS, **GGUF_ATTN_QKV, **GGUF_FFN}), **GGUF_HEAD},
    transformer_hparams,
    lambda cfg: graph_rules(cfg, norm=("layernorm",), norm_bias=(True,), ffn="standard", act=("gelu_tanh", "gelu"),
                            positions=("learned",), qkv_bias=(True,), out_bias=(True,), mlp_bias=(True,)))

FAMILIES = (
    Family(
        "gpt2", "GPT2LMHeadModel", read_gpt2, write_gpt2, "transformer.h.{i}.",
        {"embed.weight": "transformer.wte.weight", "pos_embed.weight": "transformer.wpe.weight",
         "lm_head.weight": "lm_head.weight", **weight_and_bias({"final_norm": "transformer.ln_f"})},
        weight_and_bias({"attn_norm": "ln_1", "mlp_norm": "ln_2"}),
        packed=(("attn.c_attn.weight", QKV, CONV1D_CAT),
                ("attn.c_attn.bias", QKV_BIAS, CAT),
                ("attn.c_proj.weight", ("attn.o_proj.weight",), CONV1D),
                ("attn.c_proj.bias", ("attn.o_proj.bias",), COPY),
                ("mlp.c_fc.weight", ("mlp.up_proj.weight",), CONV1D),
                ("mlp.c_fc.bias", ("mlp.up_proj.bias",), COPY),
                ("mlp.c_proj.weight", ("mlp.down_proj.weight",), CONV1D),
                ("mlp.c_proj.bias", ("mlp.down_proj.bias",), COPY)),
        ignore=("attn.bias", "attn.masked_bias"),
        picks=lambda cfg: cfg.positions == "learned", pick_order=71, gguf=GPT2_GGUF),
)
