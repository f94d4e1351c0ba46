"""Gopher/C4 heuristic rules and the perplexity-based quality model, on real text."""

from __future__ import annotations

import gzip
import json
import random

from pocketlm.data import BUNDLED_CORPUS
from pocketlm.data.quality import BigramLM, HeuristicConfig, cross_fit_perplexities, heuristic_reject_reason


def _docs(name: str) -> list[str]:
    with gzip.open(BUNDLED_CORPUS / name, "rt", encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


def test_real_prose_passes_and_each_rule_names_itself():
    prose = " ".join(next(d for d in _docs("alice.jsonl.gz")[5:] if len(d.split()) > 150 and "*" not in d).split())
    assert heuristic_reject_reason(prose) is None
    sentences = [s.strip() + "." for s in prose.split(".") if len(s.split()) > 3]
    cases = {
        "word_count": " ".join(prose.split()[:30]),
        "bullet_lines": "\n".join(f"- {s}" for s in sentences),
        "ellipsis_lines": "\n".join(s[:-1] + "..." for s in sentences),
        "symbol_ratio": " ".join(f"#{w}" for w in prose.split()),
        "duplicate_lines": "\n".join(sentences[:3] * 10),
        "stop_words": " ".join(w for w in prose.split()
                               if w.lower().strip(".,;:!?'\"‘’") not in {"the", "be", "to", "of", "and",
                                                                          "that", "have", "with", "a"}
                               ).replace(" the", "").replace("the ", ""),
        "mean_word_length": " ".join("ab" for _ in range(200)),
        "lorem_ipsum": prose + " Lorem ipsum dolor sit amet.",
    }
    for rule, text in cases.items():
        reason = heuristic_reject_reason(text)
        assert reason is not None and reason.startswith(rule), (rule, reason)


def test_ngram_repetition_rules_catch_repeated_passages():
    prose = next(d for d in _docs("tinystories.jsonl.gz") if len(d.split()) > 120)
    words = prose.split()
    repeated = " ".join(words[:60] + words[:60] + words[:60])
    reason = heuristic_reject_reason(repeated, HeuristicConfig(max_dup_line_frac=1.0, max_dup_para_frac=1.0))
    assert reason is not None and ("gram" in reason), reason


def test_bigram_perplexity_prefers_real_text_over_shuffled_words():
    docs = _docs("tinystories.jsonl.gz")
    lm = BigramLM().fit(docs[:800])
    rng = random.Random(0)
    held_out = docs[900:950]
    real = [lm.perplexity(d) for d in held_out]
    shuffled = []
    for d in held_out:
        w = d.split()
        rng.shuffle(w)
        shuffled.append(lm.perplexity(" ".join(w)))
    assert all(s > 2 * r for r, s in zip(real, shuffled))
    # cross-fitting scores every document without having seen it
    ids = [str(i) for i in range(200)]
    scores = cross_fit_perplexities(ids, docs[:200])
    assert set(scores) == set(ids) and all(1 < v < 10_000 for v in scores.values())
