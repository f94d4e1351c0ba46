"""`pocketlm quantize` on the trained micro preset: the quantized checkpoint opens through the runtime into
the int kernels with the logits the report scored, the GGUF variant holds the GGUF type, every run writes
its measured report, and bad input is one line with nothing left behind."""

from __future__ import annotations

import json
import sys

import pytest

from pocketlm.compress.quantize.checkpoint import quantize_checkpoint
from pocketlm.model.linears import Int4Linear
from pocketlm.runtime import open_model
from pocketlm.train.fixtures import trained_preset
from tests.side_by_side import run_side_by_side
from tests.test_compress_prune import one_thread  # noqa: F401  (autouse: one thread for tiny matrices)

CALIB = "bundled:16x64"


@pytest.fixture(scope="module")
def micro_dir():
    return trained_preset("micro")[0]


def test_quantized_checkpoint_opens_in_the_kernels_and_reports(micro_dir, tmp_path) -> None:
    out = tmp_path / "gptq"
    report = quantize_checkpoint(micro_dir, out, "gptq", 4, 32, calib=CALIB, eval_tokens=2048, act_order=True)
    saved = json.loads((out / "quant_report.json").read_text())
    ev = saved["evaluation"]
    assert saved["method"] == "gptq" and saved["grid"] == "asym4 g32" and saved["options"]["act_order"]
    assert len(saved["layers"]) == 7 * 2 and all(m["rel_error"] > 0 for m in saved["layers"])
    assert ev["ppl_after"] >= ev["ppl_before"] * 0.98 and 0 < ev["kl_mean"] <= ev["kl_p99"]
    assert 0.5 < ev["top1_agreement"] <= 1 and saved["disk_bytes"] == (out / "model.safetensors").stat().st_size
    assert saved["wall_s"] > 0 and saved["peak_rss_bytes"] > 0 and report.calibration["spec"] == CALIB
    model = open_model(out)
    assert isinstance(model.blocks[0].attn.qkv, Int4Linear) and model.transforms.quantization.method == "gptq"
    assert json.loads((out / "pocketlm.json").read_text())["transforms"]["quantization"]["params"]["bits"] == 4


def test_gguf_output_holds_the_gguf_type(micro_dir, tmp_path) -> None:
    import gguf

    out = tmp_path / "q4"
    quantize_checkpoint(micro_dir, out, "awq", gguf="Q4_1", calib=CALIB, eval_tokens=2048)
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(out / "model.gguf")).tensors}
    assert types["blk.0.attn_q.weight"] == "Q4_1" and types["blk.1.ffn_down.weight"] == "Q4_1"
    assert types["token_embd.weight"] == "F16"
    assert json.loads((out / "quant_report.json").read_text())["awq"]


def test_cli_bad_input_is_one_line(micro_dir, tmp_path) -> None:
    cases = ((["--bits", "5"], "5-bit grids are not supported"),
             (["--calib", "bundled:1x8", "--group-size", "32"], "fewer than the widest layer input"))
    quantize = [sys.executable, "-m", "pocketlm.cli", "quantize", str(micro_dir)]
    runs = run_side_by_side([quantize + ["--out", str(tmp_path / f"x{i}"), *args] for i, (args, _) in enumerate(cases)],
                            timeout=300)
    for r, (_, message) in zip(runs, cases):
        assert r.returncode != 0 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    from pocketlm.model.quantize import GridError

    for options, message in (({"group_size": 48}, "group_size 48 is not one of the int4 kernel's group sizes"),
                             ({"gguf": "Q4_K"}, "blocks of 256 values")):
        with pytest.raises(GridError, match=message):
            quantize_checkpoint(micro_dir, tmp_path / "x", "rtn", **options)
    assert not any(tmp_path.iterdir())


def test_bad_arguments_fail_before_the_model_is_opened(tmp_path, monkeypatch) -> None:
    """Bits, group size, method and GGUF type fail with the error the driver gives, before any model is opened:
    on a path that does not exist and on a catalog model too large to build here."""
    from typer.testing import CliRunner

    from pocketlm.cli import app
    from pocketlm.compress.quantize import checkpoint

    def never(*args, **kwargs):
        raise AssertionError("the model was opened before the arguments were checked")

    monkeypatch.setattr(checkpoint, "open_model_and_tokenizer", never)
    cases = ((["--bits", "5"], "5-bit grids are not supported; choose bits in (2, 3, 4, 8)"),
             (["--group-size", "48"], "group_size 48 is not one of the int4 kernel's group sizes"),
             (["--bits", "8", "--group-size", "64"], "8-bit codes run on the int8 kernel"),
             (["--method", "hqq"], "unknown quantization method 'hqq'; choose one of rtn, gptq, awq"),
             (["--gguf", "Q3_0"], "GPTQ / AWQ write GGUF types"))
    for model in (str(tmp_path / "no-such-model"), "Phi-3-mini-4k-instruct"):
        for args, message in cases:
            result = CliRunner().invoke(app, ["quantize", model, "--out", str(tmp_path / "out"), *args])
            assert result.exit_code != 0 and message in str(result.exception), (args, repr(result.exception))
    assert not any(tmp_path.iterdir())


def test_quant_demo_section_writes_table_figure_and_a_kernel_checkpoint(micro_dir, tmp_path) -> None:
    from pocketlm.compress.quant_demo import run_quant_demo

    section = run_quant_demo(tmp_path, micro_dir)
    rows = section["metrics"]["sweep"]
    assert {(r["method"], r["bits"]) for r in rows} == {(m, b) for m in ("rtn", "gptq", "awq") for b in (4, 3)}
    assert "| gptq | 3 |" in section["markdown"] and (tmp_path / "quant_sweep.png").stat().st_size > 1000
    by = {(r["method"], r["bits"]): r for r in rows}
    assert by[("gptq", 3)]["kl"] < by[("rtn", 3)]["kl"]  # the GPTQ paper's ordering, on a trained model
    assert isinstance(open_model(tmp_path / "gptq_int4").blocks[0].mlp.down_proj, Int4Linear)


def test_export_gguf_method_writes_the_quantize_gguf_file(micro_dir, tmp_path) -> None:
    """`pocketlm export gguf --method gptq` holds the very blocks `pocketlm quantize --gguf` writes."""
    import gguf
    import numpy as np
    from typer.testing import CliRunner

    from pocketlm.cli import app

    quantize_checkpoint(micro_dir, tmp_path / "q", "gptq", gguf="Q4_0", calib=CALIB, eval_tokens=512)
    out = tmp_path / "m.gguf"
    result = CliRunner().invoke(app, ["export", "gguf", str(micro_dir), "--qtype", "Q4_0", "--method", "gptq",
                                      "--calib", CALIB, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.strip().splitlines()[-1])["bytes"] == out.stat().st_size
    ours = {t.name: t for t in gguf.GGUFReader(str(out)).tensors}
    theirs = {t.name: t for t in gguf.GGUFReader(str(tmp_path / "q" / "model.gguf")).tensors}
    assert ours.keys() == theirs.keys() and ours["blk.0.attn_q.weight"].tensor_type.name == "Q4_0"
    for name, t in theirs.items():
        assert ours[name].tensor_type == t.tensor_type and np.array_equal(np.asarray(ours[name].data),
                                                                         np.asarray(t.data)), name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf", "q"]  # nothing left beside the file


def test_export_gguf_bad_method_is_one_clear_error(micro_dir, tmp_path) -> None:
    from typer.testing import CliRunner

    from pocketlm.cli import app

    out = tmp_path / "m.gguf"
    result = CliRunner().invoke(app, ["export", "gguf", str(micro_dir), "--method", "gptx", "--out", str(out)])
    assert result.exit_code == 2 and "unknown method 'gptx'; choose rtn, gptq or awq" in result.output
    result = CliRunner().invoke(app, ["export", "gguf", str(micro_dir), "--method", "gptq", "--qtype", "Q3_K_M",
                                      "--out", str(out)])
    assert result.exit_code != 0 and "GPTQ / AWQ write GGUF types" in str(result.exception)
    assert not out.exists()


def test_awq_clip_flag_reaches_the_driver(tmp_path, monkeypatch) -> None:
    """`--awq-clip` on `pocketlm quantize` and `pocketlm export gguf` turns on llm-awq's clip search; without
    it AWQ runs its scales alone (the driver's default)."""
    from typer.testing import CliRunner

    from pocketlm.cli import app
    from pocketlm.compress.quantize import checkpoint

    seen = []

    class Stop(Exception):
        pass

    def capture(*args, **options):
        seen.append(options.get("awq_clip", False))
        raise Stop

    monkeypatch.setattr(checkpoint, "quantize_checkpoint", capture)
    monkeypatch.setattr(checkpoint, "quantized_gguf", capture)
    model = str(tmp_path / "m")
    for args in (["quantize", model, "--out", str(tmp_path / "o"), "--method", "awq"],
                 ["export", "gguf", model, "--qtype", "Q4_0", "--method", "awq"]):
        for flag in ([], ["--awq-clip"]):
            result = CliRunner().invoke(app, args + flag)
            assert isinstance(result.exception, Stop), result.output
    assert seen == [False, True, False, True]
