"""Translate between a Hugging Face config (config.json) and a pocketlm ModelConfig.

Reading goes through transformers' own config class for the model_type, so every default and
legacy key (rope_scaling vs rope_parameters, rotary_pct, ...) resolves exactly as transformers
resolves it. Writing produces the fields transformers needs to rebuild the same network; `save_hf`
checks the round trip, so a ModelConfig feature a family cannot express is an error, not a silent
change.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from pocketlm.model.config import ModelConfig


class UnsupportedModelError(ValueError):
    """A checkpoint or config that pocketlm cannot represent exactly; the message says what and why."""


ACTIVATION_NAMES = {"silu": "silu", "swish": "silu", "gelu": "gelu", "relu": "relu", "gelu_new": "gelu_tanh",
                    "gelu_pytorch_tanh": "gelu_tanh", "gelu_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh"}
ACTIVATION_OUT = {"silu": "silu", "gelu": "gelu", "relu": "relu", "gelu_tanh": "gelu_pytorch_tanh"}


def _activation(name: str, model_type: str) -> str:
    if name not in ACTIVATION_NAMES:
        raise UnsupportedModelError(f"{model_type}: activation {name!r} is not supported "
                                    f"(supported: {sorted(ACTIVATION_NAMES)})")
    return ACTIVATION_NAMES[name]


def _rope(c: Any) -> dict[str, Any]:
    rp = dict(getattr(c, "rope_parameters", None) or {})
    legacy = getattr(c, "rope_scaling", None)
    if not rp and legacy:
        rp = dict(legacy)
    theta = rp.get("rope_theta", getattr(c, "rope_theta", 10000.0))
    fraction = rp.get("partial_rotary_factor", getattr(c, "partial_rotary_factor", 1.0))
    kind = rp.get("rope_type") or rp.get("type") or "default"
    kind = {"su": "longrope", "mrope": "default"}.get(kind, kind)
    scaling = None
    if kind != "default":
        scaling = {k: v for k, v in rp.items() if k not in ("rope_theta", "partial_rotary_factor", "type")}
        scaling["rope_type"] = kind
        orig = getattr(c, "original_max_position_embeddings", None)
        if orig and "original_max_position_embeddings" not in scaling:
            scaling["original_max_position_embeddings"] = orig
    return dict(rope_theta=float(theta), rotary_fraction=float(fraction), rope_scaling=scaling)


def _sliding(c: Any, n_layer: int) -> dict[str, Any]:
    window = getattr(c, "sliding_window", None)
    types = getattr(c, "layer_types", None)
    if not window:
        return dict(sliding_window=None, layer_window=None)
    if types is None:
        return dict(sliding_window=window, layer_window=None)
    flags = [t == "sliding_attention" for t in types[:n_layer]]
    if not any(flags):
        return dict(sliding_window=None, layer_window=None)
    return dict(sliding_window=window, layer_window=None if all(flags) else flags)


def _base(c: Any) -> dict[str, Any]:
    """Fields every llama-style family shares."""
    n_layer, h = c.num_hidden_layers, c.num_attention_heads
    bias = bool(getattr(c, "attention_bias", False))
    out = dict(
        vocab_size=c.vocab_size, d_model=c.hidden_size, n_layer=n_layer, n_head=h,
        n_kv_head=getattr(c, "num_key_value_heads", None) or h, head_dim=getattr(c, "head_dim", None),
        max_seq_len=getattr(c, "max_position_embeddings", 2048), qkv_bias=bias, attn_out_bias=bias,
        ffn_type="gated", intermediate_size=c.intermediate_size,
        activation=_activation(getattr(c, "hidden_act", "silu"), c.model_type),
        mlp_bias=bool(getattr(c, "mlp_bias", False)), norm="rmsnorm", norm_eps=getattr(c, "rms_norm_eps", 1e-6),
        tie_embeddings=bool(c.tie_word_embeddings), **_rope(c), **_sliding(c, n_layer))
    if out["head_dim"] == c.hidden_size // h:
        out["head_dim"] = None
    return out


# ---- readers: transformers config object -> ModelConfig kwargs ----------------------------------

def _llama(c: Any) -> dict[str, Any]:
    return _base(c)


def _qwen2(c: Any) -> dict[str, Any]:
    return {**_base(c), "qkv_bias": True, "attn_out_bias": False}


def _qwen3(c: Any) -> dict[str, Any]:
    return {**_base(c), "qk_norm": "head"}


def _gemma(c: Any) -> dict[str, Any]:
    act = getattr(c, "hidden_activation", None) or c.hidden_act
    return {**_base(c), "activation": _activation(act, c.model_type), "norm_unit_offset": True,
            "embed_scale": c.hidden_size**0.5, "embed_scale_round": True}


def _gemma2(c: Any) -> dict[str, Any]:
    return {**_gemma(c), "norm_placement": "sandwich", "attn_scale": c.query_pre_attn_scalar**-0.5,
            "attn_logit_softcap": c.attn_logit_softcapping, "final_logit_softcap": c.final_logit_softcapping}


def _olmo(c: Any) -> dict[str, Any]:
    return {**_base(c), "norm": "layernorm", "norm_affine": False, "norm_eps": 1e-5, "clip_qkv": c.clip_qkv}


def _olmo2(c: Any) -> dict[str, Any]:
    return {**_base(c), "norm_placement": "post_sublayer", "qk_norm": "full"}


def _stablelm(c: Any) -> dict[str, Any]:
    if c.qk_layernorm:
        raise UnsupportedModelError("stablelm: per-head qk LayerNorm (qk_layernorm=true) is not supported")
    out = {**_base(c), "norm": "layernorm", "norm_bias": True, "norm_eps": c.layer_norm_eps,
           "qkv_bias": bool(c.use_qkv_bias), "attn_out_bias": False}
    if c.use_parallel_residual:
        out.update(parallel_residual=True, parallel_shared_norm=True)
    return out


def _phi(c: Any) -> dict[str, Any]:
    if c.qk_layernorm:
        raise UnsupportedModelError("phi: qk_layernorm=true is not supported")
    return {**_base(c), "ffn_type": "standard", "activation": _activation(c.hidden_act, "phi"), "mlp_bias": True,
            "norm": "layernorm", "norm_bias": True, "norm_eps": c.layer_norm_eps, "qkv_bias": True,
            "attn_out_bias": True, "parallel_residual": True, "parallel_shared_norm": True, "lm_head_bias": True}


def _phi3(c: Any) -> dict[str, Any]:
    out = _base(c)
    orig = getattr(c, "original_max_position_embeddings", None)
    if orig:
        out["extra"] = {"original_max_position_embeddings": orig}
    return out


def _moe_common(c: Any, n_experts: int, norm_topk: bool) -> dict[str, Any]:
    return dict(n_experts=n_experts, top_k=c.num_experts_per_tok, router_norm_topk=norm_topk)


def _mixtral(c: Any) -> dict[str, Any]:
    return {**_base(c), **_moe_common(c, c.num_local_experts, True)}


def _qwen2_moe(c: Any) -> dict[str, Any]:
    if getattr(c, "mlp_only_layers", None) or getattr(c, "decoder_sparse_step", 1) != 1:
        raise UnsupportedModelError("qwen2_moe: dense layers between MoE layers (mlp_only_layers / "
                                    "decoder_sparse_step != 1) are not supported")
    return {**_qwen2(c), **_moe_common(c, c.num_experts, c.norm_topk_prob),
            "moe_intermediate_size": c.moe_intermediate_size, "n_shared_experts": 1,
            "shared_expert_intermediate_size": c.shared_expert_intermediate_size, "shared_expert_gate": True}


def _olmoe(c: Any) -> dict[str, Any]:
    return {**_base(c), **_moe_common(c, c.num_experts, c.norm_topk_prob), "qk_norm": "full",
            "clip_qkv": c.clip_qkv}


def _mla(c: Any) -> dict[str, Any]:
    out = _base(c)
    out.update(attention="mla", n_kv_head=None, head_dim=None, q_lora_rank=c.q_lora_rank,
               kv_lora_rank=c.kv_lora_rank, qk_rope_head_dim=c.qk_rope_head_dim,
               qk_nope_head_dim=c.qk_nope_head_dim, v_head_dim=c.v_head_dim, rotary_fraction=1.0)
    qk = c.qk_rope_head_dim + c.qk_nope_head_dim
    scale = qk**-0.5
    rp = out["rope_scaling"] or {}
    if rp.get("mscale_all_dim"):  # yarn: softmax scale grows with the context extension
        m = 0.1 * rp["mscale_all_dim"] * math.log(rp["factor"]) + 1.0
        scale = scale * m * m
    out["attn_scale"] = scale if scale != qk**-0.5 else None
    return out


def _deepseek_v2(c: Any) -> dict[str, Any]:
    if getattr(c, "topk_method", "greedy") != "greedy":
        raise UnsupportedModelError(f"deepseek_v2: topk_method {c.topk_method!r} is not supported (only 'greedy')")
    return {**_mla(c), "rope_interleaved": True, "n_experts": c.n_routed_experts, "top_k": c.num_experts_per_tok,
            "router_norm_topk": False, "moe_intermediate_size": c.moe_intermediate_size,
            "n_shared_experts": c.n_shared_experts or 0, "routed_scaling": c.routed_scaling_factor,
            "first_dense_layers": c.first_k_dense_replace}


def _minicpm3(c: Any) -> dict[str, Any]:
    return {**_mla(c), "embed_scale": float(c.scale_emb), "embed_scale_round": True,
            "residual_scale": c.scale_depth / math.sqrt(c.num_hidden_layers),
            "logit_scale": c.dim_model_base / c.hidden_size}


def _gpt_neox(c: Any) -> dict[str, Any]:
    h = c.num_attention_heads
    return dict(
        vocab_size=c.vocab_size, d_model=c.hidden_size, n_layer=c.num_hidden_layers, n_head=h,
        max_seq_len=c.max_position_embeddings, qkv_bias=bool(c.attention_bias), attn_out_bias=bool(c.attention_bias),
        ffn_type="standard", intermediate_size=c.intermediate_size, activation=_activation(c.hidden_act, "gpt_neox"),
        mlp_bias=True, norm="layernorm", norm_bias=True, norm_eps=c.layer_norm_eps,
        parallel_residual=bool(c.use_parallel_residual), tie_embeddings=bool(c.tie_word_embeddings), **_rope(c))


def _opt(c: Any) -> dict[str, Any]:
    proj = c.word_embed_proj_dim if c.word_embed_proj_dim != c.hidden_size else None
    pre = bool(c.do_layer_norm_before)
    return dict(
        vocab_size=c.vocab_size, d_model=c.hidden_size, n_layer=c.num_hidden_layers, n_head=c.num_attention_heads,
        max_seq_len=c.max_position_embeddings, qkv_bias=c.enable_bias, attn_out_bias=c.enable_bias,
        positions="learned", learned_pos_offset=2, ffn_type="standard", intermediate_size=c.ffn_dim,
        activation=_activation(c.activation_function, "opt"), mlp_bias=c.enable_bias, norm="layernorm",
        norm_bias=c.enable_bias, norm_affine=c.layer_norm_elementwise_affine, norm_eps=1e-5,
        norm_placement="pre" if pre else "post", final_norm=pre and not c._remove_final_layer_norm,
        embed_proj_dim=proj, tie_embeddings=bool(c.tie_word_embeddings))


def _gpt2(c: Any) -> dict[str, Any]:
    if c.scale_attn_by_inverse_layer_idx or c.reorder_and_upcast_attn or not c.scale_attn_weights:
        raise UnsupportedModelError("gpt2: scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn / "
                                    "unscaled attention are not supported")
    return dict(
        vocab_size=c.vocab_size, d_model=c.n_embd, n_layer=c.n_layer, n_head=c.n_head, max_seq_len=c.n_positions,
        qkv_bias=True, attn_out_bias=True, positions="learned", ffn_type="standard",
        intermediate_size=c.n_inner or 4 * c.n_embd, activation=_activation(c.activation_function, "gpt2"),
        mlp_bias=True, norm="layernorm", norm_bias=True, norm_eps=c.layer_norm_epsilon,
        tie_embeddings=bool(c.tie_word_embeddings))


def _bloom(c: Any) -> dict[str, Any]:
    if c.apply_residual_connection_post_layernorm:
        raise UnsupportedModelError("bloom: apply_residual_connection_post_layernorm=true is not supported")
    return dict(
        vocab_size=c.vocab_size, d_model=c.hidden_size, n_layer=c.n_layer, n_head=c.n_head,
        max_seq_len=getattr(c, "seq_length", None) or 2048, qkv_bias=True, attn_out_bias=True, positions="alibi",
        ffn_type="standard", intermediate_size=4 * c.hidden_size, activation="gelu_tanh", mlp_bias=True,
        norm="layernorm", norm_bias=True, norm_eps=c.layer_norm_epsilon, embed_norm=True,
        tie_embeddings=bool(c.tie_word_embeddings))


READERS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "llama": _llama, "mistral": _llama, "qwen2": _qwen2, "qwen3": _qwen3, "gemma": _gemma, "gemma2": _gemma2,
    "olmo": _olmo, "olmo2": _olmo2, "stablelm": _stablelm, "phi": _phi, "phi3": _phi3, "mixtral": _mixtral,
    "qwen2_moe": _qwen2_moe, "olmoe": _olmoe, "deepseek_v2": _deepseek_v2, "minicpm3": _minicpm3,
    "gpt_neox": _gpt_neox, "opt": _opt, "gpt2": _gpt2, "bloom": _bloom,
}
SUPPORTED = tuple(sorted(READERS))


def hf_config_object(hf: dict[str, Any]) -> Any:
    """transformers' config object for a config.json dict (never runs remote code)."""
    from transformers import AutoConfig

    model_type = hf.get("model_type")
    if model_type not in READERS:
        raise UnsupportedModelError(
            f"model_type {model_type!r} is not supported; supported families: {', '.join(SUPPORTED)}. "
            "Models that need trust_remote_code (OpenELM, MiniCPM-1/2, Qwen-1) are not loaded from code.")
    fields = {k: v for k, v in hf.items() if k != "model_type"}
    return AutoConfig.for_model(model_type, **fields)


def config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    """A pocketlm ModelConfig for a Hugging Face config.json dict."""
    c = hf_config_object(hf)
    kwargs = READERS[c.model_type](c)
    extra = {"hf_model_type": c.model_type, **kwargs.pop("extra", {})}
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(c, key, None) is not None:
            extra[key] = getattr(c, key)
    return ModelConfig(**kwargs, name=hf.get("_name_or_path", "") or "", extra=extra)


# ---- writer: ModelConfig -> config.json fields ----------------------------------------------------

def _rope_out(cfg: ModelConfig) -> dict[str, Any]:
    rp: dict[str, Any] = {"rope_theta": cfg.rope_theta, "rope_type": "default"}
    if cfg.rope_scaling:
        rp.update(cfg.rope_scaling)
    if cfg.rotary_fraction != 1.0:
        rp["partial_rotary_factor"] = cfg.rotary_fraction
    return {"rope_parameters": rp}


def hf_config_from(cfg: ModelConfig, model_type: str) -> dict[str, Any]:
    """config.json fields for `model_type` describing the network `cfg` describes."""
    from transformers import AutoConfig

    L = cfg.n_layer
    common: dict[str, Any] = dict(vocab_size=cfg.vocab_size, tie_word_embeddings=cfg.tie_embeddings,
                                  max_position_embeddings=cfg.max_seq_len)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if key in cfg.extra:
            common[key] = cfg.extra[key]
    if model_type in ("gpt2", "opt", "bloom", "gpt_neox"):
        act = {"gelu_tanh": "gelu_new"}.get(cfg.activation, cfg.activation)
        if model_type == "gpt2":
            d = dict(n_embd=cfg.d_model, n_layer=L, n_head=cfg.heads(0), n_positions=cfg.max_seq_len,
                     n_inner=cfg.ffn_dim(0), activation_function=act, layer_norm_epsilon=cfg.norm_eps)
        elif model_type == "opt":
            d = dict(hidden_size=cfg.d_model, num_hidden_layers=L, num_attention_heads=cfg.heads(0),
                     ffn_dim=cfg.ffn_dim(0), activation_function=cfg.activation, enable_bias=cfg.qkv_bias,
                     do_layer_norm_before=cfg.norm_placement == "pre",
                     _remove_final_layer_norm=cfg.norm_placement == "pre" and not cfg.final_norm,
                     word_embed_proj_dim=cfg.embed_proj_dim or cfg.d_model,
                     layer_norm_elementwise_affine=cfg.norm_affine)
        elif model_type == "bloom":
            d = dict(hidden_size=cfg.d_model, n_layer=L, n_head=cfg.heads(0), layer_norm_epsilon=cfg.norm_eps,
                     seq_length=cfg.max_seq_len)
            common.pop("max_position_embeddings")
        else:
            d = dict(hidden_size=cfg.d_model, num_hidden_layers=L, num_attention_heads=cfg.heads(0),
                     intermediate_size=cfg.ffn_dim(0), hidden_act=act, layer_norm_eps=cfg.norm_eps,
                     use_parallel_residual=cfg.parallel_residual, attention_bias=cfg.qkv_bias, **_rope_out(cfg))
    else:
        d = dict(hidden_size=cfg.d_model, num_hidden_layers=L, num_attention_heads=cfg.heads(0),
                 num_key_value_heads=cfg.kv_heads(0), intermediate_size=cfg.ffn_dim(0),
                 hidden_act=ACTIVATION_OUT[cfg.activation], rms_norm_eps=cfg.norm_eps, **_rope_out(cfg))
        if cfg.attention == "standard":
            d["head_dim"] = cfg.dim_head
        if model_type in ("llama", "mistral", "olmo", "olmoe", "qwen3", "gemma", "gemma2", "deepseek_v2", "minicpm3"):
            d["attention_bias"] = cfg.qkv_bias
        if model_type in ("llama", "deepseek_v2", "minicpm3"):
            d["mlp_bias"] = cfg.mlp_bias
        if cfg.sliding_window is not None:
            d["sliding_window"] = cfg.sliding_window
            if model_type in ("qwen2", "qwen3", "qwen2_moe"):
                d["use_sliding_window"] = True
            if cfg.layer_window is not None or model_type in ("gemma2", "qwen2", "qwen3", "qwen2_moe"):
                flags = cfg.layer_window or [True] * L
                d["layer_types"] = ["sliding_attention" if f else "full_attention" for f in flags]
        elif model_type in ("mistral", "mixtral", "phi3", "gemma2"):
            d["sliding_window"] = None
        if model_type == "phi":
            d.update(hidden_act={"gelu_tanh": "gelu_new"}.get(cfg.activation, cfg.activation),
                     layer_norm_eps=cfg.norm_eps)
            d.pop("rms_norm_eps")
        if model_type == "stablelm":
            d.update(layer_norm_eps=cfg.norm_eps, use_qkv_bias=cfg.qkv_bias, use_parallel_residual=cfg.parallel_residual)
        if model_type in ("gemma", "gemma2"):
            d["hidden_activation"] = d["hidden_act"]
        if model_type == "gemma2":
            d.update(query_pre_attn_scalar=round(cfg.attn_scale**-2), attn_logit_softcapping=cfg.attn_logit_softcap,
                     final_logit_softcapping=cfg.final_logit_softcap)
        if model_type in ("olmo", "olmoe"):
            d["clip_qkv"] = cfg.clip_qkv
        if model_type == "phi3" and "original_max_position_embeddings" in cfg.extra:
            d["original_max_position_embeddings"] = cfg.extra["original_max_position_embeddings"]
        if model_type == "mixtral":
            d.update(num_local_experts=cfg.n_experts, num_experts_per_tok=cfg.top_k)
        if model_type in ("qwen2_moe", "olmoe"):
            d.update(num_experts=cfg.n_experts, num_experts_per_tok=cfg.top_k, norm_topk_prob=cfg.router_norm_topk)
        if model_type == "qwen2_moe":
            d.update(moe_intermediate_size=cfg.expert_dim,
                     shared_expert_intermediate_size=cfg.shared_expert_intermediate_size)
        if cfg.attention == "mla":
            d.update(q_lora_rank=cfg.q_lora_rank, kv_lora_rank=cfg.kv_lora_rank, qk_rope_head_dim=cfg.qk_rope_head_dim,
                     qk_nope_head_dim=cfg.qk_nope_head_dim, v_head_dim=cfg.v_head_dim, head_dim=cfg.qk_rope_head_dim,
                     num_key_value_heads=cfg.heads(0))
        if model_type == "deepseek_v2":
            d.update(n_routed_experts=cfg.n_experts, num_experts_per_tok=cfg.top_k,
                     moe_intermediate_size=cfg.expert_dim, n_shared_experts=cfg.n_shared_experts or None,
                     routed_scaling_factor=cfg.routed_scaling, first_k_dense_replace=cfg.first_dense_layers,
                     intermediate_size=cfg.ffn_dim(0), topk_method="greedy")
        if model_type == "minicpm3":
            d.update(scale_emb=cfg.embed_scale, scale_depth=cfg.residual_scale * math.sqrt(L),
                     dim_model_base=round(cfg.logit_scale * cfg.d_model))
    d.update(common)
    d["model_type"] = model_type
    full = AutoConfig.for_model(model_type, **{k: v for k, v in d.items() if k != "model_type"}).to_dict()
    return full

