"""What the runtime insights share: architectures built to an equal parameter count, written as ModelConfig
files, and measured through `pocketlm.profile` (each setting in a fresh process, random weights)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

from pocketlm.model import costs
from pocketlm.model.config import ModelConfig
from pocketlm.profile.runner import run_settings
from pocketlm.profile.setting import Setting


def total_params(cfg: ModelConfig) -> int:
    return costs.param_counts(cfg)["total"]


def match_int(make: Callable[[int], ModelConfig], target: int, lo: int, hi: int, multiple: int = 1) -> ModelConfig:
    """make(v) for the multiple of `multiple` in [lo, hi] whose total parameters come closest to `target`
    (parameters must grow with v, so a bisection finds it)."""
    a, b = max(lo // multiple, 1), hi // multiple
    while a < b:
        mid = (a + b) // 2
        if total_params(make(mid * multiple)) < target:
            a = mid + 1
        else:
            b = mid
    options = [v * multiple for v in (a - 1, a) if v >= max(lo // multiple, 1)]
    return min((make(v) for v in options), key=lambda c: abs(total_params(c) - target))


def match_params(cfg: ModelConfig, target: int, field: str = "intermediate_size", multiple: int = 8) -> ModelConfig:
    """`cfg` with `field` chosen so its total parameters come closest to `target`."""
    return match_int(lambda v: cfg.replace(**{field: v}), target, multiple, 1 << 16, multiple)


def write_configs(configs: dict[str, ModelConfig], folder: Path) -> dict[str, str]:
    """Each config as folder/configs/<label>.json (what `pocketlm profile` takes as a MODEL)."""
    out = folder / "configs"
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for label, cfg in configs.items():
        path = out / f"{label}.json"
        cfg.replace(name=label).save(path)
        paths[label] = str(path)
    return paths


def profile_models(models: dict[str, str], dtypes: dict[str, str] | None = None, rounds: int = 1,
                   **setting: Any) -> dict[str, dict]:
    """{label: MODEL} -> {label: worker result}, one fresh process per model; `dtypes` gives a label its own
    precision (the others take setting's). With `rounds` > 1 the models are measured in turn that many times
    (A B A B ...) and each test keeps its fastest repeat over the rounds, so a burst of other work on a
    shared machine cannot land on one model only."""
    base = Setting(model="", **setting)
    dtypes = dtypes or {}
    settings = [dataclasses.replace(base, model=m, dtype=dtypes.get(label, base.dtype)) for label, m in models.items()]
    results = run_settings(settings * rounds)
    merged = dict(zip(models, results[:len(settings)]))
    for i, later in enumerate(results[len(settings):]):
        first = merged[list(models)[i % len(settings)]]
        for test in ("prefill", "decode"):
            for kept, new in zip(first[test], later[test]):
                kept["min_ms"] = min(kept["min_ms"], new["min_ms"])
    return merged


def by_depth(result: dict) -> dict[int, float]:
    """Decode ms per token (fastest repeat: other jobs on a shared machine only add time) at each depth."""
    return {d["depth"]: d["min_ms"] for d in result["decode"]}


def by_prompt(result: dict) -> dict[int, float]:
    """Prefill ms (fastest repeat) at each prompt length."""
    return {p["n_prompt"]: p["min_ms"] for p in result["prefill"]}
