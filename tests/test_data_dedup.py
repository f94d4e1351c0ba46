"""Exact and MinHash near-duplicate removal: precision and recall on planted near-duplicates of real stories."""

from __future__ import annotations

import json
import gzip
import random

from pocketlm.data import BUNDLED_CORPUS
from pocketlm.data.dedup import NearDupConfig, NearDuplicateIndex, exact_key, shingles
from pocketlm.data.normalize import normalize_text


def _stories(n: int) -> list[str]:
    with gzip.open(BUNDLED_CORPUS / "tinystories.jsonl.gz", "rt", encoding="utf-8") as f:
        docs = [json.loads(line)["text"] for line in f]
    return [d for d in docs if len(d.split()) >= 120][:n]


def _edit(text: str, rng: random.Random, every: int, vocab: list[str]) -> str:
    """Replace one word in every `every` words by a random corpus word."""
    words = text.split()
    for i in range(rng.randrange(every), len(words), every):
        words[i] = rng.choice(vocab)
    return " ".join(words)


def _jaccard(a: str, b: str) -> float:
    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / len(sa | sb)


def test_minhash_precision_and_recall_on_planted_near_duplicates():
    rng = random.Random(0)
    originals = _stories(220)
    vocab = sorted({w for d in originals for w in d.split()})
    docs = [(f"orig{i}", t) for i, t in enumerate(originals)]
    planted = {}
    for i in rng.sample(range(len(originals)), 60):  # light edits: true duplicates
        planted[f"dup{i}"] = (f"orig{i}", _edit(originals[i], rng, 40, vocab))
    for i in rng.sample(range(len(originals)), 30):  # heavy edits: different documents
        planted[f"far{i}"] = (f"orig{i}", _edit(originals[i], rng, 3, vocab))
    docs += [(k, v[1]) for k, v in planted.items()]
    rng.shuffle(docs)
    text = dict(docs)

    index = NearDuplicateIndex(NearDupConfig(threshold=0.7, seed=1))
    flagged = {}
    for doc_id, t in docs:
        hit = index.check(doc_id, t)
        if hit:
            flagged[doc_id] = hit[0]

    # ground truth from exact 5-gram Jaccard: pairs at >= 0.7 are duplicates (recall is measured on
    # them); a flagged pair below 0.6 is a false positive (0.6-0.7 lies within MinHash's estimation error)
    true_pairs = {frozenset((k, src)) for k, (src, t) in planted.items() if _jaccard(t, text[src]) >= 0.7}
    assert len(true_pairs) >= 50  # the light edits really are near-duplicates
    correct = sum(_jaccard(text[a], text[b]) >= 0.6 for a, b in flagged.items())
    precision = correct / len(flagged)
    found = {frozenset(p) for p in flagged.items()}
    recall = len(true_pairs & found) / len(true_pairs)
    assert precision >= 0.95, (precision, len(flagged))
    assert recall >= 0.9, recall
    assert not any(k.startswith("far") for k in flagged)  # heavy edits are kept


def test_near_duplicate_detection_is_deterministic():
    docs = _stories(40)
    docs = docs + [d.replace(" the ", " a ", 1) for d in docs[:10]]

    def run() -> list:
        index = NearDuplicateIndex()
        return [index.check(str(i), d) for i, d in enumerate(docs)]

    first = run()
    assert first == run()
    assert sum(h is not None for h in first) >= 10


def test_exact_key_ignores_case_and_whitespace_and_normalisation_unifies_unicode():
    a = "Caf\u00e9 is open.\r\nCome  in!"
    b = "cafe\u0301 is open.\ncome in!"  # decomposed é, other case, other newline and spacing
    assert exact_key(normalize_text(a)) == exact_key(normalize_text(b))
    assert exact_key("one text") != exact_key("another text")
    assert normalize_text("\ufeffa\x00b \x1b[31mred\x1b[0m\n\n\n\nc  ") == "ab red\n\nc"
