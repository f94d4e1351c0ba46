"""Inference packing for CPU: linear layers on oneDNN-prepacked weights, q/k/v and gate/up fused.

At batch 1, torch's default CPU linear runs a single-threaded matrix-vector product; oneDNN's
prepacked linear (`torch.ops.mkldnn._linear_pointwise`) uses every thread on a cache-blocked
weight layout. SmolLM-135M shape, 2 threads (`python benchmarks/bench_decode_dtypes.py`): fp32
decode 39.1 -> 19.7 ms/token, bf16 packed 13.8 ms/token; all linears of one decode step with
cache-hot weights (`python benchmarks/bench_kernels.py`): fp32 12.6 -> 8.1 ms, bf16 8.2 -> 5.3 ms.

`torch.compile` sees the packed matmul as one opaque op (`pocketlm::packed_linear`), so a packed
model compiles: the small ops between the matmuls fuse, and compiled fp32 decode comes within 5-20%
of the time it takes to read the weights once (docs/benchmarks.md).

Packing is an inference transform, like quantization: the packed weights are opaque oneDNN
tensors (not parameters), so a packed model cannot be trained or saved. A tied LM head gets its
own packed copy (the embedding keeps the original), which `packed_bytes` reports.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pocketlm.model.transformer import MLP, Attention, Transformer


@torch.library.custom_op("pocketlm::packed_linear", mutates_args=())
def packed_linear(x: Tensor, packed: Tensor, bias: Tensor | None, out_features: int) -> Tensor:
    """oneDNN linear on a prepacked weight; an op of its own so torch.compile calls it as is."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


@packed_linear.register_fake
def _packed_linear_shape(x: Tensor, packed: Tensor, bias: Tensor | None, out_features: int) -> Tensor:
    return x.new_empty(*x.shape[:-1], out_features)


class PackedLinear(nn.Module):
    """y = x W^T + b with W prepacked by oneDNN; keeps a fused layer's `splits`."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight = linear.weight.detach()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.splits = getattr(linear, "splits", [linear.out_features])  # set by fuse_projections
        self.dtype = weight.dtype
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, None)
        self.bias = None if linear.bias is None else linear.bias.detach()
        self.nbytes = sum(t.numel() * t.element_size() for t in (weight, linear.bias) if t is not None)

    def forward(self, x: Tensor) -> Tensor:
        return packed_linear(x, self.packed, self.bias, self.out_features)

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


def _fused_linear(linears: list[nn.Linear]) -> nn.Linear:
    """One nn.Linear computing several of one input, outputs side by side; `.splits` gives their widths."""
    weight = torch.cat([lin.weight.detach() for lin in linears], dim=0)
    has_bias = any(lin.bias is not None for lin in linears)
    fused = nn.Linear(weight.shape[1], weight.shape[0], bias=has_bias, device=weight.device, dtype=weight.dtype)
    fused.weight.data.copy_(weight)
    if has_bias:
        fused.bias.data.copy_(torch.cat([lin.bias.detach() if lin.bias is not None else
                                         torch.zeros(lin.out_features, dtype=weight.dtype) for lin in linears]))
    fused.splits = [lin.out_features for lin in linears]
    return fused


@torch.no_grad()
def fuse_projections(model: Transformer) -> Transformer:
    """q/k/v of standard attention -> `qkv`, gate/up of dense gated FFNs -> `gate_up` (in place).

    Each output row is unchanged, so the model computes the same function with fewer, wider
    matmuls; both CPU packing and weight-only quantization start from here."""
    for module in list(model.modules()):
        if type(module) is Attention and module.qkv is None:
            module.qkv = _fused_linear([module.q_proj, module.k_proj, module.v_proj])
            del module.q_proj, module.k_proj, module.v_proj
        elif isinstance(module, MLP) and module.gated and module.gate_up is None:
            module.gate_up = _fused_linear([module.gate_proj, module.up_proj])
            del module.gate_proj, module.up_proj
    return model


@torch.no_grad()
def pack_for_cpu(model: Transformer) -> Transformer:
    """Replace every nn.Linear of `model` (in place) by oneDNN-packed layers; returns the model.

    q/k/v of standard attention and gate/up of dense gated FFNs become one matmul each.
    """
    reason = can_pack(model)
    if reason:
        raise ValueError(f"cannot pack this model: {reason}")
    model.eval()
    fuse_projections(model)
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, name, PackedLinear(child))
    model.packed = True
    return model


def packed_bytes(model: Transformer) -> int:
    """Bytes held in packed weights (a tied LM head counts again: it is a second copy)."""
    return sum(m.nbytes for m in model.modules() if isinstance(m, PackedLinear))
