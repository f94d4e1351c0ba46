"""Translate between a Hugging Face config (config.json) and a pocketlm ModelConfig.

Reading goes through transformers' own config class for the model_type, so every default and
legacy key (rope_scaling vs rope_parameters, rotary_pct, ...) resolves exactly as transformers
resolves it; the family's reader (`interop/families/`) turns it into ModelConfig fields. Writing
gives the fields transformers needs to rebuild the same network; `save_hf` checks the round trip,
so a ModelConfig feature a family cannot express is an error, not a silent change.
"""

from __future__ import annotations

from typing import Any

from pocketlm.interop.families import SUPPORTED, get_family
from pocketlm.interop.families.base import UnsupportedModelError
from pocketlm.model.config import ModelConfig

__all__ = ["SUPPORTED", "UnsupportedModelError", "config_from_hf", "hf_config_from", "hf_config_object"]


def hf_config_object(hf: dict[str, Any]) -> Any:
    """transformers' config object for a config.json dict (never runs remote code)."""
    from transformers import AutoConfig

    model_type = hf.get("model_type")
    get_family(model_type)  # refuses unknown families before transformers sees them
    fields = {k: v for k, v in hf.items() if k != "model_type"}
    return AutoConfig.for_model(model_type, **fields)


def config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    """A pocketlm ModelConfig for a Hugging Face config.json dict."""
    c = hf_config_object(hf)
    kwargs = get_family(c.model_type).read(c)
    extra = {"hf_model_type": c.model_type, **kwargs.pop("extra", {})}
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(c, key, None) is not None:
            extra[key] = getattr(c, key)
    return ModelConfig(**kwargs, name=hf.get("_name_or_path", "") or "", extra=extra)


def hf_config_from(cfg: ModelConfig, model_type: str) -> dict[str, Any]:
    """config.json fields for `model_type` describing the network `cfg` describes."""
    from huggingface_hub.errors import StrictDataclassError
    from transformers import AutoConfig

    try:
        return AutoConfig.for_model(model_type, **get_family(model_type).write(cfg)).to_dict()
    except StrictDataclassError as e:  # transformers' own config rules (e.g. Llama: heads divide hidden_size)
        raise UnsupportedModelError(f"transformers refuses this model as {model_type}: {str(e.__cause__ or e).rstrip('.')}. "
                                    "Save it with save_native() instead.") from e
