"""Tokenizers: train a byte-level BPE (HF `tokenizers`), or load a tokenizer.json / SentencePiece model."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

from pocketlm.data.readers import DataError
from pocketlm.utils import atomic_write_text

EOS = "<|endoftext|>"


class TextTokenizer:
    """One interface over an HF `tokenizers.Tokenizer` or a SentencePiece model."""

    def __init__(self, backend: object, kind: str, eos_id: int, source: str) -> None:
        self.backend = backend
        self.kind = kind  # "tokenizers" | "sentencepiece"
        self.eos_id = eos_id
        self.source = source

    # --- construction ---------------------------------------------------------------------
    @classmethod
    def train_bpe(cls, texts: Iterable[str], vocab_size: int = 2048, min_frequency: int = 2) -> "TextTokenizer":
        """Train a byte-level BPE (GPT-2 style pre-tokenisation, EOS special token id 0)."""
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        if vocab_size < 260:
            raise DataError(f"vocab_size={vocab_size} is too small for byte-level BPE; use >= 260")
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                      special_tokens=[EOS], show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(list(texts), trainer=trainer)
        return cls(tok, "tokenizers", tok.token_to_id(EOS), "trained:bpe")

    @classmethod
    def load(cls, path: str | Path) -> "TextTokenizer":
        """Load `tokenizer.json` (HF tokenizers) or a SentencePiece `.model`, or a folder holding one."""
        p = Path(path)
        if p.is_dir():
            for name in ("tokenizer.json", "tokenizer.model"):
                if (p / name).is_file():
                    p = p / name
                    break
            else:
                raise DataError(f"{path}: folder has no tokenizer.json or tokenizer.model")
        if not p.is_file():
            raise DataError(f"{p}: tokenizer file not found")
        if p.suffix == ".json":
            from tokenizers import Tokenizer

            try:
                tok = Tokenizer.from_file(str(p))
            except Exception as e:  # the tokenizers library reports every parse failure as Exception
                raise DataError(f"{p}: not a Hugging Face tokenizer.json ({e})") from e
            eos = _find_eos(tok)
            return cls(tok, "tokenizers", eos, str(p))
        if p.suffix == ".model":
            import sentencepiece as spm

            sp = spm.SentencePieceProcessor(model_file=str(p))
            eos = sp.eos_id() if sp.eos_id() >= 0 else 0
            return cls(sp, "sentencepiece", eos, str(p))
        raise DataError(f"{p}: unknown tokenizer format; expected tokenizer.json or a SentencePiece .model")

    # --- use ----------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        if self.kind == "tokenizers":
            return self.backend.get_vocab_size(with_added_tokens=True)
        return self.backend.get_piece_size()

    def encode(self, text: str) -> list[int]:
        if self.kind == "tokenizers":
            return self.backend.encode(text, add_special_tokens=False).ids
        return self.backend.encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if self.kind == "tokenizers":
            return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=False)]
        return [self.backend.encode(t) for t in texts]

    def decode(self, ids: list[int]) -> str:
        return self.backend.decode(list(ids))

    def to_json(self) -> str:
        if self.kind != "tokenizers":
            raise DataError("only HF tokenizers serialise to tokenizer.json; SentencePiece keeps its .model")
        return self.backend.to_str(pretty=False)

    def fingerprint(self) -> str:
        if self.kind == "tokenizers":
            data = self.to_json().encode()
        else:
            data = self.backend.serialized_model_proto()
        return hashlib.sha256(data).hexdigest()

    def save(self, out_dir: str | Path) -> None:
        """Write tokenizer.json (+ tokenizer_config.json) so `PreTrainedTokenizerFast` loads the folder,
        or tokenizer.model for SentencePiece."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if self.kind == "tokenizers":
            atomic_write_text(out / "tokenizer.json", self.to_json())
            eos = self.backend.id_to_token(self.eos_id)
            cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eos, "bos_token": eos,
                   "unk_token": eos, "pad_token": eos, "model_max_length": 1_000_000,
                   "add_bos_token": False, "clean_up_tokenization_spaces": False}
        else:
            from pocketlm.utils import atomic_write_bytes

            atomic_write_bytes(out / "tokenizer.model", self.backend.serialized_model_proto())
            cfg = {"tokenizer_class": "LlamaTokenizer", "model_max_length": 1_000_000}
        atomic_write_text(out / "tokenizer_config.json", json.dumps(cfg, indent=2))

    def describe(self) -> dict:
        return {"kind": self.kind, "source": self.source, "vocab_size": self.vocab_size,
                "eos_id": self.eos_id, "sha256": self.fingerprint()}


def _find_eos(tok: object) -> int:
    for name in (EOS, "</s>", "<eos>", "<|im_end|>", "<|end_of_text|>"):
        i = tok.token_to_id(name)
        if i is not None:
            return i
    return 0
