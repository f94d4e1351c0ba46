"""Learning-rate schedules as multipliers of the peak learning rate."""

from __future__ import annotations

import math

SCHEDULES = ("cosine", "wsd", "constant")


def lr_multiplier(step: int, total: int, warmup: int, schedule: str, min_ratio: float = 0.1,
                  decay_fraction: float = 0.2) -> float:
    """Multiplier for optimizer step `step` (0-based) of `total`.

    cosine: linear warmup, then half-cosine from 1 down to `min_ratio` at the last step.
    wsd (warmup-stable-decay, MiniCPM, Hu et al. 2024): linear warmup, constant 1, then in the final
    `decay_fraction` of steps a linear decay to `min_ratio`.
    constant: linear warmup, then 1.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}")
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        span = max(1, total - 1 - warmup)
        progress = min(1.0, (step - warmup) / span)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    decay_start = decay_start_step(total, warmup, schedule, decay_fraction)
    if step < decay_start:
        return 1.0
    span = max(1, total - 1 - decay_start)
    return 1.0 - (1.0 - min_ratio) * min(1.0, (step - decay_start) / span)


def decay_start_step(total: int, warmup: int, schedule: str, decay_fraction: float) -> int:
    """First step of the decay phase (the second training stage for WSD); `total` if none."""
    if schedule == "wsd":
        return max(warmup, total - int(round(decay_fraction * total)))
    if schedule == "cosine":
        return warmup
    return total
