"""StableLM: llama's layout with LayerNorm (and its biases), partial RoPE, optional parallel residual."""

from __future__ import annotations

from typing import Any

from pocketlm.interop.families.base import GGUFArch, UnsupportedModelError, failed_rules
from pocketlm.interop.families.llama import (GGUF_ATTN, GGUF_EMBED, GGUF_FFN, GGUF_HEAD, GGUF_NORMS, LLAMA_TOP, blocks,
                                             graph_rules, half_rope_rules, llama_like, read_llama,
                                             transformer_hparams, write_llama_like)
from pocketlm.model.config import ModelConfig


def read_stablelm(c: Any) -> dict[str, Any]:
    if c.qk_layernorm:
        raise UnsupportedModelError("stablelm: per-head qk LayerNorm (qk_layernorm=true) is not supported")
    out = {**read_llama(c), "norm": "layernorm", "norm_bias": True, "norm_eps": c.layer_norm_eps,
           "qkv_bias": bool(c.use_qkv_bias), "attn_out_bias": False}
    if c.use_parallel_residual:
        out.update(parallel_residual=True, parallel_shared_norm=True)
    return out


def write_stablelm(cfg: ModelConfig) -> dict[str, Any]:
    return {**write_llama_like(cfg), "layer_norm_eps": cfg.norm_eps, "use_qkv_bias": cfg.qkv_bias,
            "use_parallel_residual": cfg.parallel_residual}


# ---- GGUF: llama.cpp's stablelm (a block without an FFN norm is a parallel one), RoPE on halves --------
STABLELM_GGUF = GGUFArch(
    "stablelm", {**GGUF_EMBED, **blocks({**GGUF_NORMS, **GGUF_ATTN, **GGUF_FFN}), **GGUF_HEAD}, transformer_hparams,
    lambda cfg: graph_rules(cfg, norm=("layernorm",), norm_bias=(True,), residual=("pre", "parallel_shared"),
                            positions=("rope", "rope_partial"), qkv_bias=(True, False))
    + failed_rules(half_rope_rules(cfg)))

FAMILIES = (
    llama_like("stablelm", "StableLmForCausalLM", read_stablelm, write_stablelm,
               top={**LLAMA_TOP, "final_norm.bias": "model.norm.bias"},
               picks=lambda cfg: cfg.norm == "layernorm", pick_order=91, gguf=STABLELM_GGUF),
)
