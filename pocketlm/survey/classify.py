"""Place any Hugging Face config.json on the survey's axes and name the nearest catalog models.

Distance between two models (0 = same place on every axis):
    sum over categorical axes of weight * [values differ]  +  2 * |log10(params_a / params_b)|
(an axis unknown on either side costs half its weight)
with weights attention 1, FFN type 1, FFN-ratio bucket 0.5, activation 0.5, norm 0.5, positions 0.5,
vocabulary bucket 0.5, tied embeddings 0.25, parameter sharing 0.5. A 10x size gap costs as much as a
different attention and FFN type together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pocketlm.model import costs
from pocketlm.model.config import ModelConfig
from pocketlm.survey.axes import Axes, config_axes, ffn_ratio_bucket, vocab_bucket
from pocketlm.survey.catalog import CatalogEntry, CatalogError, load_catalog
from pocketlm.utils import read_json

WEIGHTS = {"attention": 1.0, "ffn_type": 1.0, "ffn_ratio": 0.5, "activation": 0.5, "norm": 0.5,
           "positions": 0.5, "vocab": 0.5, "tied": 0.25, "sharing": 0.5}
SIZE_WEIGHT = 2.0


@dataclass(frozen=True)
class Neighbor:
    name: str
    distance: float
    differs: tuple[str, ...]  # axes on which it differs


@dataclass
class Classification:
    source: str
    model_type: str | None
    axes: Axes
    buckets: dict[str, str | None]
    neighbors: list[Neighbor] = field(default_factory=list)
    config: ModelConfig | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "model_type": self.model_type, "axes": self.axes.to_dict(),
                "buckets": self.buckets, "neighbors": [n.__dict__ for n in self.neighbors]}


def _features(a: Axes) -> dict[str, Any]:
    return {"attention": a.attention, "ffn_type": a.ffn_type, "ffn_ratio": ffn_ratio_bucket(a.ffn_ratio),
            "activation": a.activation, "norm": a.norm, "positions": a.positions,
            "vocab": vocab_bucket(a.vocab_size), "tied": a.tied, "sharing": a.sharing}


def distance(a: Axes, b: Axes) -> tuple[float, tuple[str, ...]]:
    """Weighted axis mismatch plus log-size gap; an axis unknown on either side costs half its weight."""
    fa, fb = _features(a), _features(b)
    differs = tuple(k for k in WEIGHTS if fa[k] is not None and fb[k] is not None and fa[k] != fb[k])
    unknown = [k for k in WEIGHTS if fa[k] is None or fb[k] is None]
    d = sum(WEIGHTS[k] for k in differs) + 0.5 * sum(WEIGHTS[k] for k in unknown)
    if a.params and b.params:
        d += SIZE_WEIGHT * abs(math.log10(a.params / b.params))
    return round(d, 4), differs


def read_config_json(path: str | Path) -> dict[str, Any]:
    """config.json from a file or a model directory, with clear errors."""
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    if not p.is_file():
        raise CatalogError(f"{path}: no config.json found; give a Hugging Face model directory or its config.json")
    d = read_json(p, CatalogError)
    if not isinstance(d, dict):
        raise CatalogError(f"{p}: expected a JSON object")
    return d


def _generic_axes(hf: dict[str, Any]) -> Axes:
    """Best-effort axes from common config keys, for families pocketlm cannot load (custom code)."""
    def first(*keys: str) -> Any:
        for k in keys:
            if hf.get(k) is not None:
                return hf[k]
        return None

    d = first("hidden_size", "n_embd", "d_model", "model_dim")
    h = first("num_attention_heads", "n_head", "num_heads", "num_query_heads")
    kv = first("num_key_value_heads", "num_kv_heads", "n_kv_heads")
    if isinstance(h, list) or isinstance(kv, list):
        h0 = h[0] if isinstance(h, list) else h
        kv0 = kv[0] if isinstance(kv, list) else kv
    else:
        h0, kv0 = h, kv
    if hf.get("kv_lora_rank"):
        attention = "MLA"
    elif h0 is None:
        attention = None
    else:
        kv0 = h0 if kv0 is None else kv0
        attention = "MHA" if kv0 == h0 else ("MQA" if kv0 == 1 else "GQA")
    inter = first("intermediate_size", "n_inner", "ffn_dim")
    ratio: float | str | None = "layer-wise" if hf.get("ffn_multipliers") else (
        round(inter / d, 4) if inter and d else None)
    act = str(first("hidden_activation", "hidden_act", "activation_function", "activation_fn_name") or "")
    act_map = {"swish": "silu", "silu": "silu", "gelu": "gelu", "relu": "relu", "gelu_new": "gelu_tanh",
               "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh"}
    gated = act_map.get(act) == "silu" or bool(hf.get("ffn_with_glu"))
    norm_name = str(first("normalization_layer_name", "norm_type") or "")
    norm = "rmsnorm" if ("rms" in norm_name or "rms_norm_eps" in hf) else (
        "layernorm" if ("layer_norm_eps" in hf or "layer_norm_epsilon" in hf or "layer" in norm_name) else None)
    return Axes(attention=attention, ffn_type="gated" if gated else ("standard" if act else None), ffn_ratio=ratio,
                activation=act_map.get(act), norm=norm, vocab_size=hf.get("vocab_size"),
                positions="rope" if any(k in hf for k in ("rope_theta", "rope_scaling", "rope_freq_constant",
                                                           "rotary_pct")) else None,
                tied=hf.get("tie_word_embeddings"), params=None)


def classify(path_or_dict: str | Path | dict[str, Any], k: int = 5,
             entries: list[CatalogEntry] | None = None) -> Classification:
    """Axes of an HF config plus its k nearest catalog models."""
    from pocketlm.interop import UnsupportedModelError
    from pocketlm.interop.hf import config_from_hf_checked

    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise CatalogError(f"--k {k!r}: the number of nearest catalog models must be at least 1")
    hf = path_or_dict if isinstance(path_or_dict, dict) else read_config_json(path_or_dict)
    source = "pocketlm.interop.config_from_hf"
    cfg: ModelConfig | None = None
    try:
        where = "config" if isinstance(path_or_dict, dict) else (
            Path(path_or_dict) / "config.json" if Path(path_or_dict).is_dir() else path_or_dict)
        cfg = config_from_hf_checked(hf, where)
        axes = config_axes(cfg, params=costs.param_counts(cfg)["total"])
    except UnsupportedModelError:
        source = "generic config keys (family not loadable by pocketlm; approximate, size unknown)"
        axes = _generic_axes(hf)
    pool = [e for e in (entries if entries is not None else load_catalog())]
    scored = []
    for e in pool:
        dist, differs = distance(axes, e.axes("config"))
        scored.append(Neighbor(e.name, dist, differs))
    scored.sort(key=lambda n: (n.distance, n.name))
    f = _features(axes)
    buckets = {"ffn_ratio": f["ffn_ratio"], "vocab": f["vocab"]}
    return Classification(source, hf.get("model_type"), axes, buckets, scored[:k], cfg)
