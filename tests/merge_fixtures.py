"""Tiny random Hugging Face models for the merge tests: k seeds of one family, saved as HF directories."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers as T

from tests.hf_tiny import tiny_config


def hf_models(root: Path, family: str, k: int = 3, noise: float = 0.01) -> list[Path]:
    """k models of `family` under root/family/{i}: model 0 is random (seed 0), model i > 0 is model 0
    plus Gaussian noise of std `noise` on every tensor (norms included), like fine-tunes of one base."""
    torch.manual_seed(0)
    base = T.AutoModelForCausalLM.from_config(tiny_config(family))
    dirs = []
    for i in range(k):
        d = root / family / str(i)
        if not (d / "config.json").is_file():
            gen = torch.Generator().manual_seed(1000 + i)
            with torch.no_grad():
                state = {n: p + (noise * torch.randn(p.shape, generator=gen) if i else 0)
                         for n, p in base.state_dict().items()}
            m = T.AutoModelForCausalLM.from_config(tiny_config(family))
            m.load_state_dict(state)
            m.save_pretrained(d)
        dirs.append(d)
    return dirs
