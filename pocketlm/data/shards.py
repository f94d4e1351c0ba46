"""Token shards: documents (each followed by EOS) packed into flat numpy memmap files + a manifest."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pocketlm.data.readers import DataError
from pocketlm.utils import atomic_path, read_json

MANIFEST = "manifest.json"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.uint32)


def write_shards(out_dir: Path, split: str, docs_tokens: list[list[int]], eos_id: int,
                 vocab_size: int, shard_tokens: int = 1 << 24) -> dict:
    """Write `split_XXXXX.bin` shards; return the split's manifest entry (tokens, docs, sha256 per shard)."""
    dtype = token_dtype(vocab_size)
    shards, buf, total = [], [], 0

    def flush() -> None:
        if not buf:
            return
        arr = np.concatenate(buf).astype(dtype)
        name = f"{split}_{len(shards):05d}.bin"
        with atomic_path(out_dir / name) as tmp:
            arr.tofile(tmp)
        shards.append({"file": name, "tokens": int(arr.size), "sha256": hashlib.sha256(arr.tobytes()).hexdigest()})
        buf.clear()

    pending = 0
    for toks in docs_tokens:
        a = np.asarray(list(toks) + [eos_id], dtype=np.int64)
        buf.append(a)
        pending += a.size
        total += a.size
        if pending >= shard_tokens:
            flush()
            pending = 0
    flush()
    return {"shards": shards, "tokens": total, "documents": len(docs_tokens)}


def read_manifest(data_dir: str | Path) -> dict:
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        raise DataError(f"{data_dir}: no {MANIFEST}; create the shards with `pocketlm data prepare`")
    try:
        manifest = read_json(path, DataError)
        vocab = manifest["tokenizer"]["vocab_size"]
        splits = manifest["splits"]
        np.dtype(manifest["dtype"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise DataError(f"{path}: not a pocketlm manifest ({type(e).__name__}: {e}); re-run `pocketlm data "
                        "prepare`") from e
    if not isinstance(vocab, int) or vocab <= 0 or not isinstance(splits, dict):
        raise DataError(f"{path}: tokenizer.vocab_size and splits are malformed; re-run `pocketlm data prepare`")
    return manifest


@dataclass
class TokenSplit:
    """All shards of one split viewed as a single token array (memory-mapped)."""

    tokens: np.ndarray
    name: str

    @classmethod
    def open(cls, data_dir: str | Path, split: str, verify: bool = False) -> "TokenSplit":
        manifest = read_manifest(data_dir)
        if split not in manifest["splits"]:
            raise DataError(f"{data_dir}: no split {split!r}; manifest has {sorted(manifest['splits'])}")
        dtype = np.dtype(manifest["dtype"])
        parts = []
        for shard in manifest["splits"][split]["shards"]:
            arr = np.memmap(Path(data_dir) / shard["file"], dtype=dtype, mode="r")
            if arr.size != shard["tokens"]:
                raise DataError(f"{shard['file']}: {arr.size} tokens, manifest says {shard['tokens']}; re-run prepare")
            if verify and hashlib.sha256(arr.tobytes()).hexdigest() != shard["sha256"]:
                raise DataError(f"{shard['file']}: checksum mismatch; the shard is corrupt, re-run prepare")
            vocab = manifest["tokenizer"]["vocab_size"]
            if arr.size and int(arr.max()) >= vocab:
                raise DataError(f"{Path(data_dir) / shard['file']}: token id {int(arr.max())} is past the "
                                f"tokenizer's {vocab} tokens; the shard does not belong to this manifest, re-run prepare")
            parts.append(arr)
        if not parts:
            raise DataError(f"{data_dir}: split {split!r} is empty")
        tokens = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return cls(tokens, split)

    def __len__(self) -> int:
        return int(self.tokens.size)
