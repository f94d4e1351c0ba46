"""The sequential block walk shared by every calibration-based method (SparseGPT, Wanda, GPTQ, AWQ, OWL).

The inputs of block 0 are captured once (a pre-hook on the first block stops the forward there, as the
reference code's `Catcher` does); then, block by block: hook the targets, run the block over the
calibration batches while the hooks accumulate statistics, let the method compress the block, and run
the compressed block again to produce the next block's inputs. Memory holds the calibration activations
of one block boundary (N x L x d_model fp32; each batch's outputs are written over its inputs' buffer as
they are made, so the activations never move and a pass's temporaries reuse the same freed blocks)
plus the statistics of one block's targets. `after_block` lets a method replace a finished block's
layers at once (quantize swaps it for its integer kernels, freeing its float weights block by block).

`compute_dtype=torch.bfloat16` runs the calibration forwards under bf16 autocast (the references run
them in fp16 on GPUs): matmuls about 1.7x faster on CPUs with AVX-512 BF16, the hooked inputs rounded
to bf16, the statistics still accumulated in fp32 and the weights compressed in fp32.

Block sharing (MobileLLM's `block_repeat`) runs a stored block several times in a row: its statistics
gather over every application. `groups` gives GPTQ's `true_sequential` order (q/k/v, then o, ...):
each group is hooked, compressed and re-run before the next group's inputs are collected. A group's
statistics pass stops each batch's forward as soon as every hooked module has seen its input (the
layers after it cannot change those inputs), so q/k/v's pass costs a norm and down_proj's stops
before its own matmul: the five passes of a block cost about 2.4 forwards of it instead of five
(counted in multiply-adds per token for the SmolLM-135M shape at 512-token windows: 0 + 1.14M + 1.47M
+ 3.24M + 4.13M over 4.13M per forward). Once no group left touches attention (after o_proj), the pass
that reads gate/up's inputs writes each batch's residual stream after attention (`Block.attend`) over
its block input, and the later passes run only the FFN half (`Block.feed_forward`): the same values,
and attention runs in two passes per block instead of four (not for parallel residual blocks, whose
FFN reads the block input). o_proj's pass also keeps o_proj's inputs (one buffer the size of the
calibration activations, freed after the next pass): q/k/v are final there, so the gate/up pass runs
o_proj alone on them (`Block.attend(heads=)`) and q/k/v and the attention itself run once per block.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import Tensor, nn

from pocketlm.compress.targets import DEFAULT_SKIP, Target, block_targets
from pocketlm.model.transformer import AttentionInputs, Transformer
from pocketlm.runtime.open import release_memory

Accumulator = Any  # anything with add_batch(x); see stats.py


# A debug hook: when set, called with a label at each phase of the walk (inputs captured; each group's
# statistics gathered and its weights compressed; each block advanced). `bench_quant_perf.py --rss-probe`
# sets it to read the process's RSS between phases. None (the default) costs nothing.
phase_hook: Callable[[str], None] | None = None


def mark_phase(label: str) -> None:
    if phase_hook is not None:
        phase_hook(label)


class _Captured(Exception):
    """Raised by the pre-hook on block 0 once it has the block's inputs, and by a group's last hook."""


@dataclass
class BlockStep:
    """What a method sees for one block: its targets, their input statistics, and a way to re-run it."""

    index: int
    block: nn.Module
    targets: list[Target]
    stats: dict[str, Accumulator]  # input_key -> accumulator
    run: Callable[[], list[Tensor]]  # the block's outputs on the calibration inputs (current weights)


@torch.no_grad()
def capture_inputs(model: Transformer, calib: Tensor, batch_size: int) -> list[tuple[Tensor, AttentionInputs]]:
    """(hidden states entering block 0, attention inputs) for each batch of calibration sequences."""
    captured: list[tuple[Tensor, AttentionInputs]] = []

    def grab(module: nn.Module, args: tuple) -> None:
        captured.append((args[0].detach(), args[1]))
        raise _Captured

    handle = model.blocks[0].register_forward_pre_hook(grab)
    try:
        for i in range(0, calib.shape[0], batch_size):
            try:
                model(calib[i:i + batch_size])
            except _Captured:
                pass
    finally:
        handle.remove()
    return captured


def _groups(targets: list[Target], groups: list[list[str]] | None) -> Iterable[list[Target]]:
    if not groups:
        yield targets
        return
    left = list(targets)
    for patterns in groups:
        chosen = [t for t in left if any(fnmatch.fnmatchcase(t.name, p) for p in patterns)]
        left = [t for t in left if t not in chosen]
        if chosen:
            yield chosen
    if left:
        yield left


def _hook(target: Target, acc: Accumulator, seen: set[int] | None, hooks: int) -> Callable:
    """A forward pre-hook feeding `acc`; with `seen`, the last of the group's `hooks` to fire stops the forward."""
    def fn(module: nn.Module, args: tuple) -> None:
        x = target.extract(args)
        if x is not None and x.numel():
            acc.add_batch(x.detach())
        if seen is not None:
            seen.add(id(acc))  # not id(fn): a closure naming itself is a reference cycle that keeps `acc` alive
            if len(seen) == hooks:
                raise _Captured
    return fn


@torch.no_grad()
def walk(model: Transformer, calib: Tensor, make_stat: Callable[[Target], Accumulator],
         compress: Callable[[BlockStep], bool], *, skip: tuple[str, ...] = DEFAULT_SKIP,
         groups: list[list[str]] | None = None, batch_size: int = 8, progress: bool = False,
         description: str = "compressing", compute_dtype: torch.dtype | None = None,
         after_block: Callable[[int, nn.Module], None] | None = None) -> None:
    """Walk the blocks in order; `compress(step)` edits the block's targets and returns whether it changed them.

    `make_stat(target)` builds the accumulator for the first target of each input key; `compute_dtype`
    (None: the model's own) is the autocast dtype of the blocks' calibration forwards. `after_block(b,
    block)` runs once block b's outputs (the next block's inputs) exist and the walk holds no reference
    to its targets: the walk never runs block b again, so the method may replace its layers there."""
    was_training = model.training
    model.eval()
    batches = capture_inputs(model, calib, batch_size)
    mark_phase("captured")
    schedule = model.layer_schedule()
    bar = _Bar(len(model.blocks), progress, description)
    try:
        for b, block in enumerate(model.blocks):
            applications = schedule.count(b)
            stop_early = bool(groups) and applications == 1  # a shared block's later applications feed stats too
            # once no group left touches attention, the batches hold the residual stream after attention
            # (written over the block inputs), and later passes run the FFN half only
            split = stop_early and not model.config.parallel_residual
            attention = {id(m) for m in block.attn.modules()}
            attended = [False]

            def run(block: nn.Module = block, applications: int = applications, seen: set[int] | None = None,
                    batches: list[tuple[Tensor, AttentionInputs]] = batches, attend: bool = False,
                    attended: list[bool] = attended, heads: _Heads | None = None) -> list[Tensor]:
                outs = []
                with torch.autocast("cpu", dtype=compute_dtype or torch.bfloat16, enabled=compute_dtype is not None):
                    for i, (x, inp) in enumerate(batches):
                        if seen is not None:
                            seen.clear()
                        try:
                            if attend:  # the attention weights are final: keep its output for the later passes
                                x = _keep(x, block.attend(x, inp, None, heads.views[i] if heads else None))
                                batches[i] = (x, inp)
                            if attend or attended[0]:
                                x = block.feed_forward(x, model.shared_mlp)
                            else:
                                for _ in range(applications):
                                    x = block(x, inp, None, model.shared_mlp)
                            outs.append(x)
                        except _Captured:  # the group's inputs are all seen: the rest of the block is not needed
                            pass
                return outs

            outputs, changed, heads = None, False, None
            ordered = list(_groups(block_targets(model, b, skip), groups))
            o_proj = getattr(block.attn, "o_proj", None)
            for g, group in enumerate(ordered):
                stats: dict[str, Accumulator] = {}
                made = []
                for t in group:
                    if t.input_key not in stats:
                        stats[t.input_key] = make_stat(t)
                        made.append(t)
                attend = split and not attended[0] and all(id(t.module) not in attention
                                                           for later in ordered[g:] for t in later)
                # o_proj is the last attention module left and the next pass is the one above: keep o_proj's
                # inputs now (final: q/k/v are done), and that pass runs o_proj alone on them
                keep_heads = (split and not attended[0] and g + 1 < len(ordered)
                              and any(t.module is o_proj for t in group)
                              and {id(t.module) for later in ordered[g:] for t in later} & attention == {id(o_proj)})
                seen: set[int] | None = set() if stop_early else None
                if keep_heads:
                    heads = _Heads(sum(x.shape[0] * x.shape[1] for x, _ in batches))
                keep = [o_proj.register_forward_pre_hook(heads)] if keep_heads else []
                handles = keep + [t.module.register_forward_pre_hook(_hook(t, stats[t.input_key], seen, len(made)))
                                  for t in made]
                try:
                    outputs = run(seen=seen, attend=attend, heads=heads if attend else None)
                finally:
                    for h in handles:
                        h.remove()
                attended[0] = attended[0] or attend
                if attend:
                    heads = None
                mark_phase(f"block {b} group {g} statistics")
                changed = bool(compress(BlockStep(b, block, group, stats, run))) or changed
                del stats, handles
                release_memory()
                mark_phase(f"block {b} group {g} compressed")
            if outputs is None or changed or stop_early:
                _advance(batches, run)
            else:
                batches[:] = [(out, inp) for out, (_, inp) in zip(outputs, batches)]
            outputs = ordered = group = made = t = None  # the targets hold the block's matrices: drop them first
            if after_block is not None:
                after_block(b, block)
            release_memory()  # freed temporaries back to the OS, so heap holes do not pile up block after block
            mark_phase(f"block {b} advanced")
            bar.advance()
    finally:
        bar.close()
        model.train(was_training)


def _advance(batches: list[tuple[Tensor, AttentionInputs]], run: Callable[..., list[Tensor]]) -> None:
    """Replace each batch's block inputs by the block's outputs as soon as they are computed: the walk then
    holds one set of calibration activations, not the inputs and the outputs side by side."""
    for i, (x, inp) in enumerate(batches):
        batches[i] = (_keep(x, run(batches=[(x, inp)])[0]), inp)
        del x


class _Heads:
    """A forward pre-hook on o_proj keeping its input of each batch, all in one buffer allocated at the first
    batch (a 9 MiB copy per batch into 144 MiB at 128 x 512 for the 135M shape): kept batch by batch in
    blocks of their own, they interleaved with the pass's temporaries and the heap grew ~2x that."""

    def __init__(self, tokens: int):
        self.tokens, self.buffer, self.views, self.used = tokens, None, [], 0

    def __call__(self, module: nn.Module, args: tuple) -> None:
        y = args[0]
        if self.buffer is None:
            self.buffer = torch.empty(self.tokens * y.shape[-1], dtype=y.dtype)
        self.views.append(self.buffer[self.used:self.used + y.numel()].view(y.shape).copy_(y))
        self.used += y.numel()


def _keep(x: Tensor, new: Tensor) -> Tensor:
    """`new` written over the batch's buffer `x` when it fits (same shape and dtype): the calibration
    activations keep their memory pass after pass, and each pass's temporaries reuse the same freed
    blocks, instead of every output taking a fresh 9 MiB block and leaving a hole where its input was
    (the heap then grows through a pass until `release_memory`). The values are those of `new`."""
    if new.shape != x.shape or new.dtype != x.dtype or not x.is_contiguous() or new.data_ptr() == x.data_ptr():
        return new
    return x.copy_(new)


class _Bar:
    """A rich progress bar over blocks (a no-op when disabled)."""

    def __init__(self, total: int, enabled: bool, description: str):
        self.bar = None
        if enabled:
            from rich.progress import Progress

            self.bar = Progress(transient=True)
            self.bar.start()
            self.task = self.bar.add_task(description, total=total)

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.advance(self.task)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
