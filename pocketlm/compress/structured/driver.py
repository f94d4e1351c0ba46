"""Structured pruning end to end: score (once, on the unpruned model), plan a shape, slice; and, for a
parameter target, rank the candidate shapes by KL to the unpruned model right after pruning (Minitron's
cheap proxy before distillation)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from pocketlm.compress.structured import depth
from pocketlm.compress.structured.activation import activation_importance
from pocketlm.compress.structured.importance import Importance, StructuredError, check_sliceable
from pocketlm.compress.structured.magnitude import magnitude_importance
from pocketlm.compress.structured.per_layer import allocate
from pocketlm.compress.structured.shapes import ROUND, Shape, candidate_shapes, head_mode, spread
from pocketlm.compress.structured.slicing import SlicePlan, slice_model
from pocketlm.compress.structured.taylor import taylor_importance
from pocketlm.model.costs import param_counts
from pocketlm.model.transformer import Transformer

METHODS = ("activation", "magnitude", "taylor")


def importance(model: Transformer, method: str = "activation", calib: Tensor | None = None,
               batch_size: int = 8, progress: bool = False, **agg: str) -> Importance:
    """Width importance of `model` by `method` (activation and taylor need `calib` [N, L])."""
    check_sliceable(model.config)
    if method not in METHODS:
        raise StructuredError(f"importance {method!r} unknown; choose one of {METHODS}")
    if method == "magnitude":
        return magnitude_importance(model)
    if calib is None:
        raise StructuredError(f"{method} importance needs calibration tokens (--calib)")
    if method == "taylor":
        return taylor_importance(model, calib, batch_size)
    return activation_importance(model, calib, batch_size=batch_size, progress=progress, **agg)


def _top(scores: Tensor, k: int) -> list[int]:
    return sorted(scores.topk(k).indices.tolist())


def plan_for(cfg, imp: Importance, shape: Shape, layer_scores: Tensor | None = None,
             contiguous: bool = False, per_layer: bool = False) -> SlicePlan:
    """What to keep for `shape`: the most important heads / channels, the least important layers dropped.
    `per_layer`: the shape's kv groups and FFN channels (times its layers) shared out over the layers by
    one ranking across them (`per_layer.allocate`), whole GQA groups, at least one group per layer."""
    n_drop = cfg.n_layer - shape.n_layer
    if n_drop and layer_scores is None:
        raise StructuredError("depth pruning needs layer scores (block_influence or removal_kl)")
    dropped = set(depth.drop_order(layer_scores, n_drop, contiguous)) if n_drop else set()
    layers = [i for i in range(cfg.n_layer) if i not in dropped]
    kv, mode = head_mode(cfg, shape.n_head, shape.n_kv_head)
    G = cfg.heads(0) // cfg.kv_heads(0)
    groups = imp.group_scores(cfg)
    n_groups, n_ffn = [kv] * len(layers), [shape.intermediate] * len(layers)
    if per_layer:
        total_q = shape.n_head * len(layers)
        if total_q % G:
            raise StructuredError(f"per-layer widths keep whole kv groups of {G} query heads; {shape.n_head} heads "
                                  f"x {len(layers)} layers is not a whole number of groups: choose a multiple of {G}")
        mode = "groups"
        n_groups = allocate([groups[i] for i in layers], total_q // G)
        n_ffn = allocate([imp.ffn[i] for i in layers], shape.intermediate * len(layers), ROUND, ROUND)
    q_heads, kv_heads = [], []
    for i, kv in zip(layers, n_groups):
        if mode == "groups":
            keep = _top(groups[i], kv)
            q_heads.append([g * G + j for g in keep for j in range(G)])
        else:
            keep = list(range(cfg.kv_heads(0)))
            per = shape.n_head // kv
            q_heads.append([g * G + j for g in keep for j in _top(imp.heads[i, g * G:(g + 1) * G], per)])
        kv_heads.append(keep)
    ffn = [_top(imp.ffn[i], n) for i, n in zip(layers, n_ffn)]
    return SlicePlan(layers, q_heads, kv_heads, ffn, _top(imp.embed, shape.d_model), per_layer=per_layer)


@dataclass
class StructuredResult:
    """A pruned model and how it was chosen."""

    model: Transformer
    shape: Shape
    plan: SlicePlan
    params_before: int
    params_after: int
    ranking: list[dict[str, Any]] = field(default_factory=list)  # candidates by KL after pruning
    seconds: dict[str, float] = field(default_factory=dict)
    method: str = "activation"
    layer_method: str = "block_influence"
    top: list[tuple[Shape, SlicePlan, Transformer]] = field(default_factory=list)  # best `keep`, by KL

    def summary(self) -> dict[str, Any]:
        out = {"shape": self.shape.to_dict(), "params_before": self.params_before, "params_after": self.params_after,
               "ratio": self.params_after / self.params_before, "method": self.method,
               "layer_method": self.layer_method, "kept_layers": self.plan.layers,
               "ranking": self.ranking, "seconds": self.seconds}
        if self.plan.per_layer:
            out["per_layer"] = layer_widths(self.model.config)
        return out


def layer_widths(cfg) -> dict[str, list[int]]:
    """Query heads, kv heads and FFN channels of every layer."""
    L = range(cfg.n_layer)
    return {"n_head": [cfg.heads(i) for i in L], "n_kv_head": [cfg.kv_heads(i) for i in L],
            "intermediate": [cfg.ffn_dim(i) for i in L]}


def prune_structured(model: Transformer, calib: Tensor | None, shapes: list[Shape] | Shape, *,
                     method: str = "activation", layer_method: str = "block_influence", contiguous: bool = False,
                     rank_tokens: int = 16, batch_size: int = 8, progress: bool = False,
                     per_layer: bool = False, keep: int = 1) -> StructuredResult:
    """Prune `model` (untouched) to the best of `shapes`: each candidate is sliced from the same scores and
    ranked by KL(unpruned || pruned) on the last `rank_tokens` calibration sequences (not used to score).
    `per_layer`: each shape's budget of kv groups and FFN channels is shared out over the layers by
    importance (`plan_for`), giving per-layer widths with the shape's parameter count. `keep`: the best
    `keep` candidates (shape, plan, pruned model) are returned in `top`, best first (for `shrink`'s
    short distillation of the top few)."""
    shapes = [shapes] if isinstance(shapes, Shape) else list(shapes)
    cfg = model.config
    t0 = time.perf_counter()
    score_calib, rank_calib = calib, calib
    if calib is not None and len(shapes) > 1 and calib.shape[0] > rank_tokens:
        score_calib, rank_calib = calib[:-rank_tokens], calib[-rank_tokens:]
    imp = importance(model, method, score_calib, batch_size=batch_size, progress=progress)
    needs_depth = any(s.n_layer < cfg.n_layer for s in shapes)
    if needs_depth and layer_method not in depth.LAYER_SCORES:
        raise StructuredError(f"layer importance {layer_method!r} unknown; choose one of {sorted(depth.LAYER_SCORES)}")
    if needs_depth and score_calib is None:
        raise StructuredError("depth pruning needs calibration tokens (--calib)")
    layer_scores = None
    if needs_depth:
        reuse = layer_method == "block_influence" and imp.block_influence is not None
        layer_scores = imp.block_influence if reuse else depth.LAYER_SCORES[layer_method](model, score_calib,
                                                                                           batch_size)
    t_score = time.perf_counter() - t0
    before = param_counts(cfg)["total"]
    ranking, top = [], []
    ref = depth.reference_logits(model, rank_calib, batch_size) if len(shapes) > 1 else None
    for shape in shapes:
        plan = plan_for(cfg, imp, shape, layer_scores, contiguous, per_layer)
        pruned = slice_model(model, plan)
        row = {"shape": str(shape), **shape.to_dict(), "params": param_counts(pruned.config)["total"]}
        if per_layer:
            row["per_layer"] = layer_widths(pruned.config)
        if ref is not None:
            row["kl"] = depth.kl_to(ref, pruned, rank_calib, batch_size)
        ranking.append(row)
        top = sorted(top + [(row.get("kl", 0.0), len(ranking), shape, plan, pruned)], key=lambda t: t[:2])[:keep]
    ranking.sort(key=lambda r: r.get("kl", 0.0))
    _, _, shape, plan, pruned = top[0]
    seconds = {"score": t_score, "total": time.perf_counter() - t0}
    return StructuredResult(pruned, shape, plan, before, param_counts(pruned.config)["total"], ranking,
                            seconds, method, layer_method, [t[2:] for t in top])


def target_shapes(cfg, target_params: str | int | None = None, *, tolerance: float = 0.02,
                  max_candidates: int = 16, **explicit: Any) -> list[Shape]:
    """The candidate shapes for a parameter target, or the one shape explicit sizes / ratios name."""
    from pocketlm.compress.structured.shapes import explicit_shape, parse_count

    explicit = {k: v for k, v in explicit.items() if v is not None}
    if target_params is not None and explicit:
        raise StructuredError("give either --target-params or explicit sizes / --width / --depth, not both")
    if target_params is None:
        if not explicit:
            raise StructuredError("say how small: --target-params 0.5x, --width / --depth, or explicit sizes")
        return [explicit_shape(cfg, **explicit)]
    target = parse_count(target_params, param_counts(cfg)["total"])
    return [s for s, _ in spread(candidate_shapes(cfg, target, tolerance), max_candidates)]
