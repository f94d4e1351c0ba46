"""A pruning run as data: a dataclass that validates itself and round-trips through YAML.

Saved next to every pruned model (`recipe.yaml`), so `pocketlm prune MODEL --recipe recipe.yaml`
repeats the run exactly (same method, pattern, calibration spec and seed)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pocketlm.compress.prune.masks import NM
from pocketlm.compress.targets import DEFAULT_SKIP
from pocketlm.utils import atomic_write_text, dataclass_from_dict, load_yaml

METHODS = ("magnitude", "wanda", "sparsegpt")
CALIB_DTYPES = ("fp32", "bf16")


class RecipeError(ValueError):
    """An invalid pruning recipe; the message names the field and the allowed values."""


@dataclass
class PruneRecipe:
    method: str = "wanda"
    sparsity: float = 0.5  # fraction of each targeted matrix set to zero (N:M: taken from the pattern)
    pattern: str | None = None  # None / "unstructured", or "N:M" (N zeros in every M inputs)
    owl: bool = False  # outlier-weighted per-block sparsity (Wanda, SparseGPT)
    owl_m: float = 5.0  # OWL outlier threshold: score > M * mean
    owl_lambda: float = 0.08  # OWL: block sparsities span [s - lambda, s + lambda]
    calib: str = "bundled:128x512"  # calibration spec SOURCE:NxL (see calibration.py)
    seed: int = 0
    skip: list[str] = field(default_factory=lambda: list(DEFAULT_SKIP))  # globs of target names left dense
    magnitude_scope: str = "layer"  # magnitude: compare per "layer" (reference) or per output "row"
    blocksize: int = 128  # SparseGPT column block
    damp: float = 0.01  # SparseGPT damping, fraction of mean(diag H)
    batch_size: int = 8  # calibration sequences per forward in the walk
    error_samples: int = 8  # sequences on which per-matrix reconstruction error is measured
    calib_dtype: str = "fp32"  # "bf16": calibration forwards under bf16 autocast (statistics still in fp32)
    version: int = 1

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise RecipeError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if isinstance(self.sparsity, bool) or not (isinstance(self.sparsity, (int, float)) and 0 <= self.sparsity < 1):
            raise RecipeError(f"sparsity must be in [0, 1) (the fraction of weights set to zero), got {self.sparsity!r}")
        nm = NM.parse(self.pattern)
        if nm is not None:
            self.pattern, self.sparsity = str(nm), nm.sparsity
        else:
            self.pattern = None
        if self.owl and nm is not None:
            raise RecipeError("OWL sets a sparsity per block; it does not combine with an N:M pattern "
                              "(drop --owl or --pattern)")
        if self.owl and self.method == "magnitude":
            raise RecipeError("OWL scores blocks with calibration activations; use it with wanda or sparsegpt")
        if self.magnitude_scope not in ("layer", "row"):
            raise RecipeError(f"magnitude_scope must be 'layer' or 'row', got {self.magnitude_scope!r}")
        if not 0 <= self.damp < 1 or self.blocksize < 1 or self.batch_size < 1 or self.error_samples < 0:
            raise RecipeError("damp must be in [0, 1); blocksize and batch_size >= 1; error_samples >= 0")
        if self.calib_dtype not in CALIB_DTYPES:
            raise RecipeError(f"calib_dtype must be one of {', '.join(CALIB_DTYPES)}, got {self.calib_dtype!r}")
        self.skip = list(self.skip)

    @property
    def nm(self) -> NM | None:
        return NM.parse(self.pattern)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PruneRecipe":
        return dataclass_from_dict(cls, d, RecipeError)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> "PruneRecipe":
        data = load_yaml(text, "recipe", error=RecipeError)
        if not isinstance(data, dict):
            raise RecipeError("a recipe YAML must be a mapping of fields (method, sparsity, ...)")
        return cls.from_dict(data)

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, self.to_yaml())

    @classmethod
    def load(cls, path: str | Path) -> "PruneRecipe":
        return cls.from_yaml(Path(path).read_text())
