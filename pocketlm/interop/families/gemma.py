"""Gemma and Gemma-2: (1 + w) RMSNorm, a scaled embedding; Gemma-2 adds sandwich norms, logit
soft-capping, a set attention scale and alternating sliding-window layers."""

from __future__ import annotations

from typing import Any

from pocketlm.interop.families.base import (GGUFArch, TensorTransform, activation, failed_rules, gguf_name,
                                            layer_types, read_sliding)
from pocketlm.interop.families.llama import (GGUF_ATTN, GGUF_EMBED, GGUF_FFN, GGUF_HEAD, GGUF_NORMS, N, blocks,
                                             graph_rules, half_rope_rules, llama_like, read_llama, transformer_hparams,
                                             write_llama_like)
from pocketlm.model.config import ModelConfig


def read_gemma(c: Any) -> dict[str, Any]:
    act = getattr(c, "hidden_activation", None) or c.hidden_act
    return {**read_llama(c), "activation": activation(act, c.model_type), "norm_unit_offset": True,
            "embed_scale": c.hidden_size**0.5, "embed_scale_round": True}


def read_gemma2(c: Any) -> dict[str, Any]:
    return {**read_gemma(c), **read_sliding(c, c.num_hidden_layers), "norm_placement": "sandwich",
            "attn_scale": c.query_pre_attn_scalar**-0.5,
            "attn_logit_softcap": c.attn_logit_softcapping, "final_logit_softcap": c.final_logit_softcapping}


def write_gemma(cfg: ModelConfig) -> dict[str, Any]:
    d = {**write_llama_like(cfg), "attention_bias": cfg.qkv_bias}
    d["hidden_activation"] = d["hidden_act"]
    return d


def write_gemma2(cfg: ModelConfig) -> dict[str, Any]:
    d = {**write_gemma(cfg), "sliding_window": cfg.sliding_window}
    if cfg.sliding_window is not None:
        d["layer_types"] = layer_types(cfg)
    d.update(query_pre_attn_scalar=round(cfg.attn_scale**-2), attn_logit_softcapping=cfg.attn_logit_softcap,
             final_logit_softcapping=cfg.final_logit_softcap)
    return d


# ---- GGUF: llama.cpp's gemma and gemma2 ---------------------------------------------------------------
# llama.cpp scales by its norm weights as they are: pocketlm's (1 + w) gains are written as 1 + w
UNIT_OFFSET = TensorTransform(lambda t, cfg, i: t + 1.0, lambda t, cfg, i: t - 1.0)
GEMMA_NORMS = ("blocks.{i}.attn_norm.weight", "blocks.{i}.mlp_norm.weight", "blocks.{i}.post_attn_norm.weight",
               "blocks.{i}.post_mlp_norm.weight", "final_norm.weight")
GEMMA_TENSORS = {**GGUF_EMBED, **blocks({**GGUF_NORMS, **GGUF_ATTN, **GGUF_FFN,
                                        "post_attn_norm.weight": gguf_name(N.ATTN_POST_NORM),
                                        "post_mlp_norm.weight": gguf_name(N.FFN_POST_NORM)}), **GGUF_HEAD}


def _gemma_rules(cfg: ModelConfig, **graph) -> list[str]:
    # the graph multiplies embeddings by sqrt(d_model) itself
    return graph_rules(cfg, norm=("rmsnorm_1p",), act=("gelu_tanh", "gelu"), tied=(True,),
                       scales=(cfg.d_model ** 0.5, 1.0, 1.0), **graph) + failed_rules(half_rope_rules(cfg))


def _gemma2_rules(cfg: ModelConfig) -> list[str]:
    alternating = [i % 2 == 0 for i in range(cfg.n_layer)]  # llama.cpp: even layers slide
    return _gemma_rules(cfg, residual=("sandwich",), window=True, softcap=True) + failed_rules([
        (cfg.sliding_window is not None and (cfg.layer_window or [True] * cfg.n_layer) == alternating,
         "sliding-window attention on even layers (llama.cpp's gemma2 pattern)")])


def _gemma2_hparams(cfg: ModelConfig) -> dict[str, Any]:
    return {**transformer_hparams(cfg), "sliding_window": cfg.sliding_window,
            "attn_logit_softcapping": cfg.attn_logit_softcap, "final_logit_softcapping": cfg.final_logit_softcap}


GEMMA_GGUF = GGUFArch("gemma", GEMMA_TENSORS, transformer_hparams, _gemma_rules,
                      {k: UNIT_OFFSET for k in GEMMA_NORMS})
GEMMA2_GGUF = GGUFArch("gemma2", GEMMA_TENSORS, _gemma2_hparams, _gemma2_rules, {k: UNIT_OFFSET for k in GEMMA_NORMS})

FAMILIES = (
    llama_like("gemma", "GemmaForCausalLM", read_gemma, write_gemma,
               picks=lambda cfg: cfg.norm_unit_offset, pick_order=50, gguf=GEMMA_GGUF),
    llama_like("gemma2", "Gemma2ForCausalLM", read_gemma2, write_gemma2,
               renamed={"mlp_norm.weight": "pre_feedforward_layernorm.weight",
                        "post_attn_norm.weight": "post_attention_layernorm.weight",
                        "post_mlp_norm.weight": "post_feedforward_layernorm.weight"},
               picks=lambda cfg: cfg.norm_placement == "sandwich", pick_order=40, gguf=GEMMA2_GGUF),
)
