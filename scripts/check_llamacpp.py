"""Check that the installed llama-cpp-python runs on this CPU: export a tiny random llama to GGUF,
load it and evaluate a few tokens. A wheel built for a CPU feature this machine lacks dies here
(illegal instruction), so the caller can fall back to a source build. Exit 0 only if it ran."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

from pocketlm.export.gguf import export_gguf
from pocketlm.model.config import ModelConfig
from pocketlm.model.transformer import Transformer


def main() -> int:
    import llama_cpp

    cfg = ModelConfig(vocab_size=64, d_model=64, n_layer=1, n_head=4, n_kv_head=2, intermediate_size=128,
                      max_seq_len=32, name="check")
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = export_gguf(Transformer(cfg).eval(), Path(tmp) / "check.gguf", "F32")
        llm = llama_cpp.Llama(str(path), n_ctx=16, n_threads=1, verbose=False)
        llm.eval([1, 2, 3, 4])
        ok = llm.n_tokens == 4
        llm.close()
    print(f"llama-cpp-python {llama_cpp.__version__} runs on this CPU" if ok else "llama.cpp evaluated nothing")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
