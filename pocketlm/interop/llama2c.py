"""llama2.c's legacy checkpoint (`model.bin` as `export.py --version 0` and `run.c` read it).

Layout: a header of 7 int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len; a
negative vocab_size means the classifier is stored separately), then fp32 arrays, each stacked over
layers: token embedding [V, dim], attention RMSNorm [L, dim], wq [L, dim, dim], wk and wv
[L, kv_dim, dim], wo [L, dim, dim], FFN RMSNorm [L, dim], w1 (gate) [L, hidden, dim], w2 (down)
[L, dim, hidden], w3 (up) [L, hidden, dim], final RMSNorm [dim], the RoPE cos and sin tables
[seq_len, head_size / 2] (recomputed here, not read), and the classifier [V, dim] if not shared.

llama2.c rotates interleaved pairs (Meta's convention); the q/k rows are permuted to rotate halves (the
Hugging Face Llama convention, as transformers' Llama converter does), so the model saves as `llama`.
The file is read as numbers only: nothing in it is executed or unpickled.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pocketlm.model.config import ModelConfig
from pocketlm.model.transformer import Transformer

HEADER_INTS = 7


class Llama2cError(ValueError):
    """A file that is not a llama2.c legacy checkpoint; the message says what did not match."""


def read_header(path: str | Path) -> dict[str, int]:
    raw = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    if raw.size < HEADER_INTS:
        raise Llama2cError(f"{path}: shorter than the 28-byte llama2.c header")
    keys = ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len")
    return dict(zip(keys, (int(v) for v in raw)))


def _halves_from_pairs(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder each head's rows from interleaved pairs (x0, x1, x2, x3...) to halves (x0, x2.. | x1, x3..)."""
    out, dim = w.shape
    return w.view(n_heads, out // n_heads // 2, 2, dim).transpose(1, 2).reshape(out, dim)


def read_config(path: str | Path) -> ModelConfig:
    """The ModelConfig a llama2.c `.bin` holds (header checked against the file size)."""
    return _layout(Path(path))[0]


def _layout(path: Path) -> tuple[ModelConfig, list[tuple[str, tuple[int, ...]]]]:
    h = read_header(path)
    shared = h["vocab_size"] > 0
    V, D, F, L = abs(h["vocab_size"]), h["dim"], h["hidden_dim"], h["n_layers"]
    H, K, T = h["n_heads"], h["n_kv_heads"], h["seq_len"]
    if min(V, D, F, L, H, K, T) <= 0 or D % H or H % K:
        raise Llama2cError(f"{path}: header {h} is not a llama2.c model (sizes must be positive, dim divisible "
                           "by n_heads, n_heads by n_kv_heads)")
    hd, kv = D // H, K * (D // H)
    shapes = [("embed", (V, D)), ("attn_norm", (L, D)), ("wq", (L, D, D)), ("wk", (L, kv, D)), ("wv", (L, kv, D)),
              ("wo", (L, D, D)), ("mlp_norm", (L, D)), ("w1", (L, F, D)), ("w2", (L, D, F)), ("w3", (L, F, D)),
              ("final_norm", (D,)), ("freq_cos", (T, hd // 2)), ("freq_sin", (T, hd // 2))]
    if not shared:
        shapes.append(("lm_head", (V, D)))
    expected = 4 * HEADER_INTS + 4 * sum(int(np.prod(s)) for _, s in shapes)
    if path.stat().st_size != expected:
        raise Llama2cError(f"{path}: {path.stat().st_size:,} bytes, but header {h} implies {expected:,}; "
                           "this is not a llama2.c legacy (version 0) checkpoint")
    cfg = ModelConfig(vocab_size=V, d_model=D, n_layer=L, n_head=H, n_kv_head=K, intermediate_size=F,
                      max_seq_len=T, norm_eps=1e-5, rope_theta=10000.0, tie_embeddings=shared,
                      name=path.stem, extra={"source": "llama2.c"})
    return cfg, shapes


def load_llama2c(path: str | Path, dtype: torch.dtype = torch.float32) -> Transformer:
    """A pocketlm Transformer (Llama layout, halves RoPE) holding the weights of a llama2.c `.bin`."""
    path = Path(path)
    cfg, shapes = _layout(path)
    flat = torch.from_numpy(np.fromfile(path, dtype="<f4", offset=4 * HEADER_INTS).copy())
    arrays, pos = {}, 0
    for name, shape in shapes:
        n = int(np.prod(shape))
        arrays[name] = flat[pos:pos + n].view(shape)
        pos += n
    H, K = cfg.n_head, cfg.n_kv_head
    model = Transformer(cfg)
    shared = cfg.tie_embeddings
    state = {"embed.weight": arrays["embed"], "final_norm.weight": arrays["final_norm"],
             "lm_head.weight": arrays["lm_head"] if not shared else arrays["embed"]}
    for i in range(cfg.n_layer):
        b = f"blocks.{i}."
        state.update({
            b + "attn_norm.weight": arrays["attn_norm"][i], b + "mlp_norm.weight": arrays["mlp_norm"][i],
            b + "attn.q_proj.weight": _halves_from_pairs(arrays["wq"][i], H),
            b + "attn.k_proj.weight": _halves_from_pairs(arrays["wk"][i], K),
            b + "attn.v_proj.weight": arrays["wv"][i], b + "attn.o_proj.weight": arrays["wo"][i],
            b + "mlp.gate_proj.weight": arrays["w1"][i], b + "mlp.down_proj.weight": arrays["w2"][i],
            b + "mlp.up_proj.weight": arrays["w3"][i]})
    model.load_state_dict(state, strict=True)
    return model.to(dtype).eval()
