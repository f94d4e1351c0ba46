"""OPT: learned positions (with 2 offset rows), ReLU, optional post-LN and embedding projections."""

from __future__ import annotations

from typing import Any

from pocketlm.interop.families.base import Family, activation, hf_common, weight_and_bias
from pocketlm.interop.families.llama import LLAMA_ATTN
from pocketlm.model.config import ModelConfig


def read_opt(c: Any) -> dict[str, Any]:
    proj = c.word_embed_proj_dim if c.word_embed_proj_dim != c.hidden_size else None
    pre = bool(c.do_layer_norm_before)
    return dict(
        vocab_size=c.vocab_size, d_model=c.hidden_size, n_layer=c.num_hidden_layers, n_head=c.num_attention_heads,
        max_seq_len=c.max_position_embeddings, qkv_bias=c.enable_bias, attn_out_bias=c.enable_bias,
        positions="learned", learned_pos_offset=2, ffn_type="standard", intermediate_size=c.ffn_dim,
        activation=activation(c.activation_function, "opt"), mlp_bias=c.enable_bias, norm="layernorm",
        norm_bias=c.enable_bias, norm_affine=c.layer_norm_elementwise_affine, norm_eps=1e-5,
        norm_placement="pre" if pre else "post", final_norm=pre and not c._remove_final_layer_norm,
        embed_proj_dim=proj, tie_embeddings=bool(c.tie_word_embeddings))


def write_opt(cfg: ModelConfig) -> dict[str, Any]:
    pre = cfg.norm_placement == "pre"
    return dict(hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.heads(0),
                ffn_dim=cfg.ffn_dim(0), activation_function=cfg.activation, enable_bias=cfg.qkv_bias,
                do_layer_norm_before=pre, _remove_final_layer_norm=pre and not cfg.final_norm,
                word_embed_proj_dim=cfg.embed_proj_dim or cfg.d_model, layer_norm_elementwise_affine=cfg.norm_affine,
                **hf_common(cfg))


FAMILIES = (
    Family(
        "opt", "OPTForCausalLM", read_opt, write_opt, "model.decoder.layers.{i}.",
        {"embed.weight": "model.decoder.embed_tokens.weight",
         "pos_embed.weight": "model.decoder.embed_positions.weight",
         **weight_and_bias({"final_norm": "model.decoder.final_layer_norm"}),
         "project_in.weight": "model.decoder.project_in.weight",
         "project_out.weight": "model.decoder.project_out.weight", "lm_head.weight": "lm_head.weight"},
        {**LLAMA_ATTN, **weight_and_bias({"attn.o_proj": "self_attn.out_proj", "mlp.up_proj": "fc1",
                                          "mlp.down_proj": "fc2", "attn_norm": "self_attn_layer_norm",
                                          "mlp_norm": "final_layer_norm"})},
        picks=lambda cfg: cfg.positions == "learned" and cfg.activation == "relu", pick_order=70,
        no_gguf="llama.cpp has no OPT architecture (learned positions with an offset of 2, ReLU, optional "
                "post-LN and embedding projections); run OPT with transformers, pocketlm's torch backend "
                "(`--backend torch`), CTranslate2 or ONNX Runtime, which implement it"),
)
