"""`prune(model, ...)`: one entry point over every pruning method, pattern and OWL, on the shared walk.

Each method module (magnitude, wanda, sparsegpt) supplies `statistic(in_features)` (its input
accumulator, or None) and `prune_matrix(weight, stat, sparsity, nm, ...)` (the per-matrix solver);
this driver walks the blocks, calls the solver on every target, and measures what it did.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

from pocketlm.compress.layerwise import BlockStep, walk
from pocketlm.compress.prune import magnitude, owl, sparsegpt, wanda
from pocketlm.compress.recipe import PruneRecipe
from pocketlm.compress.report import MatrixResult, PruneReport, peak_rss_bytes
from pocketlm.compress.stats import Gram, InputNorms, Several
from pocketlm.compress.targets import Target, left_dense, select
from pocketlm.model.transformer import Transformer

METHOD_MODULES = {"magnitude": magnitude, "wanda": wanda, "sparsegpt": sparsegpt}


def _solver_options(recipe: PruneRecipe) -> dict[str, Any]:
    if recipe.method == "sparsegpt":
        return {"blocksize": recipe.blocksize, "damp": recipe.damp}
    if recipe.method == "magnitude":
        return {"scope": recipe.magnitude_scope}
    return {}


def owl_block_sparsities(model: Transformer, calib: Tensor, recipe: PruneRecipe,
                         progress: bool = False) -> tuple[list[float], list[float]]:
    """(per-block sparsities, outlier ratios) from a walk over the dense model, as the OWL reference does."""
    ratios: list[float] = []

    def measure(step: BlockStep) -> bool:
        scores = [wanda.score(t.weight, step.stats[t.input_key]) for t in step.targets]
        ratios.append(owl.outlier_ratio(scores, recipe.owl_m))
        return False

    walk(model, calib, lambda t: InputNorms(t.shape[1]), measure, skip=tuple(recipe.skip),
         batch_size=recipe.batch_size, progress=progress, description="OWL outlier ratios",
         compute_dtype=compute_dtype(recipe))
    return owl.block_sparsities(ratios, recipe.sparsity, recipe.owl_lambda), ratios


def compute_dtype(recipe: PruneRecipe) -> torch.dtype | None:
    """The walk's autocast dtype for recipe.calib_dtype (None: fp32, the model's own)."""
    return torch.bfloat16 if recipe.calib_dtype == "bf16" else None


def error_probe_rows(targets: list[Target], calib: Tensor, recipe: PruneRecipe) -> Tensor:
    """The calibration rows a magnitude walk needs: magnitude reads no statistic, so the walk only feeds
    the error probe (`Gram`), which sees the first `error_samples` sequences, or for routed experts (whose
    inputs count one per batch) the first `error_samples` batches. The errors equal those of a walk over
    every row, at a fraction of its cost."""
    routed = any(".experts." in t.name for t in targets)
    return calib[: recipe.error_samples * (recipe.batch_size if routed else 1)]


@torch.no_grad()
def prune(model: Transformer, method: str = "wanda", sparsity: float = 0.5, pattern: str | None = None,
          calib: Tensor | None = None, *, recipe: PruneRecipe | None = None, progress: bool = False,
          **options: Any) -> PruneReport:
    """Prune `model` in place and return the report.

    `calib` is a LongTensor [N, L] of token ids (see calibration.calibration_batches); magnitude pruning
    runs without it (then no reconstruction error is measured). `options` are further PruneRecipe fields
    (owl=True, skip=[...], damp=..., seed=...); a `recipe` replaces all of these arguments."""
    t_start = time.perf_counter()
    recipe = recipe or PruneRecipe(method=method, sparsity=sparsity, pattern=pattern, **options)
    module, nm, opts = METHOD_MODULES[recipe.method], recipe.nm, _solver_options(recipe)
    if calib is None and recipe.method != "magnitude":
        raise ValueError(f"{recipe.method} needs calibration data: pass calib=LongTensor[N, L] "
                         "(pocketlm.compress.calibration.calibration_batches)")
    targets = select(model, tuple(recipe.skip))
    if nm is not None:
        for t in targets:
            nm.check(t.shape[1], t.name)
    report = PruneReport(recipe=recipe.to_dict(), left_dense=left_dense(model))
    n_blocks = len(model.blocks)
    report.block_sparsity = [recipe.sparsity] * n_blocks
    if recipe.owl:
        report.block_sparsity, report.owl_outlier_ratios = owl_block_sparsities(model, calib, recipe, progress)

    def prune_target(t: Target, stat: Any, error: Gram | None) -> None:
        t0 = time.perf_counter()
        s = report.block_sparsity[t.block]
        before = t.weight.clone() if error is not None else None
        t.weight.copy_(module.prune_matrix(t.weight, stat, s, nm, **opts))
        report.matrices.append(MatrixResult(
            t.name, t.shape, nm.sparsity if nm else s, float((t.weight == 0).float().mean()),
            error.relative_error(before, t.weight) if error is not None and error.n else None,
            time.perf_counter() - t0))

    if calib is not None and recipe.method == "magnitude":
        calib = error_probe_rows(targets, calib, recipe) if recipe.error_samples else None
    if calib is None:
        for t in targets:
            prune_target(t, None, None)
    else:
        def make_stat(t: Target) -> Several:
            parts = {"error": Gram(t.shape[1], recipe.error_samples)}
            stat = module.statistic(t.shape[1])
            if stat is not None:
                parts["method"] = stat
            return Several(**parts)

        def compress(step: BlockStep) -> bool:
            for t in step.targets:
                acc = step.stats[t.input_key]
                prune_target(t, acc.parts.get("method"), acc["error"])
            return True

        walk(model, calib, make_stat, compress, skip=tuple(recipe.skip), batch_size=recipe.batch_size,
             progress=progress, description=f"{recipe.method} {recipe.pattern or recipe.sparsity}",
             compute_dtype=compute_dtype(recipe))
    report.wall_s = time.perf_counter() - t_start
    report.peak_rss_bytes = peak_rss_bytes()
    report.model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return report
