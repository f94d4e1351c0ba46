"""µP coordinate check (Yang et al. 2021, "Tensor Programs V", section 7 / appendix D.1): train models
of growing width for a few Adam steps at one learning rate and record the average activation size
per layer. Under µP the curves are flat in width; under standard parametrisation they drift."""

from __future__ import annotations

import math

import torch

from pocketlm.train.config import TrainConfig, family_config
from pocketlm.train.loop import lm_loss, make_optimizer
from pocketlm.train.trainer import build_model


def coord_check(tokens: torch.Tensor, widths: list[int], mup: bool, steps: int = 5, lr: float = 1e-2,
                base_width: int = 64, n_layer: int = 2, n_head: int = 4, batch: int = 8, seed: int = 0,
                vocab_size: int | None = None) -> dict[int, dict[str, float]]:
    """For each width: mean |coordinate| of every block output and of the logits after `steps` AdamW
    steps on windows of `tokens` [N, T + 1] (the same rows for every width)."""
    vocab = vocab_size or int(tokens.max()) + 1
    results: dict[int, dict[str, float]] = {}
    for width in widths:
        cfg = family_config(width, n_layer, n_head, vocab, max_seq_len=tokens.shape[1])
        tcfg = TrainConfig(lr=lr, mup=mup, mup_base_width=base_width, weight_decay=0.0, seed=seed)
        model = build_model(cfg, tcfg)
        opt = make_optimizer(model, tcfg)
        for step in range(steps):
            rows = tokens[(step * batch) % tokens.shape[0]:][:batch]
            loss = lm_loss(model, rows)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            x = tokens[:batch, :-1]
            h, layers = model.forward_hidden(x, collect_layers=True)
            stats = {f"block{i}": float(t.abs().mean()) for i, t in enumerate(layers)}
            stats["logits"] = float(model.logits(h).abs().mean())
        results[width] = stats
    return results


def width_slope(results: dict[int, dict[str, float]], key: str) -> float:
    """Least-squares slope of log(activation) against log(width): 0 means flat in width."""
    xs = [math.log(w) for w in results]
    ys = [math.log(results[w][key]) for w in results]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
