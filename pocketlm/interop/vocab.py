"""Tokenizer equality across model directories: what merging and proxy tuning both require."""

from __future__ import annotations

from pathlib import Path

TOKENIZER_MARKERS = ("tokenizer.json", "tokenizer.model", "vocab.json")  # a directory with any of these has one
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja")


class TokenizerMismatch(ValueError):
    """Two models that must share a tokenizer do not."""


def has_tokenizer(path: Path) -> bool:
    return any((path / f).is_file() for f in TOKENIZER_MARKERS)


def check_same_tokenizer(dirs: dict[str, Path], require: bool = False) -> None:
    """Every directory that ships a tokenizer ships the same one (vocabulary and special tokens);
    with `require`, every directory must ship one."""
    from pocketlm.interop import load_tokenizer

    missing = [name for name, p in dirs.items() if not has_tokenizer(p)]
    if require and missing:
        raise TokenizerMismatch(f"{missing}: no tokenizer files (tokenizer.json, tokenizer.model or vocab.json); "
                                "the tokenizers cannot be checked equal")
    with_tok = [(name, p) for name, p in dirs.items() if has_tokenizer(p)]
    if len(with_tok) < 2:
        return
    ref_name, ref = with_tok[0]
    ref_bytes = {f: (ref / f).read_bytes() for f in TOKENIZER_FILES if (ref / f).is_file()}
    ref_tok = None
    for name, p in with_tok[1:]:
        if {f: (p / f).read_bytes() for f in TOKENIZER_FILES if (p / f).is_file()} == ref_bytes:
            continue
        ref_tok = ref_tok or load_tokenizer(ref)
        tok = load_tokenizer(p)
        a, b = ref_tok.get_vocab(), tok.get_vocab()
        if a != b or ref_tok.all_special_tokens != tok.all_special_tokens:
            diff = len(set(a.items()) ^ set(b.items()))
            raise TokenizerMismatch(f"tokenizers differ between {ref_name!r} and {name!r} ({diff} vocabulary entries "
                                    f"differ; special tokens {ref_tok.all_special_tokens} vs "
                                    f"{tok.all_special_tokens}); the models must share one tokenizer")
