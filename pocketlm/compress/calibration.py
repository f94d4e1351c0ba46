"""Calibration data: N sequences of L tokens drawn with a seed, cached by content hash.

A spec is `SOURCE[:NxL]`, e.g. `bundled:128x512`, `wikitext2:128x512`, `my/*.txt:64x256`,
`data/shards:128x512`. SOURCE is one of
- `bundled`: the corpus shipped with pocketlm (TinyStories + Alice), its training split only (the
  held-out text that compression is scored on, `data/corpus/heldout.txt`, is its validation split);
- an evaluation task (`wikitext2`, `tinystories`, or any `pocketlm eval tasks` name): its documents;
- a data-prepare folder (has `manifest.json`): its token shards, when they were made with the model's
  tokenizer (checked), else their text is not recoverable and we refuse;
- files or a glob (`.txt`, `.jsonl`, `.gz`...): read with pocketlm's document readers.

Sampling follows the SparseGPT/Wanda `get_wikitext2` loader: the documents are joined, tokenized once,
and each sequence is a window starting at `random.Random(seed).randint(0, total - L - 1)`. (Their C4
loader instead draws a document longer than L first; the bundled stories are shorter than L.)
"""

from __future__ import annotations

import glob
import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

DEFAULT_N, DEFAULT_L = 128, 512
TASK_ALIASES = {"wikitext2": "perplexity_wikitext2", "tinystories": "perplexity_tinystories"}
SAMPLER_VERSION = "joined-random-windows-v1"  # part of the cache key: change it when sampling changes


class CalibrationError(ValueError):
    """A calibration spec or source that cannot give N x L tokens; the message says what to change."""


@dataclass(frozen=True)
class CalibSpec:
    source: str
    n: int = DEFAULT_N
    seq_len: int = DEFAULT_L

    @classmethod
    def parse(cls, text: str, default_seq_len: int = DEFAULT_L) -> "CalibSpec":
        source, _, shape = text.rpartition(":")
        if not source or "x" not in shape:  # no NxL suffix: the default shape
            return cls(text, DEFAULT_N, default_seq_len)
        n, _, length = shape.partition("x")
        if not (n.isdigit() and length.isdigit()) or int(n) < 1 or int(length) < 2:
            raise CalibrationError(f"calibration spec {text!r}: the shape must be NxL with N >= 1 and L >= 2 "
                                   "(e.g. bundled:128x512)")
        return cls(source, int(n), int(length))

    def __str__(self) -> str:
        return f"{self.source}:{self.n}x{self.seq_len}"


def source_texts(source: str) -> list[str]:
    """The documents of a calibration source (see the module docstring)."""
    from pocketlm.data.corpus.heldout import training_texts
    from pocketlm.data.readers import read_documents

    if source == "bundled":
        return training_texts()
    task = TASK_ALIASES.get(source, source)
    if "/" not in source and "*" not in source and not Path(source).exists():
        return _task_texts(task, source)
    paths = sorted(glob.glob(source, recursive=True)) if any(c in source for c in "*?[") else [source]
    if not paths:
        raise CalibrationError(f"calibration source {source!r} matches no files")
    return [d.text for d in read_documents(paths)]


def _task_texts(task: str, given: str) -> list[str]:
    from pocketlm.evaluate.prompts import build_examples, load_docs, resolve_data_dir
    from pocketlm.evaluate.spec import TaskSpecError, builtin_tasks, get_spec

    try:
        spec = get_spec(task)
    except (TaskSpecError, FileNotFoundError, KeyError) as e:
        raise CalibrationError(f"calibration source {given!r} is not a file, folder or task; use `bundled`, a "
                               f"text file or glob, a shard folder, or a task: {', '.join(builtin_tasks())}") from e
    docs, _ = load_docs(spec, resolve_data_dir(None))
    return [ctx + cont for ex in build_examples(spec, docs, None, 0) for ctx, cont in ex.requests[:1]]


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash that changes when the tokenizer's mapping changes (fast tokenizers: their JSON)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    raw = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def encode_text(tokenizer: Any, text: str) -> list[int]:
    try:
        return list(tokenizer.encode(text, add_special_tokens=False))
    except TypeError:  # a tokenizer without the keyword (pocketlm's TextTokenizer)
        return list(tokenizer.encode(text))


def random_windows(ids: torch.Tensor, n: int, seq_len: int, seed: int = 0, what: str = "calibration text") -> torch.Tensor:
    """`n` windows of `seq_len` tokens from a flat id tensor, starts drawn as the SparseGPT/Wanda loaders do."""
    total = int(ids.numel())
    if total < n * seq_len or total < seq_len + 1:
        raise CalibrationError(f"{what} has {total:,} tokens, fewer than N x L = {n} x {seq_len} = {n * seq_len:,}; "
                               "give more text, or a smaller N or L (e.g. --calib bundled:64x256)")
    rng = random.Random(seed)
    starts = [rng.randint(0, total - seq_len - 1) for _ in range(n)]
    return torch.stack([ids[s:s + seq_len] for s in starts]).long()


def calibration_batches(spec: CalibSpec | str, tokenizer: Any, seed: int = 0, cache_dir: str | Path | None = None,
                        ) -> tuple[torch.Tensor, dict]:
    """LongTensor [N, L] of calibration tokens and a record of where they came from (spec, seed, hashes).

    Tokenized windows are cached under `cache_dir` (default ~/.cache/pocketlm/calib) keyed by the text's
    content hash, the tokenizer, N, L, seed and the sampler version, so a changed input resamples."""
    from safetensors.torch import load_file, save_file

    from pocketlm.utils import cache_root
    from pocketlm.utils import atomic_path

    spec = CalibSpec.parse(spec) if isinstance(spec, str) else spec
    if tokenizer is None:
        raise CalibrationError("calibration needs the model's tokenizer: save tokenizer files next to the model, "
                               "or pass --tokenizer PATH")
    if (Path(spec.source) / "manifest.json").is_file():
        return calibration_from_shards(spec.source, spec, tokenizer, seed)
    texts = source_texts(spec.source)
    text_hash = hashlib.sha256("\n\n".join(texts).encode()).hexdigest()[:16]
    key = hashlib.sha256(f"{text_hash}|{tokenizer_fingerprint(tokenizer)}|{spec.n}|{spec.seq_len}|{seed}|"
                         f"{SAMPLER_VERSION}".encode()).hexdigest()[:16]
    record = {"spec": str(spec), "seed": seed, "documents": len(texts), "text_sha256": text_hash, "key": key,
              "sampler": SAMPLER_VERSION}
    path = Path(cache_dir) if cache_dir else cache_root() / "calib"
    path = path / f"{key}.safetensors"
    if path.is_file():
        stored = load_file(str(path))
        record["total_tokens"] = int(stored["total_tokens"])
        return stored["ids"], record
    ids = torch.tensor(encode_text(tokenizer, "\n\n".join(texts)), dtype=torch.long)
    windows = random_windows(ids, spec.n, spec.seq_len, seed, what=f"calibration source {spec.source!r}")
    record["total_tokens"] = int(ids.numel())
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file({"ids": windows.contiguous(), "total_tokens": torch.tensor(ids.numel())}, str(tmp))
    return windows, record


def calibration_from_shards(data_dir: str | Path, spec: CalibSpec, tokenizer: Any, seed: int = 0,
                            split: str = "train") -> tuple[torch.Tensor, dict]:
    """Windows from a `pocketlm data prepare` folder, refused unless its tokenizer is the model's."""
    from pocketlm.data.shards import TokenSplit
    from pocketlm.data.tokenizer import TextTokenizer

    shard_tok = TextTokenizer.load(Path(data_dir) / "tokenizer.json")
    probe = "Once upon a time, 42 cats met the Queen of Hearts."
    if tokenizer is not None and encode_text(tokenizer, probe) != encode_text(shard_tok, probe):
        raise CalibrationError(f"{data_dir}: the shards were tokenized with a different tokenizer than the model's; "
                               "calibrate on text instead (e.g. --calib 'my/*.txt:128x512')")
    tokens = torch.from_numpy(TokenSplit.open(data_dir, split).tokens.astype("int64"))
    windows = random_windows(tokens, spec.n, spec.seq_len, seed, what=f"shards {data_dir} ({split})")
    return windows, {"spec": str(spec), "seed": seed, "total_tokens": int(tokens.numel()), "sampler": SAMPLER_VERSION}
