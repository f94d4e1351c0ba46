"""lm-eval task YAMLs as pocketlm tasks: lm-evaluation-harness's own schema, read as data.

``pocketlm eval MODEL --tasks my_task.yaml`` accepts a task written for lm-eval (0.4.x):
``include:`` chains, ``dataset_path: json`` with local ``dataset_kwargs.data_files``, the split keys,
Jinja ``doc_to_text``/``doc_to_choice``/``doc_to_target``/``description``, ``fewshot_config``
(``sampler``, ``split``, ``samples``, delimiters), ``metric_list``, ``filter_list``,
``generation_kwargs``, ``num_fewshot`` and ``output_type``. Every field keeps lm-eval's meaning,
down to the few-shot sampling rule, so scores match lm-eval's on the same model and files.

``!function module.name`` would import and run Python from the task's folder; pocketlm never does.
It is accepted only where pocketlm has the function built in: the module file next to the YAML must
be byte-identical to one of the lm-eval files below (checked by SHA-256, read as bytes, never
imported), or the tag names a built-in directly (``!function pocketlm.hellaswag_process_docs``).
Anything else is refused with an error naming the file.
"""

from __future__ import annotations

import ast
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from .processors import hellaswag as hellaswag_doc
from .sources import DataError, confine
from .spec import OUTPUT_TYPES, TASKS_DIR, TaskSpec, TaskSpecError
from .templates import TemplateError, render
from pocketlm.utils import load_yaml

LM_EVAL_KEYS = {"dataset_path", "dataset_kwargs", "doc_to_text", "doc_to_target", "doc_to_choice", "include",
                "test_split", "validation_split", "training_split", "fewshot_split", "metric_list", "filter_list",
                "generation_kwargs", "fewshot_config"}
MAX_YAML_BYTES = 1 << 20   # a task file is a page of text; refuse anything larger before parsing
MAX_INCLUDES = 16


@dataclass(frozen=True)
class FunctionRef:
    """A ``!function module.name`` tag: where it was written; resolved only to a built-in."""

    name: str
    base_dir: Path
    file: Path


# ---------------------------------------------------------------- built-ins for lm-eval's !function hooks

def hellaswag_process_docs(docs: list[dict]) -> list[dict]:
    """lm-eval hellaswag ``utils.process_docs``: adds query / choices / gold to each record."""
    out = []
    for d in docs:
        p = hellaswag_doc(d)
        out.append({**d, "query": p["query"], "choices": p["choices"], "gold": p["label"]})
    return out


def winogrande_doc_to_text(doc: dict) -> int:
    """The index of the right filling (answer "1" or "2")."""
    return {"1": 0, "2": 1}[doc["answer"]]


def winogrande_doc_to_target(doc: dict) -> str:
    """The sentence after the blank, stripped."""
    return doc["sentence"][doc["sentence"].index("_") + 1:].strip()


def winogrande_doc_to_choice(doc: dict) -> list[str]:
    """The sentence up to the blank, completed by each option."""
    head = doc["sentence"][:doc["sentence"].index("_")]
    return [head + doc["option1"], head + doc["option2"]]


MC2 = "mc2"  # truthfulqa's process_results_mc2: probability mass on the true answers = pocketlm's mc2 metric

BUILTINS: dict[str, Any] = {
    "pocketlm.hellaswag_process_docs": hellaswag_process_docs,
    "pocketlm.winogrande_doc_to_text": winogrande_doc_to_text,
    "pocketlm.winogrande_doc_to_target": winogrande_doc_to_target,
    "pocketlm.winogrande_doc_to_choice": winogrande_doc_to_choice,
    "pocketlm.truthfulqa_mc2": MC2,
}
# lm-eval 0.4.13 task modules pocketlm implements: sha256 of the file -> (its path in lm_eval/tasks, functions)
KNOWN_MODULES: dict[str, tuple[str, dict[str, str]]] = {
    "07d23b60b28f2a4f658dcf8440623a63fe6644854ce9b846a114dde980dc1214":
        ("hellaswag/utils.py", {"process_docs": "pocketlm.hellaswag_process_docs"}),
    "e55327629264a98f1d383fda24645b6779afb53fa0bce2150042b9416b1ae006":
        ("winogrande/preprocess_winogrande.py", {"doc_to_text": "pocketlm.winogrande_doc_to_text",
                                                 "doc_to_target": "pocketlm.winogrande_doc_to_target",
                                                 "doc_to_choice": "pocketlm.winogrande_doc_to_choice"}),
    "d3c827d1e2cd442a1e4738b527a18effd48cbb2aed478c12a652311b5ea4dbc8":
        ("truthfulqa/utils.py", {"process_results_mc2": "pocketlm.truthfulqa_mc2"}),
}


def _known_list() -> str:
    names = [f"{path[:-3].replace('/', '.')}.{fn}" for path, fns in KNOWN_MODULES.values() for fn in fns]
    return ", ".join(names)


def resolve_function(ref: FunctionRef) -> Any:
    """The pocketlm built-in a ``!function`` tag stands for, or a TaskSpecError (nothing is imported)."""
    if ref.name in BUILTINS:
        return BUILTINS[ref.name]
    module, _, fn = ref.name.rpartition(".")
    refuse = (f"task file {ref.file}: '!function {ref.name}' would run Python code from the task folder, and "
              "pocketlm never runs code from a task file.")
    if not module:
        raise TaskSpecError(f"{refuse} Built-ins: {', '.join(BUILTINS)}")
    source = ref.base_dir / f"{module.replace('.', '/')}.py"
    if not source.is_file():
        raise TaskSpecError(f"{refuse} {source} does not exist either. pocketlm implements these lm-eval 0.4.13 "
                            f"hooks (matched by file content): {_known_list()}; or name a built-in: "
                            f"{', '.join(BUILTINS)}")
    known = KNOWN_MODULES.get(hashlib.sha256(source.read_bytes()).hexdigest())
    if known is None or fn not in known[1]:
        raise TaskSpecError(f"{refuse} {source} is not a module pocketlm knows (it implements these lm-eval 0.4.13 "
                            f"hooks, matched by file content: {_known_list()}). Express the step as a Jinja "
                            "template, or preprocess the data files")
    return BUILTINS[known[1][fn]]


# ---------------------------------------------------------------- reading (include chains, !function as data)

def _loader(path: Path) -> type[yaml.SafeLoader]:
    class Loader(yaml.SafeLoader):
        pass

    def function(loader: yaml.SafeLoader, node: yaml.Node) -> FunctionRef:
        return FunctionRef(str(loader.construct_scalar(node)), path.parent, path)  # type: ignore[arg-type]

    Loader.add_constructor("!function", function)
    return Loader


def _parse(path: Path) -> Any:
    if not path.is_file():
        raise TaskSpecError(f"task file {path} does not exist")
    data = path.read_bytes()
    if len(data) > MAX_YAML_BYTES:
        raise TaskSpecError(f"task file {path} is {len(data)} bytes; a task file is at most {MAX_YAML_BYTES}")
    # a SafeLoader plus a data-only tag; aliases bounded (a "billion laughs" file is refused, not expanded)
    return load_yaml(data, f"task file {path}", _loader(path), TaskSpecError)


def read_task_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> Any:
    """A task YAML with lm-eval's ``include:`` resolved (included files first, local keys win)."""
    path = Path(path).expanduser().resolve()
    if path in _seen:
        raise TaskSpecError(f"task file {path}: include cycle ({' -> '.join(map(str, _seen + (path,)))})")
    if len(_seen) >= MAX_INCLUDES:
        raise TaskSpecError(f"task file {path}: more than {MAX_INCLUDES} nested includes")
    cfg = _parse(path)
    if not isinstance(cfg, dict) or "include" not in cfg:
        return cfg
    includes = cfg.pop("include")
    merged: dict = {}
    for inc in includes if isinstance(includes, list) else [includes]:
        if not isinstance(inc, str):
            raise TaskSpecError(f"task file {path}: include entries are file paths, got {inc!r}")
        inc_cfg = read_task_yaml(path.parent / inc, _seen + (path,))
        if not isinstance(inc_cfg, dict):
            raise TaskSpecError(f"task file {path}: included {inc} is not a mapping")
        inc_cfg.pop("task_list", None)
        merged.update(inc_cfg)
    merged.update(cfg)
    return merged


def is_lm_eval_config(raw: Any) -> bool:
    return isinstance(raw, dict) and bool(LM_EVAL_KEYS & set(raw))


# ---------------------------------------------------------------- lm-eval's doc_to_* rules

def _resolved(value: Any) -> Any:
    return resolve_function(value) if isinstance(value, FunctionRef) else value


def _doc_to_text(source: Any, doc: dict, has_choices: bool) -> Any:
    if isinstance(source, int) or callable(source):
        return source if isinstance(source, int) else source(doc)
    if source in doc:
        return doc[source]
    text = render(source, doc)
    return ast.literal_eval(text) if text.isdigit() and has_choices else text


def _doc_to_target(source: Any, doc: dict, has_choices: bool) -> Any:
    if isinstance(source, (int, list)) or callable(source):
        return source(doc) if callable(source) else source
    if source in doc:
        return doc[source]
    text = render(source, doc)
    if text.isdigit() and has_choices:
        return ast.literal_eval(text)
    if len(text) >= 2 and text[0] == "[" and text[-1] == "]":
        try:
            return ast.literal_eval(text)
        except (SyntaxError, ValueError):
            return text
    return text


def _doc_to_choice(source: Any, doc: dict) -> list:
    if isinstance(source, list):
        return source
    if isinstance(source, dict):
        return list(source.values())
    if callable(source):
        return source(doc)
    if source in doc:
        return doc[source]
    rendered = render(source, doc)
    try:
        return ast.literal_eval(rendered)
    except (SyntaxError, ValueError) as e:
        raise DataError(f"doc_to_choice {source!r} rendered {rendered[:80]!r}, which is not a list literal") from e


def _check_field(name: str, value: Any, where: str) -> Any:
    value = _resolved(value)
    if value is not None and not isinstance(value, (str, int, list, dict)) and not callable(value):
        raise TaskSpecError(f"{where}: {name} must be a template, a field name, an index or a list, got {value!r}")
    return value


# ---------------------------------------------------------------- data files

def _data_files(cfg: dict, path: Path, where: str) -> dict[str, list[str]]:
    if cfg.get("custom_dataset") is not None:
        raise TaskSpecError(f"{where}: custom_dataset is Python code; pocketlm reads local files only")
    if cfg.get("dataset_path") != "json":
        raise TaskSpecError(f"{where}: dataset_path is {cfg.get('dataset_path')!r}; pocketlm reads local files only. "
                            "Set dataset_path: json and dataset_kwargs: {data_files: {SPLIT: FILE.jsonl, ...}} "
                            "(lm-eval reads that form too)")
    kwargs = cfg.get("dataset_kwargs") or {}
    files = kwargs.get("data_files")
    if not files:
        raise TaskSpecError(f"{where}: dataset_path json needs dataset_kwargs.data_files (a file, or a mapping of "
                            "split name to file)")
    if isinstance(files, (str, list)):
        files = {"train": files}  # Hugging Face's rule for a bare file list
    out = {}
    for split, names in files.items():
        names = [names] if isinstance(names, str) else names
        resolved = []
        for n in names:
            p = Path(n).expanduser()
            if not p.is_absolute():
                p = path.parent / p if (path.parent / p).exists() else Path.cwd() / p
            resolved.append(str(confine(p, [path.parent, Path.cwd()], where)))
        out[str(split)] = resolved
    return out


def _split(files: dict[str, list[str]], name: str, key: str, field: str | None, process: Any, where: str) -> dict:
    if name not in files:
        raise TaskSpecError(f"{where}: {key} is {name!r} but dataset_kwargs.data_files has no {name!r} split "
                            f"(it has {sorted(files)}); add the file or change {key}")
    split = {"path": files[name][0] if len(files[name]) == 1 else files[name], "format": "hf_json",
             "process": process, "split": name}
    if field:
        split["field"] = field
    return split


# ---------------------------------------------------------------- config -> TaskSpec

UNSUPPORTED = ("use_prompt", "doc_to_image", "doc_to_audio", "gen_prefix", "task_list", "group")
METRICS = {"multiple_choice": {"acc", "acc_norm"}, "generate_until": {"exact_match"},
           "loglikelihood": {"acc", "perplexity"},
           "loglikelihood_rolling": {"word_perplexity", "byte_perplexity", "bits_per_byte"}}
DEFAULT_METRICS = {"multiple_choice": ["acc", "acc_norm"], "generate_until": ["exact_match"],
                   "loglikelihood": ["perplexity", "acc"],
                   "loglikelihood_rolling": ["word_perplexity", "byte_perplexity", "bits_per_byte"]}


def _metrics(cfg: dict, otype: str, mc2: bool, where: str) -> tuple[list[str], dict]:
    entries = cfg.get("metric_list") or [{"metric": m} for m in DEFAULT_METRICS[otype]]
    names, options = [], {}
    for entry in entries:
        if not isinstance(entry, dict) or "metric" not in entry:
            raise TaskSpecError(f"{where}: each metric_list entry needs a 'metric' key, got {entry!r}")
        name = entry["metric"]
        if isinstance(name, FunctionRef) or entry.get("hf_evaluate"):
            raise TaskSpecError(f"{where}: metric {name!r} runs external code; use one of {sorted(METRICS[otype])}")
        if mc2:
            names.append("mc2")  # lm-eval reports this probability mass under the name 'acc'
            continue
        if name not in METRICS[otype]:
            raise TaskSpecError(f"{where}: metric {name!r} is not supported for {otype} (supported: "
                                f"{sorted(METRICS[otype])})")
        names.append(name)
        if name == "exact_match":
            if entry.get("ignore_numbers"):
                raise TaskSpecError(f"{where}: exact_match ignore_numbers is not supported")
            options = {k: entry[k] for k in ("ignore_case", "ignore_punctuation", "regexes_to_ignore") if k in entry}
    return list(dict.fromkeys(names)), options


def _filters(cfg: dict, where: str) -> list[dict]:
    out = []
    for f in cfg.get("filter_list") or [{"name": "none", "filter": [{"function": "take_first"}]}]:
        steps = f.get("filter") or []
        entry: dict = {"name": f.get("name", "none")}
        for step in steps:
            fn = step.get("function")
            if fn == "regex":
                entry.update(regex=step.get("regex_pattern", r"#### (\-?[0-9\.\,]+)"),
                             group_select=int(step.get("group_select", 0)), fallback=step.get("fallback", "[invalid]"))
            elif fn != "take_first":
                raise TaskSpecError(f"{where}: filter function {fn!r} in {entry['name']!r} is not supported "
                                    "(supported: regex, take_first)")
        out.append(entry)
    return out


def _generation(cfg: dict, where: str) -> dict:
    kw = dict(cfg.get("generation_kwargs") or {})
    if kw.get("do_sample") or float(kw.get("temperature", 0.0) or 0.0) > 0:
        raise TaskSpecError(f"{where}: pocketlm generates greedily; set do_sample: false and temperature: 0")
    extra = set(kw) - {"until", "max_gen_toks", "do_sample", "temperature", "top_p", "top_k"}
    if extra:
        raise TaskSpecError(f"{where}: generation_kwargs {sorted(extra)} are not supported "
                            "(supported: until, max_gen_toks, do_sample: false, temperature: 0)")
    until = kw.get("until", [cfg.get("fewshot_delimiter", "\n\n")])
    return {"until": [until] if isinstance(until, str) else list(until),
            "max_gen_toks": int(kw.get("max_gen_toks", 256))}


def spec_from_lm_eval(cfg: dict, path: str | Path) -> TaskSpec:
    """Translate an lm-eval task config (includes already merged) into a TaskSpec with lm-eval's semantics."""
    path = Path(path)
    task = cfg.get("task") or path.stem
    where = f"lm-eval task file {path} ({task})"
    if not isinstance(task, str):
        raise TaskSpecError(f"{where}: task must be one name (a group or task list is not a task)")
    bad = [k for k in UNSUPPORTED if cfg.get(k)]
    if bad or int(cfg.get("repeats", 1) or 1) != 1:
        raise TaskSpecError(f"{where}: {bad or ['repeats > 1']} not supported by pocketlm")
    otype = cfg.get("output_type", "generate_until")
    if otype not in OUTPUT_TYPES:
        raise TaskSpecError(f"{where}: output_type {otype!r} is not one of {OUTPUT_TYPES}")
    files = _data_files(cfg, path, where)
    field = (cfg.get("dataset_kwargs") or {}).get("field")
    fs_cfg = dict(cfg.get("fewshot_config") or {})
    unknown_fs = set(fs_cfg) - {"sampler", "split", "samples", "process_docs", "target_delimiter", "fewshot_delimiter",
                                "doc_to_target"}
    if unknown_fs:
        raise TaskSpecError(f"{where}: fewshot_config keys {sorted(unknown_fs)} are not supported")
    process = _resolved(cfg.get("process_docs"))
    fs_process = _resolved(fs_cfg.get("process_docs", cfg.get("process_docs")))
    for name, fn in (("process_docs", process), ("fewshot_config.process_docs", fs_process)):
        if fn is not None and not callable(fn):
            raise TaskSpecError(f"{where}: {name} must be a !function naming a built-in")
    mc2 = _resolved(cfg.get("process_results")) == MC2
    if cfg.get("process_results") is not None and not mc2:
        raise TaskSpecError(f"{where}: process_results {cfg['process_results']!r} is not supported")

    test, valid, train = cfg.get("test_split"), cfg.get("validation_split"), cfg.get("training_split")
    eval_name, eval_key = (test, "test_split") if test is not None else (valid, "validation_split")
    if eval_name is None:
        raise TaskSpecError(f"{where}: neither test_split nor validation_split is set; lm-eval scores one of them")
    eval_split = _split(files, eval_name, eval_key, field, process, where)
    fs_split_name = fs_cfg.get("split", cfg.get("fewshot_split"))
    fewshot: Any
    samples = _resolved(fs_cfg.get("samples"))
    if fs_split_name is not None:
        pool_name, pool_key = fs_split_name, "fewshot_split"
    elif samples is not None:
        pool_name = pool_key = None
    else:  # lm-eval's rule: train, else validation, else test
        pool_name, pool_key = next((n, k) for n, k in ((train, "training_split"), (valid, "validation_split"),
                                                       (test, "test_split")) if n is not None)
    if cfg.get("num_fewshot") == 0:  # lm-eval never overrides an explicit 0: zero-shot only
        fewshot = None
    elif pool_name is None:
        if not isinstance(samples, list):
            raise TaskSpecError(f"{where}: fewshot_config.samples must be a list of records")
        fewshot = {"records": samples, "process": fs_process}
    elif pool_name == eval_name and fs_process is process:
        fewshot = "eval"
    elif pool_name in files:
        fewshot = _split(files, pool_name, pool_key, field, fs_process, where)
    else:  # lm-eval needs it at start-up; pocketlm only when demonstrations are drawn
        fewshot = {"missing": f"{where}: {pool_key} is {pool_name!r} but dataset_kwargs.data_files has no "
                              f"{pool_name!r} split (it has {sorted(files)}); add the file or evaluate 0-shot"}
    sampler = fs_cfg.get("sampler", "default")
    if sampler not in ("default", "first_n"):
        raise TaskSpecError(f"{where}: fewshot_config.sampler {sampler!r} is not supported (default, first_n)")

    text_src = _check_field("doc_to_text", cfg.get("doc_to_text"), where)
    target_src = _check_field("doc_to_target", cfg.get("doc_to_target"), where)
    choice_src = _check_field("doc_to_choice", cfg.get("doc_to_choice"), where)
    fs_target_src = _check_field("fewshot_config.doc_to_target", fs_cfg.get("doc_to_target", target_src), where)
    has_choices = choice_src is not None
    if text_src is None or (target_src is None and otype != "loglikelihood_rolling"):
        raise TaskSpecError(f"{where}: doc_to_text and doc_to_target are required")
    if otype == "multiple_choice" and not has_choices:
        raise TaskSpecError(f"{where}: multiple_choice needs doc_to_choice")

    def text(doc: dict) -> Any:
        return _doc_to_text(text_src, doc, has_choices)

    def target(doc: dict) -> Any:
        return _doc_to_target(target_src, doc, has_choices)

    def choices(doc: dict) -> list:
        return _doc_to_choice(choice_src, doc)

    multiple_input = otype == "multiple_choice" and isinstance(_first_text(eval_split, text, task, [path.parent, Path.cwd()]), int)

    def demo_answer(doc: dict) -> str:
        a = _doc_to_target(fs_target_src, doc, has_choices)
        c = choices(doc) if has_choices and not multiple_input else None
        if a is None or a == "":
            return ""
        answer = c[a] if c and isinstance(a, int) else a[0] if isinstance(a, list) else a
        if not isinstance(answer, str):
            raise DataError(f"task {task}: a demonstration's answer is {answer!r}, not a string")
        return answer

    def gold(doc: dict) -> int:
        g = text(doc) if multiple_input else target(doc)
        if isinstance(g, list):
            raise DataError(f"task {task}: doc_to_target gave several targets {g!r}; pocketlm scores one gold answer")
        if isinstance(g, str):
            options = choices(doc)
            if g not in options:
                raise DataError(f"task {task}: gold answer {g!r} is not one of the choices {options!r}")
            return options.index(g)
        return g

    def generation_target(doc: dict) -> str:
        g = target(doc)
        return str(choices(doc)[g]) if has_choices else str(g)

    description = cfg.get("description") or ""
    spec = TaskSpec(task=task, output_type=otype, eval=eval_split, metrics=[], group=_group(task), fewshot=fewshot,
                    fewshot_sampler="first_n" if sampler == "first_n" else "random",
                    fewshot_exclude_scored=fs_split_name == test,
                    num_fewshot=int(cfg.get("num_fewshot") or 0),
                    description=(lambda doc: doc[description] if description in doc else render(description, doc))
                    if description else "",
                    target_delimiter=cfg.get("target_delimiter", " "),
                    fewshot_target_delimiter=fs_cfg.get("target_delimiter", cfg.get("target_delimiter", " ")),
                    fewshot_delimiter=fs_cfg.get("fewshot_delimiter", cfg.get("fewshot_delimiter", "\n\n")),
                    fewshot_target=demo_answer, about=f"lm-eval task YAML {path}", path=path)
    spec.metrics, exact = _metrics(cfg, otype, mc2, where)
    if otype == "multiple_choice":
        if multiple_input:
            spec.contexts, spec.continuation, spec.label = choices, lambda d: str(target(d)), gold
        else:
            spec.text, spec.choices = text, choices
            if mc2:
                spec.labels = lambda d: list(d["mc2_targets"]["labels"])
            else:
                spec.label = gold
    elif otype == "generate_until":
        spec.text, spec.target = text, generation_target
        spec.generation = _generation(cfg, where)
        spec.answer = {**exact, "filters": _filters(cfg, where)}
    elif otype == "loglikelihood":
        spec.text, spec.target = text, lambda d: str(target(d))
    else:
        spec.target = lambda d: str(target(d))
    return spec


def _first_text(split: dict, text: Callable[[dict], Any], task: str, roots: list[Path]) -> Any:
    """doc_to_text of the first scored document (lm-eval decides 'multiple input' the same way)."""
    from .prompts import _process
    from .sources import load_split
    docs = _process(load_split(split, Path("."), task, roots), split, task)
    if not docs:
        raise DataError(f"task {task}: split {split['split']!r} ({split['path']}) holds no documents")
    try:
        return text(docs[0])
    except (TemplateError, KeyError, TypeError, ValueError, IndexError, SyntaxError) as e:
        raise DataError(f"task {task}: doc_to_text failed on the first document of {split['path']}: {e}") from e


def _group(task: str) -> str:
    builtin = TASKS_DIR / f"{re.sub(r'^mmlu_.*', 'mmlu', task)}.yaml"
    if builtin.is_file():
        m = re.search(r"^group:\s*(\w+)", builtin.read_text(), flags=re.M)
        if m:
            return m.group(1)
    return "other"
