"""Non-dominated points: lower is better on every objective."""

from __future__ import annotations

from typing import Sequence

OBJECTIVES = ("kl", "decode_ms", "memory_bytes")  # quality (KL to the original), latency, memory


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """a is no worse than b everywhere and better somewhere."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def front(points: dict[str, Sequence[float]]) -> list[str]:
    """Keys of the points no other point dominates (ties all kept), in the input order."""
    return [k for k, p in points.items() if not any(dominates(q, p) for j, q in points.items() if j != k)]
