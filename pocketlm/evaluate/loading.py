"""Load a model + tokenizer for evaluation: pocketlm's interop loader, else transformers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .backends import ModelInputError


def load_for_eval(path: str | Path, tokenizer_path: str | Path | None = None, dtype: str = "float32") -> tuple[Any, Any]:
    """(model, tokenizer) from a pocketlm or Hugging Face directory; a clear error if the tokenizer is missing."""
    import torch

    path = Path(path)
    if not path.exists():
        raise ModelInputError(f"model {path} does not exist")
    torch_dtype = getattr(torch, dtype)
    try:
        from pocketlm.interop import load_model, load_tokenizer  # the core loader, once it exists
    except ImportError:
        load_model = load_tokenizer = None
    if load_model is not None:
        model = load_model(path, dtype=torch_dtype)
        tok = load_tokenizer(tokenizer_path or path)
    else:
        import transformers as T
        model = T.AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
        try:
            tok = T.AutoTokenizer.from_pretrained(tokenizer_path or path)
        except (OSError, ValueError, TypeError):
            tok = None
    if tok is None:
        raise ModelInputError(f"model {path} has no tokenizer: save tokenizer files (tokenizer.json, or vocab + merges) "
                              "in the model folder, or pass --tokenizer PATH")
    model.eval()
    return model, tok


def count_parameters(model: Any) -> int:
    return sum(p.numel() for p in model.parameters()) if hasattr(model, "parameters") else 0
