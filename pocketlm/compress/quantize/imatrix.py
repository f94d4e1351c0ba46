"""llama.cpp's importance matrix, computed by pocketlm on the calibration text every method uses.

`importance_matrix(model, calib)` returns GGUF weight name -> values in the form `llama_model_quantize`
takes (`export.llama_quantize`): for each matrix the mean over calibration tokens of x_j² per input
column j, the statistic `llama-imatrix` collects from the graph's matrix multiplications. Its
conventions, and where pocketlm follows them:
- every token of every calibration sequence counts (llama-imatrix's chunks are the sequences here;
  it also replaces each chunk's first token with BOS, which pocketlm's calibration windows do not);
- the float model runs unquantized, one forward over the blocks (the shared layer walk, no edits);
- only block matrices (`blk.*`, routers included): the token embedding is a lookup and
  `output.weight` is skipped by default (llama-imatrix --process-output), as GPTQ/AWQ skip the head;
- routed experts: one row per expert, averaged over the tokens routed to that expert (each top-k slot
  counts); an expert no token reached gets 1.0, as llama-quantize sets for missing data;
- GGUF tensors that stack pocketlm matrices (a fused q/k/v) or split one (a fused gate/up) share their
  input, so they share its statistics. Row permutations (llama.cpp's q/k RoPE order) leave columns alone.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from pocketlm.compress.layerwise import BlockStep, walk
from pocketlm.compress.stats import SquareMeans
from pocketlm.export.gguf import placements
from pocketlm.interop.families import gguf_arch
from pocketlm.model.transformer import Transformer

EXPERT_STACKS = {"gate_up_proj": "gate_proj", "down_proj": "down_proj"}


def input_statistics(model: Transformer, calib: Tensor, batch_size: int = 8,
                     progress: bool = False) -> dict[str, SquareMeans]:
    """Target name -> the mean-square accumulator of its input, from one unedited walk over `calib`."""
    seen: dict[str, SquareMeans] = {}

    def record(step: BlockStep) -> bool:
        seen.update({t.name: step.stats[t.input_key] for t in step.targets})
        return False

    walk(model, calib, lambda t: SquareMeans(t.shape[1]), record, skip=(), batch_size=batch_size,
         progress=progress, description="importance matrix")
    return seen


def _source_rows(src: str, stats: dict[str, SquareMeans], n_experts: int) -> np.ndarray | None:
    """The importance row(s) of one pocketlm tensor: a linear's weight, or a stacked expert tensor."""
    module, _, leaf = src.rpartition(".")
    if leaf == "weight" and module in stats:
        return stats[module].mean().numpy()
    if leaf in EXPERT_STACKS and f"{module}.0.{EXPERT_STACKS[leaf]}" in stats:
        return np.concatenate([stats[f"{module}.{e}.{EXPERT_STACKS[leaf]}"].mean().numpy()
                               for e in range(n_experts)])
    return None


def importance_matrix(model: Transformer, calib: Tensor, batch_size: int = 8,
                      progress: bool = False) -> dict[str, np.ndarray]:
    """GGUF weight name -> float32 importance values (columns, times experts for stacked experts)."""
    cfg = model.config
    if model.transforms.fused:
        model.unfuse()  # exact; GGUF names the unfused matrices
    stats = input_statistics(model, calib, batch_size, progress)
    state = model.state_dict()
    out = {}
    for p in placements(cfg, gguf_arch(cfg), state):
        rows = [_source_rows(n, stats, cfg.n_experts or 0) for n in p.src]
        if rows[0] is None:
            continue  # not a block matrix (embedding, head, norms, routers)
        for name in p.dst:
            out[name] = rows[0].astype(np.float32)
    return out
