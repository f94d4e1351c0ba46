"""OWL: outlier-weighted layer-wise sparsity (Yin et al. 2024, "Outlier Weighed Layerwise Sparsity (OWL):
A Missing Secret Sauce for Pruning LLMs to High Sparsity", https://arxiv.org/abs/2310.05175).

Follows luuyin/OWL `lib/prune_all.py` `prune_wanda_outlier`: a first walk over the *dense* model scores
every block with the Wanda metric |W| * ||X||_2; a block's outlier ratio is the share of its scores (all
its matrices together) above M times their mean (`check_outlier_mean`, M = 5). The ratios are scaled to
a range of 2 * lambda (lambda = 0.08), centred on the target density 1 - s, and each block is pruned to
1 - its density: blocks with more outliers keep more weights, the mean sparsity stays s. pocketlm
applies the same per-block sparsities to Wanda or SparseGPT (the reference ships them per method).
"""

from __future__ import annotations

import torch
from torch import Tensor

REFERENCE = "https://github.com/luuyin/OWL/blob/main/lib/prune_all.py"
DEFAULT_M, DEFAULT_LAMBDA = 5.0, 0.08


def outlier_ratio(scores: list[Tensor], m: float = DEFAULT_M) -> float:
    """Percent of all entries of `scores` above `m` times their mean."""
    flat = torch.cat([s.flatten().float() for s in scores])
    return float((flat > flat.mean() * m).sum()) / flat.numel() * 100


def block_sparsities(ratios: list[float], sparsity: float, lam: float = DEFAULT_LAMBDA) -> list[float]:
    """Per-block sparsities: outlier ratios mapped into [s - lam, s + lam] (more outliers, less pruning)."""
    r = torch.tensor(ratios, dtype=torch.float64)
    spread = r.max() - r.min()
    if spread == 0:  # every block alike: uniform, as the formula's limit
        return [sparsity] * len(ratios)
    density = (r - r.min()) / spread * lam * 2
    density = density - density.mean() + (1 - sparsity)
    return [float(1 - d) for d in density]
