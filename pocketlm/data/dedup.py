"""Exact (hash) and near-duplicate (MinHash + LSH) document removal, deterministic."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from datasketch import MinHash, MinHashLSH

_WORD = re.compile(r"\w+")


def exact_key(text: str) -> str:
    """Hash of the text with case and whitespace folded (so trivial reformatting still matches)."""
    return hashlib.sha256(" ".join(text.lower().split()).encode("utf-8")).hexdigest()


def shingles(text: str, n: int = 5) -> set[bytes]:
    """Word n-gram shingles of the lower-cased text (the whole text if shorter than n words)."""
    words = _WORD.findall(text.lower())
    if len(words) < n:
        return {" ".join(words).encode("utf-8")}
    return {" ".join(words[i:i + n]).encode("utf-8") for i in range(len(words) - n + 1)}


@dataclass
class NearDupConfig:
    threshold: float = 0.7  # estimated Jaccard similarity above which two documents are duplicates
    lsh_margin: float = 0.15  # LSH bands tuned for threshold - margin: fewer missed candidates
    num_perm: int = 128
    ngram: int = 5
    seed: int = 1


class NearDuplicateIndex:
    """Streaming MinHash-LSH: `check(id, text)` returns the id of an earlier near-duplicate or None.

    The first occurrence is kept. LSH bands are tuned for a threshold `lsh_margin` below the target so
    few true pairs escape candidate generation; every candidate is then confirmed by the MinHash
    estimate of the Jaccard similarity, so a band collision alone never removes a document.
    """

    def __init__(self, config: NearDupConfig | None = None) -> None:
        self.config = config or NearDupConfig()
        lsh_threshold = max(0.05, self.config.threshold - self.config.lsh_margin)
        self._lsh = MinHashLSH(threshold=lsh_threshold, num_perm=self.config.num_perm)
        self._sigs: dict[str, MinHash] = {}

    def signature(self, text: str) -> MinHash:
        m = MinHash(num_perm=self.config.num_perm, seed=self.config.seed)
        m.update_batch(sorted(shingles(text, self.config.ngram)))
        return m

    def check(self, doc_id: str, text: str) -> tuple[str, float] | None:
        """Return (earlier_id, estimated_jaccard) if `text` near-duplicates a kept document;
        otherwise index it and return None."""
        sig = self.signature(text)
        best: tuple[str, float] | None = None
        for other in sorted(self._lsh.query(sig)):
            sim = sig.jaccard(self._sigs[other])
            if sim >= self.config.threshold and (best is None or sim > best[1]):
                best = (other, sim)
        if best is None:
            self._lsh.insert(doc_id, sig)
            self._sigs[doc_id] = sig
        return best
