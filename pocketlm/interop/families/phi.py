"""Phi-1/1.5/2 (parallel residual with one shared LayerNorm, partial RoPE, biased LM head) and
Phi-3 (llama-shaped, with fused qkv and gate/up tensors in the checkpoint)."""

from __future__ import annotations

from typing import Any

from pocketlm.interop.families.base import (CAT, QKV, Family, UnsupportedModelError, activation, gelu_new,
                                            weight_and_bias)
from pocketlm.interop.families.base import GGUFArch, failed_rules, gguf_name
from pocketlm.interop.families.llama import (GGUF_ATTN, GGUF_EMBED, GGUF_FFN, GGUF_HEAD, GGUF_NORMS, LLAMA_ATTN,
                                             LLAMA_BLOCK, LLAMA_IGNORE, LLAMA_TOP, N, blocks, graph_rules,
                                             half_rope_rules, read_llama, read_windowed, transformer_hparams,
                                             write_llama_like)
from pocketlm.model.config import ModelConfig


def read_phi(c: Any) -> dict[str, Any]:
    if c.qk_layernorm:
        raise UnsupportedModelError("phi: qk_layernorm=true is not supported")
    return {**read_llama(c), "ffn_type": "standard", "activation": activation(c.hidden_act, "phi"), "mlp_bias": True,
            "norm": "layernorm", "norm_bias": True, "norm_eps": c.layer_norm_eps, "qkv_bias": True,
            "attn_out_bias": True, "parallel_residual": True, "parallel_shared_norm": True, "lm_head_bias": True}


def write_phi(cfg: ModelConfig) -> dict[str, Any]:
    d = {**write_llama_like(cfg), "hidden_act": gelu_new(cfg.activation), "layer_norm_eps": cfg.norm_eps}
    d.pop("rms_norm_eps")
    return d


def read_phi3(c: Any) -> dict[str, Any]:
    out = read_windowed(c)
    orig = getattr(c, "original_max_position_embeddings", None)
    if orig:
        out["extra"] = {"original_max_position_embeddings": orig}
    return out


def write_phi3(cfg: ModelConfig) -> dict[str, Any]:
    d = {**write_llama_like(cfg), "sliding_window": cfg.sliding_window}  # one window for every layer
    if "original_max_position_embeddings" in cfg.extra:
        d["original_max_position_embeddings"] = cfg.extra["original_max_position_embeddings"]
    return d


# ---- GGUF: llama.cpp's phi2 and phi3 (RoPE on halves) ------------------------------------------------

PHI2_GGUF = GGUFArch(
    "phi2", {**GGUF_EMBED, **blocks({**GGUF_NORMS, **GGUF_ATTN, **GGUF_FFN}), **GGUF_HEAD}, transformer_hparams,
    lambda cfg: graph_rules(cfg, norm=("layernorm",), norm_bias=(True,), residual=("parallel_shared",),
                            ffn="standard", act=("gelu_tanh", "gelu"), positions=("rope", "rope_partial"),
                            qkv_bias=(True,), out_bias=(True,), mlp_bias=(True,), tied=(False,),
                            lm_head_bias=(True,)) + failed_rules(half_rope_rules(cfg)))
# phi3's graph reads q/k/v as one tensor and gate/up as one (its SwiGLU splits the halves)
PHI3_GGUF = GGUFArch(
    "phi3",
    {**GGUF_EMBED, **blocks({**GGUF_NORMS, QKV: gguf_name(N.ATTN_QKV), "attn.o_proj.weight": gguf_name(N.ATTN_OUT),
                             ("mlp.gate_proj.weight", "mlp.up_proj.weight"): gguf_name(N.FFN_UP),
                             "mlp.down_proj.weight": gguf_name(N.FFN_DOWN)}), **GGUF_HEAD},
    # llama.cpp switches Phi-3's sliding window off (full attention): a window shorter than the context is refused
    transformer_hparams, lambda cfg: graph_rules(cfg) + failed_rules(half_rope_rules(cfg)))

FAMILIES = (
    Family(
        "phi", "PhiForCausalLM", read_phi, write_phi, "model.layers.{i}.",
        {"embed.weight": "model.embed_tokens.weight",
         **weight_and_bias({"final_norm": "model.final_layernorm", "lm_head": "lm_head"})},
        {**LLAMA_ATTN, **weight_and_bias({"attn.o_proj": "self_attn.dense", "mlp.up_proj": "mlp.fc1",
                                          "mlp.down_proj": "mlp.fc2", "attn_norm": "input_layernorm"})},
        ignore=LLAMA_IGNORE, picks=lambda cfg: cfg.parallel_residual and cfg.parallel_shared_norm, pick_order=80,
        gguf=PHI2_GGUF),
    Family(
        "phi3", "Phi3ForCausalLM", read_phi3, write_phi3, "model.layers.{i}.", LLAMA_TOP,
        {k: v for k, v in LLAMA_BLOCK.items() if k.endswith("norm.weight") or k in (
            "attn.o_proj.weight", "mlp.down_proj.weight")},
        packed=(("self_attn.qkv_proj.weight", QKV, CAT),
                ("mlp.gate_up_proj.weight", ("mlp.gate_proj.weight", "mlp.up_proj.weight"), CAT)),
        ignore=LLAMA_IGNORE, gguf=PHI3_GGUF),
)
