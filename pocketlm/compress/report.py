"""What a compression run did and what it cost: one dataclass, written as JSON next to the artifact."""

from __future__ import annotations

import dataclasses
import json
import resource
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pocketlm.utils import atomic_write_text


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


@dataclass
class MatrixResult:
    name: str
    shape: tuple[int, int]
    target_sparsity: float
    sparsity: float  # realised fraction of zeros
    rel_error: float | None  # ||W X - Ŵ X||² / ||W X||² on the error-probe sequences (None: no calibration)
    seconds: float


@dataclass
class PruneReport:
    recipe: dict[str, Any]
    matrices: list[MatrixResult] = field(default_factory=list)
    block_sparsity: list[float] = field(default_factory=list)  # target per stored block (OWL: non-uniform)
    owl_outlier_ratios: list[float] | None = None  # percent of Wanda scores above M * mean, per block
    calibration: dict[str, Any] | None = None
    left_dense: list[str] = field(default_factory=list)  # matrices outside the method's reach
    wall_s: float = 0.0
    peak_rss_bytes: int = 0
    model_bytes: int = 0  # parameter bytes of the model as pruned (dense storage)
    evaluation: dict[str, Any] = field(default_factory=dict)  # held-out perplexity / KL before and after
    runtime: dict[str, Any] = field(default_factory=dict)  # decode latency and file size before and after
    notes: list[str] = field(default_factory=list)

    @property
    def sparsity(self) -> float:
        """Realised sparsity over every targeted matrix (weighted by size)."""
        total = sum(m.shape[0] * m.shape[1] for m in self.matrices)
        return sum(m.sparsity * m.shape[0] * m.shape[1] for m in self.matrices) / total if total else 0.0

    def per_block(self) -> list[float]:
        """Realised sparsity of each stored block's targeted matrices."""
        out: dict[int, list[float]] = {}
        for m in self.matrices:
            n = m.shape[0] * m.shape[1]
            zeros_and_size = out.setdefault(int(m.name.split(".")[1]), [0.0, 0.0])
            zeros_and_size[0] += m.sparsity * n
            zeros_and_size[1] += n
        return [z / n for _, (z, n) in sorted(out.items())]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["sparsity"] = self.sparsity
        d["sparsity_per_block"] = self.per_block()
        return d

    def write(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2))


@dataclass
class LayerError:
    name: str
    shape: tuple[int, int]
    rel_error: float | None  # ||W X - Ŵ X||² / ||W X||² on the error-probe sequences (None: no calibration)
    seconds: float


@dataclass
class QuantReport:
    """What a quantization run did (per-layer error, AWQ's chosen exponents) and what it cost."""

    method: str
    grid: str  # e.g. "asym4 g128"
    options: dict[str, Any] = field(default_factory=dict)
    layers: list[LayerError] = field(default_factory=list)
    awq: list[dict[str, Any]] = field(default_factory=list)  # per scaled group: layers, best exponent, loss
    left_float: list[str] = field(default_factory=list)
    calibration: dict[str, Any] | None = None
    wall_s: float = 0.0
    peak_rss_bytes: int = 0
    weight_bytes: int = 0  # parameter and buffer bytes of the quantized model in memory
    disk_bytes: int | None = None  # the saved checkpoint, when one was written
    evaluation: dict[str, Any] = field(default_factory=dict)  # held-out perplexity, KL mean / p99, top-1
    codes: dict[str, Any] = field(default_factory=dict, repr=False)  # name -> (codes, params); not serialised

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "codes"}
        d["layers"] = [dataclasses.asdict(m) for m in self.layers]
        errors = [m.rel_error for m in self.layers if m.rel_error is not None]
        d["mean_rel_error"] = sum(errors) / len(errors) if errors else None
        return d

    def write(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2))
