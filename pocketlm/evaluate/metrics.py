"""Per-example scores and their aggregation (means with standard errors, perplexities)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .math_answers import exact_match, minerva_equal, regex_extract
from .prompts import Example
from .spec import TaskSpec


def multiple_choice_scores(ex: Example, lls: Sequence[float], metrics: Sequence[str]) -> dict[str, float]:
    """acc (argmax log-likelihood), acc_norm (per character), mc2 (normalised probability of true answers)."""
    lls_arr = np.asarray(lls, dtype=np.float64)
    out: dict[str, float] = {}
    if ex.labels is not None:  # MC2: several true answers
        probs = np.exp(lls_arr - lls_arr.max())
        probs /= probs.sum()
        out["mc2"] = float(probs[np.asarray(ex.labels) == 1].sum())
        if "acc" in metrics:
            out["acc"] = float(ex.labels[int(np.argmax(lls_arr))] == 1)
        return out
    lengths = np.asarray([float(len(c)) for c in ex.choices], dtype=np.float64)
    if "acc" in metrics:
        out["acc"] = float(int(np.argmax(lls_arr)) == ex.label)
    if "acc_norm" in metrics:
        out["acc_norm"] = float(int(np.argmax(lls_arr / lengths)) == ex.label)
    return out


def generation_scores(spec: TaskSpec, ex: Example, generation: str) -> tuple[dict[str, float], dict[str, str]]:
    """exact_match per answer filter (e.g. GSM8K strict-match / flexible-extract) and the extracted answers."""
    ans = spec.answer
    scores, extracted = {}, {}
    if ans.get("kind") == "minerva":
        from .math_answers import normalize_final_answer, stated_final_answer
        extracted["minerva"] = normalize_final_answer(stated_final_answer(generation))
        scores["exact_match"] = float(minerva_equal(generation, ex.target))
        return scores, extracted
    compare = dict(regexes_to_ignore=ans.get("regexes_to_ignore", []), ignore_case=ans.get("ignore_case", False),
                   ignore_punctuation=ans.get("ignore_punctuation", False))
    filters = ans.get("filters") or [{"name": "none"}]
    for i, f in enumerate(filters):
        name = f.get("name", f"filter{i}")
        pred = generation if "regex" not in f else regex_extract(
            generation, f["regex"], f.get("group_select", 0), f.get("fallback", "[invalid]"))
        extracted[name] = pred
        key = "exact_match" if i == 0 else f"exact_match,{name}"
        scores[key] = float(exact_match(pred, ex.target, **compare))
    return scores, extracted


def mean_and_stderr(values: Sequence[float]) -> tuple[float, float]:
    """Sample mean and its standard error (sample std / sqrt(n)), as lm-eval reports."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return float("nan"), float("nan")
    if arr.size == 1:
        return float(arr[0]), float("nan")
    return float(arr.mean()), float(arr.std(ddof=1) / math.sqrt(arr.size))


def aggregate(records: list[dict], spec: TaskSpec) -> dict[str, float]:
    """Task-level metrics from per-example records (means + ``<metric>_stderr``; perplexities)."""
    out: dict[str, float] = {}
    if not records:
        return out
    if spec.output_type == "loglikelihood_rolling":
        ll = sum(r["loglikelihood"] for r in records)
        words = sum(r["words"] for r in records)
        nbytes = sum(r["bytes"] for r in records)
        tokens = sum(r["tokens"] for r in records)
        out["word_perplexity"] = math.exp(-ll / words)
        out["byte_perplexity"] = math.exp(-ll / nbytes)
        out["bits_per_byte"] = -ll / nbytes / math.log(2)
        out["token_perplexity"] = math.exp(-ll / tokens)
        return {k: v for k, v in out.items() if k in spec.metrics}
    if spec.output_type == "loglikelihood" and "perplexity" in spec.metrics:
        out["perplexity"] = math.exp(-float(np.mean([r["loglikelihood"] for r in records])))
    keys = [k for k in records[0]["scores"]]
    for k in keys:
        m, se = mean_and_stderr([r["scores"][k] for r in records])
        out[k], out[f"{k}_stderr"] = m, se
    return out
