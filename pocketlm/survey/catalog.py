"""The survey catalog: load the bundled YAML into typed entries and rebuild each as a ModelConfig.

    from pocketlm.survey.catalog import load_catalog, get_entry, entry_to_config
    cfg = entry_to_config(get_entry("SmolLM-135M"))
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

import yaml

from pocketlm.model import costs
from pocketlm.model.config import ModelConfig
from pocketlm.survey.axes import Axes, config_axes

DATA = "pocketlm.survey.data"
STUDY_MEMBERSHIPS = ("C", "S")  # the models the survey's statistics count (56 firm + 6 candidates)


class CatalogError(ValueError):
    """A catalog lookup or file that cannot be used; the message says what to do instead."""


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    organization: str
    release: str  # YYYY-MM
    hf_id: str
    membership: str  # C | S | X (see catalog.yaml header)
    params_official: int
    params_official_text: str
    params_official_counts: str  # total | non_embedding
    params_source: str
    training_tokens: str
    training_data: str
    datasets: tuple[str, ...]
    training_algorithms: tuple[str, ...]
    survey_label: dict[str, Any]
    arch_source: str
    verified_from: str
    notes: str
    leaderboard: dict[str, float | None]
    config: dict[str, Any] | None = None
    axes_override: dict[str, Any] | None = None  # for entries that are not buildable
    not_buildable_reason: str | None = None
    params_note: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    _axes_cache: dict[str, Axes] = field(default_factory=dict, compare=False, repr=False)

    @property
    def buildable(self) -> bool:
        return self.config is not None

    @property
    def year(self) -> int:
        return int(self.release[:4])

    @property
    def in_study(self) -> bool:
        return self.membership in STUDY_MEMBERSHIPS

    def axes(self, source: str = "config") -> Axes:
        """Survey axes of this model.

        source="config": from the verified architecture (the ModelConfig);
        source="survey": the values the survey plotted (leaderboard labels), config for the rest.
        """
        if source not in ("config", "survey"):
            raise CatalogError(f"axes source must be 'config' or 'survey', got {source!r}")
        if source in self._axes_cache:
            return self._axes_cache[source]
        if self.config is not None:
            cfg = entry_to_config(self)
            base = config_axes(cfg, params=costs.param_counts(cfg)["total"]).to_dict()
        else:
            base = dict(self.axes_override or {})
            base["params"] = self.params_official
        if source == "survey":
            for key, value in self.survey_label.items():
                base[key] = value  # None where the paper shows "nan"
        fields = Axes.__dataclass_fields__
        axes = Axes(**{k: v for k, v in base.items() if k in fields})
        self._axes_cache[source] = axes
        return axes


def _entry(d: dict[str, Any]) -> CatalogEntry:
    known = set(CatalogEntry.__dataclass_fields__)
    d = dict(d)
    d.pop("buildable", None)
    if "axes" in d:
        d["axes_override"] = d.pop("axes")
    d["datasets"] = tuple(d.get("datasets") or ())
    d["training_algorithms"] = tuple(d.get("training_algorithms") or ())
    extra = {k: d.pop(k) for k in list(d) if k not in known}
    if d.get("config") is None and not d.get("not_buildable_reason"):
        raise CatalogError(f"catalog entry {d.get('name')!r} has neither a config nor a not_buildable_reason")
    return CatalogEntry(**d, extra=extra)


def load_catalog(path: str | Path | None = None) -> list[CatalogEntry]:
    """All entries (the bundled catalog unless `path` names another YAML file of the same shape)."""
    if path is None:
        return list(_bundled())
    return _parse(Path(path).read_text(), str(path))


@lru_cache(maxsize=1)
def _bundled() -> tuple[CatalogEntry, ...]:
    text = resources.files(DATA).joinpath("catalog.yaml").read_text()
    return tuple(_parse(text, "bundled catalog.yaml"))


def _parse(text: str, where: str) -> list[CatalogEntry]:
    doc = yaml.safe_load(text)
    if not isinstance(doc, dict) or not isinstance(doc.get("entries"), list):
        raise CatalogError(f"{where}: expected a mapping with an 'entries' list")
    entries = [_entry(e) for e in doc["entries"]]
    names = [e.name for e in entries]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise CatalogError(f"{where}: duplicate entry names {dup}")
    return entries


def get_entry(name: str, entries: Iterable[CatalogEntry] | None = None) -> CatalogEntry:
    """Look an entry up by name or HF id (case-insensitive); unknown names get close matches in the error."""
    pool = list(entries) if entries is not None else load_catalog()
    key = name.strip().lower()
    for e in pool:
        if key in (e.name.lower(), e.hf_id.lower()):
            return e
    lower = {e.name.lower(): e.name for e in pool}
    close = [lower[c] for c in difflib.get_close_matches(key, list(lower), n=4, cutoff=0.4)]
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise CatalogError(f"no catalog model named {name!r}.{hint} (`pocketlm survey list` shows all names)")


def entry_to_config(entry: CatalogEntry) -> ModelConfig:
    """The entry's architecture as a pocketlm ModelConfig (validated)."""
    if entry.config is None:
        raise CatalogError(f"{entry.name} cannot be built as a pocketlm transformer: {entry.not_buildable_reason}")
    cfg = dict(entry.config)
    cfg.setdefault("name", entry.name)
    extra = dict(cfg.get("extra") or {})
    extra.setdefault("catalog", entry.name)
    extra.setdefault("hf_id", entry.hf_id)
    cfg["extra"] = extra
    return ModelConfig.from_dict(cfg)


def filter_entries(entries: Iterable[CatalogEntry], *, year: int | None = None,
                   min_params: float | None = None, max_params: float | None = None,
                   attention: str | None = None, ffn: str | None = None, activation: str | None = None,
                   norm: str | None = None, membership: str | None = None,
                   source: str = "config") -> list[CatalogEntry]:
    """Entries matching every given filter (params compare against the official count)."""
    out = []
    for e in entries:
        a = e.axes(source)
        if year is not None and e.year != year:
            continue
        if min_params is not None and e.params_official < min_params:
            continue
        if max_params is not None and e.params_official > max_params:
            continue
        if attention and (a.attention or "").lower() != attention.lower():
            continue
        if ffn and (a.ffn_type or "").lower() != ffn.lower():
            continue
        if activation and (a.activation or "").lower() != activation.lower():
            continue
        if norm and (a.norm or "").lower() != norm.lower():
            continue
        if membership and e.membership not in membership.upper():
            continue
        out.append(e)
    return out


def parse_count(text: str) -> float:
    """'135M' -> 1.35e8, '1.5B' -> 1.5e9, '2e9' -> 2e9; errors name the accepted forms."""
    t = text.strip().upper().replace(",", "").replace("_", "")
    mult = {"K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}
    try:
        if t and t[-1] in mult:
            return float(t[:-1]) * mult[t[-1]]
        return float(t)
    except ValueError:
        raise CatalogError(f"cannot read parameter count {text!r}; write e.g. 135M, 1.5B or 2e9") from None


def published_tolerance(entry: CatalogEntry) -> float:
    """Absolute slack implied by how the official count is written: half a unit of its last digit.

    '1.3B' -> 0.05e9; '559,214,592' -> 0.5; '0.49B' -> 0.005e9.
    """
    text = entry.params_official_text.split()[0].replace(",", "")
    if "+" in entry.params_official_text:  # a sum of exact counts
        return 0.5
    mult = {"K": 1e3, "M": 1e6, "B": 1e9}.get(text[-1:].upper(), 1.0)
    digits = text[:-1] if mult != 1.0 else text
    decimals = len(digits.split(".")[1]) if "." in digits else 0
    return 0.5 * mult * 10.0 ** (-decimals)


def params_match(entry: CatalogEntry, counts: dict[str, int], rel_tol: float = 0.005) -> tuple[bool, str]:
    """Does a computed count agree with the official one?

    Agreement: within `rel_tol` (0.5 %), or within the rounding of the published figure; otherwise the
    entry must carry a `params_note` explaining the gap (e.g. a size-class name).
    Returns (ok, reason).
    """
    built = counts[entry.params_official_counts]
    off = entry.params_official
    diff = built - off
    if abs(diff) <= rel_tol * off:
        return True, f"within {rel_tol:.1%} ({diff / off:+.2%})"
    if abs(diff) <= published_tolerance(entry):
        return True, f"within the rounding of '{entry.params_official_text}' ({diff / off:+.2%})"
    if entry.params_note:
        return True, f"documented gap ({diff / off:+.2%}): {entry.params_note}"
    return False, (f"{entry.name}: built {built:,} vs official {off:,} ({diff / off:+.2%}) with no params_note")
