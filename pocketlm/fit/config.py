"""One fit request (`FitConfig`), every default once; light (no torch) so the CLI's --help stays fast."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from pocketlm.fit.budget import Budget


@dataclass
class FitConfig:
    """One fit request; every default once."""

    model: str
    budget: Budget
    runtime: str = "torch"  # torch | llamacpp
    candidates: str | None = None  # axes, e.g. "precision=int8,int4;prune_nm=none,2:4"; None: the registry's
    quality: tuple[str, ...] = ("kl",)  # kl | ppl, then optional task names (scored on the front only)
    calib: str = "bundled:16x128"
    tokens: int = 4096  # held-out tokens scored at the last rung (a quarter at the first)
    distill_tokens: int = 0  # recovery distillation of each structured-pruning candidate (0: prune only)
    window: int = 128
    prompt: int = 64  # prefill test: prompt tokens
    context: int = 256  # decode measured after context - gen tokens; KV cache sized for context
    gen: int = 16
    repeat: int = 3
    threads: int = 0  # 0: torch's default
    margin: float = 0.25  # discard unmeasured only when the prediction misses a limit by more than this
    max_extra_measurements: int = 3  # when nothing promoted fits: how many more to try
    screen_above: int = 16  # more candidates alive than this (and several weights variants): screen rung 0
    task_limit: int = 100
    seed: int = 0

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["budget"] = self.budget.to_dict()
        return d
