"""llama.cpp's logits for a GGUF file, for the tests that compare them with pocketlm's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch


def llamacpp_logits(path: str | Path, ids: list[int], n_ctx: int = 64) -> torch.Tensor:
    """Logits [len(ids), vocab] of `ids` run through llama-cpp-python; skips when the extra is absent."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python (optional extra) is not installed")
    llm = llama_cpp.Llama(str(path), n_ctx=n_ctx, n_batch=n_ctx, logits_all=True, verbose=False, n_threads=1)
    try:
        llm.eval(ids)
        return torch.tensor(np.array(llm.scores[: len(ids)]))
    finally:
        llm.close()
