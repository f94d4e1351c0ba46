"""pocketlm's own checkpoint format: `pocketlm.json` (the ModelConfig) + `model.safetensors`.

It holds every ModelConfig feature, including those no Hugging Face family can express
(block-wise sharing, a shared FFN, layer-wise scaling).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pocketlm.model.config import ConfigError, ModelConfig
from pocketlm.model.transformer import Transformer
from pocketlm.utils import atomic_path, atomic_write_text

CONFIG_NAME = "pocketlm.json"
WEIGHTS_NAME = "model.safetensors"


def save_native(model: Transformer, out_dir: str | Path, tokenizer=None) -> Path:
    if model.packed:
        raise ValueError("this model is packed for CPU inference (pack_for_cpu); save the unpacked model")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        state.pop("lm_head.weight", None)
    with atomic_path(out_dir / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp), metadata={"format": "pocketlm"})
    atomic_write_text(out_dir / CONFIG_NAME, json.dumps(model.config.to_dict(), indent=2))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out_dir))
    return out_dir


def load_native(path: str | Path, dtype: torch.dtype = torch.float32) -> Transformer:
    from pocketlm.interop.hf import CheckpointError

    path = Path(path)
    try:
        cfg = ModelConfig.from_dict(json.loads((path / CONFIG_NAME).read_text()))
    except (json.JSONDecodeError, TypeError, ConfigError) as e:
        raise CheckpointError(f"{path / CONFIG_NAME}: not a valid pocketlm config ({e})") from e
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{path}: {WEIGHTS_NAME} is missing")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights}: not a readable safetensors file ({e}); it may be truncated") from e
    with torch.device("meta"):
        model = Transformer(cfg)
    expected = {k: v for k, v in model.state_dict().items()
                if not (cfg.tie_embeddings and k == "lm_head.weight")}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{weights}: does not match {CONFIG_NAME}: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise CheckpointError(f"{weights}: tensor {k!r} has shape {tuple(v.shape)}, config implies "
                                  f"{tuple(expected[k].shape)}")
    model = model.to_empty(device="cpu")
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=False, assign=True)
    if cfg.tie_embeddings:
        model.lm_head.weight = model.embed.weight
    return model.to(dtype).eval()
