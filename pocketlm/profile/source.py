"""Turn a MODEL argument into a model to measure: a catalog name (random weights), a Hugging Face
directory, a pocketlm checkpoint, or a ModelConfig JSON file (random weights); and apply a precision."""

from __future__ import annotations

import ctypes
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from pocketlm.model.config import ModelConfig

DTYPES = ("fp32", "bf16", "fp16", "int8", "int4")
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.gguf")


class ProfileError(ValueError):
    """A profiling request that cannot run; the message names the problem and the fix."""


@dataclass
class ModelSpec:
    """What MODEL named: `kind` is catalog | config | checkpoint."""

    text: str
    kind: str
    config: ModelConfig
    path: Path | None = None

    @property
    def name(self) -> str:
        return self.config.name or (self.path.name if self.path else self.text)


def resolve(text: str) -> ModelSpec:
    """Find what `text` names, without building weights; raises ProfileError with what to do."""
    path = Path(text).expanduser()
    if path.is_dir():
        return ModelSpec(text, "checkpoint", _checkpoint_config(path), path)
    if path.is_file() and path.suffix == ".json":
        try:
            cfg = ModelConfig.from_dict(json.loads(path.read_text()))
        except (ValueError, TypeError) as e:
            raise ProfileError(f"{path}: not a pocketlm ModelConfig JSON ({e})") from e
        return ModelSpec(text, "config", cfg if cfg.name else cfg.replace(name=path.stem), path)
    if path.is_file():
        raise ProfileError(f"{path}: is a file; give the model directory that holds it, "
                           "or a ModelConfig .json file")
    from pocketlm.survey.catalog import CatalogError, entry_to_config, get_entry

    try:
        return ModelSpec(text, "catalog", entry_to_config(get_entry(text)))
    except CatalogError as e:
        looks_like_path = any(c in text for c in "/\\.") and not text.lower().startswith(("gpt", "phi"))
        if looks_like_path:
            raise ProfileError(f"model {text!r}: no such directory or file; give a catalog name "
                               "(`pocketlm survey list`), a model directory or a ModelConfig .json") from e
        raise ProfileError(f"model {text!r}: {e}") from e


def _checkpoint_config(path: Path) -> ModelConfig:
    from pocketlm.interop import config_from_hf
    from pocketlm.interop.native import CONFIG_NAME

    if (path / CONFIG_NAME).is_file():
        return ModelConfig.load(path / CONFIG_NAME)
    if (path / "config.json").is_file():
        cfg = config_from_hf(json.loads((path / "config.json").read_text()))
        return cfg if cfg.name else cfg.replace(name=path.name)
    raise ProfileError(f"{path}: neither a pocketlm checkpoint ({CONFIG_NAME}) nor a Hugging Face "
                       "directory (config.json)")


def disk_bytes(path: Path | None) -> int | None:
    if path is None:
        return None
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for pattern in WEIGHT_FILES for f in path.glob(pattern))


def malloc_trim() -> None:
    """Give freed heap pages back to the OS so RSS reflects live memory (glibc only; else no-op)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def build_model(spec: ModelSpec, dtype: str, device: str = "cpu", seed: int = 0, group_size: int = 32,
                skip_unsupported: bool = False, pack: bool = True):
    """The model at `dtype` (fp32 | bf16 | fp16 | int8 | int4 weight-only), in eval mode, on `device`.

    fp32/bf16 models on the CPU are packed for inference (oneDNN weights, fused q/k/v and gate/up)
    unless `pack` is False."""
    from pocketlm.model.transformer import Transformer

    if dtype not in DTYPES:
        raise ProfileError(f"unknown dtype {dtype!r}; choose from {DTYPES}")
    base = torch.float32 if dtype == "fp32" else TORCH_DTYPES.get(dtype, torch.bfloat16)
    if spec.kind == "checkpoint":
        from pocketlm.interop import load_model

        model = load_model(spec.path, dtype=base)
    else:
        torch.manual_seed(seed)
        old = torch.get_default_dtype()
        torch.set_default_dtype(base)  # build big random models directly in their dtype
        try:
            model = Transformer(spec.config)
        finally:
            torch.set_default_dtype(old)
    model = model.to(base).eval()
    if dtype in ("int8", "int4"):
        model = apply_quantization(model, dtype, group_size, skip_unsupported)
    elif pack and device == "cpu":
        from pocketlm.model.packing import can_pack, pack_for_cpu

        if can_pack(model) is None:
            pack_for_cpu(model)
    malloc_trim()
    return model.to(device) if device != "cpu" else model


def apply_quantization(model, scheme: str, group_size: int, skip_unsupported: bool = False):
    from pocketlm.compress.quantized import QuantizationError, quantize_model

    try:
        return quantize_model(model, scheme, group_size, skip_unsupported=skip_unsupported)
    except QuantizationError as e:
        raise ProfileError(f"{model.config.name or 'model'} cannot be quantized to {scheme}: {e} "
                           "(--skip-unsupported keeps such layers in float)") from e
