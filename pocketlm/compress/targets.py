"""Which weight matrices a compression method touches, found by walking modules (no per-family code).

A `Target` is one [out, in] matrix inside a block: an `nn.Linear`, or one routed expert's gate, up or
down projection (a view into the stacked expert tensors, so edits land in the model). Targets that read
the same input (q/k/v; gate/up; one expert's gate/up) share an `input_key`, so one statistics accumulator
serves them all. Embeddings and the LM head live outside the blocks and are never targets, as in the
reference implementations.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from pocketlm.model.transformer import Experts, Transformer

# routers pick which experts run: pruning them changes routing, not just one matrix's output
DEFAULT_SKIP = ("*.router", "*.shared_gate")


@dataclass
class Target:
    name: str  # e.g. "blocks.3.attn.q_proj", "blocks.1.mlp.experts.2.down_proj"
    block: int  # stored block index
    weight: Tensor  # [out, in]; a view of the model's parameter
    input_key: str  # targets with the same key see the same input
    module: nn.Module  # the module whose forward hook sees the input
    extract: Callable[[tuple], Tensor | None]  # forward args -> this target's input [..., in]

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.weight.shape)


def _linear_input(args: tuple) -> Tensor:
    return args[0]


def _expert_targets(prefix: str, block: int, experts: Experts) -> list[Target]:
    out = []
    I = experts.down_proj.shape[-1]
    for e in range(experts.gate_up_proj.shape[0]):
        def tokens_of(args: tuple, e: int = e) -> Tensor:
            x, top_idx, _ = args
            return x[torch.where(top_idx == e)[0]]

        def hidden_of(args: tuple, e: int = e) -> Tensor:
            x = tokens_of(args, e)  # `e` passed: the free name `tokens_of` is the last expert's by call time
            gate, up = nn.functional.linear(x, experts.gate_up_proj[e]).chunk(2, dim=-1)
            return experts.act(gate) * up

        name, key = f"{prefix}.{e}", f"{prefix}.{e}"
        out += [Target(f"{name}.gate_proj", block, experts.gate_up_proj.data[e, :I], f"{key}:in", experts, tokens_of),
                Target(f"{name}.up_proj", block, experts.gate_up_proj.data[e, I:], f"{key}:in", experts, tokens_of),
                Target(f"{name}.down_proj", block, experts.down_proj.data[e], f"{key}:hidden", experts, hidden_of)]
    return out


def block_targets(model: Transformer, block: int, skip: tuple[str, ...] = DEFAULT_SKIP) -> list[Target]:
    """Every prunable matrix of stored block `block`, minus names matching a `skip` glob."""
    if model.packed:
        raise ValueError("this model is packed for CPU inference (pack_for_cpu); compress the unpacked model")
    prefix = f"blocks.{block}"
    found: list[Target] = []
    for name, module in model.blocks[block].named_modules(prefix=prefix):
        if isinstance(module, nn.Linear):
            found.append(Target(name, block, module.weight.data, f"{name}:in", module, _linear_input))
        elif isinstance(module, Experts):
            found += _expert_targets(name, block, module)
    _share_inputs(found)
    return [t for t in found if not any(fnmatch.fnmatchcase(t.name, p) for p in skip)]


def _share_inputs(targets: list[Target]) -> None:
    """Linears of one parent reading the same tensor: attention q/k/v (and MLA's q_a/kv_a), MLP gate/up."""
    shared = {"q_proj": "qkv", "k_proj": "qkv", "v_proj": "qkv", "q_a_proj": "qkv", "kv_a_proj": "qkv",
              "gate_proj": "gate_up", "up_proj": "gate_up"}
    for t in targets:
        parent, _, leaf = t.name.rpartition(".")
        if leaf in shared and not isinstance(t.module, Experts):
            t.input_key = f"{parent}:{shared[leaf]}"


def select(model: Transformer, skip: tuple[str, ...] = DEFAULT_SKIP) -> list[Target]:
    """All targets of the model, block by block."""
    return [t for b in range(len(model.blocks)) for t in block_targets(model, b, skip)]


def left_dense(model: Transformer) -> list[str]:
    """Matrices no method touches here (say so in reports): a shared FFN outside the blocks."""
    return ["shared_mlp"] if model.shared_mlp is not None else []
