"""Statistics of a matrix's inputs, accumulated batch by batch from forward hooks.

Every accumulator takes `add_batch(x)` with x of shape [..., in] (a [B, T, in] activation or [N, in]
routed tokens) and keeps fp32 state of size O(in) or O(in^2), never the activations themselves.
Counting follows the reference code: Wanda and SparseGPT/GPTQ count *sequences* (the leading batch
dimension; a 2-D input counts as one), which only rescales their statistics.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _rows(x: Tensor) -> tuple[Tensor, int]:
    """(x as [tokens, in] fp32, number of sequences it counts as)."""
    samples = 1 if x.dim() == 2 else x.shape[0]
    return x.reshape(-1, x.shape[-1]).float(), samples


PANEL = 192  # rows of the upper triangle updated per matmul in `add_upper_gram`


def add_upper_gram(M: Tensor, rows: Tensor, beta: float = 1.0, alpha: float = 1.0) -> None:
    """M <- beta * M + alpha * rowsᵀ rows on M's upper triangle only (its strict lower one is left stale;
    `symmetric(M)` mirrors it): one `addmm_` per panel of PANEL rows against the columns from the panel's
    diagonal on, about half the multiply-adds of the full product (1536 wide, 4096 rows, 2 threads:
    68-71 ms vs 110 ms). Each entry is the dot product the full `addmm_` forms; on the project's machine
    (MKL, AMD EPYC) they came out bit for bit those of the full product at 576 and 1536 columns."""
    d = M.shape[1]
    for i in range(0, d, PANEL):
        M[i:i + PANEL, i:].addmm_(rows[:, i:i + PANEL].T, rows[:, i:], beta=beta, alpha=alpha)


def symmetric(M: Tensor) -> Tensor:
    """The symmetric matrix of M's upper triangle (a new tensor; the values copied, none recomputed)."""
    return M.triu().add_(M.triu(1).T)


class InputNorms:
    """Wanda's `scaler_row`: running mean over sequences of the squared L2 norm of each input column.

    `norms()` is ||X_j||_2 per input channel j (up to the sequence-count scale), Wanda's activation term."""

    def __init__(self, in_features: int):
        self.sq = torch.zeros(in_features)
        self.n = 0

    def add_batch(self, x: Tensor) -> None:
        rows, samples = _rows(x)
        self.sq *= self.n / (self.n + samples)
        self.n += samples
        self.sq += rows.pow(2).sum(0) / self.n

    def norms(self) -> Tensor:
        return self.sq.sqrt()


class Hessian:
    """H = 2/n * X Xᵀ over the inputs seen (n = sequences), SparseGPT's and GPTQ's layer Hessian.

    Only the upper triangle is accumulated (`add_upper_gram`); `H` is the symmetric matrix, built on read."""

    def __init__(self, in_features: int):
        self.upper = torch.zeros(in_features, in_features)
        self.n = 0

    def add_batch(self, x: Tensor) -> None:
        rows, samples = _rows(x)
        old, self.n = self.n, self.n + samples
        add_upper_gram(self.upper, rows, beta=old / self.n, alpha=2 / self.n)  # in place: no scaled copy of x

    @property
    def H(self) -> Tensor:
        return symmetric(self.upper)


class MeanAbs:
    """Per-channel mean |x| over tokens (AWQ's activation scale statistic)."""

    def __init__(self, in_features: int):
        self.total = torch.zeros(in_features)
        self.tokens = 0

    def add_batch(self, x: Tensor) -> None:
        rows, _ = _rows(x)
        self.total += rows.abs().sum(0)
        self.tokens += rows.shape[0]

    def mean(self) -> Tensor:
        return self.total / max(self.tokens, 1)


class SquareMeans:
    """Per-channel mean of x² over tokens: llama.cpp's importance matrix (llama-imatrix sums x² over every
    token row a matrix multiplies and divides by the row count; the quantizer reads the quotient)."""

    def __init__(self, in_features: int):
        self.total = torch.zeros(in_features, dtype=torch.float64)
        self.tokens = 0

    def add_batch(self, x: Tensor) -> None:
        rows, _ = _rows(x)
        self.total += rows.double().pow(2).sum(0)
        self.tokens += rows.shape[0]

    def mean(self) -> Tensor:
        return (self.total / self.tokens).float() if self.tokens else torch.ones_like(self.total, dtype=torch.float32)


class Gram:
    """X Xᵀ over the first `max_samples` sequences: measures ||W X - Ŵ X||² exactly on those inputs.

    Accumulated on the upper triangle as `Hessian` is; `G` is the symmetric matrix (assigning it sets it)."""

    def __init__(self, in_features: int, max_samples: int = 8):
        self.upper = torch.zeros(in_features, in_features)
        self.n, self.max_samples = 0, max_samples

    @property
    def G(self) -> Tensor:
        return symmetric(self.upper)

    @G.setter
    def G(self, value: Tensor) -> None:
        self.upper = value

    def add_batch(self, x: Tensor) -> None:
        if self.n >= self.max_samples:
            return
        if x.dim() == 3:
            x = x[: self.max_samples - self.n]
        rows, samples = _rows(x)
        self.n += samples
        add_upper_gram(self.upper, rows)

    def relative_error(self, before: Tensor, after: Tensor) -> float:
        """||(W - Ŵ) X||²_F / ||W X||²_F on the recorded inputs (0 when no input was seen)."""
        W, D, G = before.float(), (before - after).float(), self.G
        ref = float(((W @ G) * W).sum())
        return float(((D @ G) * D).sum()) / ref if ref > 0 else 0.0


class Several:
    """Feed one input to several accumulators (a method's statistic plus the error probe)."""

    def __init__(self, **parts):
        self.parts = parts

    def add_batch(self, x: Tensor) -> None:
        for p in self.parts.values():
            p.add_batch(x)

    def __getitem__(self, name: str):
        return self.parts[name]

    def __contains__(self, name: str) -> bool:
        return name in self.parts
