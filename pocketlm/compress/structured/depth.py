"""Layer importance for depth pruning.

- Block Influence (ShortGPT, Men et al. 2024): 1 - cos(block input, block output), averaged over the
  calibration tokens; a block that barely turns the residual stream matters little.
- Removal KL (Minitron's "LM loss / KL when the layer is dropped"): KL(full || full without block i) on
  the calibration tokens, one forward per layer.

`drop_order(scores, n_drop, contiguous)` picks the blocks to remove: the `n_drop` lowest scores, or the
contiguous run of `n_drop` blocks with the lowest total score (the last block is never removed first:
Minitron and ShortGPT both find it important; it is removed only if the scores say so)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pocketlm.compress.structured.slicing import SlicePlan, slice_model
from pocketlm.model.transformer import Transformer


@torch.no_grad()
def block_influence(model: Transformer, calib: Tensor, batch_size: int = 8) -> Tensor:
    """[L] mean over tokens of 1 - cos(input, output) of each block."""
    L = len(model.blocks)
    total, count = torch.zeros(L), 0
    seen: dict[int, Tensor] = {}

    def hook(i: int):
        def fn(module, args, output):
            seen[i] = 1 - F.cosine_similarity(args[0].float(), output.float(), dim=-1).mean()
        return fn

    handles = [b.register_forward_hook(hook(i)) for i, b in enumerate(model.blocks)]
    was = model.training
    model.eval()
    try:
        for s in range(0, calib.shape[0], batch_size):
            chunk = calib[s:s + batch_size]
            model(chunk)
            total += torch.stack([seen[i] for i in range(L)]) * chunk.shape[0]
            count += chunk.shape[0]
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return total / count


@torch.no_grad()
def kl_to(reference_logits: list[Tensor], model: Transformer, calib: Tensor, batch_size: int = 8) -> float:
    """Mean per-token KL(reference || model) over `calib`, the reference's logits given batch by batch."""
    model.eval()
    kl, n = 0.0, 0
    for ref, s in zip(reference_logits, range(0, calib.shape[0], batch_size)):
        logp = ref.float().log_softmax(-1)
        logq = model(calib[s:s + batch_size]).float().log_softmax(-1)
        kl += float((logp.exp() * (logp - logq)).sum(-1).sum())
        n += logp.shape[0] * logp.shape[1]
    return kl / n


@torch.no_grad()
def reference_logits(model: Transformer, calib: Tensor, batch_size: int = 8) -> list[Tensor]:
    model.eval()
    return [model(calib[s:s + batch_size]) for s in range(0, calib.shape[0], batch_size)]


def removal_kl(model: Transformer, calib: Tensor, batch_size: int = 8) -> Tensor:
    """[L] KL(full || without block i) on `calib`: larger = the block matters more."""
    ref = reference_logits(model, calib, batch_size)
    full = SlicePlan.keep_all(model.config)
    scores = []
    for i in range(len(model.blocks)):
        keep = [j for j in range(len(model.blocks)) if j != i]
        plan = SlicePlan(keep, [full.q_heads[j] for j in keep], [full.kv_heads[j] for j in keep],
                         [full.ffn[j] for j in keep], full.embed)
        scores.append(kl_to(ref, slice_model(model, plan), calib, batch_size))
    return torch.tensor(scores)


def drop_order(scores: Tensor, n_drop: int, contiguous: bool = False) -> list[int]:
    """Blocks to remove (sorted): the `n_drop` least important, or the least important contiguous run."""
    L = scores.numel()
    if n_drop <= 0:
        return []
    if not contiguous:
        return sorted(scores.argsort()[:n_drop].tolist())
    sums = [float(scores[s:s + n_drop].sum()) for s in range(L - n_drop + 1)]
    start = min(range(len(sums)), key=sums.__getitem__)
    return list(range(start, start + n_drop))


LAYER_SCORES = {"block_influence": block_influence, "removal_kl": removal_kl}
