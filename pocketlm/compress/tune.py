"""Continue training a model that already has weights: the fine-tunes behind WARM, the experts of
proxy tuning, and the continued pretraining of an upcycled MoE.

A thin layer over the one training loop (`pocketlm.train.loop.finetune`): random windows from
`pocketlm.train`'s batch sampler, next-token cross-entropy, and for MoE models the Switch
load-balancing term with weight `aux_weight` (`pocketlm.train.load_balance.MoELanguageModeling`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from pocketlm.data.shards import TokenSplit
from pocketlm.model.transformer import MoE, Transformer
from pocketlm.train.batches import BatchSampler, eval_windows
from pocketlm.train.load_balance import MoELanguageModeling
from pocketlm.train.loop import LanguageModeling, evaluate_loss, finetune


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


def continue_training(model: Transformer, tokens: np.ndarray | TokenSplit, cfg: TuneConfig, progress: bool = False,
                      evaluate: Callable[[Transformer], float] | None = None, eval_every: int = 0) -> TuneResult:
    """Train `model` in place on random windows of `tokens` for cfg.steps AdamW steps of
    `pocketlm.train.loop.finetune` (MoE models with the load-balancing term); with `evaluate`, record
    evaluate(model) before the first step, every `eval_every` steps and at the end. Warmup is cut to
    steps - 1 when longer than the run."""
    sampler = BatchSampler(as_split(tokens), cfg.seq_len, cfg.seed)
    is_moe = any(isinstance(m, MoE) for m in model.modules())
    objective = MoELanguageModeling(cfg.aux_weight, model.config.top_k) if is_moe else LanguageModeling()
    metric = None if evaluate is None else (lambda m: {"eval": evaluate(m)})
    run = finetune(model, lambda step: (sampler.global_batch(step, cfg.batch_size)[0], {}), cfg.steps, cfg.lr,
                   objective=objective, evaluate=metric, warmup_steps=min(cfg.warmup_steps, cfg.steps - 1),
                   schedule=cfg.schedule, weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip, seed=cfg.seed,
                   threads=cfg.threads, progress=progress, log_every=1, eval_every=eval_every or cfg.steps)
    model.eval()
    steps = [r for r in run.rows if r["kind"] == "train"]
    result = TuneResult(model, [r.get("lm", r["loss"]) for r in steps], [r["aux"] for r in steps if "aux" in r],
                        run.tokens)
    if evaluate is not None:
        per_step = cfg.batch_size * cfg.seq_len
        result.evals = [(0, run.start_metrics["eval"])] + [((r["step"] + 1) * per_step, r["eval"])
                                                           for r in run.rows if r["kind"] == "eval"]
    return result


def validation_loss(model: Transformer, tokens: np.ndarray | TokenSplit, seq_len: int = 128,
                    max_windows: int = 64, batch: int = 16) -> float:
    """Mean next-token loss (nats/token) on the first `max_windows` contiguous windows of `tokens`."""
    model.eval()
    return evaluate_loss(model, eval_windows(as_split(tokens, "val"), seq_len, max_windows), batch)
