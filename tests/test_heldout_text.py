"""The default held-out text is held out: no bundled fixture trains on it and calibration never draws it."""

from __future__ import annotations

from pocketlm.compress.calibration import source_texts
from pocketlm.compress.prune.checkpoint import DEFAULT_EVAL_TEXT
from pocketlm.data.corpus.heldout import heldout_documents, paragraphs, split_documents
from pocketlm.data.decontaminate import words


def _ngrams(texts: list[str], n: int = 13) -> set[tuple[str, ...]]:
    out: set[tuple[str, ...]] = set()
    for text in texts:
        w = words(text)
        out.update(tuple(w[i:i + n]) for i in range(len(w) - n + 1))
    return out


def test_default_eval_text_shares_no_paragraph_or_13_gram_with_training_text():
    # every bundled fixture trains on the train (and hq, a part of it) split of the bundled corpus; the
    # training side here is every document outside the val split, kept by the filters or not (a superset)
    held = DEFAULT_EVAL_TEXT.read_text(encoding="utf-8")
    train, val = split_documents()
    train_texts = [d.text for d in train]
    assert len(held) > 20_000 and len(val) > len(heldout_documents()) > 30
    same = paragraphs(held) & set().union(*map(paragraphs, train_texts))
    assert not same, f"{len(same)} paragraphs of {DEFAULT_EVAL_TEXT.name} occur in training text, e.g. {min(same)!r}"
    shared = _ngrams([held]) & _ngrams(["\n\n".join(train_texts)])  # joined: grams across documents too
    assert not shared, f"{len(shared)} 13-grams of {DEFAULT_EVAL_TEXT.name} occur in training text, e.g. {min(shared)}"
    assert not _ngrams([held]) & _ngrams(source_texts("bundled"))  # calibration draws none of it either
    # the checked-in file is what `python -m pocketlm.data.corpus.heldout` writes today
    assert held == "\n\n".join(d.text.strip() for d in heldout_documents()) + "\n"
