"""Pruning masks from importance scores (True = prune), with the reference repositories' tie rules.

- per output row (Wanda's unstructured comparison group): the `int(in * sparsity)` lowest scores of each
  row, by a stable sort;
- per layer (Wanda repo's magnitude baseline): every score at or below the `int(numel * sparsity)`-th
  smallest;
- N:M (semi-structured, along the input dimension): the N lowest of every M consecutive inputs, so each
  group holds exactly N zeros (2:4 = two zeros in every four, what sparse tensor cores run).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


class PatternError(ValueError):
    """A sparsity pattern that cannot apply; the message says what would."""


@dataclass(frozen=True)
class NM:
    n: int  # zeros per group
    m: int  # group size (consecutive input columns)

    @classmethod
    def parse(cls, text: str | None) -> "NM | None":
        if text in (None, "", "unstructured"):
            return None
        n, sep, m = str(text).partition(":")
        if not sep or not n.isdigit() or not m.isdigit():
            raise PatternError(f"pattern {text!r}: write N:M (e.g. 2:4, 4:8) or 'unstructured'")
        n, m = int(n), int(m)
        if not 0 < n < m:
            raise PatternError(f"pattern {text!r}: need 0 < N < M (N zeros in every M weights), got N={n}, M={m}")
        return cls(n, m)

    def check(self, in_features: int, name: str = "matrix") -> None:
        if in_features % self.m:
            raise PatternError(f"{name}: {in_features} input columns are not a multiple of M={self.m} for "
                               f"pattern {self}; choose an M dividing {in_features} or --skip this matrix")

    @property
    def sparsity(self) -> float:
        return self.n / self.m

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"


def row_mask(score: Tensor, sparsity: float) -> Tensor:
    """Prune the lowest `int(in * sparsity)` scores of every output row."""
    k = int(score.shape[1] * sparsity)
    mask = torch.zeros_like(score, dtype=torch.bool)
    if k:
        mask.scatter_(1, torch.sort(score, dim=-1, stable=True)[1][:, :k], True)
    return mask


def layer_mask(score: Tensor, sparsity: float) -> Tensor:
    """Prune every score at or below the `int(numel * sparsity)`-th smallest of the whole matrix (0-based,
    the reference's `sort(...)[k]`, found by selection)."""
    k = int(score.numel() * sparsity)
    if k == 0:
        return torch.zeros_like(score, dtype=torch.bool)
    return score <= torch.kthvalue(score.flatten(), k + 1).values


def nm_mask(score: Tensor, nm: NM) -> Tensor:
    """Prune the `n` lowest scores of every `m` consecutive inputs in each row."""
    rows, cols = score.shape
    nm.check(cols)
    groups = score.float().reshape(rows, cols // nm.m, nm.m)
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(2, torch.topk(groups, nm.n, dim=2, largest=False)[1], True)
    return mask.reshape(rows, cols)
