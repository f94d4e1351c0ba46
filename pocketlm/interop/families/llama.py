"""Llama and Mistral, and the llama-style layout most families build on.

The llama reader, writer and weight table here are the base that Qwen, Gemma, OLMo, StableLM, Phi-3,
Mixtral and the MLA families extend. The GGUF side is llama.cpp's `llama` architecture, which also
runs llama-shaped models of families that declare no GGUF architecture of their own.
"""

from __future__ import annotations

from typing import Any

import gguf
from torch import Tensor

from pocketlm.interop.families.base import (ACTIVATION_OUT, QKV, QKV_BIAS, Family, GGUFArch, Reader, TensorKey,
                                            TensorTransform, Writer, activation, failed_rules, gguf_name, hf_common,
                                            read_rope, read_sliding, weight_and_bias, write_rope)
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


# ---- GGUF: the pieces llama.cpp's architectures share, and its `llama` ---------------------------------

N = gguf.MODEL_TENSOR


def blocks(table: dict[TensorKey, TensorKey]) -> dict[TensorKey, TensorKey]:
    """Block-relative pocketlm names -> names inside block {i}."""
    def prefixed(k: TensorKey) -> TensorKey:
        return tuple(f"blocks.{{i}}.{n}" for n in k) if isinstance(k, tuple) else f"blocks.{{i}}.{k}"

    return {prefixed(k): v for k, v in table.items()}


def with_bias(table: dict[str, Any]) -> dict[str, str]:
    """{"attn.o_proj": N.ATTN_OUT} -> its .weight and .bias entries (a missing bias is skipped on export)."""
    return {f"{ours}.{kind}": gguf_name(t, kind) for ours, t in table.items() for kind in ("weight", "bias")}


GGUF_EMBED = {"embed.weight": gguf_name(N.TOKEN_EMBD)}
GGUF_HEAD = {**with_bias({"final_norm": N.OUTPUT_NORM, "lm_head": N.OUTPUT})}
GGUF_ATTN = with_bias({"attn.q_proj": N.ATTN_Q, "attn.k_proj": N.ATTN_K, "attn.v_proj": N.ATTN_V,
                       "attn.o_proj": N.ATTN_OUT})
GGUF_ATTN_QKV = {QKV: gguf_name(N.ATTN_QKV), QKV_BIAS: gguf_name(N.ATTN_QKV, "bias"),
                 **with_bias({"attn.o_proj": N.ATTN_OUT})}
GGUF_NORMS = with_bias({"attn_norm": N.ATTN_NORM, "mlp_norm": N.FFN_NORM})
GGUF_QK_NORM = {"attn.q_norm.weight": gguf_name(N.ATTN_Q_NORM), "attn.k_norm.weight": gguf_name(N.ATTN_K_NORM)}
GGUF_FFN = with_bias({"mlp.gate_proj": N.FFN_GATE, "mlp.up_proj": N.FFN_UP, "mlp.down_proj": N.FFN_DOWN})
GGUF_EXPERTS = {"mlp.router.weight": gguf_name(N.FFN_GATE_INP),
                "mlp.experts.gate_up_proj": (gguf_name(N.FFN_GATE_EXP), gguf_name(N.FFN_UP_EXP)),
                "mlp.experts.down_proj": gguf_name(N.FFN_DOWN_EXP)}
GGUF_SHARED_EXPERT = {"mlp.shared.gate_proj.weight": gguf_name(N.FFN_GATE_SHEXP),
                      "mlp.shared.up_proj.weight": gguf_name(N.FFN_UP_SHEXP),
                      "mlp.shared.down_proj.weight": gguf_name(N.FFN_DOWN_SHEXP),
                      "mlp.shared_gate.weight": gguf_name(N.FFN_GATE_INP_SHEXP)}


def per_layer(cfg: ModelConfig, value: Any) -> Any:
    """A per-layer list as llama.cpp's array key, else the one value (`value(layer)`)."""
    values = [value(i) for i in range(cfg.n_layer)]
    return values if len(set(values)) > 1 else values[0]


def transformer_hparams(cfg: ModelConfig) -> dict[str, Any]:
    """The keys every llama.cpp architecture reads: widths, heads, RoPE, norm epsilon, experts."""
    hp: dict[str, Any] = {
        "context_length": cfg.max_seq_len, "embedding_length": cfg.d_model, "block_count": cfg.n_layer,
        "feed_forward_length": per_layer(cfg, cfg.ffn_dim), "head_count": per_layer(cfg, cfg.heads),
        "head_count_kv": per_layer(cfg, cfg.kv_heads)}
    if cfg.attention == "standard":
        hp.update(key_length=cfg.dim_head, value_length=cfg.dim_head)
    if cfg.positions == "rope":
        hp.update(rope_dimension_count=cfg.rotary_dim, rope_freq_base=float(cfg.rope_theta))
        if cfg.rope_scaling and cfg.rope_scaling.get("rope_type") == "linear":
            hp.update(rope_scaling_type=gguf.RopeScalingType.LINEAR,
                      rope_scaling_factor=float(cfg.rope_scaling["factor"]))
    hp["layer_norm_rms_eps" if cfg.norm == "rmsnorm" else "layer_norm_eps"] = float(cfg.norm_eps)
    if cfg.n_experts:
        hp.update(expert_count=cfg.n_experts, expert_used_count=cfg.top_k, expert_feed_forward_length=cfg.expert_dim)
    return hp


def residual_kind(cfg: ModelConfig) -> str:
    if cfg.parallel_residual:
        return "parallel_shared" if cfg.parallel_shared_norm else "parallel"
    return cfg.norm_placement


def norm_kind(cfg: ModelConfig) -> str:
    if not cfg.norm_affine:
        return f"{cfg.norm}_plain"
    return f"{cfg.norm}_1p" if cfg.norm_unit_offset else cfg.norm


def position_kind(cfg: ModelConfig) -> str:
    if cfg.positions == "rope" and cfg.rotary_fraction != 1.0:
        return "rope_partial"
    return cfg.positions


def graph_rules(cfg: ModelConfig, *, norm: tuple[str, ...] = ("rmsnorm",), norm_bias: tuple[bool, ...] = (False,),
                residual: tuple[str, ...] = ("pre",), ffn: str = "gated", act: tuple[str, ...] = ("silu",),
                positions: tuple[str, ...] = ("rope",), rope_scaling: tuple[str, ...] = ("default", "linear"),
                qkv_bias: tuple[bool, ...] = (False,), out_bias: tuple[bool, ...] = (False,),
                mlp_bias: tuple[bool, ...] = (False,), qk_norm: tuple[str, ...] = ("none",),
                attention: str = "standard", moe: tuple[bool, ...] = (False,),
                norm_topk: tuple[bool, ...] = (True, False),
                shared_experts: bool = False, deepseek_moe: bool = False, window: bool = False, softcap: bool = False,
                scales: tuple[float, float, float] | None = (1.0, 1.0, 1.0), per_layer_shapes: bool = False,
                tied: tuple[bool, ...] = (True, False), lm_head_bias: tuple[bool, ...] = (False,),
                embed_norm: bool = False, clip: bool = False) -> list[str]:
    """Why `cfg` is not what one llama.cpp graph computes; each keyword says what the graph allows."""
    kind = (cfg.rope_scaling or {}).get("rope_type", "default")
    lists = [f for f in ("n_head", "n_kv_head", "intermediate_size") if isinstance(getattr(cfg, f), list)]
    rules = [
        (cfg.attention == attention, f"attention must be {attention}"),
        (position_kind(cfg) in positions, f"positions must be one of {positions} (not {position_kind(cfg)})"),
        (cfg.positions != "rope" or kind in rope_scaling, f"RoPE scaling must be one of {rope_scaling} (not {kind})"),
        (norm_kind(cfg) in norm, f"norm must be one of {norm} (not {norm_kind(cfg)})"),
        (cfg.norm != "layernorm" or not cfg.norm_affine or cfg.norm_bias in norm_bias,
         f"LayerNorm bias must be {norm_bias}"),
        (residual_kind(cfg) in residual, f"residual layout must be one of {residual} (not {residual_kind(cfg)})"),
        (cfg.ffn_type == ffn, f"FFN must be {ffn}"),
        (cfg.activation in act, f"activation must be one of {act} (not {cfg.activation})"),
        (cfg.qkv_bias in qkv_bias, f"q/k/v bias must be {qkv_bias}"),
        (cfg.attn_out_bias in out_bias, f"attention output bias must be {out_bias}"),
        (cfg.mlp_bias in mlp_bias, f"FFN bias must be {mlp_bias}"),
        (cfg.qk_norm in qk_norm, f"qk-norm must be one of {qk_norm} (not {cfg.qk_norm})"),
        (bool(cfg.n_experts) in moe, "mixture-of-experts layers are not what this graph runs" if cfg.n_experts
         else "this graph runs mixture-of-experts layers only"),
        (not cfg.n_experts or cfg.router_norm_topk in norm_topk, f"router top-k renormalisation must be {norm_topk}"),
        (not cfg.n_experts or bool(cfg.n_shared_experts) == shared_experts,
         "shared experts required" if shared_experts else "no shared experts"),
        (cfg.routed_scaling == 1.0 and cfg.first_dense_layers == 0 or deepseek_moe,
         "no routed-expert scaling and no leading dense layers"),
        (cfg.sliding_window is None or cfg.sliding_window >= cfg.max_seq_len or window,
         "no sliding-window attention (a window shorter than the context)"),
        ((cfg.attn_logit_softcap is not None and cfg.final_logit_softcap is not None) == softcap,
         "attention and final logit soft-capping required" if softcap else "no logit soft-capping"),
        (cfg.clip_qkv is None or clip, "no q/k/v clipping"),
        (scales is None or (cfg.embed_scale, cfg.residual_scale, cfg.logit_scale) == scales,
         f"embedding / residual / logit scales must be {scales}"),
        (cfg.attn_scale is None or abs(cfg.attn_scale - cfg.dim_head ** -0.5) < 1e-9 or cfg.attention == "mla",
         "attention scale must be head_dim^-0.5"),
        (not lists or per_layer_shapes, f"per-layer {', '.join(lists)} are not what this graph runs"),
        (cfg.tie_embeddings in tied, "embeddings must be tied" if tied == (True,) else "LM head must be untied"),
        (cfg.lm_head_bias in lm_head_bias, f"LM head bias must be {lm_head_bias}"),
        (cfg.embed_norm == embed_norm, "embedding LayerNorm required" if embed_norm else "no embedding LayerNorm"),
        (cfg.embed_proj_dim is None and cfg.final_norm and cfg.learned_pos_offset == 0,
         "plain embedding (no projection, no position offset) and a final norm"),
        (cfg.block_repeat == 1 and not cfg.shared_ffn, "no parameter sharing across blocks"),
    ]
    return failed_rules(rules)


def _rope_rows_to_gguf(w: Tensor, n_head: int) -> Tensor:
    """Rows of a q/k projection from half-rotation order to llama.cpp's interleaved-pair order."""
    rows, tail = w.shape[0], w.shape[1:]
    return w.reshape(n_head, 2, rows // n_head // 2, *tail).transpose(1, 2).reshape(rows, *tail)


def _rope_rows_from_gguf(w: Tensor, n_head: int) -> Tensor:
    rows, tail = w.shape[0], w.shape[1:]
    return w.reshape(n_head, rows // n_head // 2, 2, *tail).transpose(1, 2).reshape(rows, *tail)


def _rope_permutation(heads: str) -> TensorTransform:
    """llama.cpp's `norm` RoPE rotates interleaved pairs; pocketlm's default rotates halves (as HF does)."""
    def count(cfg: ModelConfig, i: int) -> int:
        return cfg.heads(i) if heads == "q" else cfg.kv_heads(i)

    return TensorTransform(
        to_gguf=lambda t, cfg, i: t if cfg.rope_interleaved else _rope_rows_to_gguf(t, count(cfg, i)),
        from_gguf=lambda t, cfg, i: t if cfg.rope_interleaved else _rope_rows_from_gguf(t, count(cfg, i)))


ROPE_Q, ROPE_K = _rope_permutation("q"), _rope_permutation("k")
# the q/k rows of archs whose llama.cpp graph rotates interleaved pairs (LLAMA_ROPE_TYPE_NORM)
PAIR_ROPE = {"blocks.{i}.attn.q_proj.weight": ROPE_Q, "blocks.{i}.attn.k_proj.weight": ROPE_K,
             "blocks.{i}.attn.q_proj.bias": ROPE_Q, "blocks.{i}.attn.k_proj.bias": ROPE_K}


def pair_rope_rules(cfg: ModelConfig) -> list[tuple[bool, str]]:
    return [(not cfg.rope_interleaved or cfg.positions != "rope", "RoPE must rotate halves (as HF llama does)")]


def half_rope_rules(cfg: ModelConfig) -> list[tuple[bool, str]]:
    """Archs whose llama.cpp graph rotates halves (LLAMA_ROPE_TYPE_NEOX): the rows are written as they are."""
    return [(not cfg.rope_interleaved, "RoPE must rotate halves (this graph's NEOX rotation)")]


def llama_unsupported(cfg: ModelConfig) -> list[str]:
    moe = [] if not cfg.n_experts else failed_rules(
        [(cfg.router_norm_topk, "llama.cpp's llama graph renormalises the top-k expert weights (Mixtral)")])
    return graph_rules(cfg, qkv_bias=(False, True), out_bias=(False, True), moe=(False, True),
                       rope_scaling=("default", "linear", "llama3")) + moe + \
        failed_rules(pair_rope_rules(cfg))


def llama3_rope_factors(cfg: ModelConfig) -> dict[str, Any]:
    """Llama-3 RoPE scaling as llama.cpp reads it: per-frequency divisors (`rope_freqs`)."""
    if (cfg.rope_scaling or {}).get("rope_type") != "llama3":
        return {}
    from pocketlm.model.transformer import rope_frequencies

    scaled = rope_frequencies(cfg, cfg.rotary_dim)[0]
    plain = rope_frequencies(cfg.replace(rope_scaling=None), cfg.rotary_dim)[0]
    return {gguf_name(N.ROPE_FREQS): (plain / scaled).numpy()}


LLAMA_GGUF = GGUFArch(
    arch="llama",
    tensors={**GGUF_EMBED, **blocks({**GGUF_NORMS, **GGUF_ATTN, **GGUF_FFN, **GGUF_EXPERTS}), **GGUF_HEAD},
    hparams=transformer_hparams,
    unsupported=llama_unsupported,
    transforms=PAIR_ROPE,
    extra=llama3_rope_factors,
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
