"""Trained reference models, cached outside the repo (~/.cache/pocketlm or $POCKETLM_CACHE), keyed by a
hash of model config + training config + data + code version, so a changed input retrains."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

import pocketlm
from pocketlm.data import bundled_corpus_files
from pocketlm.data.quality import HeuristicConfig
from pocketlm.data.shards import MANIFEST
from pocketlm.data.tokenizer import TextTokenizer
from pocketlm.model.config import ModelConfig
from pocketlm.model.transformer import Transformer
from pocketlm.train.config import TrainConfig, preset
from pocketlm.utils import atomic_write_text, cache_root

PKG = Path(pocketlm.__file__).resolve().parent
# the code whose changes alter prepared data or trained weights (not CLIs, demos, reports)
CODE_FILES = [PKG / "data" / f"{m}.py" for m in ("readers", "normalize", "dedup", "quality", "decontaminate",
                                                 "tokenizer", "shards", "prepare")] + \
             [PKG / "train" / f"{m}.py" for m in ("batches", "checkpoint", "config", "loop", "metrics", "mup",
                                                  "schedule", "trainer")] + \
             [PKG / "model" / "transformer.py", PKG / "model" / "config.py"]
# the bundled corpus is short stories: Gopher's 50-word minimum would drop a sixth of them
BUNDLED_MIN_WORDS = 20


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(hashlib.sha256(p).digest())
    return h.hexdigest()[:16]


def code_version() -> str:
    return _digest(pocketlm.__version__.encode(), *(f.read_bytes() for f in CODE_FILES if f.is_file()))


def bundled_data_dir(progress: bool = False) -> Path:
    """Token shards of the bundled corpus (prepared once per corpus + code version)."""
    files = bundled_corpus_files()
    key = _digest(*(f.read_bytes() for f in files), code_version().encode(), str(BUNDLED_MIN_WORDS).encode())
    out = cache_root() / "data" / f"bundled-{key}"
    if not (out / MANIFEST).is_file():
        from pocketlm.data.prepare import PrepareConfig, prepare  # here: its MinHash (datasketch, scipy) costs ~1 s

        prepare(PrepareConfig([str(f) for f in files], str(out),  # built beside and swapped in whole
                              heuristics=HeuristicConfig(min_words=BUNDLED_MIN_WORDS)), progress=progress)
    return out


def books_data_dir(paths: list[Path], progress: bool = False) -> Path:
    """Token shards of Project Gutenberg books (`paths`: the plain-text files with their license header and
    footer), each cut as the corpus cuts Alice (`gutenberg_documents`: ~250-word chunks between the
    START/END markers) and written as one gzip JSON Lines file per book under the cache, then prepared
    with `prepare`'s defaults (byte-level BPE of the bundled vocabulary size); once per books + code version."""
    from pocketlm.data.corpus.build import gutenberg_documents, write_jsonl_gz

    paths = sorted(Path(p) for p in paths)
    key = _digest(*(p.name.encode() + p.read_bytes() for p in paths), code_version().encode())
    root = cache_root() / "data" / f"books-{key}"
    out = root / "shards"
    if not (out / MANIFEST).is_file():
        from pocketlm.data.prepare import PrepareConfig, prepare  # here: its MinHash (datasketch, scipy) costs ~1 s

        src = root / "chunks"
        src.mkdir(parents=True, exist_ok=True)
        for p in paths:
            write_jsonl_gz(src / f"{p.stem}.jsonl.gz", gutenberg_documents(p.read_text(encoding="utf-8")), p.stem)
        prepare(PrepareConfig([str(src)], str(out)), progress=progress)
    return out


def fixture_key(model_cfg: ModelConfig, tcfg: TrainConfig, data_dir: Path) -> str:
    t = tcfg.to_dict()
    for volatile in ("data_dir", "out_dir", "progress", "threads"):
        t.pop(volatile)
    manifest = (data_dir / MANIFEST).read_bytes()
    return _digest(json.dumps(model_cfg.to_dict(), sort_keys=True).encode(),
                   json.dumps(t, sort_keys=True).encode(), manifest, code_version().encode())


def export_model_dir(model: Transformer, data_dir: str | Path, out_dir: str | Path) -> Path:
    """Save `model` as a pocketlm checkpoint folder with the data's tokenizer next to it
    (tokenizer.json + tokenizer_config.json, loadable by PreTrainedTokenizerFast / load_tokenizer)."""
    from pocketlm.interop import save_native

    out = Path(out_dir)
    save_native(model, out)
    TextTokenizer.load(Path(data_dir) / "tokenizer.json").save(out)
    return out


def sample(model: Transformer, tok: TextTokenizer, prompt: str, max_new_tokens: int = 60,
           temperature: float = 0.8, top_k: int | None = 40, seed: int = 0) -> str:
    ids = torch.tensor([tok.encode(prompt)])
    out = model.generate(ids, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                         stop_tokens=(tok.eos_id,), pad_token_id=tok.eos_id, seed=seed)
    return tok.decode([t for t in out[0].tolist() if t != tok.eos_id])


def trained_preset(name: str = "tiny", progress: bool = False, threads: int | None = 1,
                   data_dir: str | Path | None = None, model: dict | None = None,
                   **overrides) -> tuple[Path, dict]:
    """Train preset `name` on the bundled corpus (or on the prepared shards in `data_dir`), or reuse the
    cached result; return the model folder (pocketlm checkpoint + tokenizer) and its training summary.
    `model` changes ModelConfig fields of the preset (e.g. a size between two presets), `overrides`
    TrainConfig fields; both are part of the cache key.

    `threads` defaults to 1: on a shared 2-core machine torch's default of 2 OpenMP threads per
    process collapsed to ~200 tokens/s (threads spin-waiting on each other) while 1 thread kept
    ~5,500 tokens/s for the tiny preset; pass None to use torch's default on a dedicated machine."""
    data_dir = Path(data_dir) if data_dir is not None else bundled_data_dir(progress)
    vocab = json.loads((data_dir / MANIFEST).read_text())["tokenizer"]["vocab_size"]
    model_cfg, train_overrides = preset(name, vocab)
    model_cfg = model_cfg.replace(**(model or {}))
    train_overrides.update(overrides)
    return trained_model(name, model_cfg, train_overrides, progress, threads, data_dir)


def trained_model(name: str, model_cfg: ModelConfig, train_overrides: dict, progress: bool = False,
                  threads: int | None = 1, data_dir: str | Path | None = None) -> tuple[Path, dict]:
    """`trained_preset` for any architecture: train `model_cfg` (its `vocab_size` must be the data's)
    with `TrainConfig(**train_overrides)`, cached under `name` and the hash of all inputs."""
    from pocketlm.train.trainer import train

    data_dir = Path(data_dir) if data_dir is not None else bundled_data_dir(progress)
    vocab = json.loads((data_dir / MANIFEST).read_text())["tokenizer"]["vocab_size"]
    if model_cfg.vocab_size != vocab:
        raise ValueError(f"model vocab_size {model_cfg.vocab_size} is not the data's tokenizer's {vocab}")
    tcfg = TrainConfig(data_dir=str(data_dir), progress=progress, threads=threads, **train_overrides)
    key = fixture_key(model_cfg, tcfg, data_dir)
    root = cache_root() / "models" / f"{name}-{key}"
    model_dir, summary_path = root / "model", root / "summary.json"
    if summary_path.is_file() and (model_dir / "pocketlm.json").is_file():
        return model_dir, json.loads(summary_path.read_text())
    tcfg.out_dir = str(root / "run")
    result = train(tcfg, model_cfg)
    export_model_dir(result.model, data_dir, model_dir)
    tok = TextTokenizer.load(model_dir / "tokenizer.json")
    model = result.model.eval()
    samples = [sample(model, tok, p, seed=i) for i, p in enumerate(("Once upon a time", "The little dog",
                                                                     "Alice was"))]
    summary = {"preset": name, "key": key, "val_loss": result.final_val_loss, "steps": result.steps,
               "tokens": result.tokens, "tokens_per_s": result.tokens_per_s, "mfu": result.mfu,
               "params": sum(p.numel() for p in model.parameters()), "vocab_size": vocab,
               "chance_loss": float(torch.log(torch.tensor(float(vocab)))), "samples": samples,
               "loss_curve": str(result.plot_path), "data_dir": str(data_dir)}
    atomic_write_text(summary_path, json.dumps(summary, indent=2))
    return model_dir, summary
