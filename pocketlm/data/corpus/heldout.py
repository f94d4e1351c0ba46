"""The bundled corpus's held-out text, `heldout.txt`: the documents that `pocketlm data prepare` puts in
its validation split (its hash of each document id, with the default fraction and seed that every bundled
fixture prepares with) and that share no paragraph and no word 13-gram with any training-split document
(the GPT-3 rule that `data.decontaminate` applies; the paragraph rule catches short stock lines such as
"The End."), in corpus order, joined by blank lines. No fixture trains on them, and the
`bundled` calibration source leaves them out, so perplexity and KL measured on them are held out.

    python -m pocketlm.data.corpus.heldout      # rewrite heldout.txt from the bundled corpus
"""

from __future__ import annotations

import hashlib
from dataclasses import fields
from pathlib import Path
from typing import Callable

from pocketlm.data import BUNDLED_CORPUS, bundled_corpus_files
from pocketlm.data.corpus.build import gutenberg_documents
from pocketlm.data.decontaminate import NgramIndex
from pocketlm.data.readers import Document, read_documents
from pocketlm.utils import atomic_write_text

DEFAULT_EVAL_TEXT = BUNDLED_CORPUS / "heldout.txt"
NGRAM = 13


def split_documents() -> tuple[list[Document], list[Document]]:
    """The bundled corpus's (training, validation) documents as `prepare`'s defaults split them."""
    # prepare's own split rule; it stays private there, since prepare.py's bytes are in every fixture's cache
    # key. Imported here: prepare brings MinHash (datasketch, scipy, ~1 s), which DEFAULT_EVAL_TEXT's users skip
    from pocketlm.data.prepare import PrepareConfig, _split_of

    default = {f.name: f.default for f in fields(PrepareConfig) if f.name in ("val_fraction", "seed")}
    train: list[Document] = []
    val: list[Document] = []
    for doc in read_documents([str(p) for p in bundled_corpus_files()]):
        (val if _split_of(doc.id, default["val_fraction"], default["seed"]) == "val" else train).append(doc)
    return train, val


def training_texts() -> list[str]:
    """Every bundled document outside the validation split (what `bundled` calibration draws from)."""
    return [d.text for d in split_documents()[0]]


def paragraphs(text: str) -> set[str]:
    """The blank-line separated paragraphs of `text`, whitespace collapsed."""
    return {" ".join(p.split()) for p in text.split("\n\n") if p.strip()}


def untouched_by(train_texts: list[str]) -> Callable[[str], bool]:
    """A test that holds for a text sharing no paragraph and no word 13-gram with any of `train_texts`."""
    index = NgramIndex(NGRAM)
    seen: set[str] = set()
    for text in train_texts:
        index.add("train", text)
        seen |= paragraphs(text)
    return lambda text: index.match(text) is None and not paragraphs(text) & seen


def heldout_documents() -> list[Document]:
    """The validation documents that share no paragraph and no word 13-gram with any training document."""
    train, val = split_documents()
    clean = untouched_by([d.text for d in train])
    return [d for d in val if clean(d.text)]


def heldout_books(paths: list[Path], train_texts: list[str] | None = None) -> list[str]:
    """Project Gutenberg books (with their license header and footer) cut as the corpus cuts Alice (~250-word
    chunks between the START/END markers), less every chunk that shares a paragraph or a word 13-gram with a
    training document: held-out text beyond the bundled validation split, for measurements whose noise
    the split's ~9 K tokens cannot resolve. Books are not stories for children, so it is out of domain.
    `train_texts`: decontaminate against these instead of the bundled training documents (a model trained on books)."""
    clean = untouched_by(training_texts() if train_texts is None else train_texts)
    return [doc for path in paths for doc in gutenberg_documents(Path(path).read_text(encoding="utf-8"))
            if clean(doc)]


def write_heldout(path: Path = DEFAULT_EVAL_TEXT) -> str:
    """Write the held-out text to `path`; return its sha256."""
    text = "\n\n".join(d.text.strip() for d in heldout_documents()) + "\n"
    atomic_write_text(path, text)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


if __name__ == "__main__":
    docs = heldout_documents()
    print(f"{DEFAULT_EVAL_TEXT.name}: {len(docs)} documents ({', '.join(sorted({d.source for d in docs}))}), "
          f"sha256 {write_heldout()}")
