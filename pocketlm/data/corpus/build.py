"""Rebuild the bundled corpus from ../shared/data/text (run once; the output is checked in).

    python -m pocketlm.data.corpus.build /work/shared/data/text

TinyStories paragraphs are regrouped into stories (a paragraph opening with "Once upon a time",
"Once there", "Once," or "One day" starts a new story; others join the previous one); the Gutenberg
book is cut between its START/END markers, unwrapped, and chunked into ~250-word documents.
"""

from __future__ import annotations

import gzip
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
STORY_START = re.compile(r"^(Once upon a time|Once there|Once, there|Once,|One day)")


def tinystories_documents(text: str) -> list[str]:
    stories: list[list[str]] = []
    for para in (p.strip() for p in text.split("\n\n")):
        if not para:
            continue
        if not stories or STORY_START.match(para):
            stories.append([para])
        else:
            stories[-1].append(para)
    return ["\n\n".join(s) for s in stories]


def gutenberg_documents(text: str, words_per_doc: int = 250) -> list[str]:
    text = text.lstrip("\ufeff").replace("\r\n", "\n")
    start = text.index("\n", text.index("*** START OF")) + 1
    body = text[start:text.index("*** END OF")]
    paras = [" ".join(p.split()) for p in body.split("\n\n") if p.strip()]
    docs, cur = [], []
    for para in paras:
        cur.append(para)
        if sum(len(p.split()) for p in cur) >= words_per_doc:
            docs.append("\n\n".join(cur))
            cur = []
    if cur:
        docs.append("\n\n".join(cur))
    return docs


def write_jsonl_gz(path: Path, docs: list[str], source: str) -> int:
    """Gzip-compressed JSON Lines, byte-reproducible (no timestamp in the gzip header)."""
    text = "".join(json.dumps({"text": d, "source": source}, ensure_ascii=False) + "\n" for d in docs)
    path.write_bytes(gzip.compress(text.encode("utf-8"), compresslevel=9, mtime=0))
    return len(docs)


def main(text_root: str) -> None:
    root = Path(text_root)
    ts = tinystories_documents((root / "tinystories" / "tinystories_val.txt").read_text(encoding="utf-8"))
    n_ts = write_jsonl_gz(HERE / "tinystories.jsonl.gz", ts, "tinystories")
    gb = gutenberg_documents((root / "gutenberg" / "11-0.txt").read_text(encoding="utf-8"))
    n_gb = write_jsonl_gz(HERE / "alice.jsonl.gz", gb, "gutenberg-11")
    print(f"tinystories: {n_ts} stories, alice: {n_gb} chunks")
    from pocketlm.data.corpus.heldout import write_heldout  # the held-out documents follow the corpus

    print(f"heldout.txt: sha256 {write_heldout()}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/work/shared/data/text")
