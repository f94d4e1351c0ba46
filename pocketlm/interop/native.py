"""pocketlm's own checkpoint format: `pocketlm.json` (the ModelConfig) + `model.safetensors`.

It holds every ModelConfig feature, including those no Hugging Face family can express
(block-wise sharing, a shared FFN, layer-wise scaling), and the transforms a model carries: fused
projections, and weight-only integer layers (portable codes, scales, zeros; the recipe under
`"transforms"` in pocketlm.json), which load straight into the kernels without re-quantizing.
A packed (oneDNN, machine-specific) model is refused: save before packing.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pocketlm.model.config import ConfigError, ModelConfig
from pocketlm.model.linears import INT_LINEARS
from pocketlm.model.transformer import Transformer, Transforms
from pocketlm.utils import atomic_dir, atomic_write_text, read_json

CONFIG_NAME = "pocketlm.json"
WEIGHTS_NAME = "model.safetensors"
TRANSFORMS_KEY = "transforms"


def save_native(model: Transformer, out_dir: str | Path, tokenizer=None) -> Path:
    """Write `model` (float, fused or quantized; not packed) to `out_dir`, built beside it and swapped in whole."""
    from pocketlm.interop.hf import MODEL_FOLDER_FILES

    model.check_savable("native")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if model.config.tie_embeddings and isinstance(model.lm_head, torch.nn.Linear):
        state.pop("lm_head.weight", None)
    shared = Counter(v.untyped_storage().data_ptr() for v in state.values())  # per-expert views of one tensor
    state = {k: v.clone() if shared[v.untyped_storage().data_ptr()] > 1 else v.contiguous() for k, v in state.items()}
    meta: dict[str, Any] = model.config.to_dict()
    if model.transforms != Transforms():
        meta[TRANSFORMS_KEY] = model.transforms.to_dict()
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, MODEL_FOLDER_FILES, "model folder") as tmp:  # an old model is replaced whole
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pocketlm"})
        atomic_write_text(tmp / CONFIG_NAME, json.dumps(meta, indent=2))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
    return out_dir


def read_native_config(path: str | Path) -> tuple[ModelConfig, Transforms]:
    """The ModelConfig and the transforms recorded in a pocketlm checkpoint's pocketlm.json."""
    from pocketlm.interop.hf import CheckpointError

    file = Path(path) / CONFIG_NAME
    try:
        meta = read_json(file, CheckpointError)
        if not isinstance(meta, dict):
            raise TypeError(f"expected a JSON object, found {type(meta).__name__}")
        transforms = Transforms.from_dict(meta.pop(TRANSFORMS_KEY, {}) or {})
        return ModelConfig.from_dict(meta), transforms
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, AttributeError, ConfigError) as e:
        raise CheckpointError(f"{file}: not a valid pocketlm config ({e})") from e


def load_native(path: str | Path, dtype: torch.dtype | None = torch.float32) -> Transformer:
    """The model saved at `path`, in its saved layout; float tensors cast to `dtype` (None: as saved).

    Integer layers keep their saved codes, scales and zeros: loading never re-quantizes."""
    from pocketlm.interop.hf import CheckpointError

    path = Path(path)
    cfg, transforms = read_native_config(path)
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{path}: {WEIGHTS_NAME} is missing")
    try:
        state = load_file(str(weights), backend="pread")  # own memory per tensor (`read_hf_tensors`)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights}: not a readable safetensors file ({e}); it may be truncated") from e
    with torch.device("meta"):
        model = Transformer(cfg).adopt_layout(transforms)
    tied = cfg.tie_embeddings and isinstance(model.lm_head, torch.nn.Linear)
    expected = {k: v for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{weights}: does not match {CONFIG_NAME}: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise CheckpointError(f"{weights}: tensor {k!r} has shape {tuple(v.shape)}, {CONFIG_NAME} implies "
                                  f"{tuple(expected[k].shape)}")
    if dtype is not None:  # the integer layers' scales stay in their kernels' dtype
        kernels = tuple(name + "." for name, m in model.named_modules() if isinstance(m, INT_LINEARS))
        state = {k: v.to(dtype) if v.is_floating_point() and not k.startswith(kernels) else v
                 for k, v in state.items()}
    model = model.to_empty(device="cpu")
    model.load_state_dict(state, strict=False, assign=True)
    if tied:
        model.lm_head.weight = model.embed.weight
    return model.eval()
