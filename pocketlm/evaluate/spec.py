"""Task specs: one YAML (or JSON) file per benchmark, so a new benchmark needs no code.

A spec names its documents (``eval`` and optional ``fewshot`` splits: a local file + format, or
inline ``records``; ``fields`` map raw records to the document), how a document becomes a prompt
(``text``/``description`` templates; ``choices``/``contexts``/``continuation``/``label``/``labels``/
``target`` expressions) and its ``metrics``. See docs/evaluate.md for the full reference.
A task YAML written for lm-eval is recognised by its keys and read by ``lm_eval_yaml`` into the
same TaskSpec.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .processors import PROCESSORS
from .sources import READERS

TASKS_DIR = Path(__file__).parent / "tasks"
OUTPUT_TYPES = ("multiple_choice", "generate_until", "loglikelihood", "loglikelihood_rolling")
GROUPS = ("commonsense", "problem_solving", "math", "language_modeling", "other")
METRICS = {
    "multiple_choice": {"acc", "acc_norm", "mc2"},
    "generate_until": {"exact_match"},
    "loglikelihood": {"acc", "perplexity"},
    "loglikelihood_rolling": {"word_perplexity", "byte_perplexity", "bits_per_byte", "token_perplexity"},
}


class TaskSpecError(ValueError):
    """A task spec is missing fields, names an unknown task, or is otherwise unusable."""


@dataclass
class TaskSpec:
    task: str
    output_type: str
    eval: dict
    metrics: list[str]
    group: str = "other"
    fewshot: dict | str | None = None            # a split, "eval" (the scored split), or None (0-shot only)
    fewshot_sampler: str = "random"          # random (lm-eval's seeded sampler) | first_n
    fewshot_group_by: str | None = None      # only draw demos whose field equals the scored doc's
    fewshot_exclude_scored: bool | None = None  # draw k+1, drop the scored doc (default: fewshot is "eval")
    num_fewshot: int = 0                     # the task's default shot count (lm-eval's num_fewshot)
    description: str = ""
    text: str | None = None
    contexts: str | None = None
    choices: Any = None
    continuation: str | None = None
    label: Any = None
    labels: str | None = None
    target: str | None = None
    fewshot_target: str | None = None
    target_delimiter: str = " "
    fewshot_target_delimiter: str | None = None  # a demonstration's question|answer (default: target_delimiter)
    fewshot_delimiter: str = "\n\n"
    generation: dict = field(default_factory=dict)
    answer: dict = field(default_factory=dict)
    about: str = ""
    path: Path | None = None

    @property
    def multiple_input(self) -> bool:
        return self.contexts is not None


def _require(spec: dict, keys: list[str], where: str) -> None:
    missing = [k for k in keys if spec.get(k) in (None, "")]
    if missing:
        raise TaskSpecError(f"{where}: missing required field(s) {missing}")


def _check_split(split: Any, name: str, where: str) -> None:
    if not isinstance(split, dict):
        raise TaskSpecError(f"{where}: '{name}' must be a mapping with 'path' and 'format' (or 'records')")
    if "records" not in split:
        _require(split, ["path"], f"{where} split '{name}'")
        fmt = split.get("format", "jsonl")
        if fmt not in READERS:
            raise TaskSpecError(f"{where} split '{name}': unknown format {fmt!r}; use one of {sorted(READERS)}")
    if split.get("process") and split["process"] not in PROCESSORS:
        raise TaskSpecError(f"{where} split '{name}': unknown process {split['process']!r}; "
                            f"known: {sorted(PROCESSORS)}")


def spec_from_dict(raw: dict, where: str = "task spec") -> TaskSpec:
    """Validate a raw mapping and build a TaskSpec; errors name the field and the fix."""
    if not isinstance(raw, dict):
        raise TaskSpecError(f"{where}: a task spec must be a mapping, got {type(raw).__name__}")
    _require(raw, ["task", "output_type", "eval", "metrics"], where)
    where = f"{where} ({raw['task']})"
    otype = raw["output_type"]
    if otype not in OUTPUT_TYPES:
        raise TaskSpecError(f"{where}: output_type {otype!r} is not one of {OUTPUT_TYPES}")
    if raw.get("group", "other") not in GROUPS:
        raise TaskSpecError(f"{where}: group {raw['group']!r} is not one of {GROUPS}")
    _check_split(raw["eval"], "eval", where)
    if raw.get("fewshot") not in (None, "eval"):  # "eval": demos drawn from the scored split itself
        _check_split(raw["fewshot"], "fewshot", where)
    metrics = raw["metrics"]
    if not isinstance(metrics, list) or not metrics:
        raise TaskSpecError(f"{where}: 'metrics' must be a non-empty list")
    unknown = set(metrics) - METRICS[otype]
    if unknown:
        raise TaskSpecError(f"{where}: metric(s) {sorted(unknown)} not available for {otype}; "
                            f"choose from {sorted(METRICS[otype])}")
    if otype == "multiple_choice":
        if raw.get("contexts"):
            _require(raw, ["continuation", "label"], where)
        else:
            _require(raw, ["text", "choices"], where)
            if raw.get("label") is None and raw.get("labels") is None:
                raise TaskSpecError(f"{where}: missing required field(s) ['label'] (or 'labels' for MC2)")
    elif otype == "generate_until":
        _require(raw, ["text", "target"], where)
        if not raw.get("answer"):
            raise TaskSpecError(f"{where}: generate_until needs an 'answer' block (how to extract and compare)")
    elif otype == "loglikelihood":
        _require(raw, ["text", "target"], where)
    else:
        _require(raw, ["target"], where)
    if raw.get("fewshot_sampler", "random") not in ("random", "first_n"):
        raise TaskSpecError(f"{where}: fewshot_sampler must be 'random' or 'first_n'")
    if raw.get("fewshot_exclude_scored") not in (None, True, False):
        raise TaskSpecError(f"{where}: fewshot_exclude_scored must be true or false")
    k = raw.get("num_fewshot", 0)
    if isinstance(k, bool) or not isinstance(k, int) or k < 0 or (k and raw.get("fewshot") is None):
        raise TaskSpecError(f"{where}: num_fewshot must be an integer >= 0 (and 0 when there is no few-shot split)")
    known = set(TaskSpec.__dataclass_fields__) - {"path"}
    extra = set(raw) - known
    if extra:
        raise TaskSpecError(f"{where}: unknown field(s) {sorted(extra)}; known fields: {sorted(known)}")
    return TaskSpec(**raw)


def load_spec_file(path: str | Path) -> TaskSpec:
    """A pocketlm spec file, or an lm-eval task YAML (recognised by its keys; see lm_eval_yaml)."""
    from .lm_eval_yaml import is_lm_eval_config, read_task_yaml, spec_from_lm_eval

    path = Path(path)
    if not path.is_file():
        raise TaskSpecError(f"task file {path} does not exist")
    if path.suffix == ".json":
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise TaskSpecError(f"task file {path}: cannot parse ({e})") from e
    else:
        raw = read_task_yaml(path)
    if is_lm_eval_config(raw):
        return spec_from_lm_eval(raw, path)
    if _has_function_tag(raw):
        raise TaskSpecError(f"task file {path}: '!function' runs Python code and pocketlm never runs code from a task "
                            "file; use a template, or a named 'process:' step (known: "
                            f"{sorted(PROCESSORS)})")
    spec = spec_from_dict(raw, where=f"task file {path}")
    spec.path = path
    return spec


def _has_function_tag(value: Any, seen: set[int] | None = None) -> bool:
    """Whether a parsed spec holds a ``!function`` tag (each shared YAML alias visited once)."""
    from .lm_eval_yaml import FunctionRef
    seen = set() if seen is None else seen
    if isinstance(value, (dict, list)):
        if id(value) in seen:
            return False
        seen.add(id(value))
        items = value.values() if isinstance(value, dict) else value
        return any(_has_function_tag(v, seen) for v in items)
    return isinstance(value, FunctionRef)


def builtin_tasks() -> list[str]:
    return sorted(p.stem for p in TASKS_DIR.glob("*.yaml"))


def get_spec(name_or_path: str | Path) -> TaskSpec:
    """A built-in task by name (``arc_easy``) or a spec file path (``my_task.yaml``)."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml", ".json") or p.exists():
        return load_spec_file(p)
    builtin = TASKS_DIR / f"{name_or_path}.yaml"
    if not builtin.is_file():
        raise TaskSpecError(f"unknown task {str(name_or_path)!r}; built-in tasks: {', '.join(builtin_tasks())} "
                            "(or pass the path of a .yaml task file)")
    return load_spec_file(builtin)
