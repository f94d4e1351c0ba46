"""`data prepare` end to end: rejects with reasons, decontamination, tokenizers, shards, determinism, errors."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pocketlm.data import BUNDLED_CORPUS
from pocketlm.data.prepare import PrepareConfig, prepare
from pocketlm.data.quality import HeuristicConfig
from pocketlm.data.readers import DataError, read_documents
from pocketlm.data.shards import TokenSplit
from pocketlm.data.tokenizer import TextTokenizer

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _stories(n: int) -> list[str]:
    with gzip.open(BUNDLED_CORPUS / "tinystories.jsonl.gz", "rt", encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f][:n]


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory) -> Path:
    """200 real stories + one exact duplicate + one near duplicate + one bullet list, as JSONL."""
    stories = _stories(200)
    assert len(stories[8].split()) > 100
    docs = stories + [stories[3], stories[8].replace(".", "!", 2),
                      "\n".join(f"- {sentence}." for sentence in " ".join(stories[4].split()).split(". "))]
    path = tmp_path_factory.mktemp("corpus") / "stories.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path


def _prepare(inputs: list[Path], out: Path, **kw) -> dict:
    cfg = PrepareConfig([str(p) for p in inputs], str(out), vocab_size=512,
                        heuristics=HeuristicConfig(min_words=20), **kw)
    return prepare(cfg, progress=False)


def test_prepare_rejects_with_reasons_and_is_deterministic(small_corpus, tmp_path):
    m1 = _prepare([small_corpus], tmp_path / "a")
    m2 = _prepare([small_corpus], tmp_path / "b")
    assert json.dumps({k: v for k, v in m1.items() if k != "config"}, sort_keys=True) == \
        json.dumps({k: v for k, v in m2.items() if k != "config"}, sort_keys=True)
    for split in m1["splits"].values():
        for shard in split["shards"]:
            assert (tmp_path / "a" / shard["file"]).read_bytes() == (tmp_path / "b" / shard["file"]).read_bytes()
    rejects = [json.loads(line) for line in (tmp_path / "a" / "rejects.jsonl").read_text().splitlines()]
    by_stage = {r["stage"]: r for r in rejects}
    assert by_stage["exact_dup"]["reason"] == "identical to stories:3"
    assert by_stage["near_dup"]["reason"].endswith("with stories:8")
    assert any(r["id"] == "stories:202" and r["reason"].startswith("bullet_lines") for r in rejects)
    assert all(r["text"] and r["reason"] for r in rejects)
    assert m1["documents"]["kept"] + m1["documents"]["rejected"] == m1["documents"]["read"] == 203


def test_shards_hold_the_tokenized_documents_and_tokenizer_loads_in_transformers(small_corpus, tmp_path):
    from transformers import PreTrainedTokenizerFast

    m = _prepare([small_corpus], tmp_path)
    train = TokenSplit.open(tmp_path, "train", verify=True)
    assert train.tokens.dtype == np.uint16 and len(train) == m["splits"]["train"]["tokens"]
    hf = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    eos = m["tokenizer"]["eos_id"]
    first_doc = train.tokens[: int(np.argmax(np.asarray(train.tokens) == eos))].tolist()
    text = hf.decode(first_doc)
    assert hf(text)["input_ids"] == first_doc
    assert text in {d.text for d in read_documents([small_corpus])}
    hq = TokenSplit.open(tmp_path, "hq")
    assert 0 < len(hq) < len(train)
    with pytest.raises(DataError, match="checksum"):
        raw = bytearray((tmp_path / "train_00000.bin").read_bytes())
        raw[10] ^= 1
        (tmp_path / "train_00000.bin").write_bytes(bytes(raw))
        TokenSplit.open(tmp_path, "train", verify=True)


@pytest.mark.skipif(not (SHARED / "eval" / "lambada").is_dir(), reason="../shared/data/eval/lambada not present")
def test_decontamination_drops_documents_quoting_an_eval_set(tmp_path):
    lambada = [json.loads(line) for line in (SHARED / "eval" / "lambada" / "lambada_openai.jsonl").open()][:50]
    stories = _stories(60)
    contaminated = stories[7] + " " + lambada[11]["context"]
    src = tmp_path / "mixed.jsonl"
    src.write_text("".join(json.dumps({"text": d}) + "\n" for d in stories + [contaminated]))
    eval_dir = tmp_path / "eval" / "lambada"
    eval_dir.mkdir(parents=True)
    shutil.copy(SHARED / "eval" / "lambada" / "lambada_openai.jsonl", eval_dir)
    _prepare([src], tmp_path / "out", decontaminate=str(tmp_path / "eval"))
    rejects = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    decon = [r for r in rejects if r["stage"] == "decontamination"]
    assert [r["id"] for r in decon] == ["mixed:60"]
    assert "lambada" in decon[0]["reason"]


@pytest.mark.skipif(not (SHARED / "tokenizers" / "llama2").is_dir(), reason="../shared tokenizers not present")
def test_existing_sentencepiece_and_tokenizer_json_are_used(small_corpus, tmp_path):
    m = _prepare([small_corpus], tmp_path / "sp", tokenizer=str(SHARED / "tokenizers" / "llama2" / "tokenizer.model"))
    assert m["tokenizer"]["kind"] == "sentencepiece" and m["tokenizer"]["vocab_size"] == 32000
    sp = TextTokenizer.load(SHARED / "tokenizers" / "llama2" / "tokenizer.model")
    toks = TokenSplit.open(tmp_path / "sp", "train").tokens
    assert sp.decode(toks[:40].tolist()).split()[:3] == sp.decode(sp.encode(sp.decode(toks[:40].tolist()))).split()[:3]
    m = _prepare([small_corpus], tmp_path / "mm", tokenizer=str(SHARED / "tokenizers" / "minimind" / "tokenizer.json"))
    assert m["tokenizer"]["vocab_size"] == 6400 and m["dtype"] == "uint16"


def test_parquet_and_text_inputs(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    stories = _stories(5)
    pq.write_table(pa.table({"content": stories}), tmp_path / "s.parquet")
    docs = list(read_documents([tmp_path / "s.parquet"], text_field="content"))
    assert [d.text for d in docs] == stories
    (tmp_path / "s.txt").write_text("\n\n".join(stories))
    assert len(list(read_documents([tmp_path / "s.txt"]))) == sum(s.count("\n\n") + 1 for s in stories)


def test_bad_inputs_give_clear_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{not json}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: invalid JSON"):
        list(read_documents([bad]))
    bad.write_text('{"body": "x"}\n')
    with pytest.raises(DataError, match="--text-field"):
        list(read_documents([bad]))
    with pytest.raises(DataError, match="no such file"):
        list(read_documents([tmp_path / "missing.jsonl"]))
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(DataError, match="unsupported file type"):
        list(read_documents([tmp_path / "x.csv"]))
    with pytest.raises(DataError, match="data prepare"):
        TokenSplit.open(tmp_path, "train")


def test_cli_prepare_writes_manifest(small_corpus, tmp_path):
    from typer.testing import CliRunner

    from pocketlm.cli import app

    out = tmp_path / "cli"
    res = CliRunner().invoke(app, ["data", "prepare", str(small_corpus), "--out", str(out), "--vocab-size", "400",
                                   "--min-words", "20"])
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["tokenizer"]["vocab_size"] == 400 and json.loads(res.output[:res.output.rindex("}") + 1])[
        "documents"] == manifest["documents"]
