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


def test_heldout_books_drop_every_chunk_that_shares_text_with_training(tmp_path):
    # a Gutenberg-style book: license header, three ~260-word chapters (one chunk each); the second quotes a
    # 13-word run of a training story inside new text, the third holds a training paragraph verbatim
    from pocketlm.data.corpus.heldout import heldout_books, training_texts

    story = next(t for t in training_texts() if len(words(t)) > 60)
    para = max((p for p in story.split("\n\n")), key=len)
    fresh = lambda seed: " ".join(f"word{(seed * 7919 + i * 104729) % 100003}" for i in range(260))  # noqa: E731
    quoted = fresh(2).split()
    quoted[100:100] = words(story)[:13]
    book = tmp_path / "book.txt"
    book.write_text("\ufeffHeader\n*** START OF THE BOOK ***\n\n" + "\n\n".join(
        [fresh(1), " ".join(quoted), para + "\n\n" + fresh(3)]) + "\n\n*** END OF THE BOOK ***\nLicense\n", encoding="utf-8")
    kept = heldout_books([book])
    assert kept == [fresh(1)]
