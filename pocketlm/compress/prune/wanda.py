"""Wanda: prune by |W_ij| * ||X_j||_2, compared within each output row (Sun et al. 2024,
"A Simple and Effective Pruning Approach for Large Language Models", https://arxiv.org/abs/2306.11695).

Follows locuslab/wanda `lib/prune.py` `prune_wanda` and `lib/layerwrapper.py`: the activation term is the
square root of the running mean over sequences of ||x_j||² (`InputNorms`); unstructured sparsity prunes the
`int(in * sparsity)` lowest scores of each row (stable sort); N:M prunes the N lowest of every M inputs;
no weight update. The reference's `--use_variant` (per-row cumulative-sum threshold) is not implemented.
"""

from __future__ import annotations

from torch import Tensor

from pocketlm.compress.prune.masks import NM, nm_mask, row_mask
from pocketlm.compress.stats import InputNorms

REFERENCE = "https://github.com/locuslab/wanda/blob/main/lib/prune.py"


def statistic(in_features: int) -> InputNorms:
    return InputNorms(in_features)


def score(weight: Tensor, norms: InputNorms) -> Tensor:
    """The Wanda importance |W| * ||X||_2 (broadcast over output rows)."""
    return weight.abs().float() * norms.norms()[None, :]


def prune_matrix(weight: Tensor, stat: InputNorms, sparsity: float, nm: NM | None) -> Tensor:
    s = score(weight, stat)
    mask = nm_mask(s, nm) if nm is not None else row_mask(s, sparsity)
    return weight.masked_fill(mask, 0)
