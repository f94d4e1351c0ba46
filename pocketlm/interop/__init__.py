"""Load and save models: Hugging Face directories and pocketlm's own format."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pocketlm.interop.hf import CheckpointError, check_finite, load_hf, save_hf
from pocketlm.interop.hf_config import SUPPORTED as HF_FAMILIES
from pocketlm.interop.hf_config import UnsupportedModelError, config_from_hf
from pocketlm.interop.native import CONFIG_NAME, load_native, save_native
from pocketlm.model.transformer import Transformer

__all__ = ["load_model", "load_tokenizer", "save_hf", "save_native", "config_from_hf", "CheckpointError",
           "UnsupportedModelError", "HF_FAMILIES"]


def load_model(path: str | Path, dtype: torch.dtype = torch.float32) -> Transformer:
    """A pocketlm checkpoint (pocketlm.json), a Hugging Face directory (config.json) or a llama2.c `.bin`;
    weights holding NaN or infinity are refused."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory; give a model directory "
                              "(Hugging Face config.json + safetensors, or a pocketlm checkpoint)")
    if path.is_file() and path.suffix == ".bin":  # llama2.c legacy checkpoint
        from pocketlm.interop.llama2c import load_llama2c

        model = load_llama2c(path, dtype)
    elif path.is_file():
        raise CheckpointError(f"{path}: is a file; give the directory that holds it")
    elif (path / CONFIG_NAME).is_file():
        model = load_native(path, dtype)
    else:
        model = load_hf(path, dtype)
    check_finite(model, path)
    return model


def load_tokenizer(path: str | Path) -> Any | None:
    """The transformers tokenizer saved in a model directory (local files only), or None."""
    path = Path(path)
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
