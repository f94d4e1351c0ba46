"""Open a model: resolve what a MODEL argument names, build or load it, then apply a precision.

A MODEL argument is one of
- a survey catalog name (`SmolLM-135M`): the architecture with seeded random weights;
- a Hugging Face directory (config.json + safetensors or weights-only .bin);
- a pocketlm checkpoint directory (pocketlm.json + model.safetensors);
- a config file: a pocketlm ModelConfig JSON, or a bare Hugging Face config.json (random weights).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pocketlm.model.config import ConfigError, ModelConfig
from pocketlm.model.linears import QuantRecipe
from pocketlm.model.transformer import Transformer
from pocketlm.utils import available_memory, read_json

PRECISIONS = ("fp32", "bf16", "fp16", "int8", "int4")
FLOAT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class ModelOpenError(ValueError):
    """A MODEL argument or precision that cannot be opened; the message names the problem and the fix."""


@dataclass(frozen=True)
class ModelRef:
    """What a MODEL argument named, before any weights exist. `kind`: catalog | config | checkpoint.

    `quantization`: the recipe of a quantized pocketlm checkpoint (its stored precision), else None."""

    text: str
    kind: str
    config: ModelConfig
    path: Path | None = None
    quantization: QuantRecipe | None = None

    @property
    def name(self) -> str:
        return self.config.name or (self.path.name if self.path else self.text)


def resolve(ref: str | Path | ModelRef) -> ModelRef:
    """Find what `ref` names and read its ModelConfig, without building weights."""
    if isinstance(ref, ModelRef):
        return ref
    text = str(ref)
    if text.startswith("proxy:"):  # proxy tuning: base + α (expert − antiexpert), pocketlm.runtime.proxy
        from pocketlm.runtime.proxy import parse_spec

        base = parse_spec(text)[0]["base"]
        cfg = _checkpoint_config(base)[0]
        return ModelRef(text, "proxy", cfg.replace(name=f"proxy({cfg.name or base.name})"), base)
    path = Path(text).expanduser()
    if path.is_dir():
        cfg, quantization = _checkpoint_config(path)
        return ModelRef(text, "checkpoint", cfg, path, quantization)
    if path.is_file() and path.suffix == ".json":
        cfg = _config_file(path)
        return ModelRef(text, "config", cfg if cfg.name else cfg.replace(name=path.stem), path)
    if path.is_file() and path.suffix == ".bin" and path.stat().st_size > 28:  # llama2.c legacy checkpoint
        from pocketlm.interop.llama2c import Llama2cError, read_config

        try:
            return ModelRef(text, "checkpoint", read_config(path), path)
        except Llama2cError as e:
            raise ModelOpenError(str(e)) from e
    if path.is_file():
        raise ModelOpenError(f"{path}: is a file; give the model directory that holds it, "
                             "or a ModelConfig / config.json file")
    return _catalog(text)


def _catalog(text: str) -> ModelRef:
    from pocketlm.survey.catalog import CatalogError, entry_to_config, get_entry

    try:
        return ModelRef(text, "catalog", entry_to_config(get_entry(text)))
    except CatalogError as e:
        looks_like_path = any(c in text for c in "/\\.") and not text.lower().startswith(("gpt", "phi"))
        if looks_like_path:
            raise ModelOpenError(f"model {text!r}: no such directory or file; give a catalog name "
                                 "(`pocketlm survey list`), a model directory or a ModelConfig .json") from e
        raise ModelOpenError(f"{text}: not a model directory, a config file, or a survey catalog name ({e})") from e


def _read_json(path: Path) -> dict[str, Any]:
    data = read_json(path, ModelOpenError)
    if not isinstance(data, dict):
        raise ModelOpenError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def _config_file(path: Path) -> ModelConfig:
    """A pocketlm ModelConfig JSON, or a Hugging Face config.json (it has `model_type`)."""
    data = _read_json(path)
    try:
        if "model_type" in data:
            from pocketlm.interop.hf import config_from_hf_checked

            return config_from_hf_checked(data, path)
        return ModelConfig.from_dict(data)
    except (ConfigError, TypeError) as e:
        raise ModelOpenError(f"{path}: not a pocketlm ModelConfig JSON nor a Hugging Face config.json "
                             f"({e})") from e


def _checkpoint_config(path: Path) -> tuple[ModelConfig, QuantRecipe | None]:
    from pocketlm.interop import CheckpointError
    from pocketlm.interop.hf import config_from_hf_checked
    from pocketlm.interop.native import CONFIG_NAME, read_native_config

    if (path / CONFIG_NAME).is_file():
        try:
            cfg, transforms = read_native_config(path)
        except CheckpointError as e:
            raise ModelOpenError(str(e)) from e
        return cfg, transforms.quantization
    if (path / "config.json").is_file():
        try:
            cfg = config_from_hf_checked(_read_json(path / "config.json"), path / "config.json")
        except CheckpointError as e:
            raise ModelOpenError(str(e)) from e
        return (cfg if cfg.name else cfg.replace(name=path.name)), None
    raise ModelOpenError(f"{path}: neither a pocketlm checkpoint ({CONFIG_NAME}) nor a Hugging Face "
                         "directory (config.json)")


def release_memory() -> None:
    """Give freed heap pages back to the OS so RSS reflects live memory (glibc only; else no-op)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def check_fits_memory(cfg: ModelConfig, bytes_per_param: int, what: str) -> None:
    """Refuse, before allocating, a model whose weights alone would not fit in the memory available."""
    from pocketlm.model.costs import param_counts

    params = param_counts(cfg)["total"]
    need, have = params * bytes_per_param, available_memory()
    if need > have:
        raise ModelOpenError(f"{what}: {params:,} parameters need {need / 2**30:,.1f} GiB at {bytes_per_param} "
                             f"byte(s) each, but only {have / 2**30:,.1f} GiB of memory is available; choose a "
                             "smaller config or a lower precision")


def _build_random(cfg: ModelConfig, dtype: torch.dtype, seed: int) -> Transformer:
    torch.manual_seed(seed)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build big random models directly in their dtype
    try:
        return Transformer(cfg)
    finally:
        torch.set_default_dtype(old)


def open_model(ref: str | Path | ModelRef, precision: str | None = None, device: str = "cpu", pack: bool | None = False,
               group_size: int | None = None, skip_unsupported: bool = False, seed: int = 0,
               decode_step: str | None = None) -> Transformer:
    """The model `ref` names at `precision`, in eval mode, on `device`.

    precision: fp32 | bf16 | fp16, or int8 | int4 weight-only (bf16 activations; int4 in groups of
    `group_size`, default 32; `skip_unsupported` keeps layers the kernels cannot take in float).
    None: a quantized checkpoint's stored precision, else fp32. A quantized pocketlm checkpoint
    loads its saved integers (never re-quantized) and opens only at its own precision and group size.
    pack: fp32/bf16 on the CPU only, oneDNN-prepacked linears with fused q/k/v and gate/up
    (machine-specific; a packed model cannot be saved). pack=None: the kernels chosen for this CPU
    (`runtime.kernel_choice`: each linear shape timed once per machine, the decision cached; float and
    int8/int4 alike). Catalog and config refs get weights seeded by `seed`.
    decode_step: the batch-1 decode step `generate` runs, recorded in `model.transforms.decode`:
    "native" (pocketlm's one-C-call step; an error names what it does not cover), "eager", or None:
    with pack=None the faster of the two on this machine (`kernel_choice.choose_decode`, cached), else eager.
    """
    if precision is not None and precision not in PRECISIONS:
        raise ModelOpenError(f"unknown precision {precision!r}; choose from {PRECISIONS}")
    spec = resolve(ref)
    if spec.kind == "proxy":
        from pocketlm.runtime.proxy import open_proxy

        return open_proxy(spec.text, precision)
    if spec.quantization is not None and spec.kind == "checkpoint":
        model = _open_quantized(spec, precision, group_size)
    else:
        precision = precision or "fp32"
        base = FLOAT_DTYPES.get(precision, torch.bfloat16)
        check_fits_memory(spec.config, base.itemsize, spec.name)
        if pack is None and device == "cpu" and precision in ("fp32", "bf16"):
            plan_kernels_first(spec.config, base)
        if spec.kind == "checkpoint":
            from pocketlm.interop import load_model

            model = load_model(spec.path, dtype=base)
        else:
            model = _build_random(spec.config, base, seed)
        model = model.to(base).eval()
        if precision in ("int8", "int4"):
            model = _quantize(model, precision, group_size or 32, skip_unsupported)
        elif pack and device == "cpu":
            from pocketlm.model.packing import can_pack, pack_for_cpu

            if can_pack(model) is None:
                pack_for_cpu(model)
    if pack is None and device == "cpu" and model.embed.weight.dtype in (torch.float32, torch.bfloat16):
        from pocketlm.runtime.kernel_choice import choose_kernels

        model.eval().fuse()
        release_memory()  # the unfused matrices' pages, before the kernels' copies need memory of their own
        choose_kernels(model)
    if device == "cpu" and (decode_step is not None or pack is None):
        from pocketlm.runtime.kernel_choice import choose_decode

        choose_decode(model, force=decode_step)
    elif decode_step not in (None, "eager"):
        raise ModelOpenError(f"decode_step={decode_step!r} runs on the CPU only; drop it for device={device!r}")
    release_memory()
    return model.to(device) if device != "cpu" else model


def plan_kernels_first(cfg: ModelConfig, dtype: torch.dtype) -> None:
    """Find (or time and cache) the kernel decisions for `cfg`'s linear shapes before any weight exists.

    Timing holds random copies of each shape (three of the LM head's matrix, one per candidate);
    done here, they are freed before the model is built, and the choice made after loading reads
    every decision from the cache."""
    from pocketlm.runtime.kernel_choice import kernel_shapes, plan_shapes

    with torch.device("meta"):
        shell = Transformer(cfg).to(dtype).eval().fuse()
    plan_shapes(kernel_shapes(shell).values())
    release_memory()


def _open_quantized(spec: ModelRef, precision: str | None, group_size: int | None) -> Transformer:
    """A quantized pocketlm checkpoint as saved (codes, scales and zeros straight into the kernels)."""
    from pocketlm.interop import load_model

    stored = spec.quantization
    if precision is not None and precision != stored.scheme:
        raise ModelOpenError(
            f"{spec.path} holds {stored.scheme} weights ({stored.method}); open it without a precision or with "
            f"{stored.scheme!r}, or open the float model it was made from at {precision!r} (integers are not "
            "converted to another precision).")
    if group_size is not None and stored.scheme == "int4" and group_size != stored.group_size:
        raise ModelOpenError(f"{spec.path} holds int4 weights in groups of {stored.group_size}, not {group_size}; "
                             "omit the group size or re-quantize the float model.")
    return load_model(spec.path, dtype=None).eval()


def _quantize(model: Transformer, scheme: str, group_size: int, skip_unsupported: bool) -> Transformer:
    from pocketlm.model.quantize import QuantizationError, quantize_model

    try:
        return quantize_model(model, scheme, group_size, skip_unsupported=skip_unsupported)
    except QuantizationError as e:
        raise ModelOpenError(f"{model.config.name or 'model'} cannot be quantized to {scheme}: {e} "
                             "(--skip-unsupported keeps such layers in float)") from e


def open_tokenizer(ref: str | Path | ModelRef, tokenizer: str | Path | None = None) -> Any | None:
    """The tokenizer saved beside a checkpoint (or at `tokenizer`), from local files only; None if absent."""
    from pocketlm.interop import load_tokenizer

    if tokenizer is not None:
        return load_tokenizer(tokenizer)
    spec = resolve(ref)
    return load_tokenizer(spec.path) if spec.kind in ("checkpoint", "proxy") else None
