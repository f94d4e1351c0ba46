"""Data preparation: read, normalise, deduplicate, filter, decontaminate, tokenize, pack into shards."""

from pathlib import Path

BUNDLED_CORPUS = Path(__file__).resolve().parent / "corpus"


def bundled_corpus_files() -> list[Path]:
    """The bundled English corpus (TinyStories + Alice excerpt), see corpus/ATTRIBUTION.md."""
    return [BUNDLED_CORPUS / "tinystories.jsonl.gz", BUNDLED_CORPUS / "alice.jsonl.gz"]
