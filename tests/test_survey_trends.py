"""Trend shares recomputed from the catalog against the survey's published Fig. 2; capability data."""

from __future__ import annotations

import csv
import statistics
from pathlib import Path

import pytest

from pocketlm.survey.capabilities import best_per_metric, load_scores, write_capabilities
from pocketlm.survey.figures import write_trends
from pocketlm.survey.trends import (KNOWN_GAPS, TOLERANCE_PP, compare_published, half_year_counts, load_datasets,
                                    published, study_entries)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "survey"


def test_study_population_and_half_year_counts_match_published():
    entries = study_entries()
    assert len(entries) == 62
    assert half_year_counts(entries) == published()["half_year_counts"]


def test_survey_label_shares_within_3pp_or_a_documented_gap():
    rows = compare_published(source="survey")
    assert len(rows) == 21
    for r in rows:
        if (r.axis, r.category) in KNOWN_GAPS:
            continue
        assert abs(r.diff_pp) <= TOLERANCE_PP, (r.axis, r.category, r.share, r.published)
    # attention, FFN type, activation and vocabulary reproduce every published slice
    for r in rows:
        if r.axis in ("attention", "ffn_type", "activation", "vocab"):
            assert r.within, (r.axis, r.category)
    # counts the README states exactly: attention 36/20/2/1 of 59
    att = {r.category: (r.count, r.n) for r in rows if r.axis == "attention"}
    assert att == {"MHA": (36, 59), "GQA": (20, 59), "MQA": (2, 59), "MLA": (1, 59)}


def test_known_gaps_are_real_and_every_gap_is_explained():
    for source in ("survey", "config"):
        for r in compare_published(source=source):
            if not r.within:
                assert r.explanation and "UNEXPLAINED" not in r.explanation, (source, r.axis, r.category)
    survey_rows = {(r.axis, r.category): r for r in compare_published(source="survey")}
    for key in KNOWN_GAPS:
        assert not survey_rows[key].within, f"{key} is now within tolerance: drop it from KNOWN_GAPS"


def test_config_corrections_move_attention_as_documented():
    rows = {(r.axis, r.category): r for r in compare_published(source="config")}
    text = rows[("attention", "GQA")].explanation
    for name in ("Phi-3-mini-4k-instruct", "MiniCPM-2B-128k", "OpenELM-3B", "MobiLlama-0.5B"):
        assert name in text


def test_datasets_table():
    rows = load_datasets()
    assert len(rows) == 12
    kinds = {r["kind"] for r in rows}
    assert {"web", "filtered web", "code", "synthetic", "Chinese", "curated mix"} <= kinds
    for r in rows:
        assert r["used_by"], f"{r['name']} is used by no catalog model"


def test_capability_bests_match_the_published_ones():
    best = best_per_metric()
    assert best["commonsense"][0].endswith("Phi-3.5-mini-instruct")
    assert best["commonsense"][1] == pytest.approx(0.677, abs=5e-4)
    assert best["problem_solving"][0].endswith("Phi-3-mini-4k-instruct")
    assert best["problem_solving"][1] == pytest.approx(0.724, abs=5e-4)
    assert best["math"][0].endswith("Phi-3.5-mini-instruct") and best["math"][1] == pytest.approx(60.5, abs=0.1)
    llama31 = next(s for s in load_scores() if s.model.startswith("Llama-3.1"))
    assert (llama31.commonsense, llama31.problem_solving) == pytest.approx((0.668, 0.683), abs=5e-4)


@pytest.mark.skipif(not SHARED.is_dir(), reason="/work/shared/survey not present")
def test_leaderboard_aggregates_are_means_of_the_per_task_accuracies():
    per_task = {r["hf_id"]: r for r in csv.DictReader(open(SHARED / "slm_task_accuracies_lm_eval.csv"))}
    checked = 0
    for s in load_scores():
        r = per_task.get(s.model)
        if r is None or s.commonsense is None:
            continue
        cs = statistics.mean(float(r[t]) for t in ("hellaswag", "truthfulqa_mc2", "winogrande", "commonsense_qa",
                                                    "piqa", "openbookqa", "boolq"))
        ps = statistics.mean(float(r[t]) for t in ("arc_easy", "arc_challenge", "mmlu"))
        assert cs == pytest.approx(s.commonsense, abs=1e-3) and ps == pytest.approx(s.problem_solving, abs=1e-3)
        checked += 1
    assert checked >= 45


def test_trend_and_capability_files(tmp_path):
    files = {**write_trends(tmp_path), **write_capabilities(tmp_path)}
    for key, path in files.items():
        assert path.is_file() and path.stat().st_size > 200, key
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader(open(files["trends_csv"])))
    assert {"source", "axis", "half_year", "category", "count"} <= set(rows[0])
    total_2024h1 = sum(int(r["count"]) for r in rows
                       if r["source"] == "config" and r["axis"] == "ffn_type" and r["half_year"] == "2024H1")
    assert total_2024h1 == 19
    assert not list(tmp_path.glob(".*.tmp"))
