"""Stateless batch sampling: the batch of step s depends only on (seed, s), so a resumed run reads
exactly the data an uninterrupted run would, and DDP ranks take disjoint rows of one global batch."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from pocketlm.data.shards import TokenSplit
from pocketlm.train.config import TrainConfig
from pocketlm.train.schedule import decay_start_step


class BatchSampler:
    """Random windows of seq_len + 1 tokens from a main split, optionally mixed with a high-quality
    split with probability `hq_weight(step)` per row (the two-stage mixture)."""

    def __init__(self, main: TokenSplit, seq_len: int, seed: int, hq: TokenSplit | None = None) -> None:
        for split in (main, hq):
            if split is not None and len(split) <= seq_len + 1:
                raise ValueError(f"split {split.name!r} has {len(split)} tokens; needs more than "
                                 f"seq_len + 1 = {seq_len + 1}. Use a shorter --seq-len or more data")
        self.main, self.hq, self.seq_len, self.seed = main, hq, seq_len, seed

    def global_batch(self, step: int, rows: int, hq_weight: float = 0.0) -> tuple[torch.Tensor, int]:
        """[rows, seq_len + 1] int64 tokens for optimizer step `step`, and how many rows came from hq."""
        rng = np.random.Generator(np.random.PCG64([self.seed, step]))
        use_hq = rng.random(rows) < hq_weight if self.hq is not None else np.zeros(rows, dtype=bool)
        out = np.empty((rows, self.seq_len + 1), dtype=np.int64)
        for r in range(rows):
            split = self.hq if use_hq[r] else self.main
            start = int(rng.integers(0, len(split) - self.seq_len - 1))
            out[r] = split.tokens[start:start + self.seq_len + 1]
        return torch.from_numpy(out), int(use_hq.sum())


def eval_windows(split: TokenSplit, seq_len: int, max_windows: int) -> torch.Tensor:
    """Contiguous, non-overlapping validation windows [N, seq_len + 1] from the start of the split."""
    n = min(max_windows, (len(split) - 1) // seq_len)
    if n < 1:
        raise ValueError(f"validation split has {len(split)} tokens, fewer than one window of {seq_len + 1}")
    arr = np.stack([np.asarray(split.tokens[i * seq_len:i * seq_len + seq_len + 1], dtype=np.int64)
                    for i in range(n)])
    return torch.from_numpy(arr)


def schedule_batches(sampler: BatchSampler, tcfg: TrainConfig) -> Callable[[int], tuple[torch.Tensor, dict]]:
    """The BatchFn of a run with `tcfg` (pocketlm.train.loop.BatchFn): rows from the sampler's hq split
    with probability tcfg.hq_weight in the WSD decay phase (the two-stage mixture), else the main split;
    logs `hq_rows`."""
    decay_start = decay_start_step(tcfg.steps, tcfg.warmup_steps, tcfg.schedule, tcfg.decay_fraction)

    def batch(step: int) -> tuple[torch.Tensor, dict]:
        second_stage = sampler.hq is not None and step >= decay_start and tcfg.schedule == "wsd"
        tokens, hq_rows = sampler.global_batch(step, tcfg.batch_size, tcfg.hq_weight if second_stage else 0.0)
        return tokens, {"hq_rows": hq_rows}

    return batch
