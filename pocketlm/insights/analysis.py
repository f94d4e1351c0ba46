"""The analysis behind the insights, as small pure functions (no torch, no files): fits, outliers,
where two curves part, tokens per parameter, and the verdict rule."""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass
from typing import Sequence

VERDICTS = ("agree", "partly", "disagree", "skipped")
CHINCHILLA_TOKENS_PER_PARAM = 20.0  # Hoffmann et al. 2022: compute-optimal ~20 training tokens per parameter


@dataclass(frozen=True)
class LinearFit:
    intercept: float
    slope: float
    r2: float
    residuals: tuple[float, ...]

    def predict(self, x: float) -> float:
        return self.intercept + self.slope * x


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> LinearFit:
    """Ordinary least squares y = a + b x, with R² and the residuals y - fit."""
    if len(xs) != len(ys) or len(xs) < 2:
        raise ValueError(f"a linear fit needs two or more (x, y) pairs of equal length, got {len(xs)} and {len(ys)}")
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        raise ValueError("a linear fit needs at least two distinct x values")
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    intercept = my - slope * mx
    residuals = tuple(y - (intercept + slope * x) for x, y in zip(xs, ys))
    ss_tot = sum((y - my) ** 2 for y in ys)
    r2 = 1.0 - sum(r * r for r in residuals) / ss_tot if ss_tot else 1.0
    return LinearFit(intercept, slope, r2, residuals)


def robust_outliers(residuals: Sequence[float], z: float = 3.5, above_only: bool = False) -> list[int]:
    """Indices whose residual lies more than `z` robust standard deviations (1.4826 x the median absolute
    deviation) from the median residual (Iglewicz & Hoaglin's modified z-score uses 3.5); `above_only`
    keeps only points above the fit."""
    med = statistics.median(residuals)
    mad = statistics.median(abs(r - med) for r in residuals)
    scale = 1.4826 * mad
    out = []
    for i, r in enumerate(residuals):
        dev = r - med
        far = dev != 0 if scale == 0 else abs(dev) / scale > z
        if far and (dev > 0 or not above_only):
            out.append(i)
    return out


def parting_point(xs: Sequence[float], a: Sequence[float], b: Sequence[float], rel: float = 0.1) -> float | None:
    """The first x from which curve `a` stays more than `rel` (relative) away from curve `b` at every
    later point; None when the curves never part for good. xs ascending."""
    if not (len(xs) == len(a) == len(b)):
        raise ValueError("xs, a and b must have the same length")
    parted = None
    for x, ya, yb in zip(xs, a, b):
        apart = abs(ya - yb) > rel * max(abs(ya), abs(yb))
        if apart and parted is None:
            parted = x
        elif not apart:
            parted = None
    return parted


_TOKENS = re.compile(r"^~?\s*(\d+(?:\.\d+)?)\s*([KMBT])\b", re.IGNORECASE)
_UNIT = {"K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}


def parse_tokens(text: str) -> float | None:
    """Training tokens from a catalog string: '3T' -> 3e12, '~1.8T (LB: 1.5T)' -> 1.8e12, '350B + 0.5B
    finetune' -> 3.5e11; None when undisclosed or not a count ('undisclosed', '~1T?', 'GPT-2 pretrain + ...')."""
    t = text.strip()
    m = _TOKENS.match(t)
    if m is None or t[m.end():].lstrip().startswith("?"):
        return None
    return float(m.group(1)) * _UNIT[m.group(2).upper()]


def tokens_per_param(rows: Sequence[tuple[str, float, str]]) -> list[dict]:
    """[(name, params, training_tokens text)] -> rows with tokens, tokens/param and the multiple of the
    Chinchilla point; entries without a disclosed token count are left out."""
    out = []
    for name, params, text in rows:
        tokens = parse_tokens(text)
        if tokens is None or params <= 0:
            continue
        tpp = tokens / params
        out.append({"model": name, "params": params, "tokens": tokens, "tokens_per_param": tpp,
                    "x_chinchilla": tpp / CHINCHILLA_TOKENS_PER_PARAM})
    return out


def verdict(checks: Sequence[bool]) -> str:
    """agree when every check of the claim holds, disagree when none does, partly in between."""
    if not checks:
        raise ValueError("a verdict needs at least one check")
    n = sum(bool(c) for c in checks)
    return "agree" if n == len(checks) else "disagree" if n == 0 else "partly"


def ratio(a: float, b: float) -> float:
    return a / b if b else math.nan
