"""Shared pieces of the fuzz suite: the CLI run in-process, and what a good refusal looks like.

A refusal is good when the command exits 2 with exactly one `error: ...` line (or click's
`Invalid value for '--option'` panel) that names the file or option at fault, and no traceback.
"""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest


def run_cli(*argv: Any) -> tuple[int, str]:
    """`pocketlm ARGV` in this process through `pocketlm.cli.main` (its error mapping included)."""
    from pocketlm.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with redirect_stdout(out), redirect_stderr(err):
        try:
            main([str(a) for a in argv])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    return code, out.getvalue() + err.getvalue()


def assert_refused(code: int, text: str, *names: str) -> None:
    """Exit 2, one error line (or click's option panel), every one of `names` mentioned, no traceback."""
    assert code == 2, f"expected a refusal (exit 2), got {code}:\n{text}"
    assert "Traceback" not in text, text
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 or "Invalid value" in text, f"expected one error line:\n{text}"
    for name in names:
        assert name in text, f"{name!r} not named in:\n{text}"


def assert_one_line(exc: BaseException, *names: str) -> None:
    """A Python-API refusal: a ValueError subclass whose message is one line naming `names`."""
    msg = str(exc)
    assert isinstance(exc, (ValueError, OSError)), f"{type(exc).__name__}: {msg}"
    assert "\n" not in msg.strip(), msg
    for name in names:
        assert name in msg, f"{name!r} not named in: {msg}"


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def write_tiny_corpus(path: Path, n_docs: int) -> Path:
    """The first `n_docs` TinyStories documents of the bundled corpus, as JSON Lines at `path`."""
    import gzip

    from pocketlm.data import bundled_corpus_files

    with gzip.open(bundled_corpus_files()[0], "rt", encoding="utf-8") as f:
        lines = [next(f) for _ in range(n_docs)]
    path.write_text("".join(lines))
    return path


@pytest.fixture(scope="session")
def hf_tiny_config() -> dict:
    """A valid tiny Llama config.json (transformers' own defaults filled in)."""
    import transformers as T

    from tests.hf_tiny import LLAMA_LIKE

    return T.LlamaConfig(**LLAMA_LIKE).to_dict()


@pytest.fixture(scope="session")
def tiny_model():
    """A tiny pocketlm Transformer (float, Llama-shaped) with seeded random weights."""
    import torch

    from pocketlm.model.config import ModelConfig
    from pocketlm.model.transformer import Transformer

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, d_model=32, n_layer=2, n_head=4, n_kv_head=2, intermediate_size=48,
                      max_seq_len=64, tie_embeddings=False, name="fuzz-tiny")
    return Transformer(cfg).eval()


@pytest.fixture(scope="session")
def hf_dir(tmp_path_factory, tiny_model) -> Path:
    from pocketlm.interop import save_hf

    return save_hf(tiny_model, tmp_path_factory.mktemp("fuzz") / "hf")


@pytest.fixture(scope="session")
def native_dir(tmp_path_factory, tiny_model) -> Path:
    from pocketlm.interop import save_native

    return save_native(tiny_model, tmp_path_factory.mktemp("fuzz") / "native")
