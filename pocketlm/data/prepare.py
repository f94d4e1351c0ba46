"""`pocketlm data prepare`: the whole pipeline from raw files to token shards + manifest + rejects."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from rich.progress import Progress

from pocketlm.data.decontaminate import NgramIndex
from pocketlm.data.dedup import NearDupConfig, NearDuplicateIndex, exact_key
from pocketlm.data.normalize import normalize_text
from pocketlm.data.quality import HeuristicConfig, cross_fit_perplexities, heuristic_reject_reason, BigramLM
from pocketlm.data.readers import DataError, Document, read_documents
from pocketlm.data.shards import MANIFEST, token_dtype, write_shards
from pocketlm.data.tokenizer import TextTokenizer
from pocketlm.utils import atomic_dir, atomic_path, atomic_write_text


@dataclass
class PrepareConfig:
    inputs: list[str]
    out_dir: str
    text_field: str = "text"
    tokenizer: str | None = None  # path to tokenizer.json / .model; None: train a byte-level BPE
    vocab_size: int = 2048
    near_dup: NearDupConfig = field(default_factory=NearDupConfig)
    heuristics: HeuristicConfig = field(default_factory=HeuristicConfig)
    quality_reference: list[str] | None = None  # texts for the reference LM; None: 2-fold cross-fit
    max_perplexity_quantile: float = 0.98  # reject documents above this quantile of perplexity
    hq_fraction: float = 0.3  # lowest-perplexity share of kept training documents forming the "hq" split
    decontaminate: str | None = None  # folder of evaluation sets
    decontam_ngram: int = 13
    val_fraction: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        def need(ok: bool, option: str, rule: str) -> None:
            if not ok:
                raise DataError(f"{option}: {rule}")

        need(0.0 <= self.val_fraction < 1.0, "--val-fraction", f"{self.val_fraction} must be in [0, 1) "
             "(the share of documents held out; 1 would leave nothing to train on)")
        need(0.0 < self.hq_fraction <= 1.0, "--hq-fraction", f"{self.hq_fraction} must be in (0, 1]")
        need(0.0 < self.max_perplexity_quantile <= 1.0, "--max-perplexity-quantile",
             f"{self.max_perplexity_quantile} must be in (0, 1]")
        need(0.0 < self.near_dup.threshold <= 1.0, "--near-dup-threshold",
             f"{self.near_dup.threshold} must be in (0, 1]")
        need(self.heuristics.min_words >= 0, "--min-words", f"{self.heuristics.min_words} must be >= 0")
        need(self.decontam_ngram > 0, "decontam_ngram", "must be positive")
        need(self.tokenizer is not None or self.vocab_size >= 260, "--vocab-size",
             f"{self.vocab_size} is too small for byte-level BPE; use >= 260")
        need(bool(self.inputs), "inputs", "give at least one file or folder")


def _split_of(doc_id: str, val_fraction: float, seed: int) -> str:
    h = int(hashlib.sha256(f"{seed}:{doc_id}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "val" if h < val_fraction else "train"


def prepare(cfg: PrepareConfig, progress: bool = True) -> dict:
    """Run the pipeline; write shards, manifest.json, rejects.jsonl (and tokenizer.json) to cfg.out_dir.

    The folder is built beside cfg.out_dir and swapped in whole, so an interrupted run leaves the old
    dataset (or none), never new files beside an old manifest. Returns the manifest. Deterministic: same inputs and config give byte-identical outputs.
    """
    with atomic_dir(cfg.out_dir, (MANIFEST,), "dataset") as tmp:  # an old dataset is replaced whole
        return _prepare(cfg, tmp, progress)


def _prepare(cfg: PrepareConfig, out: Path, progress: bool) -> dict:
    rejects: list[dict] = []
    source_stats: dict[str, Counter] = {}

    def reject(doc: Document, stage: str, reason: str) -> None:
        rejects.append({"id": doc.id, "source": doc.source, "stage": stage, "reason": reason, "text": doc.text})
        source_stats[doc.source][f"rejected_{stage}"] += 1

    docs: list[Document] = []
    for doc in read_documents(cfg.inputs, cfg.text_field):
        source_stats.setdefault(doc.source, Counter())["documents_in"] += 1
        source_stats[doc.source]["chars_in"] += len(doc.text)
        docs.append(Document(doc.id, normalize_text(doc.text), doc.source))
    if not docs:
        raise DataError(f"{cfg.inputs}: no documents found")

    decontam = None
    if cfg.decontaminate:
        decontam = NgramIndex.from_eval_dir(cfg.decontaminate, n=cfg.decontam_ngram)

    # 1. exact dedup, 2. heuristics, 3. decontamination, 4. near-dup (cheap stages first)
    seen: dict[str, str] = {}
    near = NearDuplicateIndex(cfg.near_dup)
    stage1: list[Document] = []
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("filtering documents", total=len(docs))
        for doc in docs:
            bar.advance(task)
            if not doc.text:
                reject(doc, "empty", "empty after normalisation")
                continue
            key = exact_key(doc.text)
            if key in seen:
                reject(doc, "exact_dup", f"identical to {seen[key]}")
                continue
            seen[key] = doc.id
            reason = heuristic_reject_reason(doc.text, cfg.heuristics)
            if reason:
                reject(doc, "heuristic", reason)
                continue
            if decontam is not None:
                hit = decontam.match(doc.text)
                if hit:
                    reject(doc, "decontamination", f"{cfg.decontam_ngram}-gram shared with {hit[0]}: '{hit[1]}'")
                    continue
            dup = near.check(doc.id, doc.text)
            if dup:
                reject(doc, "near_dup", f"MinHash Jaccard {dup[1]:.2f} with {dup[0]}")
                continue
            stage1.append(doc)

    # 5. model-based quality: perplexity under a word-bigram reference LM
    if cfg.quality_reference:
        ref_texts = [normalize_text(d.text) for d in read_documents(cfg.quality_reference, cfg.text_field)]
        lm = BigramLM().fit(ref_texts)
        ppl = {d.id: lm.perplexity(d.text) for d in stage1}
    else:
        ppl = cross_fit_perplexities([d.id for d in stage1], [d.text for d in stage1])
    limit = float(np.quantile([ppl[d.id] for d in stage1], cfg.max_perplexity_quantile)) if stage1 else 0.0
    kept: list[Document] = []
    for d in stage1:
        if ppl[d.id] > limit:
            reject(d, "quality_model", f"perplexity {ppl[d.id]:.2f} > {limit:.2f} "
                                       f"(quantile {cfg.max_perplexity_quantile})")
        else:
            kept.append(d)

    if not kept:
        stages = dict(sorted(Counter(r["stage"] for r in rejects).items()))
        raise DataError(f"{cfg.inputs}: all {len(docs)} documents were rejected ({stages}); nothing to tokenize. "
                        "Loosen the filters (e.g. --min-words) or add data")

    # 6. tokenizer
    if cfg.tokenizer:
        tok = TextTokenizer.load(cfg.tokenizer)
    else:
        train_texts = [d.text for d in kept if _split_of(d.id, cfg.val_fraction, cfg.seed) == "train"]
        tok = TextTokenizer.train_bpe(train_texts, vocab_size=cfg.vocab_size)
    if tok.kind == "tokenizers":
        tok.save(out)

    # 7. split, tokenize, pack
    splits: dict[str, list[Document]] = {"train": [], "val": []}
    for d in kept:
        splits[_split_of(d.id, cfg.val_fraction, cfg.seed)].append(d)
    train_sorted = sorted(splits["train"], key=lambda d: (ppl[d.id], d.id))
    n_hq = max(1, int(round(cfg.hq_fraction * len(train_sorted)))) if train_sorted else 0
    hq_ids = {d.id for d in train_sorted[:n_hq]}
    splits["hq"] = [d for d in splits["train"] if d.id in hq_ids]

    manifest_splits = {}
    for name, split_docs in splits.items():
        if not split_docs:
            continue
        tokens = tok.encode_batch([d.text for d in split_docs])
        manifest_splits[name] = write_shards(out, name, tokens, tok.eos_id, tok.vocab_size)
    for d in kept:
        source_stats[d.source]["documents_kept"] += 1
        source_stats[d.source]["chars_kept"] += len(d.text)

    with atomic_path(out / "rejects.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejects), encoding="utf-8")
    with atomic_path(out / "quality_scores.jsonl") as tmp:
        tmp.write_text("".join(json.dumps({"id": d.id, "perplexity": round(ppl[d.id], 3)}) + "\n"
                               for d in stage1))
    config = asdict(cfg)
    manifest = {
        "format": "pocketlm-shards-v1",
        "dtype": token_dtype(tok.vocab_size).name,
        "tokenizer": tok.describe(),
        "splits": manifest_splits,
        "documents": {"read": len(docs), "kept": len(kept), "rejected": len(rejects)},
        "rejects_by_stage": dict(sorted(Counter(r["stage"] for r in rejects).items())),
        "sources": {s: dict(sorted(c.items())) for s, c in sorted(source_stats.items())},
        "quality_perplexity_limit": round(limit, 3),
        "config": config,
    }
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2))
    return manifest
