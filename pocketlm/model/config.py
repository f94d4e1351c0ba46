"""ModelConfig: one dataclass that spans every architecture axis of the SLM survey.

Each field names one design choice seen in an open small language model (2022-2024). Per-layer
quantities (heads, kv heads, FFN width) accept either one int or a list with one entry per layer
(OpenELM's layer-wise scaling). `validate()` raises one ConfigError naming the field and the rule.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pocketlm.utils import atomic_write_text, dataclass_from_dict, read_json

ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "silu")
NORMS = ("layernorm", "rmsnorm")
POSITIONS = ("rope", "learned", "alibi", "none")
FFN_TYPES = ("standard", "gated")
NORM_PLACEMENTS = ("pre", "post", "sandwich", "post_sublayer")
QK_NORMS = ("none", "head", "full")
ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn", "longrope")


# Bounds far beyond any published model, so a typo or a hostile file fails here instead of hanging
# a loop over 10^7 layers or asking the allocator for terabytes.
MAX_LAYERS = 10_000
MAX_VOCAB = 1 << 24
MAX_WIDTH = 1 << 18

POSITIVE_INTS = ("vocab_size", "d_model", "n_layer", "max_seq_len", "block_repeat")
OPTIONAL_POSITIVE_INTS = ("head_dim", "q_lora_rank", "sliding_window", "moe_intermediate_size",
                          "shared_expert_intermediate_size", "embed_proj_dim")
NON_NEGATIVE_INTS = ("kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim", "n_experts", "top_k",
                     "n_shared_experts", "first_dense_layers", "learned_pos_offset")
PER_LAYER_INTS = ("n_head", "n_kv_head", "intermediate_size")
POSITIVE_FLOATS = ("rope_theta", "rotary_fraction", "norm_eps")
OPTIONAL_POSITIVE_FLOATS = ("attn_scale", "attn_logit_softcap", "clip_qkv", "final_logit_softcap")
FINITE_FLOATS = ("routed_scaling", "embed_scale", "residual_scale", "logit_scale")
BOOLS = ("qkv_bias", "attn_out_bias", "rope_interleaved", "mlp_bias", "shared_expert_gate", "router_norm_topk",
         "norm_bias", "norm_affine", "norm_unit_offset", "parallel_residual", "parallel_shared_norm", "embed_norm",
         "final_norm", "tie_embeddings", "embed_scale_round", "lm_head_bias", "shared_ffn")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class ConfigError(ValueError):
    """An impossible or unsupported ModelConfig; the message names the field and the rule."""


@dataclass
class ModelConfig:
    # --- size -------------------------------------------------------------------------------
    vocab_size: int = 32000
    d_model: int = 512
    n_layer: int = 8
    n_head: int | list[int] = 8
    n_kv_head: int | list[int] | None = None  # None: same as n_head (MHA); 1: MQA; else GQA
    head_dim: int | None = None  # None: d_model // n_head (Gemma sets it independently)
    max_seq_len: int = 2048

    # --- attention --------------------------------------------------------------------------
    attention: str = "standard"  # "standard" (MHA/MQA/GQA by head counts) or "mla"
    qkv_bias: bool = False
    attn_out_bias: bool = False
    qk_norm: str = "none"  # "head": norm over head_dim (Qwen3, OpenELM); "full": over all heads (OLMo-2)
    attn_scale: float | None = None  # softmax scale; None: head_dim ** -0.5 (µP uses 1/head_dim)
    attn_logit_softcap: float | None = None  # Gemma-2
    clip_qkv: float | None = None  # OLMo
    sliding_window: int | None = None
    layer_window: list[bool] | None = None  # per layer: True = sliding window layer (Gemma-2)
    # MLA (DeepSeek-V2, MiniCPM3): low-rank q and compressed kv latent
    q_lora_rank: int | None = None
    kv_lora_rank: int = 0
    qk_rope_head_dim: int = 0
    qk_nope_head_dim: int = 0
    v_head_dim: int = 0

    # --- positions --------------------------------------------------------------------------
    positions: str = "rope"
    rope_theta: float = 10000.0
    rotary_fraction: float = 1.0  # Pythia 0.25, Phi-2 0.4
    rope_interleaved: bool = False  # rotate pairs (x0,x1) instead of halves (DeepSeek-V2)
    rope_scaling: dict[str, Any] | None = None  # {"rope_type": "llama3" | "linear" | "yarn" | ...}
    learned_pos_offset: int = 0  # OPT stores 2 extra position rows

    # --- feed-forward -----------------------------------------------------------------------
    ffn_type: str = "gated"
    intermediate_size: int | list[int] = 1408
    activation: str = "silu"
    mlp_bias: bool = False
    # mixture of experts (0 experts: dense)
    n_experts: int = 0
    top_k: int = 2
    moe_intermediate_size: int | None = None  # width of each routed expert; None: intermediate_size
    n_shared_experts: int = 0
    shared_expert_intermediate_size: int | None = None  # None: n_shared_experts * expert width
    shared_expert_gate: bool = False  # Qwen2-MoE: sigmoid gate on the shared expert
    router_norm_topk: bool = True  # renormalise the top-k probabilities (Mixtral, OLMoE: False)
    routed_scaling: float = 1.0  # DeepSeek-V2 routed_scaling_factor
    first_dense_layers: int = 0  # DeepSeek-V2 first_k_dense_replace

    # --- norms and residuals ----------------------------------------------------------------
    norm: str = "rmsnorm"
    norm_eps: float = 1e-5
    norm_bias: bool = False  # LayerNorm with bias
    norm_affine: bool = True  # False: non-parametric LayerNorm (OLMo)
    norm_unit_offset: bool = False  # Gemma: scale by (1 + w)
    norm_placement: str = "pre"  # pre | post (OPT-350m) | sandwich (Gemma-2) | post_sublayer (OLMo-2)
    parallel_residual: bool = False  # attention and MLP read the same input (GPT-NeoX, Phi)
    parallel_shared_norm: bool = False  # one norm feeds both branches (Phi) instead of two (NeoX)
    embed_norm: bool = False  # LayerNorm right after the embedding (BLOOM)
    final_norm: bool = True

    # --- embeddings and output --------------------------------------------------------------
    tie_embeddings: bool = True
    embed_scale: float = 1.0  # Gemma sqrt(d_model), MiniCPM scale_emb
    embed_scale_round: bool = False  # Gemma casts the scale to the activation dtype first
    embed_proj_dim: int | None = None  # OPT-350m: embeddings of width 512 projected to d_model
    residual_scale: float = 1.0  # MiniCPM: scale_depth / sqrt(n_layer) on every branch
    logit_scale: float = 1.0  # multiply logits (MiniCPM: dim_model_base / d_model; µP output)
    final_logit_softcap: float | None = None  # Gemma-2
    lm_head_bias: bool = False  # Phi

    # --- parameter sharing ------------------------------------------------------------------
    block_repeat: int = 1  # MobileLLM: each stored block runs this many times in a row
    shared_ffn: bool = False  # MobiLlama: one FFN shared by every block

    # --- bookkeeping ------------------------------------------------------------------------
    name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # provenance (e.g. hf model_type)

    # ------------------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        self.validate()

    # per-layer accessors (layer-wise scaling lives in lists)
    def heads(self, layer: int) -> int:
        return _per_layer(self.n_head, layer)

    def kv_heads(self, layer: int) -> int:
        return self.heads(layer) if self.n_kv_head is None else _per_layer(self.n_kv_head, layer)

    def ffn_dim(self, layer: int) -> int:
        return _per_layer(self.intermediate_size, layer)

    @property
    def n_stored_layers(self) -> int:
        """Blocks with their own weights (n_layer counts block applications)."""
        return self.n_layer // self.block_repeat

    @property
    def dim_head(self) -> int:
        if self.head_dim is not None:
            return self.head_dim
        return self.d_model // _per_layer(self.n_head, 0)

    @property
    def rotary_dim(self) -> int:
        d = self.qk_rope_head_dim if self.attention == "mla" else self.dim_head
        return int(d * self.rotary_fraction) if self.attention != "mla" else d

    def is_sliding(self, layer: int) -> bool:
        if self.sliding_window is None:
            return False
        return True if self.layer_window is None else bool(self.layer_window[layer])

    def is_moe(self, layer: int) -> bool:
        return self.n_experts > 0 and layer >= self.first_dense_layers

    @property
    def expert_dim(self) -> int:
        return self.moe_intermediate_size or self.ffn_dim(0)

    @property
    def attention_kind(self) -> str:
        """The survey's attention axis: MHA, MQA, GQA or MLA."""
        if self.attention == "mla":
            return "MLA"
        h, kv = self.heads(0), self.kv_heads(0)
        return "MHA" if kv == h else ("MQA" if kv == 1 else "GQA")

    # ------------------------------------------------------------------------------------------
    def validate(self) -> None:
        def need(ok: bool, fld: str, rule: str) -> None:
            if not ok:
                raise ConfigError(f"ModelConfig.{fld}: {rule}")

        self._validate_types(need)
        need(self.n_layer <= MAX_LAYERS, "n_layer", f"{self.n_layer} layers is more than {MAX_LAYERS}")
        need(self.vocab_size <= MAX_VOCAB, "vocab_size", f"{self.vocab_size} is more than {MAX_VOCAB}")
        for fld in ("d_model", "head_dim", "embed_proj_dim", "moe_intermediate_size", "kv_lora_rank"):
            need((getattr(self, fld) or 0) <= MAX_WIDTH, fld, f"{getattr(self, fld)} is wider than {MAX_WIDTH}")
        for fld in ("intermediate_size", "n_head"):
            need(all(v <= MAX_WIDTH for v in _as_list(getattr(self, fld))), fld, f"an entry is over {MAX_WIDTH}")
        need(self.rotary_fraction <= 1.0, "rotary_fraction", "must be in (0, 1]")
        need(self.attention in ("standard", "mla"), "attention", "must be 'standard' or 'mla'")
        need(self.activation in ACTIVATIONS, "activation",
             f"unknown activation {self.activation!r}; choose one of {ACTIVATIONS}")
        need(self.norm in NORMS, "norm", f"unknown norm {self.norm!r}; choose one of {NORMS}")
        need(self.positions in POSITIONS, "positions", f"must be one of {POSITIONS}")
        need(self.ffn_type in FFN_TYPES, "ffn_type", f"must be one of {FFN_TYPES}")
        need(self.norm_placement in NORM_PLACEMENTS, "norm_placement", f"must be one of {NORM_PLACEMENTS}")
        need(self.qk_norm in QK_NORMS, "qk_norm", f"must be one of {QK_NORMS}")
        need(self.block_repeat >= 1 and self.n_layer % self.block_repeat == 0, "block_repeat",
             f"n_layer ({self.n_layer}) must be a multiple of block_repeat ({self.block_repeat})")
        for fld in ("n_head", "n_kv_head", "intermediate_size"):
            v = getattr(self, fld)
            if isinstance(v, list):
                need(len(v) == self.n_stored_layers, fld,
                     f"a per-layer list needs {self.n_stored_layers} entries, got {len(v)}")
        if self.layer_window is not None:
            need(len(self.layer_window) == self.n_stored_layers, "layer_window",
                 f"needs one entry per layer ({self.n_stored_layers})")
        for i in range(self.n_stored_layers):
            h, kv = self.heads(i), self.kv_heads(i)
            need(h > 0, "n_head", "must be positive")
            need(kv > 0 and h % kv == 0, "n_kv_head",
                 f"layer {i}: n_kv_head ({kv}) must divide n_head ({h})")
            need(self.ffn_dim(i) > 0 or self.n_experts > 0, "intermediate_size", "must be positive")
        if self.head_dim is None and self.attention == "standard":
            need(self.d_model % self.heads(0) == 0, "n_head",
                 f"d_model ({self.d_model}) must be divisible by n_head ({self.heads(0)}), "
                 "or set head_dim explicitly")
        if self.attention == "mla":
            need(self.kv_lora_rank > 0, "kv_lora_rank", "MLA needs kv_lora_rank > 0")
            need(self.qk_rope_head_dim > 0 and self.qk_rope_head_dim % 2 == 0, "qk_rope_head_dim",
                 "MLA needs a positive even qk_rope_head_dim")
            need(self.v_head_dim > 0, "v_head_dim", "MLA needs v_head_dim > 0")
            need(self.positions == "rope", "positions", "MLA is defined with RoPE positions")
        if self.positions == "rope" and self.attention == "standard":
            need(self.rotary_dim % 2 == 0 and self.rotary_dim > 0, "rotary_fraction",
                 f"rotary dims (head_dim * rotary_fraction = {self.rotary_dim}) must be even and > 0")
        if self.rope_scaling is not None:
            kind = self.rope_scaling.get("rope_type", "default")
            need(kind in ROPE_TYPES, "rope_scaling", f"rope_type {kind!r} not one of {ROPE_TYPES}")
        if self.n_experts > 0:
            need(1 <= self.top_k <= self.n_experts, "top_k",
                 f"must be between 1 and n_experts ({self.n_experts})")
        need(not (self.shared_ffn and self.n_experts), "shared_ffn", "cannot be combined with MoE")
        need(self.sliding_window is None or self.sliding_window > 0, "sliding_window", "must be positive")
        if self.parallel_residual:
            need(self.norm_placement == "pre", "parallel_residual", "needs norm_placement 'pre'")

    def _validate_types(self, need: Any) -> None:
        """Each field has its declared type and a finite, sensible value (JSON gives strings, nulls, NaN)."""
        rules = ((POSITIVE_INTS, lambda v: _is_int(v) and v > 0, "a positive integer"),
                 (OPTIONAL_POSITIVE_INTS, lambda v: v is None or (_is_int(v) and v > 0), "a positive integer or null"),
                 (NON_NEGATIVE_INTS, lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
                 (PER_LAYER_INTS, lambda v: (v is None or all(_is_int(x) for x in _as_list(v)))
                  and v != [], "an integer or a non-empty list of integers (one per layer)"),
                 (POSITIVE_FLOATS, lambda v: _is_real(v) and v > 0, "a finite number > 0"),
                 (OPTIONAL_POSITIVE_FLOATS, lambda v: v is None or (_is_real(v) and v > 0), "a finite number > 0 or null"),
                 (FINITE_FLOATS, _is_real, "a finite number"),
                 (BOOLS, lambda v: isinstance(v, bool), "true or false"))
        for fields, ok, kind in rules:
            for fld in fields:
                v = getattr(self, fld)
                need(ok(v), fld, f"must be {kind}, got {v!r}")
        for fld in ("n_head", "intermediate_size"):
            need(getattr(self, fld) is not None, fld, "must be set")
        for fld in ("attention", "activation", "norm", "positions", "ffn_type", "norm_placement", "qk_norm", "name"):
            need(isinstance(getattr(self, fld), str), fld, f"must be a string, got {getattr(self, fld)!r}")
        need(self.rope_scaling is None or isinstance(self.rope_scaling, dict), "rope_scaling",
             "must be a mapping or null")
        need(isinstance(self.extra, dict), "extra", "must be a mapping")
        need(self.layer_window is None or (isinstance(self.layer_window, list)
                                           and all(isinstance(b, bool) for b in self.layer_window)),
             "layer_window", "must be a list of true/false, one per layer, or null")

    # ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"a ModelConfig is a JSON object of fields, got {type(d).__name__}")
        return dataclass_from_dict(cls, d, ConfigError)

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> "ModelConfig":
        data = read_json(path, ConfigError)
        try:
            return cls.from_dict(data)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from e

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, list) else [value]


def _per_layer(value: int | list[int], layer: int) -> int:
    return value[layer] if isinstance(value, list) else value
