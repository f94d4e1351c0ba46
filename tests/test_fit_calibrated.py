"""`pocketlm fit` with the calibrated quantizers: GPTQ / AWQ candidates beside RTN in both runtimes, sharing
RTN's measurement (same kernels, same bytes), scored on the tiny trained model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pocketlm.fit.budget import Budget
from pocketlm.fit.candidates import BUILDERS, BuildContext, CandidateError, parse_axes
from tests.test_fit import tiny_model  # noqa: F401  (the module-scoped trained preset)

AXES = "precision=int4,int4-gptq,int4-awq,int3,int3-gptq;prune_nm=none;prune_structured=none"
SMALL_RUN = dict(candidates=AXES, tokens=512, window=64, prompt=32, context=64, gen=8, repeat=2, threads=1)


@pytest.fixture(scope="module")
def calibrated_fit(tiny_model: Path, tmp_path_factory) -> dict:
    """1.4 MB on disk: only the 4-bit container fits (int8, the always-measured baseline, is ~1.6 MB)."""
    from pocketlm.fit.config import FitConfig
    from pocketlm.fit.search import fit

    out = tmp_path_factory.mktemp("fit-calibrated")
    report = fit(FitConfig(str(tiny_model), Budget.parse(max_disk="1.4MB"), **SMALL_RUN), out, progress=False)
    return {"report": report, "by_key": {r["candidate"]: r for r in report["candidates"]}, "out": out}


def test_solver_values_parse_and_bad_ones_say_what_exists() -> None:
    axes = parse_axes("precision=int4,int3-gptq", "torch")
    assert axes["precision"] == ("int4", "int3-gptq")
    assert {"int4-gptq", "int4-awq", "int3-gptq"} <= set(parse_axes(None, "torch")["precision"])
    assert {"Q4_0-gptq", "Q4_0-awq"} <= set(parse_axes(None, "llamacpp")["gguf_qtype"])
    assert parse_axes("gguf_qtype=Q8_0-awq", "llamacpp")["gguf_qtype"] == ("Q8_0-awq",)
    with pytest.raises(CandidateError, match="Q4_0-gptq"):
        parse_axes("gguf_qtype=Q4_K-gptq", "llamacpp")
    with pytest.raises(CandidateError, match="choose from"):
        parse_axes("precision=int2-gptq", "torch")
    assert BUILDERS["precision"].dtype("int3-gptq") == "int4" and BUILDERS["gguf_qtype"].dtype("Q4_0-awq") == "Q4_0"


@pytest.mark.slow
def test_calibrated_candidates_are_scored_and_gptq_beats_rtn_at_3_bits(calibrated_fit: dict) -> None:
    recs = calibrated_fit["by_key"]
    for key in ("precision=int4-gptq", "precision=int4-awq", "precision=int3", "precision=int3-gptq"):
        assert recs[key]["quality"] is not None and recs[key]["rung"] is not None, key
    # the GPTQ paper's result: error compensation matters most at low widths (lower KL than RTN at 3 bits)
    assert recs["precision=int3-gptq"]["quality"]["kl_mean"] <= recs["precision=int3"]["quality"]["kl_mean"]
    # same tensors, same bytes as RTN int4 (the LM head by RTN int4 in both)
    weights = {recs[k]["quality"]["weights_bytes"] for k in recs if k != "precision=int8"}
    assert len(weights) == 1


@pytest.mark.slow
def test_gptq_shares_rtns_measurement(calibrated_fit: dict, tiny_model: Path) -> None:
    report, recs = calibrated_fit["report"], calibrated_fit["by_key"]
    # anchors: int8 (widest, a baseline) and int4 (narrowest, a baseline): two worker runs, never one more
    assert report["counts"]["measured_this_run"] == 2
    measured = {k: r["measured"] for k, r in recs.items() if r["measured"] and k != "precision=int8"}
    assert len(measured) >= 2  # int4 and at least the chosen calibrated one
    costs = {(m["decode_ms"], m["prefill_ms"], m["memory_bytes"]) for m in measured.values()}
    assert len(costs) == 1
    # and a rerun in the same folder measures nothing at all
    from pocketlm.fit.config import FitConfig
    from pocketlm.fit.search import fit

    again = fit(FitConfig(str(tiny_model), Budget.parse(max_disk="1.4MB"), **SMALL_RUN),
                calibrated_fit["out"], progress=False)
    assert again["counts"]["measured_this_run"] == 0 and again["chosen"] == report["chosen"]


@pytest.mark.slow
def test_chosen_artifact_reopens_with_the_recorded_quality(calibrated_fit: dict, tiny_model: Path) -> None:
    from pocketlm.compress.calibration import encode_text
    from pocketlm.compress.measure import compare_on_tokens
    from pocketlm.compress.prune.checkpoint import DEFAULT_EVAL_TEXT
    from pocketlm.runtime import open_model, open_tokenizer, resolve

    report = calibrated_fit["report"]
    chosen = report["chosen_record"]
    assert chosen["candidate"] != "precision=int3"  # RTN at 3 bits is never the best 4-bit-container choice
    assert not report["verify"]["misses"]
    value = chosen["candidate"].removeprefix("precision=")
    method = value.partition("-")[2] or "rtn"
    ref = resolve(report["artifact"]["model_dir"])
    assert ref.quantization.scheme == "int4" and ref.quantization.method == method
    model = open_model(ref, "int4")
    tok = open_tokenizer(resolve(str(tiny_model)))
    ids = torch.tensor(encode_text(tok, DEFAULT_EVAL_TEXT.read_text())[:SMALL_RUN["tokens"]])
    dense = open_model(resolve(str(tiny_model)), "fp32")
    with torch.inference_mode():
        got = compare_on_tokens(dense, model, ids, SMALL_RUN["window"])
    assert got["kl_mean"] == pytest.approx(chosen["quality"]["kl_mean"], rel=1e-3, abs=1e-6)


def test_gguf_gptq_file_has_the_rtn_files_tensor_types_and_bytes(tmp_path: Path) -> None:
    """Q4_0-gptq writes GPTQ's codes into the very layout pocketlm's Q4_0 file has (so one measurement
    serves both), and read back by gguf's own reader its weights are closer to the float model's outputs."""
    import gguf

    from pocketlm.export.gguf import load_gguf_weights
    from pocketlm.fit.candidates import _gguf_file
    from pocketlm.model.config import ModelConfig
    from pocketlm.model.transformer import Transformer

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=512, d_model=128, n_layer=2, n_head=4, intermediate_size=256, max_seq_len=128)
    model = Transformer(cfg).eval()
    ctx = BuildContext(calib=torch.randint(0, 512, (8, 64)))
    rtn = _gguf_file(model, "Q4_0", tmp_path / "rtn.gguf", ctx)
    gptq = _gguf_file(model, "Q4_0-gptq", tmp_path / "gptq.gguf", ctx)
    types = [{t.name: (t.tensor_type, tuple(t.shape)) for t in gguf.GGUFReader(p).tensors} for p in (rtn, gptq)]
    assert types[0] == types[1]
    assert rtn.stat().st_size == gptq.stat().st_size
    x = ctx.calib[:4]
    with torch.inference_mode():
        want = model(x)
        errs = []
        for p in (rtn, gptq):
            m = Transformer(cfg).eval()
            m.load_state_dict(model.state_dict())
            load_gguf_weights(m, p)
            errs.append(float((m(x) - want).pow(2).mean()))
    assert errs[1] < errs[0]  # GPTQ's objective: the layer outputs on the calibration tokens


@pytest.mark.slow
def test_llamacpp_fit_chooses_gptqs_gguf_on_rtns_measurement(tiny_model: Path, tmp_path: Path) -> None:
    """700 KB: only Q4_0 fits; its GPTQ file is chosen (lower KL) at the RTN file's measured cost."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (optional extra) not installed")
    from pocketlm.fit.config import FitConfig
    from pocketlm.fit.search import fit

    run = dict(SMALL_RUN, runtime="llamacpp",
               candidates="gguf_qtype=Q4_0,Q4_0-gptq;prune_nm=none;prune_structured=none")
    report = fit(FitConfig(str(tiny_model), Budget.parse(max_disk="700KB"), **run), tmp_path, progress=False)
    recs = {r["candidate"]: r for r in report["candidates"]}
    rtn, gptq = recs["gguf_qtype=Q4_0"], recs["gguf_qtype=Q4_0-gptq"]
    assert report["counts"]["measured_this_run"] == 3  # Q4_0 and the two baselines (Q8_0, Q4_K_M); GPTQ shares Q4_0's
    assert gptq["measured"] == rtn["measured"]
    assert report["chosen"] == "gguf_qtype=Q4_0-gptq"
    artifact = Path(report["artifact"]["gguf"])
    assert artifact.name == "model-Q4_0-GPTQ.gguf" and artifact.stat().st_size == rtn["measured"]["disk_bytes"]
    assert not report["verify"]["misses"]
