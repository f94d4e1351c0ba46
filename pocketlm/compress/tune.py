"""Continue training a model that already has weights: the fine-tunes behind WARM, the experts of
proxy tuning, and the continued pretraining of an upcycled MoE.

`pocketlm.train` pretrains from a fresh initialisation; this is the short loop for starting from
given weights, built from the same parts (its batch sampler, optimizer groups, schedule and loss),
plus the Switch Transformer load-balancing loss for MoE models (Fedus et al. 2021, arXiv:2101.03961,
eq. 4): aux = E · Σₑ fₑ · Pₑ, with fₑ the share of top-k assignments routed to expert e and Pₑ its
mean router probability, averaged over MoE layers and added with weight `aux_weight`. The router
logits are read with forward hooks on the routers (the model's forward is unchanged).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from pocketlm.data.shards import TokenSplit
from pocketlm.model.transformer import MoE, Transformer
from pocketlm.train.batches import BatchSampler, eval_windows
from pocketlm.train.schedule import lr_multiplier


@dataclass
class TuneConfig:
    steps: int = 100
    lr: float = 1e-3
    batch_size: int = 16
    seq_len: int = 128
    warmup_steps: int = 10
    schedule: str = "cosine"  # cosine | constant | wsd (pocketlm.train.schedule)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0  # the data order: fine-tunes with different seeds see different batches
    aux_weight: float = 0.01  # load-balancing loss weight (MoE models only)
    threads: int | None = 1  # torch threads while training; 1 because two spin-waiting OpenMP threads on a
    # loaded 2-core machine ran 25x slower than one (measured: 34 s vs 1.4 s for 30 small MoE steps)


@dataclass
class TuneResult:
    model: Transformer
    losses: list[float] = field(default_factory=list)  # training loss per step (language-modelling part)
    aux: list[float] = field(default_factory=list)  # load-balancing loss per step (MoE)
    tokens: int = 0
    evals: list[tuple[int, float]] = field(default_factory=list)  # (tokens seen, `evaluate(model)`)


def as_split(tokens: np.ndarray | TokenSplit, name: str = "train") -> TokenSplit:
    return tokens if isinstance(tokens, TokenSplit) else TokenSplit(np.asarray(tokens), name)


def load_balancing_loss(router_logits: list[torch.Tensor], top_k: int) -> torch.Tensor:
    """Switch-style auxiliary loss over the router logits [N, E] of each MoE layer (1.0 = balanced)."""
    total = torch.zeros(())
    for logits in router_logits:
        probs = logits.float().softmax(-1)
        E = probs.shape[-1]
        chosen = probs.topk(top_k, dim=-1).indices
        share = F.one_hot(chosen, E).float().sum(1).mean(0) / top_k  # f_e
        total = total + E * (share * probs.mean(0)).sum()
    return total / max(1, len(router_logits))


def continue_training(model: Transformer, tokens: np.ndarray | TokenSplit, cfg: TuneConfig, progress: bool = False,
                      evaluate: Callable[[Transformer], float] | None = None, eval_every: int = 0) -> TuneResult:
    """Train `model` in place on random windows of `tokens` for cfg.steps AdamW steps; with
    `evaluate`, record evaluate(model) before the first step, every `eval_every` steps and at the end."""
    sampler = BatchSampler(as_split(tokens), cfg.seq_len, cfg.seed)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and "embed" not in name else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    routers: list[torch.Tensor] = []
    hooks = [m.router.register_forward_hook(lambda mod, inp, out: routers.append(out))
             for m in model.modules() if isinstance(m, MoE)]
    result = TuneResult(model)
    previous_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    def record() -> None:
        if evaluate is not None:
            result.evals.append((result.tokens, evaluate(model)))
            model.train()

    try:
        record()
        model.train()
        for step in range(cfg.steps):
            for g in opt.param_groups:
                g["lr"] = cfg.lr * lr_multiplier(step, cfg.steps, cfg.warmup_steps, cfg.schedule)
            batch, _ = sampler.global_batch(step, cfg.batch_size)
            routers.clear()
            logits = model(batch[:, :-1])
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
            total = loss
            if routers:
                aux = load_balancing_loss(routers, model.config.top_k)
                total = loss + cfg.aux_weight * aux
                result.aux.append(float(aux.detach()))
            total.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            value = loss.item()
            if not math.isfinite(value):
                raise FloatingPointError(f"step {step}: loss is {value}; lower the learning rate")
            result.losses.append(value)
            result.tokens += batch.shape[0] * cfg.seq_len
            if progress and step % 20 == 0:
                print(f"step {step}: loss {value:.3f}")
            if eval_every and (step + 1) % eval_every == 0 and step + 1 < cfg.steps:
                record()
        record()
    finally:
        torch.set_num_threads(previous_threads)
        for h in hooks:
            h.remove()
        model.eval()
    return result


@torch.no_grad()
def validation_loss(model: Transformer, tokens: np.ndarray | TokenSplit, seq_len: int = 128,
                    max_windows: int = 64, batch: int = 16) -> float:
    """Mean next-token loss (nats/token) on the first `max_windows` contiguous windows of `tokens`."""
    windows = eval_windows(as_split(tokens, "val"), seq_len, max_windows)
    model.eval()
    total, n = 0.0, 0
    for i in range(0, windows.shape[0], batch):
        w = windows[i:i + batch]
        logits = model(w[:, :-1])
        total += float(F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), w[:, 1:].reshape(-1))) * w.shape[0]
        n += w.shape[0]
    return total / n
