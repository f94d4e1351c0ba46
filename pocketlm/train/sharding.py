"""FSDP2 for the shared training loop: which engine a run uses, sharding per block, and getting the
whole weights back.

Under torchrun the loop replicates the model with DDP or shards it with FSDP2
(`torch.distributed.fsdp.fully_shard`): every block is one FSDP unit (its parameters, gradients and
AdamW state split across the processes and all-gathered only while the block runs), the model's
remaining parameters (embeddings, final norm) form its root unit, and each of the objective's own
modules is a unit of its own.
Options: bf16 compute with fp32 master weights (`MixedPrecisionPolicy`) and activation checkpointing
per block (recompute a block's activations in the backward pass instead of keeping them).

The loop shards a copy of the caller's model and empties the caller's parameters while it runs (so
each process holds only its shard), then writes the trained full weights back into them: callers
keep training, exporting and scoring the model object they passed, as under DDP.
"""

from __future__ import annotations

import copy
import os

import torch
from torch import nn

from pocketlm.train.config import TrainConfig, TrainConfigError

FSDP_AUTO_PARAMS = 250_000_000
"""`--parallel auto` under torchrun shards models from this many parameters on: at 16 bytes per parameter
(fp32 weights, gradients, AdamW moments) that is 4 GB per process before activations under DDP."""


TRANSFORMER_ENTRIES = ("forward_hidden", "logits")
"""Methods besides forward that objectives call on a Transformer (distillation: hidden states, then logits);
FSDP gathers the root's parameters around them too."""


def under_torchrun() -> bool:
    """Whether this process was started by torchrun (or any launcher that sets its environment)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def choose_parallel(setting: str, world: int, n_params: int) -> str:
    """The engine of a run: "single" (one process, nothing to synchronise), "ddp" or "fsdp".

    `setting` is TrainConfig.parallel: "auto" picks DDP for several processes unless the model has at
    least FSDP_AUTO_PARAMS parameters; "fsdp" needs torchrun (one process under torchrun is allowed:
    that is how a sharded checkpoint resumes on one machine with one process)."""
    if setting == "fsdp":
        if not under_torchrun():
            raise TrainConfigError("--parallel fsdp shards across torchrun's processes; start the command "
                                   "under torchrun, e.g. `torchrun --nproc-per-node 2 -m pocketlm.cli train "
                                   "--parallel fsdp ...`, or use --parallel ddp")
        return "fsdp"
    if world == 1:
        return "single"
    if setting == "ddp":
        return "ddp"
    return "fsdp" if n_params >= FSDP_AUTO_PARAMS else "ddp"


def shard(model: nn.Module, tcfg: TrainConfig, extra: dict[str, nn.Module] | None = None,
          frozen: dict[str, nn.Module] | None = None) -> None:
    """Apply FSDP2 in place: one unit per block of `model` (a Transformer) and the model itself as the
    root of its units; each of the objective's own modules (`extra`, trained) and `frozen` modules (a
    distillation teacher, run only) is sharded as a root of its own. Each is called directly (an
    evaluation callback runs the model alone), so none is nested under a wrapper's root."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if tcfg.fsdp_bf16 \
        else MixedPrecisionPolicy()
    for block in model.blocks:
        if tcfg.activation_checkpointing:
            from torch.distributed._composable import checkpoint

            checkpoint(block)
        fully_shard(block, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    for module in [*(extra or {}).values(), *(frozen or {}).values()]:
        for block in getattr(module, "blocks", []):
            fully_shard(block, mp_policy=mp)
        fully_shard(module, mp_policy=mp)
    for module in [model, *(frozen or {}).values()]:  # the Transformer's entries besides forward
        for method in TRANSFORMER_ENTRIES:
            if hasattr(module, method):
                register_fsdp_forward_method(module, method)


def sharded_replica(model: nn.Module) -> nn.Module:
    """A copy of `model` to shard; the caller's parameters are emptied meanwhile (see `restore_full`)."""
    replica = copy.deepcopy(model)
    for p in model.parameters():
        p.data = torch.empty(0, dtype=p.dtype)
    return replica


def full_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The whole (unsharded) state dict of an FSDP module, on every process (a collective call)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True))


def restore_full(model: nn.Module, replica: nn.Module) -> None:
    """Write the trained weights of the sharded `replica` back into `model`'s emptied parameters."""
    state = full_state(replica)
    for name, p in model.named_parameters():
        p.data = state[name].detach().clone()


def gradient_sync(net: nn.Module, engine: str, sync: bool):
    """A context in which backward synchronises gradients only when `sync` (the last micro-batch)."""
    from contextlib import contextmanager, nullcontext

    if engine == "ddp" and not sync:
        return net.no_sync()
    if engine != "fsdp":
        return nullcontext()

    from torch.distributed.fsdp import FSDPModule

    units = [m for m in net.modules() if isinstance(m, FSDPModule)]

    @contextmanager
    def fsdp_sync():
        for unit in units:
            unit.set_requires_gradient_sync(sync, recurse=False)
        try:
            yield
        finally:
            for unit in units:
                unit.set_requires_gradient_sync(True, recurse=False)

    return fsdp_sync()


def local_value(t: torch.Tensor) -> float:
    """A scalar that may be a DTensor (FSDP's gradient norm) as a float."""
    from torch.distributed.tensor import DTensor

    return float(t.full_tensor() if isinstance(t, DTensor) else t)


def _local(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def local_state_bytes(model: nn.Module, extra: dict[str, nn.Module],
                      optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes this process holds of the parameters and of the optimizer state (AdamW's two moments); during a
    step the gradients take as much as the trainable parameters."""
    params = {id(p): p for m in (model, *extra.values()) for p in m.parameters()}.values()
    state = [t for s in optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    size = lambda ts: sum(_local(t).numel() * _local(t).element_size() for t in ts)  # noqa: E731
    return {"params": size(params), "optimizer": size(state)}
