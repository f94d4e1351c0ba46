"""Per-layer (heterogeneous) widths: how many kv groups and FFN channels each layer keeps when one
budget is shared by all layers, chosen by a global ranking of the importance scores.

A uniform shape fixes the budget (its kv groups x layers, its FFN width x layers), so a per-layer plan
has the uniform shape's parameter count: the structures of one kind compete across layers (heads with
heads, FFN channels with FFN channels), every layer keeps at least one kv group and one step of FFN
channels, and FFN counts stay multiples of the step (8). Scores are compared as they are: first-order Taylor estimates each structure's loss change, so
its scores are comparable across layers by construction; activation and magnitude norms are compared as
LLM-Pruner's global mode compares them."""

from __future__ import annotations

import torch
from torch import Tensor

from pocketlm.compress.structured.importance import StructuredError


def allocate(scores: list[Tensor], total: int, minimum: int = 1, step: int = 1) -> list[int]:
    """How many of its structures each layer keeps: `total` in all, chosen `step` at a time by one ranking
    across layers (a step's value is the mean of the next `step` best scores of its layer, so the kept
    sum of scores is the largest any split in steps gives), each layer at least min(`minimum`, its count).
    `step` falls back to 1 when it does not divide the total, the minimum and every layer's count."""
    sizes = [len(s) for s in scores]
    if total % step or minimum % step or any(n % step for n in sizes):
        step = 1
    floors = [min(minimum, n) // step for n in sizes]
    if not step * sum(floors) <= total <= sum(sizes):
        raise StructuredError(f"cannot keep {total} structures over {len(sizes)} layers of {sizes} "
                              f"with at least {minimum} in each")
    # each layer's own best `floor` steps are kept first; the others compete in one ranking
    steps = [s.sort(descending=True).values.reshape(-1, step).mean(1)[f:] for s, f in zip(scores, floors)]
    owner = torch.cat([torch.full((len(v),), i) for i, v in enumerate(steps)])
    order = torch.cat(steps).argsort(descending=True, stable=True)
    counts = floors[:]
    for i in owner[order[:total // step - sum(floors)]].tolist():
        counts[i] += 1
    return [c * step for c in counts]
