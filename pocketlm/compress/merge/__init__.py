"""Model merging: mergekit recipes on pocketlm's families, streamed tensor by tensor.

    from pocketlm.compress.merge import merge
    result = merge("recipe.yaml", "out/merged")           # a mergekit YAML, unchanged

Methods (one module each, pure functions over tensors, registered by name in registry.py):
linear (model soups, WARM), slerp, task_arithmetic, ties, dare_linear, dare_ties, model_stock,
passthrough (layer stacking, depth up-scaling).
"""

from __future__ import annotations

from pathlib import Path

from pocketlm.compress.merge.recipe import Recipe, parse_recipe, read_recipe
from pocketlm.compress.merge.registry import METHODS, MergeError, Method, Param, get_method
from pocketlm.compress.merge.stream import MergeResult, run_merge

__all__ = ["merge", "parse_recipe", "read_recipe", "Recipe", "MergeResult", "MergeError", "METHODS", "Method",
           "Param", "get_method", "methods"]


def methods() -> dict[str, Method]:
    """Every registered merge method by name."""
    get_method("linear")  # imports the method modules
    return dict(METHODS)


def merge(recipe: str | Path | Recipe, out_dir: str | Path, *, seed: int = 0, overwrite: bool = False,
          shard_bytes: int = 4 << 30, progress: bool = False) -> MergeResult:
    """Run a mergekit recipe (a path to its YAML, or a parsed Recipe) into a Hugging Face directory.

    Relative model paths resolve against the working directory, then the recipe's folder. `seed`
    fixes DARE's random drop (each tensor draws from its own generator, so results do not depend on
    the order tensors are processed in)."""
    root = None
    if not isinstance(recipe, Recipe):
        root = Path(recipe).resolve().parent
        recipe = read_recipe(recipe)
    return run_merge(recipe, out_dir, seed=seed, overwrite=overwrite, shard_bytes=shard_bytes, root=root,
                     progress=progress)
