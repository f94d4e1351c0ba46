"""Documents -> prompts: few-shot demonstrations and the requests a model is asked to score.

Few-shot demonstrations follow lm-eval's sampler: one ``random.Random(seed)`` walks the scored
documents in order and draws k demonstrations for each. When the spec sets
``fewshot_exclude_scored`` (default: when demonstrations come from the scored split itself), k+1 are
drawn, the scored document is removed and the first k kept. lm-eval does this whenever a task's
``fewshot_split`` equals its ``test_split`` -- both unset included, as in its hellaswag, piqa,
winogrande, boolq and commonsense_qa configs, which draw from train -- so the extra draw shifts the
random stream even when the scored document cannot be among the demonstrations.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .processors import PROCESSORS
from .sources import DataError, load_split
from .spec import TaskSpec, TaskSpecError
from .templates import TemplateError, evaluate, render

BUNDLED_DATA = Path(__file__).parent / "data"


@dataclass
class Example:
    """One scored document: its requests and what counts as correct."""

    doc_id: int
    requests: list[tuple[str, str]]   # (context, continuation); generation: (context, "")
    label: int | None = None          # gold choice
    labels: list[int] | None = None   # MC2: 1 = true answer
    choices: list[str] | None = None  # continuation strings (acc_norm lengths)
    target: str | None = None         # generation gold / loglikelihood continuation
    doc: dict = field(default_factory=dict)


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    """The data root (holding eval/ and text/); a path to its eval/ folder is accepted too."""
    if data_dir is None:
        return BUNDLED_DATA
    d = Path(data_dir)
    if not d.is_dir():
        raise DataError(f"--data-dir {d} is not a folder")
    if not (d / "eval").is_dir() and d.name == "eval":
        return d.parent
    return d


def _process(docs: list[dict], split: dict, task: str) -> list[dict]:
    name = split.get("process")
    if not name:
        return docs
    try:
        if callable(name):  # a list-level built-in (an lm-eval task's process_docs)
            return list(name(docs))
        return [PROCESSORS[name](d) for d in docs]
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"task {task}: process {name!r} failed on a record: {e!r}") from e


def load_docs(spec: TaskSpec, data_dir: Path) -> tuple[list[dict], list[dict] | None]:
    """(eval documents, few-shot documents or None when demos come from the eval split)."""
    roots = [data_dir] + ([spec.path.parent] if spec.path is not None else [])
    if spec.eval.get("format") == "hf_json":  # lm-eval resolves data_files against the working folder too
        roots.append(Path.cwd())
    docs = _process(load_split(spec.eval, data_dir, spec.task, roots), spec.eval, spec.task)
    if not docs:
        raise DataError(f"task {spec.task}: the eval split ({spec.eval.get('path', 'records')}) holds no documents; "
                        "an empty data file would report a score over nothing")
    if spec.fewshot is None or spec.fewshot == "eval":
        return docs, None
    if "missing" in spec.fewshot:  # an lm-eval task whose few-shot split has no file: fine at 0 shots
        return docs, []
    fs = _process(load_split(spec.fewshot, data_dir, spec.task, roots), spec.fewshot, spec.task)
    return docs, fs


def _value(spec: TaskSpec, key: str, doc: dict) -> Any:
    source = getattr(spec, key)
    try:
        return source(doc) if callable(source) else evaluate(source, doc)
    except (TemplateError, TypeError, KeyError, IndexError, AttributeError, ValueError) as e:
        raise DataError(f"task {spec.task}: '{key}' failed on document {_short(doc)}: {e}") from e


def _text(spec: TaskSpec, key: str, doc: dict) -> str:
    source = getattr(spec, key)
    try:
        return source(doc) if callable(source) else render(source, doc)
    except (TemplateError, TypeError, KeyError, IndexError, AttributeError, ValueError) as e:
        raise DataError(f"task {spec.task}: '{key}' failed on document {_short(doc)}: {e}") from e


def _short(doc: dict) -> str:
    s = repr(doc)
    return s if len(s) < 160 else s[:157] + "..."


def _check_label(spec: TaskSpec, label: Any, n: int, doc: dict) -> int:
    if isinstance(label, bool) or not isinstance(label, int):
        if isinstance(label, str) and label.strip().lstrip("-").isdigit():
            label = int(label)
        else:
            raise DataError(f"task {spec.task}: label {label!r} is not an integer index; document {_short(doc)}")
    if not 0 <= label < n:
        raise DataError(f"task {spec.task}: label {label} is out of range for {n} choices; document {_short(doc)}. "
                        "Labels are 0-based indices into the choices")
    return label


def demo_turn(spec: TaskSpec, doc: dict) -> tuple[str, str]:
    """(question, answer) of a document used as a demonstration."""
    if spec.output_type == "multiple_choice":
        if spec.multiple_input:
            contexts = _value(spec, "contexts", doc)
            label = _check_label(spec, _value(spec, "label", doc), len(contexts), doc)
            answer = _text(spec, "fewshot_target", doc) if spec.fewshot_target else _value(spec, "continuation", doc)
            return contexts[label], answer
        if spec.fewshot_target:
            return _text(spec, "text", doc), _text(spec, "fewshot_target", doc)
        choices = _value(spec, "choices", doc)
        label = 0 if spec.label is None else _check_label(spec, _value(spec, "label", doc), len(choices), doc)
        return _text(spec, "text", doc), choices[label]
    answer = _text(spec, "fewshot_target", doc) if spec.fewshot_target else _value(spec, "target", doc)
    question = _text(spec, "text", doc) if spec.text else ""
    return question, str(answer)


def _prefix(spec: TaskSpec, doc: dict, demos: list[dict]) -> str:
    out = _text(spec, "description", doc) if spec.description else ""
    target_delimiter = spec.target_delimiter if spec.fewshot_target_delimiter is None else spec.fewshot_target_delimiter
    for d in demos:
        q, a = demo_turn(spec, d)
        if a is not None and a != "":
            out += q + target_delimiter + a + spec.fewshot_delimiter
        else:
            out += q
    return out


def build_example(spec: TaskSpec, doc_id: int, doc: dict, demos: list[dict]) -> Example:
    prefix = _prefix(spec, doc, demos)
    otype = spec.output_type
    if otype == "multiple_choice":
        if spec.multiple_input:
            contexts = _value(spec, "contexts", doc)
            cont = _value(spec, "continuation", doc)
            label = _check_label(spec, _value(spec, "label", doc), len(contexts), doc)
            reqs = [(prefix + c, spec.target_delimiter + cont) for c in contexts]
            return Example(doc_id, reqs, label=label, choices=list(contexts), doc=doc)
        choices = _value(spec, "choices", doc)
        if not isinstance(choices, list) or not choices:
            raise DataError(f"task {spec.task}: 'choices' gave {choices!r}, expected a non-empty list of strings")
        ctx = prefix + _text(spec, "text", doc)
        reqs = [(ctx, spec.target_delimiter + str(c)) for c in choices]
        if spec.labels is not None:
            labels = [int(x) for x in _value(spec, "labels", doc)]
            if len(labels) != len(choices):
                raise DataError(f"task {spec.task}: {len(labels)} labels for {len(choices)} choices")
            return Example(doc_id, reqs, labels=labels, choices=[str(c) for c in choices], doc=doc)
        label = _check_label(spec, _value(spec, "label", doc), len(choices), doc)
        return Example(doc_id, reqs, label=label, choices=[str(c) for c in choices], doc=doc)
    if otype == "generate_until":
        ctx = prefix + _text(spec, "text", doc)
        return Example(doc_id, [(ctx, "")], target=str(_value(spec, "target", doc)), doc=doc)
    if otype == "loglikelihood":
        ctx = prefix + _text(spec, "text", doc)
        target = str(_value(spec, "target", doc))
        return Example(doc_id, [(ctx, target)], target=target, doc=doc)
    target = str(_value(spec, "target", doc))
    return Example(doc_id, [("", target)], target=target, doc=doc)


def build_examples(spec: TaskSpec, docs: list[dict], fewshot_docs: list[dict] | None, shots: int,
                   limit: int | None = None, seed: int = 1234) -> list[Example]:
    """Examples for the first `limit` documents with `shots` seeded demonstrations each."""
    if shots < 0:
        raise TaskSpecError(f"shots must be >= 0, got {shots}")
    if shots and spec.fewshot is None:
        raise TaskSpecError(f"task {spec.task} has no few-shot split (it is zero-shot only); use --shots 0")
    if shots and isinstance(spec.fewshot, dict) and "missing" in spec.fewshot:
        raise DataError(spec.fewshot["missing"])
    same_split = fewshot_docs is None
    exclude = same_split if spec.fewshot_exclude_scored is None else spec.fewshot_exclude_scored
    pool_all = docs if same_split else fewshot_docs
    rnd = random.Random(seed)
    chosen = docs if limit is None else docs[:limit]
    out = []
    for i, doc in enumerate(chosen):
        demos: list[dict] = []
        if shots:
            pool = pool_all
            if spec.fewshot_group_by:
                key = doc.get(spec.fewshot_group_by)
                pool = [d for d in pool_all if d.get(spec.fewshot_group_by) == key]
            demos = _draw(spec, rnd, pool, doc, shots, exclude)
        out.append(build_example(spec, i, doc, demos))
    return out


def _draw(spec: TaskSpec, rnd: random.Random, pool: list[dict], doc: dict, shots: int, exclude: bool) -> list[dict]:
    """`shots` demonstrations for `doc` by lm-eval's rule (see the module docstring)."""
    if spec.fewshot_sampler == "first_n":
        demos = [d for d in pool if d != doc] if exclude else pool
        if len(demos) < shots:
            raise DataError(f"task {spec.task}: {shots}-shot needs {shots} demonstration documents, "
                            f"the few-shot split has {len(demos)}")
        return demos[:shots]
    need = shots + 1 if exclude else shots
    if len(pool) < need:
        raise DataError(f"task {spec.task}: {shots}-shot needs {need} demonstration documents"
                        f"{' (k+1: the scored one is dropped)' if exclude else ''}, the few-shot split has {len(pool)}")
    demos = rnd.sample(pool, need)
    if exclude:
        demos = [d for d in demos if d != doc][:shots]
        if len(demos) < shots:  # the pool held copies of the scored document: redraw without any of them
            rest = [d for d in pool if d != doc]
            if len(rest) < shots:
                raise DataError(f"task {spec.task}: only {len(rest)} demonstrations besides the scored document "
                                f"for {shots}-shot")
            demos = rnd.sample(rest, shots)
    return demos
