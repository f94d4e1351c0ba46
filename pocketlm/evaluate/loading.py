"""Open a model + tokenizer for evaluation through the runtime layer (the same path profile times)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .backends import ModelInputError

TORCH_NAMES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def load_for_eval(path: str | Path, tokenizer_path: str | Path | None = None, dtype: str | None = None,
                  precision: str | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) from a pocketlm or Hugging Face directory at `precision` (fp32 | bf16 | fp16 |
    int8 | int4; `dtype` takes torch names for the float ones; neither: the checkpoint's stored precision,
    fp32 for a float one); a clear error if the tokenizer is missing."""
    from pocketlm.runtime import ModelOpenError, open_model, open_tokenizer

    path = Path(path)
    if not str(path).startswith("proxy:") and not path.exists():
        raise ModelInputError(f"model {path} does not exist")
    try:
        model = open_model(path, precision=precision or (TORCH_NAMES.get(dtype, dtype) if dtype else None))
    except ModelOpenError as e:
        raise ModelInputError(str(e)) from e
    tok = open_tokenizer(path, tokenizer_path)
    if tok is None:
        raise ModelInputError(f"model {path} has no tokenizer: save tokenizer files (tokenizer.json, or vocab + merges) "
                              "in the model folder, or pass --tokenizer PATH")
    return model, tok


def count_parameters(model: Any) -> int:
    return sum(p.numel() for p in model.parameters()) if hasattr(model, "parameters") else 0
