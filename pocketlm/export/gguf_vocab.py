"""A tokenizer as llama.cpp's GGUF vocabulary (placeholder, completed below)."""
from __future__ import annotations
from pathlib import Path
from typing import Any


def read_vocab(source, vocab_size: int) -> dict[str, Any]:
    raise NotImplementedError


def write_vocab(w, vocab, vocab_size: int) -> None:
    if vocab is None:
        w.add_tokenizer_model("none")
        return
    raise NotImplementedError
