"""Inference packing for CPU: linear layers on oneDNN-prepacked weights, q/k/v and gate/up fused.

At batch 1, torch's default CPU linear runs a single-threaded matrix-vector product; oneDNN's
prepacked linear (`torch.ops.mkldnn._linear_pointwise`) uses every thread on a cache-blocked
weight layout. Measured on the 2-core dev VM with a SmolLM-135M-shaped model (see
docs/benchmarks.md): fp32 decode 36.6 -> 19.7 ms/token and prefill of 128 tokens 206 -> 102 ms;
bf16 decode 20.7 -> 16.2 ms/token.

Packing is an inference transform, like quantization: the packed weights are opaque oneDNN
tensors (not parameters), so a packed model cannot be trained or saved. A tied LM head gets its
own packed copy (the embedding keeps the original), which `packed_bytes` reports.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pocketlm.model.transformer import MLP, Attention, Transformer


class PackedLinear(nn.Module):
    """y = x W^T + b with W prepacked by oneDNN; several linears of one input can be fused."""

    def __init__(self, linears: list[nn.Linear]):
        super().__init__()
        weight = torch.cat([lin.weight.detach() for lin in linears], dim=0)
        biases = [lin.bias for lin in linears]
        if any(b is not None for b in biases):
            bias = torch.cat([b.detach() if b is not None else torch.zeros(lin.out_features, dtype=weight.dtype)
                              for b, lin in zip(biases, linears)])
        else:
            bias = None
        self.in_features = weight.shape[1]
        self.splits = [lin.out_features for lin in linears]
        self.out_features = sum(self.splits)
        self.dtype = weight.dtype
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, None)
        self.bias = bias
        self.nbytes = weight.numel() * weight.element_size() + (0 if bias is None else bias.numel() * bias.element_size())

    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.splits}, dtype={self.dtype}, oneDNN-packed"


def can_pack(model: Transformer) -> str | None:
    """None if `model` can be packed, else the reason it cannot."""
    p = next(model.parameters())
    if not torch.backends.mkldnn.is_available():
        return "this torch build has no oneDNN (mkldnn)"
    if p.device.type != "cpu":
        return f"packing is for CPU; the model is on {p.device}"
    if p.dtype not in (torch.float32, torch.bfloat16):
        return f"packing takes float32 or bfloat16 weights, not {p.dtype}"
    return None


@torch.no_grad()
def pack_for_cpu(model: Transformer) -> Transformer:
    """Replace every nn.Linear of `model` (in place) by oneDNN-packed layers; returns the model.

    q/k/v of standard attention and gate/up of dense gated FFNs become one matmul each.
    """
    reason = can_pack(model)
    if reason:
        raise ValueError(f"cannot pack this model: {reason}")
    model.eval()
    for module in list(model.modules()):
        if isinstance(module, Attention) and type(module) is Attention:
            module.qkv = PackedLinear([module.q_proj, module.k_proj, module.v_proj])
            del module.q_proj, module.k_proj, module.v_proj
        elif isinstance(module, MLP) and module.gated:
            module.gate_up = PackedLinear([module.gate_proj, module.up_proj])
            del module.gate_proj, module.up_proj
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, name, PackedLinear([child]))
    model.packed = True
    return model


def packed_bytes(model: Transformer) -> int:
    """Bytes held in packed weights (a tied LM head counts again: it is a second copy)."""
    return sum(m.nbytes for m in model.modules() if isinstance(m, PackedLinear))
