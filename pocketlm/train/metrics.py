"""Throughput accounting: training FLOPs per token, measured matmul peak, MFU; loss-curve figure."""

from __future__ import annotations

import json
import time
from functools import lru_cache
from pathlib import Path

import torch

from pocketlm.model.config import ModelConfig
from pocketlm.utils import atomic_path


def matmul_params(model: torch.nn.Module) -> int:
    """Parameters used in matrix multiplies per token: every nn.Linear weight (LM head included),
    not the embedding lookup."""
    seen, total = set(), 0
    for m in model.modules():
        if isinstance(m, torch.nn.Linear) and id(m.weight) not in seen:
            seen.add(id(m.weight))
            total += m.weight.numel()
    return total


def train_flops_per_token(model: torch.nn.Module, seq_len: int) -> float:
    """6 N (forward + backward of every matmul weight) + 6 L T d_attn for attention scores and
    values at average causal context T/2 (Kaplan et al. 2020, table 1, counting causal halving)."""
    cfg: ModelConfig = model.config
    attn_dim = sum(cfg.heads(i) for i in range(cfg.n_stored_layers)) / cfg.n_stored_layers * cfg.dim_head
    return 6.0 * matmul_params(model) + 6.0 * cfg.n_layer * seq_len * attn_dim


@lru_cache(maxsize=4)
def measured_matmul_flops(dtype: torch.dtype = torch.float32, size: int = 1024, trials: int = 5,
                          seconds: float = 0.15) -> float:
    """Peak-like FLOP/s of this process: the best of `trials` bursts of size x size matmuls
    (the best burst, because a shared machine only ever slows a burst down)."""
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    for _ in range(2):
        a @ b
    best = 0.0
    for _ in range(trials):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            a @ b
            n += 1
        best = max(best, 2.0 * size**3 * n / (time.perf_counter() - t0))
    return best


def read_log(path: str | Path) -> list[dict]:
    p = Path(path)
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def plot_loss_curve(log_path: str | Path, png_path: str | Path, decay_start: int | None = None,
                    title: str = "training loss") -> None:
    """Train loss per step and validation loss at eval steps; the decay phase shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_log(log_path)
    train = [(r["step"], r["loss"]) for r in rows if r.get("kind") == "train"]
    val = [(r["step"], r["val_loss"]) for r in rows if r.get("kind") == "eval"]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), lw=1, label="train loss")
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss")
    if decay_start is not None and train and decay_start <= train[-1][0]:
        ax.axvspan(decay_start, train[-1][0], color="orange", alpha=0.15, label="decay phase (hq mixture)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
