"""GGUF vocabularies: llama.cpp, reading the tokenizer pocketlm wrote, tokenizes real text exactly as
the tokenizer's own library does (tokenizers for byte-level BPE, sentencepiece for Llama-2)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pocketlm.export.gguf import GGUFExportError, export_gguf
from pocketlm.model.config import ModelConfig
from pocketlm.model.transformer import Transformer

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
TOK = SHARED / "tokenizers"
# real text: Wikipedia markup, verse, Chinese prose, a novel (with digits, punctuation, runs of spaces)
TEXTS = {"wikitext": ("wikitext-2/test.txt", 0, 6000), "shakespeare": ("tinyshakespeare/input.txt", 2000, 4000),
         "chinese": ("chinese/三国演义.txt", 2000, 1500), "gutenberg": ("gutenberg/11-0.txt", 2000, 6000)}
TOKENIZERS = {"gpt2": TOK / "gpt2" / "encoder.json", "qwen3": TOK / "qwen3" / "tokenizer.json",
              "olmo2": TOK / "olmo2_dolma2" / "allenai_dolma2.json",
              "gpt_neox": TOK / "gpt_neox_20b" / "allenai_eleuther-ai-gpt-neox-20b-pii-special.json",
              "minimind": TOK / "minimind" / "tokenizer.json", "llama2": TOK / "llama2" / "tokenizer.model"}


def _text(kind: str) -> str:
    name, start, chars = TEXTS[kind]
    text = (SHARED / "text" / name).read_text(encoding="utf-8")[start:start + chars]
    assert len(text) == chars
    return text


def _reference(name: str):
    """Token ids the tokenizer's own library gives (no special tokens added)."""
    path = TOKENIZERS[name]
    if path.suffix == ".model":
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(path))
        return sp.get_piece_size(), lambda text: sp.encode(text)
    from tokenizers import Tokenizer

    if path.name == "encoder.json":
        from tokenizers.models import BPE
        from tokenizers import decoders, pre_tokenizers

        tok = Tokenizer(BPE.from_file(str(path), str(path.parent / "vocab.bpe")))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
    else:
        tok = Tokenizer.from_file(str(path))
    return tok.get_vocab_size(), lambda text: tok.encode(text, add_special_tokens=False).ids


@pytest.mark.parametrize("name", sorted(TOKENIZERS))
def test_llama_cpp_tokenizes_real_text_like_the_tokenizer(name, tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python (optional extra) is not installed")
    if not TOKENIZERS[name].exists():
        pytest.skip(f"{TOKENIZERS[name]} is not here")
    size, encode = _reference(name)
    cfg = ModelConfig(vocab_size=size, d_model=32, n_layer=1, n_head=2, intermediate_size=64, max_seq_len=64)
    path = export_gguf(Transformer(cfg), tmp_path / f"{name}.gguf", "F16", tokenizer_json=TOKENIZERS[name])
    llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    try:
        for kind in TEXTS:
            text = _text(kind)
            got = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
            want = encode(text)
            assert got == want, (name, kind, next(i for i, (a, b) in enumerate(zip(got, want)) if a != b)
                                 if len(got) == len(want) else (len(got), len(want)))
    finally:
        llm.close()


def test_tokenizer_errors_name_the_fix(tmp_path):
    cfg = ModelConfig(vocab_size=64, d_model=32, n_layer=1, n_head=2, intermediate_size=64, max_seq_len=64)
    model = Transformer(cfg)
    with pytest.raises(GGUFExportError, match="no tokenizer at .*tokenizer.json"):
        export_gguf(model, tmp_path / "a.gguf", "F16", tokenizer_json=tmp_path)
    with pytest.raises(GGUFExportError, match="stand_in_vocab=True"):
        export_gguf(model, tmp_path / "a.gguf", "F16", stand_in_vocab=False)
    with pytest.raises(GGUFExportError, match="do not fit the model's vocab_size 64"):
        export_gguf(model, tmp_path / "a.gguf", "F16", tokenizer_json=TOKENIZERS["minimind"])
    assert not (tmp_path / "a.gguf").exists()
