"""`shrink --candidates K`: the top K ranked shapes each distilled briefly on the same batches, the one
with the lowest validation loss afterwards kept; K = 1 is the recipe without the selection."""

from __future__ import annotations

import pytest

from pocketlm.compress.structured.importance import StructuredError
from pocketlm.compress.structured.shapes import Shape
from pocketlm.compress.structured.shrink import ShrinkConfig, shrink
from pocketlm.train.fixtures import trained_preset

BATCH = 8 * 64


def _config(**kw) -> ShrinkConfig:
    return ShrinkConfig(**{**dict(target_params="0.6x", tokens=4 * BATCH, batch_size=8, seq_len=64, lr=1e-2,
                                  calib="12x64", max_candidates=4, candidate_tokens=3 * BATCH, eval_windows=4,
                                  threads=1, progress=False), **kw})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    teacher, _ = trained_preset("micro")
    root = tmp_path_factory.mktemp("candidates")
    return {k: (root / f"k{k}", shrink(teacher, root / f"k{k}", _config(candidates=k)).report) for k in (1, 3)}


def test_candidates_keep_the_lowest_loss_after_the_short_distillation(runs):
    out, report = runs[3]
    rnd = report["rounds"][0]
    cands = rnd["pruning"]["candidates"]
    rows = cands["rows"]
    assert [r["proxy_rank"] for r in rows] == [1, 2, 3] and cands["tokens"] == 3 * BATCH
    assert [r["kl"] for r in rows] == sorted(r["kl"] for r in rows)  # the proxy's order
    assert [r["kl"] for r in rows] == [r["kl"] for r in rnd["pruning"]["ranking"][:3]]
    best = min(rows, key=lambda r: r["val_loss"])
    assert cands["chosen"] == best["proxy_rank"] and rnd["shape"] == best["shape"]
    assert str(Shape(**rnd["pruning"]["shape"])) == best["shape"] and rnd["params"] == best["params"]
    assert rnd["pruned"]["val_loss"] == pytest.approx(best["val_loss_pruned"], abs=1e-6)  # its *pruned* weights
    by_loss = [r["proxy_rank"] for r in sorted(rows, key=lambda r: r["val_loss"])]
    assert cands["order_after"] == by_loss and cands["ranking_changed"] == (by_loss != [1, 2, 3])
    for j in (1, 2, 3):
        assert (out / "round1" / "candidates" / f"c{j}" / "distill_log.jsonl").is_file()
    assert report["final"]["candidate_tokens"] == 3 * 3 * BATCH
    md = (out / "report.md").read_text()
    assert "distilled briefly" in md and ("changed the ranking" in md) == cands["ranking_changed"]


def test_one_candidate_is_the_recipe_without_selection(runs):
    out1, one = runs[1]
    _, three = runs[3]
    r1, r3 = one["rounds"][0], three["rounds"][0]
    assert "candidates" not in r1["pruning"] and not (out1 / "round1" / "candidates").exists()
    assert one["final"]["candidate_tokens"] == 0
    top = r3["pruning"]["candidates"]["rows"][0]  # K = 1 trains the proxy's best shape, as before
    assert r1["shape"] == top["shape"] and r1["pruning"]["ranking"] == r3["pruning"]["ranking"]
    assert r1["pruned"]["val_loss"] == pytest.approx(top["val_loss_pruned"], abs=1e-6)
    if r3["pruning"]["candidates"]["chosen"] == 1:  # the same student, the same batches: the same result
        assert three["final"]["val_loss"] == one["final"]["val_loss"]
    else:  # (what this micro run does: the short distillation prefers the proxy's third)
        assert r3["shape"] != r1["shape"]


def test_bad_candidate_settings_are_refused():
    with pytest.raises(StructuredError, match="at least 1"):
        _config(candidates=0).validate()
    with pytest.raises(StructuredError, match="less than one batch"):
        _config(candidates=2, candidate_tokens=100).validate()
