"""Decontamination: drop training documents that share a word n-gram (default 13, as in GPT-3,
Brown et al. 2020, appendix C) with any evaluation text."""

from __future__ import annotations

import bz2
import csv
import json
import re
from pathlib import Path
from typing import Iterator

from pocketlm.data.readers import DataError

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _string_leaves(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _string_leaves(v)
    elif isinstance(value, list):
        for v in value:
            yield from _string_leaves(v)


def eval_texts(eval_dir: str | Path, include_train: bool = False,
               benchmarks: list[str] | None = None) -> Iterator[tuple[str, str]]:
    """Yield (benchmark, text) for every string field of every evaluation file under `eval_dir`
    (one folder per benchmark: .jsonl/.json/.csv/.tsv/.txt/.txt.bz2). Train splits are skipped
    unless `include_train`."""
    root = Path(eval_dir)
    if not root.is_dir():
        raise DataError(f"{root}: evaluation folder not found; pass --decontaminate DIR "
                        "(e.g. ../shared/data/eval) or omit the option")
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if benchmarks is not None and folder.name not in benchmarks:
            continue
        for path in sorted(folder.rglob("*")):
            if not path.is_file() or (not include_train and "train" in path.name.lower()):
                continue
            for text in _file_texts(path):
                yield folder.name, text


def _file_texts(path: Path) -> Iterator[str]:
    name = path.name.lower()
    if name.endswith(".bz2"):
        raw = bz2.decompress(path.read_bytes()).decode("utf-8", errors="replace")
        yield from raw.splitlines()
    elif name.endswith(".jsonl"):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.strip():
                try:
                    yield from _string_leaves(json.loads(line))
                except json.JSONDecodeError:
                    yield line
    elif name.endswith(".json"):
        text = path.read_text(encoding="utf-8", errors="replace")
        try:
            yield from _string_leaves(json.loads(text))
        except json.JSONDecodeError:  # some ".json" files are JSON Lines
            for line in text.splitlines():
                if line.strip():
                    try:
                        yield from _string_leaves(json.loads(line))
                    except json.JSONDecodeError:
                        yield line
    elif name.endswith((".csv", ".tsv")):
        with path.open(encoding="utf-8", errors="replace", newline="") as f:
            for row in csv.reader(f, delimiter="\t" if name.endswith(".tsv") else ","):
                yield from row
    elif name.endswith(".txt"):
        yield from path.read_text(encoding="utf-8", errors="replace").splitlines()


class NgramIndex:
    """Set of word n-grams of evaluation texts, remembering one benchmark per n-gram."""

    def __init__(self, n: int = 13) -> None:
        self.n = n
        self._owner: dict[int, str] = {}

    def add(self, benchmark: str, text: str) -> None:
        w = words(text)
        for i in range(len(w) - self.n + 1):
            self._owner.setdefault(hash(tuple(w[i:i + self.n])), benchmark)

    def __len__(self) -> int:
        return len(self._owner)

    def match(self, text: str) -> tuple[str, str] | None:
        """(benchmark, the overlapping n-gram) for the first shared n-gram, or None."""
        w = words(text)
        for i in range(len(w) - self.n + 1):
            bench = self._owner.get(hash(tuple(w[i:i + self.n])))
            if bench is not None:
                return bench, " ".join(w[i:i + self.n])
        return None

    @classmethod
    def from_eval_dir(cls, eval_dir: str | Path, n: int = 13, include_train: bool = False,
                      benchmarks: list[str] | None = None) -> "NgramIndex":
        index = cls(n)
        for bench, text in eval_texts(eval_dir, include_train, benchmarks):
            index.add(bench, text)
        return index
