"""Target shapes: what a user asks for (`--target-params 0.5x`, `--width/--depth`, explicit sizes) turned
into uniform smaller shapes of a model, with exact parameter counts from `model.costs`.

GQA is kept one of two ways: whole kv groups with their query heads (the ratio holds: 8q/4kv -> 4q/2kv),
or the same number of query heads dropped inside every group (8q/4kv -> 4q/4kv). A head count neither
way reaches is refused. The residual width stays a multiple of the query-head count (transformers' Llama
config refuses anything else, even with an explicit head_dim)."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

from pocketlm.compress.structured.importance import StructuredError
from pocketlm.model.config import ModelConfig
from pocketlm.model.costs import param_counts

ROUND = 8  # FFN and residual widths are multiples of this (kernels like it; llama.cpp needs multiples of 32 for k-quants)


@dataclass(frozen=True)
class Shape:
    n_layer: int
    n_head: int
    n_kv_head: int
    intermediate: int
    d_model: int

    @classmethod
    def of(cls, cfg: ModelConfig) -> "Shape":
        return cls(cfg.n_layer, cfg.heads(0), cfg.kv_heads(0), cfg.ffn_dim(0), cfg.d_model)

    def config(self, cfg: ModelConfig) -> ModelConfig:
        hd = cfg.dim_head
        n_kv = None if cfg.n_kv_head is None and self.n_kv_head == self.n_head else self.n_kv_head
        window = None if cfg.layer_window is None else cfg.layer_window[:self.n_layer]
        return cfg.replace(n_layer=self.n_layer, n_head=self.n_head, n_kv_head=n_kv, d_model=self.d_model,
                           intermediate_size=self.intermediate, layer_window=window,
                           head_dim=None if self.d_model % self.n_head == 0 and self.d_model // self.n_head == hd else hd)

    def params(self, cfg: ModelConfig) -> int:
        return param_counts(self.config(cfg))["total"]

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"L{self.n_layer} H{self.n_head}/{self.n_kv_head} I{self.intermediate} C{self.d_model}"


def head_mode(cfg: ModelConfig, n_head: int, n_kv_head: int | None = None) -> tuple[int, str]:
    """(kv heads, 'groups' | 'within') for keeping `n_head` query heads, or a StructuredError."""
    H, K = cfg.heads(0), cfg.kv_heads(0)
    G = H // K
    if not 0 < n_head <= H:
        raise StructuredError(f"--n-head {n_head}: choose 1..{H} (the model has {H} query heads)")
    if n_kv_head is not None and not 0 < n_kv_head <= K:
        raise StructuredError(f"--n-kv-head {n_kv_head}: choose 1..{K} (the model has {K} kv heads)")
    if n_head % G == 0 and n_head // G <= K and n_kv_head in (None, n_head // G):
        return n_head // G, "groups"
    if n_head % K == 0 and n_kv_head in (None, K):
        return K, "within"
    raise StructuredError(
        f"{n_head} query heads" + (f" over {n_kv_head} kv heads" if n_kv_head else "") +
        f" cannot keep the GQA structure of {H} query heads over {K} kv heads: choose a multiple of {G} "
        f"(whole kv groups, ratio {G}:1 kept) or of {K} (the same number of query heads in every group)")


def parse_count(text: str | int | float, reference: int) -> int:
    """'0.5x' / '50%' (of `reference`), '67M', '1.2B', '350k' or a plain number -> a parameter count."""
    if isinstance(text, (int, float)):
        return int(text)
    t = str(text).strip().lower().replace("_", "").replace(",", "")
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*(x|%|k|m|b)?", t)
    if not m:
        raise StructuredError(f"--target-params {text!r}: give a ratio (0.5x, 50%) or a count (67M, 1.2B, 350000)")
    v, unit = float(m.group(1)), m.group(2)
    scale = {"x": reference, "%": reference / 100, "k": 1e3, "m": 1e6, "b": 1e9, None: 1}[unit]
    return int(round(v * scale))


def _round(x: float) -> int:
    return max(ROUND, int(round(x / ROUND)) * ROUND)


def explicit_shape(cfg: ModelConfig, *, n_layer: int | None = None, n_head: int | None = None,
                   n_kv_head: int | None = None, intermediate: int | None = None, d_model: int | None = None,
                   width: float | None = None, depth: float | None = None) -> Shape:
    """The shape explicit sizes and/or width/depth ratios name (unnamed sizes stay as they are).
    `width` scales the FFN and residual widths (Minitron's best width axes), `depth` the layer count."""
    base = Shape.of(cfg)
    for name, r in (("width", width), ("depth", depth)):
        if r is not None and not 0 < r <= 1:
            raise StructuredError(f"--{name} {r}: a ratio in (0, 1]")
    if width is not None:
        intermediate = intermediate or min(base.intermediate, _round(base.intermediate * width))
        d_model = d_model or min(base.d_model, _round(base.d_model * width))
    if depth is not None:
        n_layer = n_layer or max(1, round(base.n_layer * depth))
    n_head = n_head or (n_kv_head * (base.n_head // base.n_kv_head) if n_kv_head else base.n_head)
    kv, _ = head_mode(cfg, n_head, n_kv_head)
    shape = Shape(n_layer or base.n_layer, n_head, kv, intermediate or base.intermediate, d_model or base.d_model)
    for name, want, have in (("n-layer", shape.n_layer, base.n_layer), ("intermediate", shape.intermediate,
                             base.intermediate), ("d-model", shape.d_model, base.d_model)):
        if not 0 < want <= have:
            raise StructuredError(f"--{name} {want}: pruning only removes; choose 1..{have}")
    if shape.d_model % shape.n_head:
        near = sorted({shape.d_model // m * m for m in (math.lcm(shape.n_head, ROUND), shape.n_head)} - {0})
        raise StructuredError(f"--d-model {shape.d_model} is not a multiple of the {shape.n_head} query heads "
                              f"(transformers' config refuses that shape); choose --d-model "
                              f"{' or '.join(map(str, near))}, or another --n-head")
    return shape


def _head_options(cfg: ModelConfig, min_fraction: float) -> list[tuple[int, int]]:
    H, K = cfg.heads(0), cfg.kv_heads(0)
    G = H // K
    return [(k * G, k) for k in range(K, 0, -1) if k * G >= H * min_fraction]


def candidate_shapes(cfg: ModelConfig, target: int, tolerance: float = 0.02, min_fraction: float = 0.5,
                     ) -> list[tuple[Shape, int]]:
    """Every uniform shape (layers, heads, residual width; FFN width solved for) whose exact parameter count
    is within `tolerance` of `target`, each axis kept at >= `min_fraction` of the original (FFN >= 1/8).
    Raises StructuredError naming the nearest reachable count when none is."""
    base = Shape.of(cfg)
    total = param_counts(cfg)["total"]
    if target >= total:
        raise StructuredError(f"target {target:,} parameters is not below the model's {total:,}; "
                              "give a smaller --target-params (e.g. 0.5x)")
    found, nearest = [], []
    widths = sorted({min(base.d_model, _round(base.d_model * f / 8)) for f in range(8, int(8 * min_fraction) - 1, -1)},
                    reverse=True)
    for n_layer in range(base.n_layer, max(1, math.ceil(base.n_layer * min_fraction)) - 1, -1):
        for n_head, n_kv in _head_options(cfg, min_fraction):
            for d_model in (w for w in widths if w % n_head == 0):
                lo = Shape(n_layer, n_head, n_kv, ROUND, d_model)
                hi = Shape(n_layer, n_head, n_kv, 2 * ROUND, d_model)
                p_lo = lo.params(cfg)
                per_channel = (hi.params(cfg) - p_lo) / ROUND
                width = ROUND + (target - p_lo) / per_channel
                I = min(base.intermediate, max(ROUND, _round(width)))
                if I < base.intermediate / 8:
                    I = _round(base.intermediate / 8)
                shape = Shape(n_layer, n_head, n_kv, I, d_model)
                p = shape.params(cfg)
                nearest.append((abs(p - target), p, shape))
                if abs(p - target) <= tolerance * target:
                    found.append((shape, p))
    if not found:
        _, p, shape = min(nearest, key=lambda t: t[0])
        raise StructuredError(f"no uniform shape within {tolerance:.0%} of {target:,} parameters "
                              f"(the model has {total:,}); the nearest is {shape} with {p:,} "
                              f"({p / total:.2f}x): ask for that, or loosen the tolerance")
    return found


def spread(shapes: list[tuple[Shape, int]], k: int) -> list[tuple[Shape, int]]:
    """At most `k` of `shapes`, evenly spaced over the list (it is ordered depth-major), both ends kept."""
    if len(shapes) <= k:
        return shapes
    idx = sorted({round(i * (len(shapes) - 1) / (k - 1)) for i in range(k)})
    return [shapes[i] for i in idx]
