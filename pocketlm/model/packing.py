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
tensors (not parameters) in a layout specific to this machine, so a packed model cannot be trained
or saved (save before packing; `model.transforms.packed` records it). A tied LM head gets its own
packed copy (the embedding keeps the original), which `packed_bytes` reports.
"""

from __future__ import annotations

import dataclasses

import torch

from pocketlm.model.linears import PackedLinear
from pocketlm.model.transformer import Transformer

__all__ = ["PackedLinear", "can_pack", "pack_for_cpu", "packed_bytes"]


def can_pack(model: Transformer) -> str | None:
    """None if `model` can be packed, else the reason it cannot."""
    p = next(model.parameters())
    if not torch.backends.mkldnn.is_available():
        return "this torch build has no oneDNN (mkldnn)"
    if p.device.type != "cpu":
        return f"packing is for CPU; the model is on {p.device}"
    if p.dtype not in (torch.float32, torch.bfloat16):
        return f"packing takes float32 or bfloat16 weights, not {p.dtype}"
    if model.transforms.quantization:
        return "the model is quantized; its integer layers already run their own kernels"
    return None


@torch.no_grad()
def pack_for_cpu(model: Transformer) -> Transformer:
    """Fuse q/k/v and gate/up (`model.fuse`), then put every nn.Linear on oneDNN-packed weights (in place)."""
    reason = can_pack(model)
    if reason:
        raise ValueError(f"cannot pack this model: {reason}")
    model.eval().fuse()
    model.swap_linears(lambda name, linear: PackedLinear(linear))
    model.transforms = dataclasses.replace(model.transforms, packed=True)
    return model


def packed_bytes(model: Transformer) -> int:
    """Bytes held in packed weights (a tied LM head counts again: it is a second copy)."""
    return sum(m.nbytes for m in model.modules() if isinstance(m, PackedLinear))
