"""A tokenizer as llama.cpp's GGUF vocabulary: tokens, merges or scores, token types, special ids and
the pre-tokenizer llama.cpp splits text with, so llama.cpp tokenizes text as transformers does.

Read from a Hugging Face `tokenizer.json` (byte-level BPE), GPT-2's `vocab.json`/`encoder.json` +
`merges.txt`/`vocab.bpe`, or a SentencePiece `tokenizer.model` (Llama-2 style), given as the file or
its directory. The pre-tokenizer name is read off the tokenizer's own split pattern (`PRE_TOKENIZERS`),
not guessed from the model's name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pocketlm.export.errors import GGUFExportError

# llama.cpp token types (llama_token_type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# a byte-level BPE tokenizer's split regex -> llama.cpp's pre-tokenizer of that regex
CL100K = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
          r"|\s+(?!\S)|\s+")
PRE_TOKENIZERS = {
    None: "gpt-2",  # ByteLevel(use_regex=True): GPT-2's own pattern
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+":
        "qwen2",
    CL100K: "llama-bpe",  # Llama-3, OLMo-2 (cl100k's pattern)
}


@dataclass
class Vocab:
    model: str  # llama.cpp tokenizer model: "gpt2" (byte-level BPE) or "llama" (SentencePiece)
    pre: str  # pre-tokenizer name
    tokens: list[str]
    types: list[int]
    merges: list[str] = field(default_factory=list)
    scores: list[float] | None = None
    special: dict[str, int] = field(default_factory=dict)  # bos/eos/unk/pad -> id
    add_bos: bool = False
    add_eos: bool = False
    source: str = ""


def read_vocab(source: str | Path, vocab_size: int) -> Vocab:
    """The tokenizer at `source` (a file or a model directory) padded to the model's `vocab_size`."""
    path = Path(source)
    candidates = [path] if path.is_file() else [path / n for n in ("tokenizer.json", "tokenizer.model",
                                                                  "vocab.json", "encoder.json")]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise GGUFExportError(f"no tokenizer at {source}: give a tokenizer.json, a SentencePiece tokenizer.model "
                              "or GPT-2's vocab.json + merges.txt (or their directory), or export without a "
                              "tokenizer (a stand-in vocabulary; llama.cpp then runs on token ids)")
    if found.suffix == ".model":
        vocab = _sentencepiece(found)
    elif found.name in ("vocab.json", "encoder.json"):
        vocab = _gpt2_files(found)
    else:
        vocab = _tokenizer_json(found)
    _config_specials(vocab, found.parent)
    if len(vocab.tokens) > vocab_size:
        raise GGUFExportError(f"{found}: {len(vocab.tokens)} tokens do not fit the model's vocab_size {vocab_size}; "
                              "export with the model's own tokenizer")
    for i in range(len(vocab.tokens), vocab_size):  # embedding rows past the tokenizer (padding), as llama.cpp pads
        vocab.tokens.append(f"[PAD{i}]")
        vocab.types.append(UNUSED)
        if vocab.scores is not None:
            vocab.scores.append(-1000.0)
    vocab.source = str(found)
    return vocab


def write_vocab(w: Any, vocab: Vocab | None, vocab_size: int) -> None:
    """Tokenizer metadata on a GGUFWriter; None: llama.cpp's `none` model (token ids only)."""
    if vocab is None:
        w.add_tokenizer_model("none")
        return
    w.add_tokenizer_model(vocab.model)
    w.add_tokenizer_pre(vocab.pre)
    w.add_token_list(vocab.tokens)
    w.add_token_types(vocab.types)
    if vocab.scores is not None:
        w.add_token_scores(vocab.scores)
    if vocab.merges:
        w.add_token_merges(vocab.merges)
    for name, idx in vocab.special.items():
        getattr(w, f"add_{name}_token_id")(idx)
    w.add_add_bos_token(vocab.add_bos)
    w.add_add_eos_token(vocab.add_eos)


def _bpe(vocab_map: dict[str, int], merges: list, added: list[dict], pre: str) -> Vocab:
    index = dict(vocab_map)
    for t in added:
        index[t["content"]] = t["id"]
    n = max(index.values()) + 1
    tokens, types = [f"[PAD{i}]" for i in range(n)], [UNUSED] * n
    for text, idx in index.items():
        tokens[idx], types[idx] = text, NORMAL
    for t in added:
        types[t["id"]] = CONTROL if t.get("special") else USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    vocab = Vocab("gpt2", pre, tokens, types, merges)
    end = next((index[s] for s in ("<|endoftext|>", "</s>") if s in index), None)
    if end is not None:
        vocab.special.update(bos=end, eos=end)
    return vocab


def _tokenizer_json(path: Path) -> Vocab:
    spec = json.loads(path.read_text(encoding="utf-8"))
    model = spec.get("model", {})
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise GGUFExportError(f"{path}: a {model.get('type')} tokenizer.json; pocketlm writes byte-level BPE "
                              "tokenizer.json files and SentencePiece tokenizer.model files")
    pattern, byte_level = _split_pattern(spec.get("pre_tokenizer") or {})
    if not byte_level or model.get("byte_fallback"):
        raise GGUFExportError(f"{path}: not a byte-level BPE (a SentencePiece-style BPE tokenizer.json); "
                              "give its tokenizer.model instead")
    if pattern not in PRE_TOKENIZERS:
        raise GGUFExportError(f"{path}: llama.cpp has no pre-tokenizer known to pocketlm for the split pattern "
                              f"{pattern!r}; known: {sorted(PRE_TOKENIZERS.values())}")
    return _bpe(model["vocab"], model.get("merges", []), spec.get("added_tokens", []), PRE_TOKENIZERS[pattern])


def _split_pattern(pre: dict) -> tuple[str | None, bool]:
    """(the Split regex, whether a ByteLevel step is there) of a tokenizer.json pre_tokenizer."""
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    pattern, byte_level = None, False
    for step in steps:
        if step.get("type") == "Split":
            pattern = step["pattern"].get("Regex", step["pattern"].get("String"))
        elif step.get("type") == "ByteLevel":
            byte_level = True
            if step.get("use_regex", True) and pattern is not None:
                raise GGUFExportError("a Split pattern and ByteLevel's own regex together are not supported")
    return pattern, byte_level


def _gpt2_files(path: Path) -> Vocab:
    merges_file = next((path.parent / n for n in ("merges.txt", "vocab.bpe") if (path.parent / n).is_file()), None)
    if merges_file is None:
        raise GGUFExportError(f"{path}: GPT-2's merges (merges.txt or vocab.bpe) must sit beside it")
    merges = [line for line in merges_file.read_text(encoding="utf-8").splitlines()
              if line and not line.startswith("#version")]
    vocab_map = json.loads(path.read_text(encoding="utf-8"))
    added = [{"content": "<|endoftext|>", "id": vocab_map["<|endoftext|>"], "special": True}] \
        if "<|endoftext|>" in vocab_map else []
    return _bpe(vocab_map, merges, added, "gpt-2")


def _sentencepiece(path: Path) -> Vocab:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(path))
    tokens, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(float(sp.get_score(i)))
        types.append(UNKNOWN if sp.is_unknown(i) else CONTROL if sp.is_control(i) else BYTE if sp.is_byte(i)
                     else UNUSED if sp.is_unused(i) else NORMAL)
    special = {name: idx for name, idx in (("bos", sp.bos_id()), ("eos", sp.eos_id()), ("unk", sp.unk_id()),
                                           ("pad", sp.pad_id())) if idx >= 0}
    return Vocab("llama", "default", tokens, types, scores=scores, special=special, add_bos=True)


def _config_specials(vocab: Vocab, folder: Path) -> None:
    """bos/eos/pad and add_bos from a tokenizer_config.json beside the tokenizer, when there is one."""
    config = folder / "tokenizer_config.json"
    if not config.is_file():
        return
    cfg = json.loads(config.read_text(encoding="utf-8"))
    index = {t: i for i, t in enumerate(vocab.tokens)}
    for name in ("bos", "eos", "pad", "unk"):
        token = cfg.get(f"{name}_token")
        token = token.get("content") if isinstance(token, dict) else token
        if token in index:
            vocab.special[name] = index[token]
        elif f"{name}_token" in cfg and token is None and name == "bos":
            vocab.special.pop("bos", None)
    if "add_bos_token" in cfg:
        vocab.add_bos = bool(cfg["add_bos_token"])
    if "add_eos_token" in cfg:
        vocab.add_eos = bool(cfg["add_eos_token"])
