"""The landscape is resumable (measured models are not measured again) and its findings are the
analytic values on synthetic rows."""

from __future__ import annotations

import pytest

from pocketlm.profile.landscape import (POINT_FIELDS, dtype_ratios, landscape, landscape_findings, read_points,
                                        write_findings)
from pocketlm.survey.figures import write_csv


def _row(model: str, params: float, dtype: str = "Q4_0", k: float = 1.0, vocab: int = 32000) -> dict:
    row = {f: 0 for f in POINT_FIELDS}
    row.update(model=model, params=int(params), attention="GQA", n_layer=12, d_model=512, vocab_size=vocab,
               backend="llamacpp", dtype=dtype, threads=2, prefill_ms=k * params / 1e6, decode_ms=k * params / 1e7,
               prefill_best_ms=k * params / 1e6, decode_best_ms=k * params / 1e7, peak_rss_mb=params / 1e6)
    return row


def test_measured_models_are_not_measured_again(tmp_path, monkeypatch) -> None:
    write_csv([_row("SmolLM-135M", 1.35e8), _row("GPT2", 1.24e8)], tmp_path / "landscape.csv")
    import pocketlm.profile.landscape as ls

    monkeypatch.setattr(ls, "_measure", lambda *a, **k: pytest.fail("a measured model was measured again"))
    done = landscape(names=["SmolLM-135M", "GPT2"], backend="llamacpp", dtype="Q4_0", out_dir=tmp_path)
    assert (done["measured_now"], done["skipped_measured"], done["models"]) == (0, 2, 2)
    assert (tmp_path / "landscape_llamacpp_Q4_0.png").exists()
    assert [p["model"] for p in read_points(tmp_path / "landscape.csv")] == ["GPT2", "SmolLM-135M"]


def test_findings_are_the_analytic_values() -> None:
    rows = [_row(f"m{i}", p) for i, p in enumerate((1e8, 2e8, 4e8, 8e8))]
    found = landscape_findings(rows)
    assert found["prefill_best_ms"] == {"loglog_slope": 1.0, "spearman": 1.0}
    assert found["peak_rss_mb"]["loglog_slope"] == 1.0
    ratios = dtype_ratios([_row("a", 1e8, "F16", k=4.0), _row("a", 1e8, "Q4_0", k=1.0)])
    assert {r["dtype"]: r["decode_speedup"] for r in ratios} == {"F16": 1.0, "Q4_0": 4.0}


def test_write_findings(tmp_path) -> None:
    rows = [_row("a", 1e8, "F16", k=2.0), _row("a", 1e8), _row("b", 3e8), _row("c", 9e8)]
    write_csv(rows, tmp_path / "landscape.csv")
    found = write_findings(tmp_path / "landscape.csv")
    assert found["models"] == 3 and (tmp_path / "findings.json").exists() and (tmp_path / "dtypes.png").exists()
