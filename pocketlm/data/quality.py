"""Quality filters: Gopher / C4-style heuristic rules and a model-based perplexity score.

Rules follow Rae et al. 2021 (Gopher, appendix A: word count, mean word length, symbol ratio,
bullet and ellipsis lines, alphabetic words, stop words, duplicate lines/paragraphs, n-gram
repetition) and Raffel et al. 2020 (C4: lorem ipsum, curly braces). The model-based score is the
perplexity under a word-bigram language model with interpolated absolute discounting (as in CCNet,
Wenzek et al. 2019, which scores documents by a reference LM's perplexity).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

_WORD = re.compile(r"\S+")
_ALPHA = re.compile(r"[^\W\d_]")
_TOKEN = re.compile(r"\w+|[^\w\s]")
STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")
BULLETS = ("•", "●", "○", "▪", "-", "*", "·", "‣", "–")


@dataclass
class HeuristicConfig:
    min_words: int = 50
    max_words: int = 100_000
    min_mean_word_len: float = 3.0
    max_mean_word_len: float = 10.0
    max_symbol_ratio: float = 0.1  # '#' and '...' per word
    max_bullet_lines: float = 0.9
    max_ellipsis_lines: float = 0.3
    min_alpha_words: float = 0.8
    min_stop_words: int = 2
    max_dup_line_frac: float = 0.3
    max_dup_para_frac: float = 0.3
    max_top_ngram_frac: tuple[float, float, float] = (0.20, 0.18, 0.16)  # n = 2, 3, 4 (chars covered)
    max_dup_ngram_frac: tuple[float, ...] = (0.15, 0.14, 0.13, 0.12, 0.11, 0.10)  # n = 5..10
    reject_curly_braces: bool = False  # C4 drops pages with '{' (code); off for prose+code corpora


def heuristic_reject_reason(text: str, cfg: HeuristicConfig | None = None) -> str | None:
    """The first Gopher/C4 rule `text` breaks, as 'rule: measured vs limit', or None if it passes."""
    cfg = cfg or HeuristicConfig()
    words = _WORD.findall(text)
    n = len(words)
    if n < cfg.min_words or n > cfg.max_words:
        return f"word_count: {n} outside [{cfg.min_words}, {cfg.max_words}]"
    mean_len = sum(len(w) for w in words) / n
    if not cfg.min_mean_word_len <= mean_len <= cfg.max_mean_word_len:
        return f"mean_word_length: {mean_len:.2f} outside [{cfg.min_mean_word_len}, {cfg.max_mean_word_len}]"
    symbols = text.count("#") + text.count("...") + text.count("…")
    if symbols / n > cfg.max_symbol_ratio:
        return f"symbol_ratio: {symbols / n:.3f} > {cfg.max_symbol_ratio}"
    lines = [ln for ln in text.split("\n") if ln.strip()]
    if lines:
        bullets = sum(ln.lstrip().startswith(BULLETS) for ln in lines) / len(lines)
        if bullets > cfg.max_bullet_lines:
            return f"bullet_lines: {bullets:.2f} > {cfg.max_bullet_lines}"
        ellipsis = sum(ln.rstrip().endswith(("...", "…")) for ln in lines) / len(lines)
        if ellipsis > cfg.max_ellipsis_lines:
            return f"ellipsis_lines: {ellipsis:.2f} > {cfg.max_ellipsis_lines}"
    alpha = sum(bool(_ALPHA.search(w)) for w in words) / n
    if alpha < cfg.min_alpha_words:
        return f"alphabetic_words: {alpha:.2f} < {cfg.min_alpha_words}"
    lower = {w.lower().strip(".,;:!?\"'()") for w in words}
    stops = sum(s in lower for s in STOP_WORDS)
    if stops < cfg.min_stop_words:
        return f"stop_words: {stops} < {cfg.min_stop_words}"
    if "lorem ipsum" in text.lower():
        return "lorem_ipsum: placeholder text"
    if cfg.reject_curly_braces and "{" in text:
        return "curly_brace: looks like code"
    reason = _repetition_reason(text, lines, [w.lower() for w in words], cfg)
    return reason


def _repetition_reason(text: str, lines: list[str], words: list[str], cfg: HeuristicConfig) -> str | None:
    if len(lines) > 1:
        counts = Counter(lines)
        dup = sum(c for c in counts.values() if c > 1) / len(lines)
        if dup > cfg.max_dup_line_frac:
            return f"duplicate_lines: {dup:.2f} > {cfg.max_dup_line_frac}"
    paras = [p for p in text.split("\n\n") if p.strip()]
    if len(paras) > 1:
        counts = Counter(paras)
        dup = sum(c for c in counts.values() if c > 1) / len(paras)
        if dup > cfg.max_dup_para_frac:
            return f"duplicate_paragraphs: {dup:.2f} > {cfg.max_dup_para_frac}"
    total_chars = sum(len(w) for w in words) or 1
    for n, limit in zip((2, 3, 4), cfg.max_top_ngram_frac):
        grams = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
        if grams:
            gram, count = grams.most_common(1)[0]
            if count > 1:
                frac = count * sum(len(w) for w in gram) / total_chars
                if frac > limit:
                    return f"top_{n}gram_fraction: {frac:.3f} > {limit}"
    for n, limit in zip(range(5, 11), cfg.max_dup_ngram_frac):
        starts = _duplicated_ngram_positions(words, n)
        covered = set()
        for i in starts:
            covered.update(range(i, i + n))
        frac = sum(len(words[i]) for i in covered) / total_chars
        if frac > limit:
            return f"duplicate_{n}gram_fraction: {frac:.3f} > {limit}"
    return None


def _duplicated_ngram_positions(words: list[str], n: int) -> list[int]:
    seen: dict[tuple[str, ...], int] = {}
    positions: list[int] = []
    for i in range(len(words) - n + 1):
        g = tuple(words[i:i + n])
        if g in seen:
            positions.append(i)
            if seen[g] >= 0:
                positions.append(seen[g])
                seen[g] = -1
        else:
            seen[g] = i
    return positions


def lm_tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


class BigramLM:
    """Word-bigram LM with interpolated absolute discounting over a unigram with add-one smoothing.

    p(w|v) = max(c(v,w) - D, 0)/c(v) + D * N1+(v,.)/c(v) * p_uni(w);  p_uni(w) = (c(w)+1)/(N+V+1).
    """

    def __init__(self, discount: float = 0.75) -> None:
        self.discount = discount
        self.unigrams: Counter[str] = Counter()
        self.bigrams: Counter[tuple[str, str]] = Counter()
        self.context_counts: Counter[str] = Counter()
        self.followers: Counter[str] = Counter()
        self.total = 0

    def fit(self, texts: list[str]) -> "BigramLM":
        for text in texts:
            toks = ["<s>"] + lm_tokens(text)
            self.unigrams.update(toks[1:])
            for pair in zip(toks, toks[1:]):
                if pair not in self.bigrams:
                    self.followers[pair[0]] += 1
                self.bigrams[pair] += 1
                self.context_counts[pair[0]] += 1
        self.total = sum(self.unigrams.values())
        return self

    def _p_uni(self, w: str) -> float:
        return (self.unigrams.get(w, 0) + 1) / (self.total + len(self.unigrams) + 1)

    def log_prob(self, prev: str, w: str) -> float:
        p_uni = self._p_uni(w)
        c_ctx = self.context_counts.get(prev, 0)
        if c_ctx == 0:
            return math.log(p_uni)
        c = self.bigrams.get((prev, w), 0)
        lam = self.discount * self.followers[prev] / c_ctx
        return math.log(max(c - self.discount, 0) / c_ctx + lam * p_uni)

    def perplexity(self, text: str) -> float:
        toks = ["<s>"] + lm_tokens(text)
        if len(toks) < 2:
            return float("inf")
        nll = -sum(self.log_prob(a, b) for a, b in zip(toks, toks[1:]))
        return math.exp(nll / (len(toks) - 1))


def cross_fit_perplexities(ids: list[str], texts: list[str], folds: int = 2) -> dict[str, float]:
    """Score every document with a BigramLM fitted on the other folds (folds by a stable hash of the id),
    so no document is scored by a model that saw it."""
    import hashlib

    fold_of = [int(hashlib.md5(i.encode()).hexdigest(), 16) % folds for i in ids]
    scores: dict[str, float] = {}
    for f in range(folds):
        lm = BigramLM().fit([t for t, g in zip(texts, fold_of) if g != f])
        for doc_id, text, g in zip(ids, texts, fold_of):
            if g == f:
                scores[doc_id] = lm.perplexity(text)
    return scores
