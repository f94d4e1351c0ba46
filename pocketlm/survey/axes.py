"""The survey's architecture axes and the buckets its figures use.

An `Axes` value places one model on every axis the survey plots (attention, FFN type, FFN ratio,
activation, norm, vocabulary) plus the ones `classify` also compares (positions, tying, sharing, size).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from pocketlm.model.config import ModelConfig

LAYERWISE = "layer-wise"

# bucket orders as the survey's Fig. 2 legends list them
FFN_RATIO_BUCKETS = ("4", "2.75", "<2.75", ">4", "3", "0.5-4", "other")
VOCAB_BUCKETS = ("≤50k", "50-100k", "100-150k", "150-200k", ">200k")


@dataclass(frozen=True)
class Axes:
    attention: str | None  # MHA | GQA | MQA | MLA (None: unknown / not plotted)
    ffn_type: str | None  # standard | gated
    ffn_ratio: float | str | None  # intermediate / d_model, or "layer-wise"
    activation: str | None  # relu | gelu | gelu_tanh | silu
    norm: str | None  # layernorm | rmsnorm
    vocab_size: int | None
    positions: str | None = None  # rope | learned | alibi | none
    tied: bool | None = None
    sharing: str = "none"  # none | shared_ffn | block_repeat
    params: int | None = None  # total parameters

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def config_axes(cfg: ModelConfig, params: int | None = None) -> Axes:
    """Read every survey axis off a ModelConfig."""
    if isinstance(cfg.intermediate_size, list):
        ratio: float | str = LAYERWISE
    else:
        ratio = round(cfg.intermediate_size / cfg.d_model, 4)
    sharing = "shared_ffn" if cfg.shared_ffn else ("block_repeat" if cfg.block_repeat > 1 else "none")
    return Axes(attention=cfg.attention_kind, ffn_type=cfg.ffn_type, ffn_ratio=ratio,
                activation=cfg.activation, norm=cfg.norm, vocab_size=cfg.vocab_size,
                positions=cfg.positions, tied=cfg.tie_embeddings, sharing=sharing, params=params)


def ffn_ratio_bucket(ratio: float | str | None) -> str | None:
    """The survey's FFN-ratio slices: 4, 2.75, <2.75, >4, 3 and 0.5-4 (OpenELM's layer-wise widths)."""
    if ratio is None:
        return None
    if ratio == LAYERWISE:
        return "0.5-4"
    r = float(ratio)
    if abs(r - 4.0) < 0.05:
        return "4"
    if r > 4.0:
        return ">4"
    if abs(r - 3.0) < 0.05:
        return "3"
    if abs(r - 2.75) < 0.005:
        return "2.75"
    if r < 2.75:
        return "<2.75"
    return "other"


def vocab_bucket(vocab: int | None) -> str | None:
    """Vocabulary slices. "≤50k" keeps the GPT-2-derived vocabularies (50,257-51,200 rows) as the survey does."""
    if vocab is None:
        return None
    if vocab <= 52_000:
        return "≤50k"
    if vocab <= 100_000:
        return "50-100k"
    if vocab <= 150_000:
        return "100-150k"
    if vocab <= 200_000:
        return "150-200k"
    return ">200k"


def half_year(release: str) -> str:
    """'2024-07' -> '2024H2'."""
    year, month = release.split("-")[:2]
    return f"{year}H{1 if int(month) <= 6 else 2}"
