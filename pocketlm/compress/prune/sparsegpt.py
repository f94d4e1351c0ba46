"""SparseGPT: prune and reconstruct each matrix by approximate optimal brain surgery (Frantar & Alistarh
2023, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot", https://arxiv.org/abs/2301.00774).

Follows IST-DASLab/sparsegpt `sparsegpt.py` `fasterprune`: H = 2/n X Xᵀ (`stats.Hessian`); inputs never
seen (zero diagonal) get H_jj = 1 and weight 0; damping adds 1% of mean(diag H); U = the upper Cholesky
factor of H⁻¹. Columns go in blocks of 128: unstructured masks are chosen once per block over all its
rows by w² / U_jj² (the lowest `int(rows * 128 * sparsity)`); N:M masks per M columns within each row.
Each pruned column's error is spread over the block's later columns, and the block's error onto all
columns after it in one matmul (lazy batch updates). Returns the updated weights and the reference's
loss estimate sum (w - q)² / U_jj² / 2.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pocketlm.compress.prune.masks import NM
from pocketlm.compress.stats import Hessian

REFERENCE = "https://github.com/IST-DASLab/sparsegpt/blob/master/sparsegpt.py"


def statistic(in_features: int) -> Hessian:
    return Hessian(in_features)


def inverse_hessian_factor(H: Tensor, W: Tensor, damp: float) -> Tensor:
    """Upper Cholesky factor of (H + damp * mean(diag H) I)⁻¹; zeroes W's columns of dead inputs in place."""
    H = H.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H.diagonal().add_(damp * torch.mean(torch.diag(H)))
    # The reference forms H⁻¹ (cholesky_inverse) and factors it again. With J the reversal permutation,
    # J H J = L Lᵀ gives H⁻¹ = (J L⁻¹ J)ᵀ (J L⁻¹ J), and J L⁻¹ J is upper triangular with a positive
    # diagonal: it is that factor, for one Cholesky and one triangular solve (the same U to rounding).
    L = torch.linalg.cholesky(H.flip(0, 1))
    eye = torch.eye(H.shape[0], dtype=H.dtype)
    return torch.linalg.solve_triangular(L, eye, upper=False).flip(0, 1)


def prune_matrix(weight: Tensor, stat: Hessian, sparsity: float, nm: NM | None, blocksize: int = 128,
                 damp: float = 0.01) -> Tensor:
    return prune_with_loss(weight, stat, sparsity, nm, blocksize, damp)[0]


def prune_with_loss(weight: Tensor, stat: Hessian, sparsity: float, nm: NM | None, blocksize: int = 128,
                    damp: float = 0.01) -> tuple[Tensor, float]:
    W = weight.detach().clone().float()
    rows, cols = W.shape
    if nm is not None:
        nm.check(cols)
    Hinv = inverse_hessian_factor(stat.H, W, damp)
    loss = torch.zeros(rows)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].clone()
        Hinv1 = Hinv[i1:i2, i1:i2]
        d = torch.diag(Hinv1)
        Err1 = torch.zeros_like(W1)
        if nm is None:
            score = W1 ** 2 / d[None, :] ** 2
            k = int(score.numel() * sparsity)
            mask1 = score <= torch.sort(score.flatten())[0][k] if k else torch.zeros_like(W1, dtype=torch.bool)
        else:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        for i in range(i2 - i1):
            if nm is not None and i % nm.m == 0:
                score = W1[:, i:i + nm.m] ** 2 / d[i:i + nm.m][None, :] ** 2
                mask1.scatter_(1, i + torch.topk(score, nm.n, dim=1, largest=False)[1], True)
            w = W1[:, i]
            q = w.masked_fill(mask1[:, i], 0)
            loss += (w - q) ** 2 / d[i] ** 2 / 2
            err = (w - q) / d[i]
            W1[:, i:] -= err[:, None] * Hinv1[i, i:][None, :]
            W1[:, i] = q
            Err1[:, i] = err
        W[:, i1:i2] = W1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return W.to(weight.dtype), float(loss.sum())
