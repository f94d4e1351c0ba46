"""pocketlm.runtime.open_model: one way to open every kind of MODEL argument at every precision.

The reference for each precision is the path each capability took before the runtime layer existed:
the interop loader (or a seeded Transformer) followed by the transform applied by hand."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as T

from pocketlm.model.quantize import quantize_model
from pocketlm.interop import load_model, save_native
from pocketlm.model.config import ModelConfig
from pocketlm.model.packing import pack_for_cpu
from pocketlm.model.transformer import Transformer
from pocketlm.runtime import ModelOpenError, open_model, open_tokenizer, resolve
from tests.hf_tiny import tiny_config

IDS = torch.arange(1, 33).reshape(2, 16) % 128


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    T.AutoModelForCausalLM.from_config(tiny_config("llama")).save_pretrained(d)
    return d


def _by_hand(path, precision: str) -> Transformer:
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.bfloat16)
    model = load_model(path, dtype=dtype).eval()
    if precision in ("int8", "int4"):
        quantize_model(model, precision, 32)
    return model


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16", "int8", "int4"])
def test_open_model_equals_the_hand_built_path(hf_dir, precision) -> None:
    with torch.inference_mode():
        ours = open_model(hf_dir, precision)(IDS)
        ref = _by_hand(hf_dir, precision)(IDS)
    assert ours.dtype == ref.dtype and torch.equal(ours, ref)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_packed_open_equals_packing_by_hand(hf_dir, precision) -> None:
    with torch.inference_mode():
        ours = open_model(hf_dir, precision, pack=True)
        ref = pack_for_cpu(_by_hand(hf_dir, precision))
        assert ours.packed and torch.equal(ours(IDS), ref(IDS))


def test_every_kind_of_reference_resolves(tmp_path, hf_dir) -> None:
    cfg = resolve(hf_dir).config
    native = save_native(load_model(hf_dir), tmp_path / "native")
    (tmp_path / "pocket.json").write_text(json.dumps(cfg.to_dict()))
    (tmp_path / "config.json").write_text((hf_dir / "config.json").read_text())  # a bare HF config.json
    kinds = {str(hf_dir): "checkpoint", str(native): "checkpoint", str(tmp_path / "pocket.json"): "config",
             str(tmp_path / "config.json"): "config", "SmolLM-135M": "catalog"}
    for text, kind in kinds.items():
        ref = resolve(text)
        assert ref.kind == kind, text
        if kind != "catalog":
            assert ref.config.d_model == cfg.d_model and ref.config.n_layer == cfg.n_layer
    assert resolve("SmolLM-135M").config.d_model == 576
    torch.manual_seed(0)
    seeded = Transformer(ModelConfig.from_dict(cfg.to_dict()))
    with torch.inference_mode():  # random weights come from the seed, as profile's always did
        assert torch.equal(open_model(tmp_path / "pocket.json", seed=0)(IDS), seeded.eval()(IDS))


def test_bad_references_give_one_clear_error(tmp_path) -> None:
    with pytest.raises(ModelOpenError, match="no such directory or file"):
        resolve("no/such/dir")
    with pytest.raises(ModelOpenError, match="no catalog model named 'SmolLM-136M'"):
        resolve("SmolLM-136M")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ModelOpenError, match="broken.json: not valid JSON"):
        resolve(tmp_path / "broken.json")
    (tmp_path / "weights.safetensors").write_bytes(b"")
    with pytest.raises(ModelOpenError, match="is a file; give the model directory"):
        resolve(tmp_path / "weights.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelOpenError, match="neither a pocketlm checkpoint"):
        resolve(tmp_path / "empty")
    with pytest.raises(ModelOpenError, match="unknown precision 'int3'"):
        open_model("SmolLM-135M", "int3")


def test_tokenizer_comes_from_the_checkpoint_or_the_flag(hf_dir, tmp_path) -> None:
    from pocketlm.evaluate.tiny import SHARED

    source = SHARED / "tokenizers/minimind"
    if not (source / "tokenizer.json").is_file():
        pytest.skip("shared/data/tokenizers/minimind is absent")
    assert open_tokenizer(hf_dir) is None  # the tiny model saved none
    assert open_tokenizer("SmolLM-135M") is None  # catalog refs have no files
    text = "Once upon a time, a small model ran on a phone."
    expected = T.AutoTokenizer.from_pretrained(str(source)).encode(text)
    assert open_tokenizer("SmolLM-135M", tokenizer=source).encode(text) == expected  # the flag wins
    with_tok = tmp_path / "with_tok"
    with_tok.mkdir()
    for f in (hf_dir / "config.json", hf_dir / "model.safetensors", *source.iterdir()):
        (with_tok / f.name).write_bytes(f.read_bytes())
    assert open_tokenizer(with_tok).encode(text) == expected  # beside the checkpoint


# ------------------------------------------------------------------ quantized models in eval
@pytest.fixture(scope="module")
def tiny_with_tokenizer(tmp_path_factory):
    from pocketlm.evaluate.tiny import SHARED, save_tiny_llama

    if not (SHARED / "tokenizers/minimind/tokenizer.json").is_file():
        pytest.skip("shared/data/tokenizers/minimind is absent")
    return save_tiny_llama(tmp_path_factory.mktemp("tiny"), seed=0)


def _eval_clis(*runs: tuple) -> list[dict]:
    """The JSON results of `pocketlm eval` on each (model_dir, out, *extra flags), run side by side."""
    import os
    import sys
    from pathlib import Path

    from tests.side_by_side import run_side_by_side

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    for proc in run_side_by_side([[sys.executable, "-m", "pocketlm.cli", "eval", str(model_dir), "--tasks", "arc_easy",
                                   "--limit", "5", "-o", str(out), *extra] for model_dir, out, *extra in runs],
                                 env, timeout=600):
        assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(out.read_text()) for _, out, *_ in runs]


def _scores(res: dict) -> dict:
    return {task: {shot: (entry["metrics"], [r["loglikelihoods"] for r in entry["records"]])
                   for shot, entry in by_shot.items()} for task, by_shot in res["results"].items()}


def test_eval_cli_scores_int4_as_the_in_process_int4_model(tiny_with_tokenizer, tmp_path) -> None:
    """`pocketlm eval --precision int4` scores exactly the model open_model(..., "int4") gives, and so does a
    saved int4 checkpoint evaluated as it is."""
    from pocketlm.evaluate.runner import evaluate

    model, tok = open_model(tiny_with_tokenizer, "int4"), open_tokenizer(tiny_with_tokenizer)
    assert model.transforms.quantization.scheme == "int4"
    here = evaluate(model, tok, ["arc_easy"], limit=5, show_progress=False)
    saved = save_native(model, tmp_path / "int4", tokenizer=tok)
    cli, cli_saved = _eval_clis((tiny_with_tokenizer, tmp_path / "cli.json", "--precision", "int4"),
                                (saved, tmp_path / "saved.json"))
    assert _scores(cli) == _scores(here)
    float_res = evaluate(open_model(tiny_with_tokenizer), tok, ["arc_easy"], limit=5, show_progress=False)
    assert _scores(float_res) != _scores(here)  # the precision reached the model
    assert _scores(cli_saved) == _scores(here)
