"""Malformed data and training settings: `pocketlm data prepare` inputs and options, token shards and
manifests, TrainConfig fields and `pocketlm train` options. Each refusal names the option or file."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from tests.fuzz.conftest import assert_one_line, assert_refused, run_cli, write_tiny_corpus


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """80 TinyStories documents from the bundled corpus (enough for the filters and a 300-token BPE)."""
    return write_tiny_corpus(tmp_path_factory.mktemp("corpus") / "stories.jsonl", 80)


@pytest.fixture(scope="session")
def dataset(tmp_path_factory, corpus) -> Path:
    out = tmp_path_factory.mktemp("ds") / "data"
    code, text = run_cli("data", "prepare", corpus, "--out", out, "--vocab-size", 300, "--min-words", 20)
    assert code == 0, text
    return out


def _prepare(corpus: Path, out: Path, *options) -> tuple[int, str]:
    return run_cli("data", "prepare", corpus, "--out", out, "--vocab-size", 300, "--min-words", 20, *options)


PREPARE_OPTIONS = [
    ("--val-fraction", "1.5"), ("--val-fraction", "-0.1"), ("--val-fraction", "1.0"),
    ("--hq-fraction", "-1"), ("--hq-fraction", "0"), ("--hq-fraction", "2"),
    ("--max-perplexity-quantile", "0"), ("--max-perplexity-quantile", "1.5"),
    ("--near-dup-threshold", "0"), ("--near-dup-threshold", "2"), ("--min-words", "-1"),
    ("--vocab-size", "10"), ("--vocab-size", "0"), ("--vocab-size", "-5"),
]


@pytest.mark.parametrize("option,value", PREPARE_OPTIONS, ids=[f"{o}={v}" for o, v in PREPARE_OPTIONS])
def test_prepare_option(tmp_path, corpus, option, value) -> None:
    assert_refused(*_prepare(corpus, tmp_path / "out", option, value), option)
    assert not (tmp_path / "out").exists()


INPUTS = {
    "empty.jsonl": b"", "blank.txt": b"\n\n\n", "bad.jsonl": b'{"text": "a"}\n{oops\n',
    "nofield.jsonl": b'{"body": "some words"}\n', "list.jsonl": b"[1, 2]\n", "garbage.txt": bytes(range(128, 256)),
    "fake.jsonl.gz": b"not gzip at all", "data.xml": b"<doc>text</doc>", "number.jsonl": b'{"text": 5}\n',
}


@pytest.mark.parametrize("name", sorted(INPUTS))
def test_prepare_bad_input(tmp_path, name) -> None:
    f = tmp_path / name
    f.write_bytes(INPUTS[name])
    assert_refused(*run_cli("data", "prepare", f, "--out", tmp_path / "out", "--vocab-size", 300), name)


def test_prepare_missing_input(tmp_path) -> None:
    assert_refused(*run_cli("data", "prepare", tmp_path / "gone.jsonl", "--out", tmp_path / "o"), "gone.jsonl")


def test_prepare_empty_folder(tmp_path) -> None:
    (tmp_path / "in").mkdir()
    assert_refused(*run_cli("data", "prepare", tmp_path / "in", "--out", tmp_path / "o"), "in")


def test_prepare_rejecting_everything_fails(tmp_path, corpus) -> None:
    code, text = run_cli("data", "prepare", corpus, "--out", tmp_path / "out", "--vocab-size", 300,
                         "--min-words", 100000)
    assert_refused(code, text, "rejected", "--min-words")
    assert not (tmp_path / "out").exists()


def test_prepare_out_under_a_file(tmp_path, corpus) -> None:
    (tmp_path / "file").write_text("x")
    assert_refused(*_prepare(corpus, tmp_path / "file" / "out"), "--out")


def test_prepare_never_replaces_a_folder_that_is_not_a_dataset(tmp_path, corpus) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    assert_refused(*_prepare(corpus, out), "mine")
    assert (out / "notes.txt").read_text() == "precious"


@pytest.mark.parametrize("content", [None, "{}", "not json"])
def test_prepare_bad_tokenizer(tmp_path, corpus, content) -> None:
    tok = tmp_path / "tokenizer.json"
    if content is not None:
        tok.write_text(content)
    assert_refused(*_prepare(corpus, tmp_path / "out", "--tokenizer", tok), "tokenizer.json")


def test_prepare_missing_decontamination_folder(tmp_path, corpus) -> None:
    assert_refused(*_prepare(corpus, tmp_path / "out", "--decontaminate", tmp_path / "nowhere"), "nowhere")


def test_prepare_is_accepted(dataset) -> None:
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert manifest["splits"]["train"]["tokens"] > 0
    assert not list(dataset.parent.glob(".data.*.tmp"))


# ---- manifests and shards -------------------------------------------------------------------------------
def _copy(dataset: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(dataset, tmp_path / "data"))


MANIFESTS = {"invalid": "{", "list": "[]", "no_tokenizer": '{"splits": {}, "dtype": "uint16"}',
             "bad_dtype": '{"splits": {}, "dtype": "float128x", "tokenizer": {"vocab_size": 300}}',
             "zero_vocab": '{"splits": {}, "dtype": "uint16", "tokenizer": {"vocab_size": 0}}'}


@pytest.mark.parametrize("kind", sorted(MANIFESTS))
def test_broken_manifest(tmp_path, dataset, kind) -> None:
    from pocketlm.data.shards import TokenSplit

    d = _copy(dataset, tmp_path)
    (d / "manifest.json").write_text(MANIFESTS[kind])
    with pytest.raises(ValueError) as err:
        TokenSplit.open(d, "train")
    assert_one_line(err.value, "manifest.json")


def test_shard_ids_past_the_vocabulary(tmp_path, dataset) -> None:
    from pocketlm.data.shards import TokenSplit

    d = _copy(dataset, tmp_path)
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["tokenizer"]["vocab_size"] = 100
    (d / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError) as err:
        TokenSplit.open(d, "train")
    assert_one_line(err.value, "train_00000.bin", "past the tokenizer")


def test_truncated_shard(tmp_path, dataset) -> None:
    from pocketlm.data.shards import TokenSplit

    d = _copy(dataset, tmp_path)
    shard = d / "train_00000.bin"
    shard.write_bytes(shard.read_bytes()[:-4])
    with pytest.raises(ValueError) as err:
        TokenSplit.open(d, "train")
    assert_one_line(err.value, "train_00000.bin")


def test_corrupt_shard_fails_verification(tmp_path, dataset) -> None:
    from pocketlm.data.shards import TokenSplit

    d = _copy(dataset, tmp_path)
    shard = d / "train_00000.bin"
    data = bytearray(shard.read_bytes())
    data[0:2] = b"\x01\x00" if data[0:2] != b"\x01\x00" else b"\x02\x00"
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError) as err:
        TokenSplit.open(d, "train", verify=True)
    assert_one_line(err.value, "checksum")


def test_token_ids_past_the_model_vocabulary_are_named() -> None:
    import torch

    from pocketlm.model.config import ModelConfig
    from pocketlm.model.transformer import Transformer

    model = Transformer(ModelConfig(vocab_size=16, d_model=16, n_layer=1, n_head=2, intermediate_size=16))
    with pytest.raises(ValueError) as err:
        model(torch.tensor([[1, 2, 40]]))
    assert_one_line(err.value, "token id 40", "vocabulary")


# ---- training settings --------------------------------------------------------------------------------------
TRAIN_FIELDS = [
    ("grad_clip", -1.0), ("grad_clip", 0.0), ("grad_clip", math.nan), ("mup_base_width", 0), ("mup_base_width", -1),
    ("lr", 0.0), ("lr", -1e-3), ("lr", math.nan), ("steps", 0), ("steps", -1), ("batch_size", 0),
    ("micro_batch", 0), ("micro_batch", 3), ("warmup_steps", -1), ("warmup_steps", 200), ("hq_weight", 1.5),
    ("decay_fraction", 0.0), ("schedule", "linear"), ("eval_every", 0), ("ckpt_every", 0), ("weight_decay", -1.0),
    ("beta1", 1.0), ("beta2", -0.5), ("threads", 0), ("seq_len", 1), ("eps", 0.0), ("min_lr_ratio", -0.1),
    ("eval_windows", 0), ("log_every", 0), ("steps", "ten"),
]


@pytest.mark.parametrize("field,value", TRAIN_FIELDS, ids=[f"{f}={v!r}" for f, v in TRAIN_FIELDS])
def test_train_config_field(field, value) -> None:
    from pocketlm.train.config import TrainConfig

    with pytest.raises(ValueError) as err:
        TrainConfig(**{field: value}).validate()
    assert_one_line(err.value, field)


TRAIN_CLI = [("--grad-clip", "-1", "grad_clip"), ("--mup-base-width", "0", "mup_base_width"),
             ("--steps", "0", "steps"), ("--seq-len", "100000", "seq_len"), ("--lr", "-1", "lr"),
             ("--batch-size", "0", "batch_size")]


@pytest.mark.parametrize("option,value,field", TRAIN_CLI, ids=[o for o, _, _ in TRAIN_CLI])
def test_train_option(tmp_path, dataset, option, value, field) -> None:
    code, text = run_cli("train", "--preset", "micro", "--data", dataset, "--out", tmp_path / "run",
                         "--no-progress", option, value, *(["--mup"] if field == "mup_base_width" else []))
    assert_refused(code, text, field)


@pytest.mark.parametrize("content,name", [("{", "bad.json"), ('{"d_model": 0}', "zero.json"),
                                          ('{"vocab_size": 10, "d_model": 32, "n_layer": 1, "n_head": 2}',
                                           "small_vocab.json")])
def test_train_model_config(tmp_path, dataset, content, name) -> None:
    cfg = tmp_path / name
    cfg.write_text(content)
    code, text = run_cli("train", "--preset", "micro", "--data", dataset, "--out", tmp_path / "run", "--model-config", cfg,
                         "--steps", "10", "--no-progress")
    assert_refused(code, text, name if name != "small_vocab.json" else "vocab_size")


@pytest.mark.parametrize("make", ["missing", "no_manifest"])
def test_train_data_folder(tmp_path, make) -> None:
    data = tmp_path / "data"
    if make == "no_manifest":
        data.mkdir()
    assert_refused(*run_cli("train", "--data", data, "--out", tmp_path / "run", "--no-progress"), "data")


def test_prepare_fifo_input_is_named_as_such(tmp_path) -> None:
    import os

    os.mkfifo(tmp_path / "pipe.jsonl")
    assert_refused(*run_cli("data", "prepare", tmp_path / "pipe.jsonl", "--out", tmp_path / "o"), "pipe.jsonl",
                   "not a regular file")
