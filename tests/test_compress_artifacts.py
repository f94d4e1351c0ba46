"""Pruned artifacts and their inputs: transformers loads the pruned directory with pocketlm's logits, llama.cpp
runs its GGUF, the llama2.c reader matches transformers, calibration is seeded and cached, and bad input
gets one clear error."""

from __future__ import annotations

import json
import random
import struct
import sys

import numpy as np
import pytest
import torch
import transformers

from pocketlm.compress.calibration import CalibrationError, CalibSpec, calibration_batches, encode_text, source_texts
from pocketlm.compress.prune.checkpoint import OutputExistsError, prune_checkpoint
from pocketlm.compress.recipe import PruneRecipe
from pocketlm.interop import load_model, load_tokenizer
from pocketlm.interop.llama2c import Llama2cError, load_llama2c
from pocketlm.train.fixtures import trained_preset
from tests.hf_tiny import tiny_config
from tests.side_by_side import run_side_by_side
from tests.test_compress_prune import one_thread  # noqa: F401  (autouse: one thread for tiny matrices)

STORIES260K = "../shared/data/models/stories260K/stories260K.bin"


@pytest.fixture(scope="module")
def micro_dir():
    return trained_preset("micro")[0]


@pytest.fixture(scope="module")
def pruned_dir(micro_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("pruned") / "wanda24"
    recipe = PruneRecipe(method="wanda", pattern="2:4", calib="bundled:16x64")
    report = prune_checkpoint(micro_dir, recipe, out, eval_tokens=2048, gguf="F32")
    return out, report


def test_transformers_loads_the_pruned_dir_with_pocketlm_logits(pruned_dir):
    out, report = pruned_dir
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    ours = load_model(out)
    ids = torch.randint(0, ours.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, ours(ids), rtol=0, atol=1e-5)
    q = hf.model.layers[0].self_attn.q_proj.weight
    assert torch.all((q == 0).reshape(q.shape[0], -1, 4).sum(-1) == 2)  # the 2:4 zeros survived the round trip
    assert report.sparsity == pytest.approx(0.5)


def test_report_records_measurements_and_the_runtime_truth(pruned_dir):
    out, _ = pruned_dir
    rep = json.loads((out / "prune_report.json").read_text())
    assert {"ppl_before", "ppl_after", "kl_mean", "top1_agreement"} <= set(rep["evaluation"])
    assert rep["evaluation"]["ppl_after"] > 0 and rep["evaluation"]["kl_mean"] >= 0
    rt = rep["runtime"]
    assert rt["decode_before"]["ms_per_token"] > 0 and rt["decode_after"]["ms_per_token"] > 0
    assert rt["file_bytes_after"] == rt["file_bytes_before"]  # zeros stored densely: same bytes
    assert any("buys no speed" in n for n in rep["notes"])
    assert rep["calibration"]["spec"] == "bundled:16x64"
    assert all(0 <= m["rel_error"] < 1 for m in rep["matrices"])
    assert PruneRecipe.load(out / "recipe.yaml") == PruneRecipe(method="wanda", pattern="2:4", calib="bundled:16x64")
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_gguf_of_the_pruned_model_runs_in_llama_cpp(pruned_dir):
    from pocketlm.model.quantize import sqnr_db
    from tests.test_gguf import IDS, _llama_logits

    out, _ = pruned_dir
    ours = load_model(out)
    with torch.no_grad():
        ref = ours(torch.tensor([IDS]))[0]
    got = _llama_logits(out / "model.gguf")
    assert sqnr_db(ref, got) > 60  # the F32 bar of test_gguf
    assert (got.argmax(-1) == ref.argmax(-1)).all()


def test_existing_output_is_refused_and_kept(pruned_dir, micro_dir):
    out, _ = pruned_dir
    with pytest.raises(OutputExistsError, match="--overwrite"):
        prune_checkpoint(micro_dir, PruneRecipe(method="magnitude"), out, measure=False)
    assert (out / "prune_report.json").is_file()


def test_calibration_is_seeded_cached_and_drawn_like_the_reference(micro_dir, tmp_path):
    tok = load_tokenizer(micro_dir)
    a, rec = calibration_batches("tinystories:4x32", tok, seed=7, cache_dir=tmp_path)
    b, rec_b = calibration_batches("tinystories:4x32", tok, seed=7, cache_dir=tmp_path)
    c, _ = calibration_batches("tinystories:4x32", tok, seed=8, cache_dir=tmp_path)
    assert torch.equal(a, b) and not torch.equal(a, c) and a.shape == (4, 32)
    assert len(list(tmp_path.glob("*.safetensors"))) == 2 and rec == rec_b
    ids = encode_text(tok, "\n\n".join(source_texts("tinystories")))
    rng = random.Random(7)  # the SparseGPT/Wanda loader: randint(0, total - L - 1) per sequence
    starts = [rng.randint(0, len(ids) - 33) for _ in range(4)]
    assert a.tolist() == [ids[s:s + 32] for s in starts]


def test_calibration_errors(micro_dir, tmp_path):
    tok = load_tokenizer(micro_dir)
    (tmp_path / "short.txt").write_text("Once upon a time there was a cat.")
    with pytest.raises(CalibrationError, match="fewer than N x L"):
        calibration_batches(f"{tmp_path}/*.txt:8x64", tok, cache_dir=tmp_path)
    with pytest.raises(CalibrationError, match="matches no files"):
        calibration_batches(f"{tmp_path}/*.md:8x64", tok, cache_dir=tmp_path)
    with pytest.raises(CalibrationError, match="not a file, folder or task"):
        calibration_batches("no_such_task:8x64", tok)
    with pytest.raises(CalibrationError, match="NxL"):
        CalibSpec.parse("bundled:0x64")
    with pytest.raises(CalibrationError, match="--tokenizer"):
        calibration_batches("bundled:8x64", None)


def _write_llama2c(hf: transformers.LlamaForCausalLM, path) -> None:
    """llama2.c `export.py --version 0` layout (interleaved-pair RoPE rows), written from an HF Llama."""
    c = hf.config
    H, K, hd = c.num_attention_heads, c.num_key_value_heads, c.hidden_size // c.num_attention_heads
    layers = hf.model.layers

    def pairs(w, heads):  # HF halves -> Meta interleaved pairs
        return w.view(heads, 2, hd // 2, -1).transpose(1, 2).reshape(w.shape)

    arrays = [hf.model.embed_tokens.weight]
    arrays += [l.input_layernorm.weight for l in layers] + [pairs(l.self_attn.q_proj.weight, H) for l in layers]
    arrays += [pairs(l.self_attn.k_proj.weight, K) for l in layers] + [l.self_attn.v_proj.weight for l in layers]
    arrays += [l.self_attn.o_proj.weight for l in layers] + [l.post_attention_layernorm.weight for l in layers]
    arrays += [l.mlp.gate_proj.weight for l in layers] + [l.mlp.down_proj.weight for l in layers]
    arrays += [l.mlp.up_proj.weight for l in layers] + [hf.model.norm.weight]
    arrays += [torch.zeros(c.max_position_embeddings, hd // 2)] * 2 + [hf.lm_head.weight]
    header = struct.pack("7i", c.hidden_size, c.intermediate_size, c.num_hidden_layers, H, K, -c.vocab_size,
                         c.max_position_embeddings)
    with open(path, "wb") as f:
        f.write(header)
        for a in arrays:
            f.write(a.detach().float().numpy().astype("<f4").tobytes())


def test_llama2c_reader_matches_transformers(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_config("llama")
    cfg.rms_norm_eps = 1e-5  # llama2.c's eps
    hf = transformers.LlamaForCausalLM(cfg).eval()
    _write_llama2c(hf, tmp_path / "model.bin")
    ours = load_model(tmp_path / "model.bin")
    ids = torch.randint(0, cfg.vocab_size, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids).logits, rtol=0, atol=1e-4)
    (tmp_path / "cut.bin").write_bytes((tmp_path / "model.bin").read_bytes()[:-8])
    with pytest.raises(Llama2cError, match="not a llama2.c legacy"):
        load_llama2c(tmp_path / "cut.bin")


def test_stories260k_loads_and_predicts_its_own_text():
    model = load_model(STORIES260K)
    cfg = model.config
    assert (cfg.d_model, cfg.intermediate_size, cfg.n_layer, cfg.n_head, cfg.n_kv_head, cfg.vocab_size,
            cfg.max_seq_len) == (64, 172, 5, 8, 4, 512, 512)
    ids = model.generate(torch.tensor([[1]]), max_new_tokens=128, temperature=1.0, seed=0).clone()
    with torch.no_grad():
        nll = torch.nn.functional.cross_entropy(model(ids)[0, :-1], ids[0, 1:])
    assert float(nll) < 0.5 * np.log(512)  # a trained model: far below the uniform 6.24 nats


def test_cli_bad_input_is_one_line(tmp_path, micro_dir):
    prune = [sys.executable, "-m", "pocketlm.cli", "prune"]
    r, r2 = run_side_by_side([prune + [str(micro_dir), "--out", str(tmp_path / "x"), "--sparsity", "1.2"],
                              prune + [STORIES260K, "--out", str(tmp_path / "y")]], timeout=300)
    assert r.returncode == 2 and "sparsity must be in [0, 1)" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert r2.returncode == 2 and "--tokenizer" in r2.stderr and "Traceback" not in r2.stderr, r2.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_demo_section_writes_table_figure_and_a_loadable_pruned_model(micro_dir, tmp_path):
    from pocketlm.compress.demo import demo_section

    section = demo_section(micro_dir, tmp_path)
    assert "| sparsegpt |" in section["markdown"] and (tmp_path / "prune_sweep.png").stat().st_size > 1000
    rows = section["metrics"]["sweep"]
    assert {(r["method"], r["setting"]) for r in rows} == {(m, s) for m in ("magnitude", "wanda", "sparsegpt")
                                                          for s in ("0.3", "0.5", "0.7", "2:4")}
    assert transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "sparsegpt_2of4") is not None
