"""A device budget: the limits a deployed model must meet, parsed from the CLI's strings.

    Budget.parse(max_memory="400MB", min_decode_tok_s="30", max_disk="250MB", max_prefill_ms="500")

Sizes take B, KB/MB/GB/TB (powers of 1000) and KiB/MiB/GiB/TiB (powers of 1024); a bare number is bytes.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
         "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


class BudgetError(ValueError):
    """A budget that cannot be met or read; the message names the flag and the fix."""


def parse_size(text: str, flag: str) -> int:
    """'400MB' -> 400_000_000; '1.5GiB' -> 1610612736."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not m:
        raise BudgetError(f"{flag} {text!r}: expected a size such as 400MB, 1.5GB or 512MiB")
    unit = m.group(2).lower()
    if unit not in UNITS:
        raise BudgetError(f"{flag} {text!r}: unknown unit {m.group(2)!r}; use B, KB, MB, GB, TB or KiB, MiB, GiB")
    value = float(m.group(1)) * UNITS[unit]
    if value < 1:
        raise BudgetError(f"{flag} {text!r}: must be more than 0 bytes (no model fits in nothing)")
    return int(value)


def parse_number(text: str, flag: str, unit: str) -> float:
    try:
        value = float(str(text).strip().removesuffix(unit))
    except ValueError:
        raise BudgetError(f"{flag} {text!r}: expected a number of {unit}, e.g. {flag} 30") from None
    if not value > 0 or value == float("inf"):
        raise BudgetError(f"{flag} {text!r}: must be a positive, finite number of {unit}")
    return value


@dataclass(frozen=True)
class Budget:
    """Limits on the model's measured cost; None = no limit. Memory is the model's RSS growth in the
    runtime (weights + KV cache + buffers at the measured context), disk its weight files."""

    max_memory_bytes: int | None = None
    min_decode_tok_s: float | None = None
    max_disk_bytes: int | None = None
    max_prefill_ms: float | None = None

    @classmethod
    def parse(cls, max_memory: str | None = None, min_decode_tok_s: str | float | None = None,
              max_disk: str | None = None, max_prefill_ms: str | float | None = None) -> "Budget":
        budget = cls(
            max_memory_bytes=None if max_memory is None else parse_size(max_memory, "--max-memory"),
            min_decode_tok_s=None if min_decode_tok_s is None else parse_number(min_decode_tok_s,
                                                                                  "--min-decode-tok-s", "tok/s"),
            max_disk_bytes=None if max_disk is None else parse_size(max_disk, "--max-disk"),
            max_prefill_ms=None if max_prefill_ms is None else parse_number(max_prefill_ms, "--max-prefill-ms", "ms"))
        budget.check()
        return budget

    def check(self) -> None:
        if all(v is None for v in asdict(self).values()):
            raise BudgetError("no budget given: pass at least one of --max-memory, --min-decode-tok-s, "
                              "--max-disk, --max-prefill-ms")

    def check_model(self, kv_cache_bytes: int, context: int) -> None:
        """Limits that contradict the measurement itself: every candidate keeps the same KV cache for
        `context` tokens (weight compression does not shrink it), so a memory limit below it can never hold."""
        if self.max_memory_bytes is not None and self.max_memory_bytes <= kv_cache_bytes:
            raise BudgetError(
                f"--max-memory {self.max_memory_bytes / 1e6:g} MB contradicts --context {context}: the KV cache "
                f"alone takes {kv_cache_bytes / 1e6:.2f} MB for every candidate; raise --max-memory or lower "
                "--context")

    def misses(self, cost: dict) -> list[str]:
        """The limits `cost` (decode_tok_s, memory_bytes, disk_bytes, prefill_ms) breaks, in words."""
        out = []
        if self.max_memory_bytes is not None and cost["memory_bytes"] > self.max_memory_bytes:
            out.append(f"memory {cost['memory_bytes'] / 1e6:.1f} MB > {self.max_memory_bytes / 1e6:.1f} MB")
        if self.min_decode_tok_s is not None and cost["decode_tok_s"] < self.min_decode_tok_s:
            out.append(f"decode {cost['decode_tok_s']:.1f} tok/s < {self.min_decode_tok_s:g} tok/s")
        if self.max_disk_bytes is not None and cost["disk_bytes"] > self.max_disk_bytes:
            out.append(f"disk {cost['disk_bytes'] / 1e6:.1f} MB > {self.max_disk_bytes / 1e6:.1f} MB")
        if self.max_prefill_ms is not None and cost["prefill_ms"] > self.max_prefill_ms:
            out.append(f"prefill {cost['prefill_ms']:.1f} ms > {self.max_prefill_ms:g} ms")
        return out

    def describe(self) -> str:
        parts = []
        if self.max_memory_bytes is not None:
            parts.append(f"memory <= {self.max_memory_bytes / 1e6:g} MB")
        if self.min_decode_tok_s is not None:
            parts.append(f"decode >= {self.min_decode_tok_s:g} tok/s")
        if self.max_disk_bytes is not None:
            parts.append(f"disk <= {self.max_disk_bytes / 1e6:g} MB")
        if self.max_prefill_ms is not None:
            parts.append(f"prefill <= {self.max_prefill_ms:g} ms")
        return ", ".join(parts)

    def to_dict(self) -> dict:
        return asdict(self)
