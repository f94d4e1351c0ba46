"""GPTQ: quantize a matrix column by column, spreading each column's rounding error over the columns not
yet quantized through the inverse Hessian (Frantar et al. 2023, "GPTQ: Accurate Post-Training Quantization
for Generative Pre-trained Transformers", https://arxiv.org/abs/2210.17323).

Follows IST-DASLab/gptq `gptq.py` `fasterquant`: H = 2/n X Xᵀ (`stats.Hessian`); dead inputs (H_jj = 0)
get H_jj = 1 and weight 0; 1% of mean(diag H) damping; U = upper Cholesky factor of H⁻¹; columns in
blocks of 128 with the block's error applied to the later columns in one matmul (lazy batch updates).
`act_order` visits columns by decreasing H_jj. Group parameters are fitted when the walk enters a
group, on the columns as GPTQ has updated them (the reference reads the block-stale copy there), or
all up front on the original weight (`static_groups`). With `act_order` and groups, the groups are
always static: the kernels (and GGUF) need each group to be a contiguous run of original columns,
which dynamic groups in permuted order are not (the reference then stores a `g_idx` permutation).

The grid is any object with `group_of(k)`, `fit(cols) -> params`, `fit_groups(W) -> params [N, G]`,
`encode(col, *params)`, `decode(codes, *params)` and optionally `static` (its groups are always fitted
up front: the GGUF K-quants, whose sub-block scales hang off a super-block scale):
model.quantize.IntGrid and compress.quantize.gguf_grids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from pocketlm.compress.prune.sparsegpt import inverse_hessian_factor

REFERENCE = "https://github.com/IST-DASLab/gptq/blob/main/gptq.py"


@dataclass
class GPTQResult:
    codes: Tensor  # int32 [N, K], in original column order
    params: tuple[Tensor, ...]  # each [N, G]: the grid's per-group parameters (scale, offset ...)
    loss: float  # the reference's estimate: sum over columns of (w - q)² / U_jj² / 2
    weight: Tensor  # the dequantized weight [N, K] fp32


class GPTQ:
    """The per-matrix solver: `GPTQ(grid).quantize(weight, H)`."""

    def __init__(self, grid: Any, blocksize: int = 128, damp: float = 0.01, act_order: bool = False,
                 static_groups: bool = False):
        if blocksize < 1 or not 0 <= damp < 1:
            raise ValueError(f"GPTQ needs blocksize >= 1 and damp in [0, 1), got {blocksize} and {damp}")
        self.grid, self.blocksize, self.damp = grid, blocksize, damp
        self.act_order, self.static_groups = act_order, static_groups

    @torch.no_grad()
    def quantize(self, weight: Tensor, H: Tensor) -> GPTQResult:
        n, k = weight.shape
        g = self.grid.group_of(k)
        H = H.float()
        perm = (torch.argsort(torch.diag(H), descending=True, stable=True) if self.act_order
                else torch.arange(k))
        W = weight.detach().float()[:, perm].clone()
        Hinv = inverse_hessian_factor(H[perm][:, perm], W, self.damp)  # zeroes dead columns of W
        params: list[tuple[Tensor, ...] | None] = [None] * (k // g)
        if self.static_groups or g == k or (self.act_order and g < k) or getattr(self.grid, "static", False):
            stacked = self.grid.fit_groups(W[:, torch.argsort(perm)])
            params = [tuple(p[:, j] for p in stacked) for j in range(k // g)]
        codes = torch.zeros(n, k, dtype=torch.int32)
        Q = torch.zeros(n, k)
        loss = 0.0
        order = perm.tolist()
        for i1 in range(0, k, self.blocksize):
            i2 = min(i1 + self.blocksize, k)
            # the block transposed: column i is the contiguous row W1[i], and its update touches whole rows
            W1, Hinv1 = W[:, i1:i2].T.contiguous(), Hinv[i1:i2, i1:i2]
            Err1, Q1 = torch.empty_like(W1), torch.empty_like(W1)
            codes1 = torch.empty(W1.shape, dtype=torch.int32)
            for i in range(i2 - i1):
                group = order[i1 + i] // g
                if params[group] is None:  # dynamic group (natural order): fitted on the updated columns
                    cols = W1[i:i + g].T
                    if i + g > i2 - i1:
                        cols = torch.cat([cols, W[:, i2:i1 + i + g]], 1)
                    params[group] = self.grid.fit(cols)
                w = W1[i]
                codes1[i] = q = self.grid.encode(w, *params[group])
                Q1[i] = wq = self.grid.decode(q, *params[group])
                Err1[i] = err = (w - wq) / Hinv1[i, i]
                W1[i:].sub_(Hinv1[i, i:, None] * err[None, :])
            loss += float(Err1.pow(2).sum()) / 2
            block = perm[i1:i2]
            codes[:, block], Q[:, block] = codes1.T, Q1.T
            W[:, i2:] -= Err1.T @ Hinv[i1:i2, i2:]
        stacked = tuple(torch.stack([p[j] for p in params], 1) for j in range(len(params[0])))
        return GPTQResult(codes, stacked, loss, Q)
