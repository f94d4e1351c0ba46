"""SliceGPT (Ashkboos et al. 2024) with one rotation shared by every layer: a standard model with a smaller
hidden size.

1. Fold every RMSNorm gain into the matrices that read the norm's output (q/k/v, gate/up, the LM head), so
   the norms become plain x / rms(x), which commutes with any orthogonal Q: rms(Qᵀx) = rms(x).
2. Rotate the residual stream by Q, the eigenvectors of the calibration covariance of the stream (summed
   over every norm input: block inputs, attention outputs added, the final hidden state), by decreasing
   eigenvalue: the embedding becomes E Q, readers W Q, writers (o_proj, down_proj) Qᵀ W. With all of Q
   the network computes the same function (a test checks it).
3. Delete the last d - d' columns of Q: every matrix loses those rows/columns; the norms now average over
   d' channels, so their gain becomes sqrt(d / d') to keep x / ||x|| scaled as before.

Differences from the paper's code: one shared Q (the paper's default is one per layer, with shortcut
matrices on the residual that no standard architecture has); a tied embedding is untied, because the
final norm's gain folds into the LM head only (the paper's models are untied). LayerNorm models need
their mean subtracted first (the paper's step for OPT); pocketlm refuses them rather than change the
family's norm."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from pocketlm.compress.structured.importance import StructuredError, check_sliceable
from pocketlm.model.transformer import Norm, Transformer


@torch.no_grad()
def stream_covariance(model: Transformer, calib: Tensor, batch_size: int = 8) -> Tensor:
    """Σ x xᵀ (float64) of the residual stream entering every norm, over the calibration tokens."""
    C = model.config.d_model
    cov = torch.zeros(C, C, dtype=torch.float64)

    def hook(module, args):
        x = args[0].reshape(-1, C).double()
        cov.add_(x.T @ x)

    norms = [m for m in model.modules() if isinstance(m, Norm) and m.weight is not None and m.weight.numel() == C]
    handles = [m.register_forward_pre_hook(hook) for m in norms]
    was = model.training
    model.eval()
    try:
        for i in range(0, calib.shape[0], batch_size):
            model(calib[i:i + batch_size])
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return cov


def _check(model: Transformer) -> None:
    cfg = model.config
    check_sliceable(cfg)
    if cfg.norm != "rmsnorm" or cfg.norm_unit_offset or not cfg.norm_affine:
        raise StructuredError("SliceGPT here needs plain RMSNorm with gains (Llama-style); this model has "
                              f"norm {cfg.norm!r}: use Minitron embedding pruning (--d-model) instead")
    if cfg.qk_norm != "none" or cfg.embed_norm or cfg.positions == "learned" or cfg.embed_scale != 1.0:
        raise StructuredError("SliceGPT here supports Llama-style models (no qk-norm, embedding norm, learned "
                              "positions or embedding scale); use Minitron embedding pruning (--d-model) instead")


@torch.no_grad()
def slicegpt(model: Transformer, calib: Tensor, d_model: int, batch_size: int = 8) -> Transformer:
    """A new model of hidden size `d_model` (<= the model's): folded norms, shared PCA rotation, sliced."""
    _check(model)
    cfg = model.config
    C = cfg.d_model
    if not 0 < d_model <= C:
        raise StructuredError(f"SliceGPT hidden size {d_model}: choose 1..{C}")
    cov = stream_covariance(model, calib, batch_size)
    eigval, eigvec = torch.linalg.eigh(cov)
    Q = eigvec[:, eigval.argsort(descending=True)][:, :d_model]  # [C, d'] float64
    new_cfg = cfg.replace(d_model=d_model, tie_embeddings=False, head_dim=cfg.dim_head)
    if d_model % cfg.heads(0) == 0 and d_model // cfg.heads(0) == cfg.dim_head:
        new_cfg = new_cfg.replace(head_dim=None)
    new = Transformer(new_cfg).to(next(model.parameters()).dtype)
    gain = math.sqrt(C / d_model)

    def read(dst: nn.Linear, src: nn.Linear, g: Tensor) -> None:  # W diag(g) Q
        dst.weight.copy_(src.weight.double() * g.double() @ Q)
        if src.bias is not None:
            dst.bias.copy_(src.bias)

    def write(dst: nn.Linear, src: nn.Linear) -> None:  # Qᵀ W
        dst.weight.copy_(Q.T @ src.weight.double())
        if src.bias is not None:
            dst.bias.copy_(Q.T @ src.bias.double())

    new.embed.weight.copy_(model.embed.weight.double() @ Q)
    for old_b, new_b in zip(model.blocks, new.blocks):
        a, na, m, nm = old_b.attn, new_b.attn, old_b.mlp, new_b.mlp
        for name in ("q_proj", "k_proj", "v_proj"):
            read(getattr(na, name), getattr(a, name), old_b.attn_norm.weight)
        write(na.o_proj, a.o_proj)
        mlp_norm = old_b.attn_norm if cfg.parallel_residual and cfg.parallel_shared_norm else old_b.mlp_norm
        for name in ("gate_proj", "up_proj") if m.gated else ("up_proj",):
            read(getattr(nm, name), getattr(m, name), mlp_norm.weight)
        write(nm.down_proj, m.down_proj)
        for norm in (n for n in new_b.modules() if isinstance(n, Norm)):
            norm.weight.fill_(gain)
    final_gain = model.final_norm.weight if model.final_norm is not None else torch.ones(C)
    read(new.lm_head, model.lm_head, final_gain)
    if new.final_norm is not None:
        new.final_norm.weight.fill_(gain)
    return new.train(model.training)
