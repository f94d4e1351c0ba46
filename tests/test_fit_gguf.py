"""`pocketlm fit --runtime llamacpp`: each candidate's GGUF file is written once and is the very file that is
scored, timed in a fresh llama.cpp process and shipped; the original's log-probabilities are computed once."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from pocketlm.fit.budget import Budget
from tests.test_fit import tiny_model  # noqa: F401  (the module-scoped trained preset)

pytest.importorskip("llama_cpp", reason="llama-cpp-python (the llamacpp extra) not installed")

# Q8_0 and Q4_K_M are the always-measured baselines: two candidates, two fresh-process measurements
GGUF_RUN = dict(candidates="gguf_qtype=Q8_0;prune_nm=none;prune_structured=none", runtime="llamacpp",
                tokens=256, window=64, prompt=16, context=48, gen=4, repeat=1, threads=1)


def test_each_gguf_is_written_once_and_is_what_is_scored_timed_and_shipped(tiny_model: Path, tmp_path: Path,
                                                                          monkeypatch) -> None:
    from pocketlm.fit import candidates, search
    from pocketlm.compress.measure import compare_on_tokens
    from pocketlm.export.gguf import load_gguf_weights
    from pocketlm.runtime import open_model

    written: list[str] = []
    timed: list[str | None] = []
    builder = candidates.BUILDERS["gguf_qtype"]

    def counting_file(model, value, path, ctx):
        written.append(value)
        return builder.file(model, value, path, ctx)

    from pocketlm.profile import runner

    def recording_run_setting(setting):
        timed.append(setting.gguf_file)
        return runner_run(setting)

    runner_run = runner.run_setting
    monkeypatch.setitem(candidates.BUILDERS, "gguf_qtype", dataclasses.replace(builder, file=counting_file))
    monkeypatch.setattr(runner, "run_setting", recording_run_setting)  # search imports it where it calls it

    from pocketlm.fit.config import FitConfig

    report = search.fit(FitConfig(str(tiny_model), Budget.parse(max_disk="10MB"), **GGUF_RUN), tmp_path,
                        progress=False)
    by_key = {r["candidate"]: r for r in report["candidates"]}
    assert sorted(written) == ["Q4_K_M", "Q8_0"]  # one file per candidate: both rungs, measurement, artifact
    assert all(by_key[k]["rung"] == 1 for k in ("gguf_qtype=Q8_0", "gguf_qtype=Q4_K_M"))
    files = {p.name: p for p in (tmp_path / ".scratch").glob("gguf_qtype-*.gguf")}
    assert len(files) == 2 and len(timed) == 3 and all(timed)  # 2 measurements + the artifact, each a file
    assert set(timed[:2]) == {str(p) for p in files.values()}
    for key in ("gguf_qtype=Q8_0", "gguf_qtype=Q4_K_M"):  # the timed file's bytes are the scored file's
        qtype = key.split("=")[1]
        path = next(p for n, p in files.items() if n.endswith(f"-{qtype}.gguf"))
        assert by_key[key]["measured"]["disk_bytes"] == path.stat().st_size
    chosen = report["chosen"]
    assert chosen == "gguf_qtype=Q8_0"  # the wider type has the lower KL and 10 MB holds both
    shipped = Path(report["artifact"]["gguf"])
    assert timed[2] == str(shipped)  # the re-measurement timed the artifact's own file
    scored = next(p for n, p in files.items() if n.endswith("-Q8_0.gguf"))
    assert shipped.read_bytes() == scored.read_bytes()
    # the stored KL is what the shipped file computes, against the original run by hand (no cached log-probs)
    dense = open_model(str(tiny_model), "fp32")
    emulated = open_model(str(tiny_model), "fp32")
    load_gguf_weights(emulated, shipped)
    run = search.Fit(FitConfig(str(tiny_model), Budget.parse(max_disk="10MB"), **GGUF_RUN), tmp_path, False)
    try:
        with torch.inference_mode():
            by_hand = compare_on_tokens(dense, emulated, run.heldout, GGUF_RUN["window"])
    finally:
        run.store.close()
    assert by_key[chosen]["quality"]["kl_mean"] == pytest.approx(by_hand["kl_mean"], rel=1e-5)
    assert by_key[chosen]["quality"]["ppl_before"] == pytest.approx(by_hand["ppl_before"], rel=1e-6)
