"""Rebuild the bundled evaluation subsets (``pocketlm/evaluate/data``) from full copies.

``python -m pocketlm.evaluate.bundle /path/to/shared/data`` keeps the first documents of each
file in the same layout and format, so specs read bundled and full data alike.
"""

from __future__ import annotations

import bz2
import json
import sys
from pathlib import Path

DATA = Path(__file__).parent / "data"
N_EVAL, N_TRAIN = 40, 20
LINE_FILES = {  # jsonl-like files: keep the first N lines
    "eval/arc_easy/arc_easy.jsonl": N_EVAL, "eval/arc_easy/ARC-Easy-Train.jsonl": N_TRAIN,
    "eval/arc_challenge/arc_challenge.jsonl": N_EVAL, "eval/arc_challenge/ARC-Challenge-Train.jsonl": N_TRAIN,
    "eval/boolq/boolq.jsonl": N_EVAL, "eval/piqa/valid.jsonl": N_EVAL, "eval/piqa/valid-labels.lst": N_EVAL,
    "eval/winogrande/winogrande.jsonl": N_EVAL, "eval/openbookqa/test.jsonl": N_EVAL,
    "eval/openbookqa/train.jsonl": N_TRAIN, "eval/gsm8k/test.jsonl": N_EVAL, "eval/gsm8k/train.jsonl": N_TRAIN,
    "eval/lambada/lambada_openai.jsonl": N_EVAL,
}
MMLU_SUBJECTS = ("high_school_geography", "college_biology", "elementary_mathematics")
TEXT_FILES = {"text/wikitext-2/test.txt": 24_000, "text/tinystories/tinystories_val.txt": 24_000}


def _head_csv_rows(text: str, n: int) -> str:
    import csv
    import io
    rows = list(csv.reader(io.StringIO(text, newline="")))[:n]
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def make_bundle(src: Path, dst: Path = DATA) -> None:
    for rel, n in LINE_FILES.items():
        lines = (src / rel).read_text(encoding="utf-8").splitlines(keepends=True)[:n]
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        (dst / rel).write_text("".join(lines), encoding="utf-8")
    hs = bz2.decompress((src / "eval/hellaswag/hellaswag_val_full.txt.bz2").read_bytes()).decode()
    out = dst / "eval/hellaswag/hellaswag_val_full.txt.bz2"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(bz2.compress(("\n".join(hs.split("\n")[:6 * N_EVAL]) + "\n").encode()))
    tqa = json.loads((src / "eval/truthfulqa/v1/mc_task.json").read_text())[:N_EVAL]
    (dst / "eval/truthfulqa/v1").mkdir(parents=True, exist_ok=True)
    (dst / "eval/truthfulqa/v1/mc_task.json").write_text(json.dumps(tqa, indent=1))
    for subject in MMLU_SUBJECTS:
        for split, n in (("test", 12), ("dev", 5)):
            rel = f"eval/mmlu/{split}/{subject}_{split}.csv"
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            (dst / rel).write_text(_head_csv_rows((src / rel).read_text(encoding="utf-8"), n), encoding="utf-8")
    for rel, n_chars in TEXT_FILES.items():
        kept, size = [], 0
        for line in (src / rel).read_text(encoding="utf-8").splitlines(keepends=True):
            if size >= n_chars and not line.strip():
                break
            kept.append(line)
            size += len(line)
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        (dst / rel).write_text("".join(kept), encoding="utf-8")


if __name__ == "__main__":
    make_bundle(Path(sys.argv[1]))
