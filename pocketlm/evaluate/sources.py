"""Readers for the local document formats a task spec can name (``format:`` in a split)."""

from __future__ import annotations

import bz2
import csv
import glob
import io
import json
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Callable

from .templates import TemplateError, evaluate


class DataError(ValueError):
    """A task's data file is missing or malformed."""


_ANY_PATH: ContextVar[bool] = ContextVar("pocketlm_any_data_path", default=False)


@contextmanager
def any_data_path(allowed: bool = True):
    """Within this block task specs may name data files anywhere (`eval --allow-any-data-path`); an enclosing
    block that allowed it stays in force."""
    token = _ANY_PATH.set(allowed or _ANY_PATH.get())
    try:
        yield
    finally:
        _ANY_PATH.reset(token)


def confine(path: Path, roots: list[Path], task: str) -> Path:
    """`path` if it lies inside one of `roots` (after resolving `..` and links): a task spec is input, and
    may not read /etc/hostname or ../../secrets unless the user allowed it with --allow-any-data-path."""
    if _ANY_PATH.get():
        return path
    real = path.resolve()
    if any(real.is_relative_to(r.resolve()) for r in roots):
        return path
    raise DataError(f"task {task}: data file {path} is outside the data folder ({', '.join(map(str, roots))}); "
                    "a task spec may only read files there. Move the file, pass --data-dir, or pass "
                    "--allow-any-data-path if you trust this spec")


def _open_text(path: Path) -> str:
    if path.suffix == ".bz2":
        return bz2.decompress(path.read_bytes()).decode("utf-8")
    return path.read_text(encoding="utf-8-sig")


def _read_jsonl(path: Path, spec: dict) -> list[dict]:
    out = []
    for n, line in enumerate(_open_text(path).splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: not valid JSON ({e.msg}); format 'jsonl' needs one object a line") from e
    return out


def _read_json(path: Path, spec: dict) -> list[dict]:
    data = json.loads(_open_text(path))
    if isinstance(data, dict) and spec.get("key"):
        data = data[spec["key"]]
    if not isinstance(data, list):
        raise DataError(f"{path}: format 'json' needs a list of objects (or set 'key:' to the list's key)")
    return data


def _read_hf_json(path: Path, spec: dict) -> list[dict]:
    """JSON Lines, a JSON list, or a JSON object's ``field`` list, as Hugging Face's ``json`` loader reads
    them for lm-eval's ``dataset_path: json``: every record gets every column (missing ones are None)."""
    text = _open_text(path)
    try:
        if spec.get("field"):
            rows = json.loads(text)[spec["field"]]
        elif text.lstrip().startswith("["):
            rows = json.loads(text)
        else:
            rows = _read_jsonl(path, spec)
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(f"{path}: not JSON Lines or a JSON list of records ({e})") from e
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise DataError(f"{path}: expected records (JSON objects), one a line or in a list")
    columns = list(dict.fromkeys(k for r in rows for k in r))
    return [{c: r.get(c) for c in columns} for r in rows]


def _read_csv(path: Path, spec: dict, delimiter: str = ",") -> list[dict]:
    rows = [r for r in csv.reader(io.StringIO(_open_text(path), newline=""), delimiter=delimiter) if r]
    columns = spec.get("columns")
    if columns is None:  # header row
        columns, rows = rows[0], rows[1:]
    out = []
    for n, row in enumerate(rows, 1):
        if len(row) != len(columns):
            raise DataError(f"{path}: row {n} has {len(row)} fields, expected {len(columns)} ({columns})")
        out.append(dict(zip(columns, row)))
    return out


def _read_hellaswag_txt(path: Path, spec: dict) -> list[dict]:
    """llama.cpp's HellaSwag layout: 6 lines per item (context, gold label, 4 endings)."""
    lines = _open_text(path).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) % 6:
        raise DataError(f"{path}: {len(lines)} lines is not a multiple of 6 (format 'hellaswag_txt')")
    out = []
    for i in range(0, len(lines), 6):
        label = lines[i + 1].strip()
        if not label.isdigit():
            raise DataError(f"{path}:{i + 2}: gold label {label!r} is not an integer")
        out.append({"ctx": lines[i], "label": int(label), "endings": lines[i + 2 : i + 6]})
    return out


def _read_text_blocks(path: Path, spec: dict) -> list[dict]:
    """Plain text split on blank lines into documents of at least ``min_chars`` characters."""
    min_chars = int(spec.get("min_chars", 1))
    blocks, current = [], []
    for line in _open_text(path).replace("\r\n", "\n").split("\n"):
        if line.strip():
            current.append(line)
        elif current:
            blocks.append("\n".join(current))
            current = []
    if current:
        blocks.append("\n".join(current))
    return [{"text": b} for b in blocks if len(b) >= min_chars]


READERS: dict[str, Callable[[Path, dict], list[dict]]] = {
    "jsonl": _read_jsonl,
    "json": _read_json,
    "hf_json": _read_hf_json,
    "csv": _read_csv,
    "tsv": lambda p, s: _read_csv(p, s, delimiter="\t"),
    "hellaswag_txt": _read_hellaswag_txt,
    "text_blocks": _read_text_blocks,
}


def _files(data_dir: Path, pattern: str | list[str]) -> list[Path]:
    if isinstance(pattern, list):
        return [f for p in pattern for f in _files(data_dir, p)]
    if any(c in pattern for c in "*?["):
        return [Path(p) for p in sorted(glob.glob(str(data_dir / pattern)))]
    return [data_dir / pattern]


def load_split(split: dict, data_dir: Path, task: str, roots: list[Path] | None = None) -> list[dict]:
    """Read one split of a task (``{path|records, format, fields, ...}``) into documents; its files must lie
    in `roots` (default: `data_dir`) unless `any_data_path` is on."""
    if "records" in split:
        if not isinstance(split["records"], list) or not all(isinstance(r, dict) for r in split["records"]):
            raise DataError(f"task {task}: 'records' must be a list of mappings (one document each)")
        raw = [dict(r) for r in split["records"]]
    else:
        fmt = split.get("format", "jsonl")
        if fmt not in READERS:
            raise DataError(f"task {task}: unknown format {fmt!r}; known formats: {sorted(READERS)}")
        files = [confine(f, roots or [data_dir], task) for f in _files(data_dir, split["path"])]
        if not files or not all(f.is_file() for f in files):
            missing = split["path"] if not files else next(str(f) for f in files if not f.is_file())
            if fmt == "hf_json":
                raise DataError(f"task {task}: data file {missing} (dataset_kwargs.data_files, split "
                                f"{split.get('split')!r}) does not exist")
            raise DataError(
                f"task {task}: data file {missing} not found under {data_dir}; pass --data-dir with the folder "
                "holding full copies (laid out like shared/data: eval/<task>/...), or use the bundled subset")
        raw = []
        for f in files:
            try:
                docs = READERS[fmt](f, split)
            except (UnicodeDecodeError, json.JSONDecodeError, OSError, RecursionError) as e:
                raise DataError(f"{f}: cannot be read as {fmt!r} ({type(e).__name__}: {e})") from e
            if split.get("labels_path"):  # a line-aligned label file (PIQA's valid-labels.lst)
                labels = (f.parent / split["labels_path"]).read_text().split()
                if len(labels) < len(docs):
                    raise DataError(f"{f}: {len(docs)} documents but only {len(labels)} labels")
                for d, lab in zip(docs, labels):
                    d[split.get("labels_field", "label")] = lab
            if fmt != "hf_json":  # lm-eval's documents carry their own fields only
                for d in docs:
                    d["_file"] = f.stem
            raw.extend(docs)
    fields = split.get("fields")
    if not fields:
        return raw
    out = []
    for n, r in enumerate(raw):
        try:
            doc = {name: evaluate(expr, r) for name, expr in fields.items()}
        except (TemplateError, TypeError, KeyError, IndexError, AttributeError) as e:
            raise DataError(f"task {task}: record {n} of {split.get('path', 'records')}: {e}") from e
        out.append(doc)
    return out
