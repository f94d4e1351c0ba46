"""Magnitude pruning: drop the smallest |W|, the baseline of every pruning paper.

Reference: locuslab/wanda `lib/prune.py` `prune_magnitude` (the numbers in the Wanda README's tables):
the comparison group is the whole matrix (`scope="layer"`); `scope="row"` compares within each output
row as Wanda does. N:M drops the N smallest of every M consecutive inputs. Needs no calibration.
"""

from __future__ import annotations

from torch import Tensor

from pocketlm.compress.prune.masks import NM, layer_mask, nm_mask, row_mask

REFERENCE = "https://github.com/locuslab/wanda/blob/main/lib/prune.py"
SCOPES = ("layer", "row")


def statistic(in_features: int) -> None:
    return None  # magnitude reads only the weights


def prune_matrix(weight: Tensor, stat: None, sparsity: float, nm: NM | None, scope: str = "layer") -> Tensor:
    """`weight` with its smallest-magnitude entries set to zero (a new tensor)."""
    score = weight.abs()
    if nm is not None:
        mask = nm_mask(score, nm)
    else:
        mask = layer_mask(score, sparsity) if scope == "layer" else row_mask(score, sparsity)
    return weight.masked_fill(mask, 0)
