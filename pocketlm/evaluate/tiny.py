"""A tiny random Llama checkpoint with a real tokenizer, saved with transformers (tests, benchmark)."""

from __future__ import annotations

import shutil
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def save_tiny_llama(out_dir: str | Path, tokenizer_dir: str | Path | None = None, hidden: int = 64, layers: int = 2,
                    heads: int = 4, seed: int = 0, init_std: float = 0.2, max_len: int = 4096) -> Path:
    """Save a random LlamaForCausalLM + the MiniMind tokenizer (6400 tokens) to `out_dir`."""
    import torch
    import transformers as T

    tokenizer_dir = Path(tokenizer_dir) if tokenizer_dir else SHARED / "tokenizers" / "minimind"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir / name, out / name)
    tok = T.AutoTokenizer.from_pretrained(out)
    cfg = T.LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 3 // 2 * 2,
                        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=max(heads // 2, 1),
                        max_position_embeddings=max_len, initializer_range=init_std,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    model = T.LlamaForCausalLM(cfg)
    model.save_pretrained(out)
    return out
