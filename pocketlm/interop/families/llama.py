"""Llama and Mistral, and the llama-style layout most families build on.

The llama reader, writer and weight table here are the base that Qwen, Gemma, OLMo, StableLM, Phi-3,
Mixtral and the MLA families extend. The GGUF side is llama.cpp's `llama` architecture, which also
runs llama-shaped models of families that declare no GGUF architecture of their own.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from pocketlm.interop.families.base import (ACTIVATION_OUT, Family, GGUFArch, Reader, TensorTransform, Writer,
                                            activation, hf_common, read_rope, read_sliding, weight_and_bias,
                                            write_rope)
from pocketlm.model.config import ModelConfig

# ---- weights -----------------------------------------------------------------------------------------
LLAMA_TOP = {"embed.weight": "model.embed_tokens.weight", "final_norm.weight": "model.norm.weight",
             "lm_head.weight": "lm_head.weight"}
LLAMA_ATTN = weight_and_bias({"attn.q_proj": "self_attn.q_proj", "attn.k_proj": "self_attn.k_proj",
                              "attn.v_proj": "self_attn.v_proj", "attn.o_proj": "self_attn.o_proj"})
LLAMA_BLOCK = {
    **LLAMA_ATTN,
    **weight_and_bias({"mlp.gate_proj": "mlp.gate_proj", "mlp.up_proj": "mlp.up_proj", "mlp.down_proj": "mlp.down_proj",
                       "attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm"}),
    "attn.q_norm.weight": "self_attn.q_norm.weight", "attn.k_norm.weight": "self_attn.k_norm.weight",
    # mixture of experts (transformers >= 5 stacks experts)
    "mlp.router.weight": "mlp.gate.weight",
    "mlp.experts.gate_up_proj": "mlp.experts.gate_up_proj", "mlp.experts.down_proj": "mlp.experts.down_proj",
    "mlp.shared.gate_proj.weight": "mlp.shared_expert.gate_proj.weight",
    "mlp.shared.up_proj.weight": "mlp.shared_expert.up_proj.weight",
    "mlp.shared.down_proj.weight": "mlp.shared_expert.down_proj.weight",
    "mlp.shared_gate.weight": "mlp.shared_expert_gate.weight",
    # multi-head latent attention
    "attn.q_a_proj.weight": "self_attn.q_a_proj.weight", "attn.q_a_norm.weight": "self_attn.q_a_layernorm.weight",
    "attn.q_b_proj.weight": "self_attn.q_b_proj.weight",
    "attn.kv_a_proj.weight": "self_attn.kv_a_proj_with_mqa.weight",
    "attn.kv_a_norm.weight": "self_attn.kv_a_layernorm.weight", "attn.kv_b_proj.weight": "self_attn.kv_b_proj.weight",
}
LLAMA_IGNORE = ("rotary_emb.inv_freq",)
# transformers<5 per-expert layout of Qwen2-MoE, OLMoE and DeepSeek-V2
MLP_EXPERTS = (("mlp.experts.{e}.gate_proj.weight", "mlp.experts.{e}.up_proj.weight",
                "mlp.experts.{e}.down_proj.weight", "mlp.gate.weight"),)


# ---- config.json ---------------------------------------------------------------------------------------

def read_llama(c: Any) -> dict[str, Any]:
    """Fields every llama-style family shares."""
    n_layer, h = c.num_hidden_layers, c.num_attention_heads
    bias = bool(getattr(c, "attention_bias", False))
    out = dict(
        vocab_size=c.vocab_size, d_model=c.hidden_size, n_layer=n_layer, n_head=h,
        n_kv_head=h if getattr(c, "num_key_value_heads", None) is None else c.num_key_value_heads, head_dim=getattr(c, "head_dim", None),
        max_seq_len=getattr(c, "max_position_embeddings", 2048), qkv_bias=bias, attn_out_bias=bias,
        ffn_type="gated", intermediate_size=c.intermediate_size,
        activation=activation(getattr(c, "hidden_act", "silu"), c.model_type),
        mlp_bias=bool(getattr(c, "mlp_bias", False)), norm="rmsnorm", norm_eps=getattr(c, "rms_norm_eps", 1e-6),
        tie_embeddings=bool(c.tie_word_embeddings), **read_rope(c))
    if out["head_dim"] == c.hidden_size // h:
        out["head_dim"] = None
    return out


def read_windowed(c: Any) -> dict[str, Any]:
    """llama plus a sliding window: only families whose transformers model applies one read it."""
    return {**read_llama(c), **read_sliding(c, c.num_hidden_layers)}


def write_llama_like(cfg: ModelConfig) -> dict[str, Any]:
    """The llama-style fields; each family adds or renames its own (a sliding window among them)."""
    d = dict(hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.heads(0),
             num_key_value_heads=cfg.kv_heads(0), intermediate_size=cfg.ffn_dim(0),
             hidden_act=ACTIVATION_OUT[cfg.activation], rms_norm_eps=cfg.norm_eps, **write_rope(cfg), **hf_common(cfg))
    if cfg.attention == "standard":
        d["head_dim"] = cfg.dim_head
    return d


def write_llama(cfg: ModelConfig) -> dict[str, Any]:
    return {**write_llama_like(cfg), "attention_bias": cfg.qkv_bias, "mlp_bias": cfg.mlp_bias}


def write_mistral(cfg: ModelConfig) -> dict[str, Any]:
    # one window for every layer (MistralConfig has no per-layer kinds); None switches its default off
    return {**write_llama_like(cfg), "sliding_window": cfg.sliding_window, "attention_bias": cfg.qkv_bias}


# ---- GGUF: llama.cpp's `llama` -------------------------------------------------------------------------

def _rope_rows_to_gguf(w: Tensor, n_head: int) -> Tensor:
    """Rows of a q/k projection from half-rotation order to llama.cpp's interleaved-pair order."""
    rows, tail = w.shape[0], w.shape[1:]
    return w.reshape(n_head, 2, rows // n_head // 2, *tail).transpose(1, 2).reshape(rows, *tail)


def _rope_rows_from_gguf(w: Tensor, n_head: int) -> Tensor:
    rows, tail = w.shape[0], w.shape[1:]
    return w.reshape(n_head, rows // n_head // 2, 2, *tail).transpose(1, 2).reshape(rows, *tail)


def _rope_permutation(heads: str) -> TensorTransform:
    """llama.cpp rotates interleaved pairs; pocketlm's default RoPE rotates halves (as HF does)."""
    def count(cfg: ModelConfig, i: int) -> int:
        return cfg.heads(i) if heads == "q" else cfg.kv_heads(i)

    return TensorTransform(
        to_gguf=lambda t, cfg, i: t if cfg.rope_interleaved else _rope_rows_to_gguf(t, count(cfg, i)),
        from_gguf=lambda t, cfg, i: t if cfg.rope_interleaved else _rope_rows_from_gguf(t, count(cfg, i)))


ROPE_Q, ROPE_K = _rope_permutation("q"), _rope_permutation("k")


def llama_hparams(cfg: ModelConfig) -> dict[str, Any]:
    hp: dict[str, Any] = {
        "context_length": cfg.max_seq_len, "embedding_length": cfg.d_model, "block_count": cfg.n_layer,
        "feed_forward_length": cfg.ffn_dim(0), "head_count": cfg.heads(0), "head_count_kv": cfg.kv_heads(0),
        "key_length": cfg.dim_head, "value_length": cfg.dim_head, "rope_dimension_count": cfg.dim_head,
        "rope_freq_base": float(cfg.rope_theta)}
    if cfg.rope_scaling and cfg.rope_scaling.get("rope_type") == "linear":
        import gguf

        hp["rope_scaling_type"] = gguf.RopeScalingType.LINEAR
        hp["rope_scaling_factor"] = float(cfg.rope_scaling["factor"])
    hp["layer_norm_rms_eps"] = float(cfg.norm_eps)
    return hp


def llama_unsupported(cfg: ModelConfig) -> list[str]:
    rules = [
        (cfg.attention == "standard", "attention must be standard (MHA/GQA/MQA), not MLA"),
        (cfg.positions == "rope" and cfg.rotary_fraction == 1.0, "positions must be full RoPE"),
        (cfg.rope_scaling is None or cfg.rope_scaling.get("rope_type", "default") in ("default", "linear"),
         "rope_scaling must be none or linear"),
        (cfg.norm == "rmsnorm" and cfg.norm_affine and not cfg.norm_unit_offset, "norm must be plain RMSNorm"),
        (cfg.norm_placement == "pre" and not cfg.parallel_residual, "blocks must be pre-norm, sequential"),
        (cfg.ffn_type == "gated" and cfg.activation == "silu" and not cfg.mlp_bias,
         "FFN must be gated SiLU (SwiGLU) without bias"),
        (cfg.n_experts == 0, "mixture-of-experts is not exported"),
        (cfg.qk_norm == "none" and cfg.clip_qkv is None, "no qk-norm or qkv clipping"),
        (cfg.attn_logit_softcap is None and cfg.final_logit_softcap is None, "no logit soft-capping"),
        (cfg.sliding_window is None, "no sliding-window attention"),
        (cfg.attn_scale is None or abs(cfg.attn_scale - cfg.dim_head ** -0.5) < 1e-9,
         "attention scale must be head_dim^-0.5"),
        (cfg.embed_scale == 1.0 and cfg.logit_scale == 1.0 and cfg.residual_scale == 1.0,
         "no embedding/logit/residual scaling"),
        (cfg.embed_proj_dim is None and not cfg.embed_norm and not cfg.lm_head_bias and cfg.final_norm,
         "plain embedding and LM head"),
        (cfg.block_repeat == 1 and not cfg.shared_ffn, "no parameter sharing across blocks"),
        (all(not isinstance(getattr(cfg, f), list) for f in ("n_head", "n_kv_head", "intermediate_size")),
         "per-layer head counts / FFN widths are not exported"),
    ]
    return [msg for ok, msg in rules if not ok]


LLAMA_GGUF = GGUFArch(
    arch="llama",
    tensors={
        "embed.weight": "token_embd.weight",
        "blocks.{i}.attn_norm.weight": "blk.{i}.attn_norm.weight",
        "blocks.{i}.attn.q_proj.weight": "blk.{i}.attn_q.weight",
        "blocks.{i}.attn.k_proj.weight": "blk.{i}.attn_k.weight",
        "blocks.{i}.attn.v_proj.weight": "blk.{i}.attn_v.weight",
        "blocks.{i}.attn.q_proj.bias": "blk.{i}.attn_q.bias",
        "blocks.{i}.attn.k_proj.bias": "blk.{i}.attn_k.bias",
        "blocks.{i}.attn.v_proj.bias": "blk.{i}.attn_v.bias",
        "blocks.{i}.attn.o_proj.weight": "blk.{i}.attn_output.weight",
        "blocks.{i}.attn.o_proj.bias": "blk.{i}.attn_output.bias",
        "blocks.{i}.mlp_norm.weight": "blk.{i}.ffn_norm.weight",
        "blocks.{i}.mlp.gate_proj.weight": "blk.{i}.ffn_gate.weight",
        "blocks.{i}.mlp.up_proj.weight": "blk.{i}.ffn_up.weight",
        "blocks.{i}.mlp.down_proj.weight": "blk.{i}.ffn_down.weight",
        "final_norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    },
    hparams=llama_hparams,
    unsupported=llama_unsupported,
    transforms={"blocks.{i}.attn.q_proj.weight": ROPE_Q, "blocks.{i}.attn.k_proj.weight": ROPE_K,
                "blocks.{i}.attn.q_proj.bias": ROPE_Q, "blocks.{i}.attn.k_proj.bias": ROPE_K},
)


def llama_like(model_type: str, architecture: str, read: Reader = read_llama, write: Writer = write_llama_like,
               renamed: dict[str, str] | None = None, top: dict[str, str] = LLAMA_TOP, **fields: Any) -> Family:
    """A family with llama's checkpoint layout; `renamed` overrides block tensor names."""
    return Family(model_type, architecture, read, write, "model.layers.{i}.", top, {**LLAMA_BLOCK, **(renamed or {})},
                  ignore=LLAMA_IGNORE, **fields)


FAMILIES = (
    llama_like("llama", "LlamaForCausalLM", write=write_llama, picks=lambda cfg: True, pick_order=1000,
               gguf=LLAMA_GGUF),
    llama_like("mistral", "MistralForCausalLM", read_windowed, write_mistral,
               picks=lambda cfg: cfg.sliding_window is not None, pick_order=990, gguf=LLAMA_GGUF),
)
