"""mergekit's YAML recipe, read as it is, into a `Recipe` that the streaming driver executes.

Supported: `merge_method`, `base_model`, `models` (each with `parameters`), `slices` (each with
`sources` of `model` + `layer_range`, optional per-slice `base_model` and `parameters`), top-level
`parameters`, `dtype`, `out_dtype`, `tokenizer_source` (`base`, or a model of the recipe). A
parameter is a scalar, a gradient (a list of numbers interpolated over the layers of a slice: layer
j of n gets t = j/(n−1)), or a list of `{filter, value}` entries where the first entry whose
`filter` is a substring of the tensor name (or absent / `*`) applies — mergekit's rules exactly, so
filters are written against Hugging Face tensor names (`self_attn`, `mlp`). Anything else in the
file (`modules`, `tokenizer`, `chat_template`, LoRA references, `tokenizer_source: union`) is
refused by name rather than ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pocketlm.compress.merge.registry import MergeError, Method, Param, get_method
from pocketlm.utils import load_yaml

TOP_KEYS = {"merge_method", "base_model", "models", "slices", "parameters", "dtype", "out_dtype",
            "tokenizer_source"}
UNSUPPORTED = {"modules": "per-module merges (multimodal models) are not supported",
               "tokenizer": "vocabulary surgery is not supported; merge models that share one tokenizer",
               "chat_template": "set the chat template on the merged tokenizer afterwards"}


@dataclass
class Source:
    model: str
    layer_range: tuple[int, int] | None = None  # None: every layer (the `models:` form)
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class Slice:
    sources: list[Source]
    base_model: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class Recipe:
    merge_method: str
    slices: list[Slice]
    base_model: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    dtype: str | None = None
    out_dtype: str | None = None
    tokenizer_source: str | None = None
    text: str = ""  # the YAML as the user wrote it (echoed into the model card)
    from_models: bool = False  # written with `models:` (layer ranges filled in by the driver)

    @property
    def method(self) -> Method:
        return get_method(self.merge_method)

    def models(self) -> list[str]:
        """Every model the recipe names, in first-mention order."""
        seen: list[str] = []
        for m in ([self.base_model] if self.base_model else []) + [s.base_model for s in self.slices if s.base_model] \
                + [src.model for s in self.slices for src in s.sources]:
            if m not in seen:
                seen.append(m)
        return seen


def _model_ref(value: Any, where: str) -> str:
    if isinstance(value, dict) and set(value) <= {"model", "path"}:
        value = value.get("path") or value.get("model")
        if isinstance(value, dict):
            value = value.get("path")
    if not isinstance(value, str) or not value:
        raise MergeError(f"{where}: a model reference must be a path string, got {value!r}")
    if "+" in value:
        raise MergeError(f"{where}: {value!r} names a LoRA adapter ('model+lora'); merge the adapter into its "
                         "model first (peft merge_and_unload) and reference the merged directory")
    return value


def _params(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MergeError(f"{where}.parameters must be a mapping of parameter name to value, got {value!r}")
    return dict(value)


def _keys(d: dict, allowed: set[str], where: str) -> None:
    extra = sorted(set(d) - allowed)
    if extra:
        raise MergeError(f"{where}: unsupported field(s) {extra}; supported here: {sorted(allowed)}")


def parse_recipe(text: str, where: str = "recipe") -> Recipe:
    """A mergekit YAML document -> Recipe (validated against the method's parameters)."""
    raw = load_yaml(text, where, error=MergeError)
    if not isinstance(raw, dict):
        raise MergeError(f"{where}: a merge recipe is a YAML mapping with merge_method and models or slices")
    for key, why in UNSUPPORTED.items():
        if key in raw:
            raise MergeError(f"{where}: field {key!r} is not supported ({why})")
    _keys(raw, TOP_KEYS, where)
    if "merge_method" not in raw:
        raise MergeError(f"{where}: missing merge_method (e.g. linear, slerp, ties, dare_ties, model_stock)")
    method = get_method(str(raw["merge_method"]))
    if ("models" in raw) == ("slices" in raw):
        raise MergeError(f"{where}: give exactly one of 'models' or 'slices'")
    base = _model_ref(raw["base_model"], f"{where}.base_model") if raw.get("base_model") else None
    tok = raw.get("tokenizer_source")
    if tok == "union":
        raise MergeError(f"{where}: tokenizer_source 'union' (vocabulary union) is not supported; the models must "
                         "share one tokenizer (use 'base' or omit it)")
    tok_ref = None if tok in (None, "base") else _model_ref(tok, f"{where}.tokenizer_source")
    recipe = Recipe(method.name, [], base, _params(raw.get("parameters"), where), raw.get("dtype"),
                    raw.get("out_dtype"), tok_ref, text, from_models="models" in raw)
    if "models" in raw:
        entries = raw["models"]
        if not isinstance(entries, list) or not entries:
            raise MergeError(f"{where}.models must be a non-empty list")
        sources = []
        for i, m in enumerate(entries):
            w = f"{where}.models[{i}]"
            if not isinstance(m, dict):
                m = {"model": m}
            _keys(m, {"model", "parameters"}, w)
            sources.append(Source(_model_ref(m.get("model"), w), None, _params(m.get("parameters"), w)))
        if base and base not in [s.model for s in sources]:
            sources.append(Source(base))  # mergekit adds an unlisted base as an input
        recipe.slices = [Slice(sources)]
    else:
        entries = raw["slices"]
        if not isinstance(entries, list) or not entries:
            raise MergeError(f"{where}.slices must be a non-empty list")
        for i, s in enumerate(entries):
            w = f"{where}.slices[{i}]"
            if not isinstance(s, dict) or "sources" not in s:
                raise MergeError(f"{w}: a slice is a mapping with 'sources'")
            _keys(s, {"sources", "base_model", "parameters"}, w)
            sources = []
            for j, src in enumerate(s["sources"] or []):
                ws = f"{w}.sources[{j}]"
                if not isinstance(src, dict):
                    raise MergeError(f"{ws}: a source is a mapping with 'model' and 'layer_range'")
                _keys(src, {"model", "layer_range", "parameters"}, ws)
                lr = src.get("layer_range")
                ok = isinstance(lr, list) and len(lr) == 2 and all(isinstance(x, int) for x in lr)
                if not (ok and lr[0] < lr[1]):
                    raise MergeError(f"{ws}.layer_range must be [start, end) with start < end, got {lr!r}")
                sources.append(Source(_model_ref(src.get("model"), ws), (lr[0], lr[1]),
                                      _params(src.get("parameters"), ws)))
            if not sources:
                raise MergeError(f"{w}: no sources")
            lengths = {b - a for a, b in (src.layer_range for src in sources)}
            if len(lengths) != 1:
                raise MergeError(f"{w}: every source of a slice must span the same number of layers, got "
                                 f"{[src.layer_range for src in sources]}")
            sb = _model_ref(s["base_model"], f"{w}.base_model") if s.get("base_model") else None
            recipe.slices.append(Slice(sources, sb, _params(s.get("parameters"), w)))
    _check(recipe, method, where)
    return recipe


def read_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise MergeError(f"{path}: no such recipe file")
    return parse_recipe(path.read_text(), str(path))


def _check(recipe: Recipe, method: Method, where: str) -> None:
    """Structural checks before any tensor is read: base presence, input counts, parameter names."""
    known = {p.name for p in method.params}
    scopes = [recipe.parameters] + [s.parameters for s in recipe.slices] + \
             [src.parameters for s in recipe.slices for src in s.sources]
    for scope in scopes:
        unknown = sorted(set(scope) - known)
        if unknown:
            raise MergeError(f"{where}: parameter(s) {unknown} are not used by {method.name}; it takes "
                             f"{sorted(known) or 'none'}")
    for i, s in enumerate(recipe.slices):
        base = s.base_model or recipe.base_model
        names = [src.model for src in s.sources]
        has_base = base is not None and base in names
        if method.base == "required" and not has_base:
            raise MergeError(f"{where}: {method.name} needs a base_model (the model the task vectors are taken "
                             f"from){'' if base is None else f'; {base!r} is not among the inputs of slice {i}'}")
        n = len(names)
        if n < method.min_inputs or (method.max_inputs is not None and n > method.max_inputs):
            want = (f"exactly {method.min_inputs}" if method.min_inputs == method.max_inputs else
                    f"at least {method.min_inputs}" if method.max_inputs is None else f"at most {method.max_inputs}")
            raise MergeError(f"{where}: {method.name} takes {want} input model(s) (base included), got {n} in "
                             f"slice {i}: {names}")


# ---- parameter values --------------------------------------------------------------------------------

def evaluate(setting: Any, tensor: str, t: float) -> Any:
    """A parameter setting's value for one tensor at layer fraction t (None when no filter matches)."""
    if isinstance(setting, dict):
        setting = [setting]
    if isinstance(setting, (bool, int, float, str)):
        return setting
    if isinstance(setting, list):
        if not setting:
            return None
        if all(isinstance(e, (bool, int, float, str)) for e in setting):
            if not all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in setting):
                return setting[int(t * (len(setting) - 1))]
            x = t * (len(setting) - 1)
            i0 = int(x)
            i1 = min(len(setting) - 1, i0 + 1)
            return (1 - (x - i0)) * setting[i0] + (x - i0) * setting[i1]
        for cond in setting:
            if not isinstance(cond, dict) or "value" not in cond:
                raise MergeError(f"parameter entry {cond!r}: a filtered value is {{filter: ..., value: ...}}")
            f = cond.get("filter")
            if f is None or f == "*" or (tensor and f in tensor):
                return evaluate(cond["value"], tensor, t)
        return None
    raise MergeError(f"parameter value {setting!r} is neither a number, a list nor a filter mapping")


def resolve(param: Param, scopes: list[dict[str, Any]], tensor: str, t: float, who: str) -> Any:
    """The first scope (highest precedence first) that sets `param` for `tensor`, else its default."""
    for scope in scopes:
        if param.name in scope:
            value = evaluate(scope[param.name], tensor, t)
            if value is not None:
                return param.coerce(value, f"{who}, tensor {tensor}")
    if param.required:
        raise MergeError(f"{who}: parameter {param.name!r} is required for tensor {tensor!r}; set it in the "
                         "model's parameters (or globally under parameters:)")
    return param.default
