"""What a family is, and the pieces family modules share.

A family is one transformers `model_type` seen from pocketlm: how its config.json reads into a
`ModelConfig` and writes back, where each pocketlm tensor lives in its checkpoint, when pocketlm
picks it to save a model that came from nowhere, and, optionally, how llama.cpp names it (GGUF).

Weight tables map pocketlm parameter names (as in `Transformer.state_dict()`) to HF names. Inside a
block, names are relative to `layer_prefix` (e.g. `model.layers.{i}.`). A `Codec` says how one HF
tensor holds several pocketlm tensors, or one tensor stored differently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from pocketlm.model.config import ModelConfig

Reader = Callable[[Any], dict[str, Any]]  # transformers config object -> ModelConfig keyword arguments
Writer = Callable[[ModelConfig], dict[str, Any]]  # ModelConfig -> config.json fields
Rules = Callable[[ModelConfig], list[str]]  # ModelConfig -> why it cannot be expressed (empty: it can)


class UnsupportedModelError(ValueError):
    """A checkpoint or config that pocketlm cannot represent exactly; the message says what and why."""


# ---- codecs: one HF tensor <-> pocketlm tensors ---------------------------------------------------

@dataclass(frozen=True)
class Codec:
    name: str
    pack: Callable[[list[Tensor], int], Tensor]  # (pocketlm tensors, n_head) -> HF tensor
    unpack: Callable[[Tensor, list[int], int], list[Tensor]]  # (HF tensor, rows of each part, n_head) -> parts


def _pack_heads3(ts: list[Tensor], n_head: int) -> Tensor:
    rest = ts[0].shape[1:]
    return torch.stack([t.view(n_head, -1, *rest) for t in ts], dim=1).reshape(-1, *rest).contiguous()


def _unpack_heads3(t: Tensor, parts: list[int], n_head: int) -> list[Tensor]:
    rest = t.shape[1:]
    v = t.view(n_head, 3, -1, *rest)
    return [v[:, j].reshape(-1, *rest).contiguous() for j in range(3)]


COPY = Codec("copy", lambda ts, h: ts[0], lambda t, parts, h: [t])
CAT = Codec("cat", lambda ts, h: torch.cat(ts, dim=0), lambda t, parts, h: list(t.split(parts, dim=0)))
# HF Conv1D (GPT-2) stores the transpose of a linear weight
CONV1D = Codec("conv1d", lambda ts, h: ts[0].t().contiguous(), lambda t, parts, h: [t.t().contiguous()])
CONV1D_CAT = Codec("conv1d_cat", lambda ts, h: torch.cat(ts, dim=0).t().contiguous(),
                   lambda t, parts, h: [p.contiguous() for p in t.t().split(parts, dim=0)])
# q, k, v interleaved per head: [H * 3 * D, ...] laid out as [H, 3, D, ...] (GPT-NeoX, BLOOM)
HEADS3 = Codec("heads3", _pack_heads3, _unpack_heads3)


def weight_and_bias(modules: dict[str, str]) -> dict[str, str]:
    """Tensor names of modules renamed one to one: {"mlp.up_proj": "mlp.fc1"} maps .weight and .bias."""
    return {f"{ours}.{kind}": f"{theirs}.{kind}" for ours, theirs in modules.items() for kind in ("weight", "bias")}


QKV = ("attn.q_proj.weight", "attn.k_proj.weight", "attn.v_proj.weight")
QKV_BIAS = ("attn.q_proj.bias", "attn.k_proj.bias", "attn.v_proj.bias")


# ---- GGUF: how llama.cpp names a family -------------------------------------------------------------

TensorKey = str | tuple[str, ...]  # one tensor, or several concatenated along their rows


def gguf_name(tensor: Any, suffix: str = "weight") -> str:
    """gguf-py's name of a llama.cpp tensor (`gguf.MODEL_TENSOR` member), `{i}` standing for the layer."""
    import gguf

    return f"{gguf.TENSOR_NAMES[tensor].replace('{bid}', '{i}')}.{suffix}"


def rows_axis(t: Tensor) -> int:
    """The axis GGUF tables concatenate and split along: rows of a matrix, experts' rows, a bias."""
    return max(t.dim() - 2, 0)


@dataclass(frozen=True)
class TensorTransform:
    """A change of layout on the way into GGUF, and its inverse on the way back."""

    to_gguf: Callable[[Tensor, ModelConfig, int], Tensor]  # (tensor, config, layer) -> GGUF tensor
    from_gguf: Callable[[Tensor, ModelConfig, int], Tensor]


@dataclass(frozen=True)
class GGUFArch:
    """One llama.cpp architecture as pocketlm writes it.

    `tensors` reads like the model: entries before the first block entry are written first, block
    entries (`{i}` = layer) layer by layer, then the rest. A key of several pocketlm tensors is one
    GGUF tensor of their rows side by side (a fused q/k/v); a value of several GGUF names splits one
    pocketlm tensor's rows evenly (stacked gate/up experts). An entry the model lacks (a bias it was
    built without, an MoE tensor in a dense layer) is skipped; a tied LM head is not written.
    `extra` adds tensors llama.cpp reads that the model keeps in its config (RoPE factors).
    """

    arch: str  # llama.cpp architecture name (gguf.MODEL_ARCH_NAMES)
    tensors: dict[TensorKey, TensorKey]  # pocketlm name(s) -> GGUF name(s)
    hparams: Callable[[ModelConfig], dict[str, Any]]  # GGUFWriter.add_<key> -> value, in writing order
    unsupported: Rules  # why a config cannot run as this architecture
    transforms: dict[TensorKey, TensorTransform] = field(default_factory=dict)  # keyed like `tensors`
    extra: Callable[[ModelConfig], dict[str, Any]] | None = None  # GGUF name -> float array

    def __post_init__(self) -> None:
        # shared tables name every tensor some llama.cpp graph has; keep those gguf-py lists for this one
        import gguf

        by_name = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}
        allowed = {gguf.TENSOR_NAMES[t] for t in gguf.MODEL_TENSORS[by_name[self.arch]]}
        names = lambda v: (v,) if isinstance(v, str) else v  # noqa: E731
        kept = {k: v for k, v in self.tensors.items()
                if all(n.rsplit(".", 1)[0].replace("{i}", "{bid}") in allowed for n in names(v))}
        object.__setattr__(self, "tensors", kept)
        object.__setattr__(self, "transforms", {k: t for k, t in self.transforms.items() if k in kept})


def failed_rules(rules: list[tuple[bool, str]]) -> list[str]:
    """The messages of the rules that do not hold."""
    return [msg for ok, msg in rules if not ok]


# ---- the family record ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Family:
    model_type: str
    architecture: str  # transformers class written into config.json
    read: Reader
    write: Writer
    layer_prefix: str  # HF prefix of block i, with {i}
    top: dict[str, str]  # pocketlm top-level name -> HF name
    block: dict[str, str]  # pocketlm block-relative name -> HF name relative to the layer prefix
    packed: tuple[tuple[str, tuple[str, ...], Codec], ...] = ()  # (HF name, pocketlm names, codec)
    ignore: tuple[str, ...] = ()  # HF tensor name fragments that carry no weights (buffers)
    lm_head_aliases: tuple[str, ...] = ()  # other HF names the LM head is found under
    # transformers<5 per-expert layouts, HF names with {e}: (gate, up, down, router)
    legacy_experts: tuple[tuple[str, str, str, str], ...] = ()
    # save_hf's choice for a model with no HF origin: the first family (by pick_order) that picks it
    picks: Callable[[ModelConfig], bool] | None = None
    pick_order: int = 0
    gguf: GGUFArch | None = None  # None: exported as llama.cpp's `llama` when the config is llama-shaped
    no_gguf: str = ""  # why llama.cpp cannot run the family at all, and which runtimes can


# ---- reading helpers (transformers config object -> ModelConfig fields) ---------------------------

ACTIVATION_NAMES = {"silu": "silu", "swish": "silu", "gelu": "gelu", "relu": "relu", "gelu_new": "gelu_tanh",
                    "gelu_pytorch_tanh": "gelu_tanh", "gelu_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh"}
ACTIVATION_OUT = {"silu": "silu", "gelu": "gelu", "relu": "relu", "gelu_tanh": "gelu_pytorch_tanh"}


def activation(name: str, model_type: str) -> str:
    if name not in ACTIVATION_NAMES:
        raise UnsupportedModelError(f"{model_type}: activation {name!r} is not supported "
                                    f"(supported: {sorted(ACTIVATION_NAMES)})")
    return ACTIVATION_NAMES[name]


def gelu_new(act: str) -> str:
    """The HF spelling of pocketlm's tanh GELU in the older families (GPT-2, BLOOM, NeoX, Phi)."""
    return {"gelu_tanh": "gelu_new"}.get(act, act)


def read_rope(c: Any) -> dict[str, Any]:
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


def read_sliding(c: Any, n_layer: int) -> dict[str, Any]:
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


def read_moe(c: Any, n_experts: int, norm_topk: bool) -> dict[str, Any]:
    return dict(n_experts=n_experts, top_k=c.num_experts_per_tok, router_norm_topk=norm_topk)


# ---- writing helpers (ModelConfig -> config.json fields) ---------------------------------------------

def hf_common(cfg: ModelConfig) -> dict[str, Any]:
    """Fields every family writes: vocabulary, tying, context length and special token ids."""
    out: dict[str, Any] = dict(vocab_size=cfg.vocab_size, tie_word_embeddings=cfg.tie_embeddings,
                               max_position_embeddings=cfg.max_seq_len)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if key in cfg.extra:
            out[key] = cfg.extra[key]
    return out


def write_rope(cfg: ModelConfig) -> dict[str, Any]:
    rp: dict[str, Any] = {"rope_theta": cfg.rope_theta, "rope_type": "default"}
    if cfg.rope_scaling:
        rp.update(cfg.rope_scaling)
    if cfg.rotary_fraction != 1.0:
        rp["partial_rotary_factor"] = cfg.rotary_fraction
    return {"rope_parameters": rp}


def layer_types(cfg: ModelConfig) -> list[str]:
    """transformers' per-layer attention kinds for a sliding-window config."""
    flags = cfg.layer_window or [True] * cfg.n_layer
    return ["sliding_attention" if f else "full_attention" for f in flags]
