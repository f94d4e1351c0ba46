"""Read documents from plain text, JSON Lines and Parquet files."""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

TEXT_SUFFIXES = (".txt", ".text", ".md")
JSONL_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet",)


class DataError(ValueError):
    """Unreadable or malformed input data; the message names the file and the fix."""


@dataclass
class Document:
    id: str
    text: str
    source: str


def read_documents(paths: list[str | Path], text_field: str = "text",
                   split_blank_lines: bool = True) -> Iterator[Document]:
    """Yield documents from files or folders (recursively), in sorted path order.

    Any of them may be gzip-compressed (name ending in .gz). Text files: one document per
    blank-line separated block (or the whole file if
    `split_blank_lines` is False). JSONL: one document per line, text under `text_field`.
    Parquet: one document per row of column `text_field` (needs pyarrow).
    """
    for path in _expand(paths):
        suffix = _suffix(path)
        source = path.name[: -len(suffix) - (3 if path.name.lower().endswith(".gz") else 0)] or path.stem
        readers = {**dict.fromkeys(TEXT_SUFFIXES, lambda: _read_text(path, source, split_blank_lines)),
                   **dict.fromkeys(JSONL_SUFFIXES, lambda: _read_jsonl(path, source, text_field)),
                   **dict.fromkeys(PARQUET_SUFFIXES, lambda: _read_parquet(path, source, text_field))}
        if suffix in readers:
            try:
                yield from readers[suffix]()
            except (OSError, EOFError, UnicodeDecodeError) as e:  # not gzip, truncated, not UTF-8, unreadable
                raise DataError(f"{path}: cannot be read ({type(e).__name__}: {e})") from e
        else:
            raise DataError(f"{path}: unsupported file type {suffix!r}; use one of "
                            f"{TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES}")


def _suffix(path: Path) -> str:
    """The format suffix, looking through a trailing .gz (data.jsonl.gz -> .jsonl)."""
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return Path(name).suffix


def _open_text(path: Path):
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8-sig")
    return path.open(encoding="utf-8-sig")


def _expand(paths: list[str | Path]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file()
                           and _suffix(f) in TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES)
            if not found:
                raise DataError(f"{p}: folder holds no .txt/.jsonl/.parquet files")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        elif p.exists():
            raise DataError(f"{p}: not a regular file or folder (a FIFO, socket or device); copy the data to a file")
        else:
            raise DataError(f"{p}: no such file or folder")
    return files


def _read_text(path: Path, source: str, split_blank_lines: bool) -> Iterator[Document]:
    try:
        with _open_text(path) as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 ({e}); convert it first, e.g. iconv -t UTF-8") from e
    text = text.replace("\r\n", "\n")
    blocks = text.split("\n\n") if split_blank_lines else [text]
    i = 0
    for block in blocks:
        if block.strip():
            yield Document(f"{source}:{i}", block, source)
            i += 1


def _read_jsonl(path: Path, source: str, field: str) -> Iterator[Document]:
    with _open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: invalid JSON ({e.msg}); each line must be one JSON object") from e
            if not isinstance(rec, dict) or not isinstance(rec.get(field), str):
                raise DataError(f"{path}:{lineno}: no string field {field!r}; pass --text-field NAME")
            yield Document(f"{source}:{lineno - 1}", rec[field], str(rec.get("source", source)))


def _read_parquet(path: Path, source: str, field: str) -> Iterator[Document]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:  # pragma: no cover - pyarrow is pinned
        raise DataError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from e
    table = pq.read_table(path)
    if field not in table.column_names:
        raise DataError(f"{path}: no column {field!r} (columns: {table.column_names}); pass --text-field NAME")
    for i, text in enumerate(table.column(field).to_pylist()):
        if isinstance(text, str):
            yield Document(f"{source}:{i}", text, source)
