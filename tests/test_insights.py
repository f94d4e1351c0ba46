"""The insights' analysis on small hand-made inputs: the linear fit and its outliers, where two curves part,
tokens per parameter against hand-computed values, the verdict rule, equal-parameter matching (checked
against the analytic counts), and the data-only insights end to end on the bundled catalog."""

from __future__ import annotations

import json

import pytest

from pocketlm.insights.analysis import (linear_fit, parse_tokens, parting_point, robust_outliers, tokens_per_param,
                                        verdict)


def test_linear_fit_recovers_an_exact_line_and_its_residuals():
    xs = [0.0, 1.0, 2.0, 3.0, 4.0]
    fit = linear_fit(xs, [3.0 + 2.0 * x for x in xs])
    assert fit.intercept == pytest.approx(3.0) and fit.slope == pytest.approx(2.0) and fit.r2 == pytest.approx(1.0)
    assert all(r == pytest.approx(0.0) for r in fit.residuals)
    # y = (1, 3, 2): hand-computed least squares slope 0.5, intercept 1.5, residuals (-0.5, 1, -0.5), R² 0.25
    fit = linear_fit([0, 1, 2], [1, 3, 2])
    assert (fit.slope, fit.intercept) == (pytest.approx(0.5), pytest.approx(1.5))
    assert fit.residuals == pytest.approx((-0.5, 1.0, -0.5)) and fit.r2 == pytest.approx(0.25)


def test_linear_fit_rejects_degenerate_input():
    with pytest.raises(ValueError, match="two or more"):
        linear_fit([1.0], [2.0])
    with pytest.raises(ValueError, match="distinct"):
        linear_fit([1.0, 1.0], [2.0, 3.0])


def test_outliers_name_the_points_off_the_line():
    xs = list(range(20))
    ys = [10 * x + (0.3 if x % 2 else -0.3) for x in xs]
    ys[10] += 40  # a "large vocabulary" model far above the line
    ys[9] -= 40  # one far below
    fit = linear_fit(xs, ys)
    assert robust_outliers(fit.residuals) == [9, 10]
    assert robust_outliers(fit.residuals, above_only=True) == [10]
    assert robust_outliers([1.0, 1.1, 0.9, 1.0, 1.05]) == []


def test_parting_point_is_where_curves_separate_for_good():
    xs = [128, 512, 1024, 2048, 4096]
    mha = [10.0, 10.2, 12.0, 14.0, 18.0]
    gqa = [10.0, 10.0, 10.5, 11.0, 12.0]
    assert parting_point(xs, mha, gqa, rel=0.1) == 1024  # 12 vs 10.5 is 12.5 % apart, and stays apart
    assert parting_point(xs, mha, mha, rel=0.1) is None
    # apart early, together again, apart at the end: only the last stretch counts
    assert parting_point(xs, [20, 10, 10, 15, 16], [10, 10, 10, 10, 10], rel=0.1) == 2048
    with pytest.raises(ValueError):
        parting_point(xs, mha, gqa[:2])


@pytest.mark.parametrize("text, tokens", [
    ("3T", 3e12), ("180B", 1.8e11), ("~1.8T (LB: 1.5T)", 1.8e12), ("350B + 0.5B finetune", 3.5e11),
    ("1.4T (250B-token dataset)", 1.4e12), ("4T for base stablelm-3b-4e1t (LB: 400B/100B)", 4e12),
    ("undisclosed (LB: 2.4T/4T)", None), ("~1T? (undisclosed in LB)", None),
    ("GPT-2 pretrain + 2.58M-instruction finetune", None), ("~? (WebText 40GB)", None), ("26.3B", 2.63e10)])
def test_parse_tokens(text, tokens):
    assert parse_tokens(text) == (None if tokens is None else pytest.approx(tokens))


def test_tokens_per_param_table_against_hand_computed_values():
    rows = tokens_per_param([("A", 1e9, "20B"), ("B", 135e6, "600B"), ("C", 1e9, "undisclosed"), ("D", 0, "1T")])
    assert [r["model"] for r in rows] == ["A", "B"]
    assert rows[0]["tokens_per_param"] == pytest.approx(20.0) and rows[0]["x_chinchilla"] == pytest.approx(1.0)
    assert rows[1]["tokens_per_param"] == pytest.approx(600e9 / 135e6)  # 4444.4
    assert rows[1]["x_chinchilla"] == pytest.approx(600e9 / 135e6 / 20)


def test_catalog_tokens_per_param_matches_the_catalog_by_hand():
    from pocketlm.insights.overtraining import catalog_rows

    rows = {r["model"]: r for r in catalog_rows()}
    assert rows["SmolLM-135M"]["tokens_per_param"] == pytest.approx(600e9 / 135e6, rel=0.01)
    assert rows["Cerebras-GPT-111M"]["tokens_per_param"] == pytest.approx(2.2e9 / 111e6, rel=0.02)  # Chinchilla-sized
    assert "Qwen1.5-0.5B" not in rows  # undisclosed
    assert "GPT2" not in rows  # outside the survey's study


def test_verdict_rule():
    assert verdict([True, True]) == "agree"
    assert verdict([True, False, True]) == "partly"
    assert verdict([False]) == "disagree"
    with pytest.raises(ValueError):
        verdict([])


def test_equal_parameter_variants_match_the_analytic_count():
    from pocketlm.insights.architecture import BASE, variants
    from pocketlm.insights.bench import total_params
    from pocketlm.insights.gqa import configs

    target = total_params(BASE)
    for axis, group in variants().items():
        for label, cfg in group.items():
            assert abs(total_params(cfg) - target) / target < 0.005, (axis, label)
    mha, gqa = configs(512).values()
    assert total_params(mha) == total_params(gqa) and gqa.kv_heads(0) * 4 == mha.kv_heads(0)


def test_unknown_insight_names_the_choices():
    from pocketlm.insights.suite import check_names

    with pytest.raises(ValueError, match="choose from gqa, architecture"):
        check_names(["gqa", "nope"])
    assert check_names(["open_data", "gqa"]) == ["gqa", "open_data"]


def test_data_insights_end_to_end(tmp_path):
    """memory (analytic), overtraining (catalog part) and open_data on the bundled data: files and records."""
    from pocketlm.insights.suite import run_suite

    records, failed = run_suite(["memory", "overtraining", "open_data"], tmp_path, quick=True, keep_going=False)
    assert not failed and [r.name for r in records] == ["memory", "overtraining", "open_data"]
    for r in records:
        assert r.verdict in ("agree", "partly", "disagree") and r.seconds >= 0
        assert (tmp_path / r.name / "record.json").is_file()
        assert r.figure and (tmp_path / r.name / r.figure.split("/")[-1]).is_file()
    by = {r.name: r for r in records}
    # BLOOM's 250k vocabulary sits above the non-embedding fit
    assert any(m.startswith("BLOOM") for m in by["memory"].measured["bloom_gemma_above_non_embedding_fit"])
    assert by["overtraining"].measured["median_tokens_per_param"] > 20
    assert json.loads((tmp_path / "insights.json").read_text())["failed"] == []
    assert "### Memory vs parameters" in (tmp_path / "insights.md").read_text()


def test_record_counts_the_cpu_time_of_profiling_workers(tmp_path):
    """cpu_seconds includes child processes the insight waited for (the profile workers), not only its own."""
    import subprocess
    import sys

    from pocketlm.insights.record import Record, markdown, run_insight

    def child_works(folder, quick):
        subprocess.run([sys.executable, "-c", "import time\nt = time.process_time()\n"
                        "while time.process_time() - t < 0.4: pass"], check=True)
        return Record("x", "X", "claim", "cmd", {}, "agree", "summary")

    r = run_insight("x", child_works, tmp_path, False)
    assert r.cpu_seconds >= 0.35 and json.loads((tmp_path / "x" / "record.json").read_text())["cpu_seconds"] >= 0.35
    assert f"{r.cpu_seconds} s CPU" in markdown([r])


def test_open_data_gaps_by_hand():
    from pocketlm.insights.open_data import yearly_gaps

    rows = [{"year": 2023, "data": "open", "commonsense": 0.5, "problem_solving": 0.4, "math": None},
            {"year": 2023, "data": "closed", "commonsense": 0.6, "problem_solving": 0.5, "math": 10.0},
            {"year": 2023, "data": "closed", "commonsense": 0.55, "problem_solving": 0.6, "math": None}]
    gaps = yearly_gaps(rows)
    assert gaps["commonsense"][2023]["gap"] == pytest.approx(0.1)
    assert gaps["problem_solving"][2023]["relative_gap"] == pytest.approx(0.2 / 0.6)
    assert "math" not in gaps  # no open-data score that year


def test_pattern_task_records_are_consistent():
    from pocketlm.insights.icl_tasks import pattern_records

    recs = pattern_records(50)
    for r in recs:
        words = r["pattern"].split()
        period = 2 if words[0] == words[2] else 3
        assert words[period] == words[0]
        assert r["choices"][r["label"]] == words[len(words) - period] and len(set(r["choices"])) == 4
    assert pattern_records(50) == recs  # seeded


def test_bundled_pattern_task_is_the_generated_one():
    from pocketlm.evaluate.spec import get_spec
    from pocketlm.evaluate.prompts import load_docs, resolve_data_dir
    from pocketlm.insights.icl_tasks import pattern_records

    docs, _ = load_docs(get_spec("pattern_completion"), resolve_data_dir(None))
    assert len(docs) == 200 and [d["label"] for d in docs] == [r["label"] for r in pattern_records()]


def test_junk_documents_fail_the_filters_and_clean_text_passes():
    from pocketlm.data.quality import HeuristicConfig, heuristic_reject_reason
    from pocketlm.insights.filtering import junk_documents, permissive

    story = ("Once upon a time there was a little girl named Lily. She loved to play in the park with her dog. "
             "One day the dog ran to the big tree and Lily ran after him, and they laughed and played all day.")
    junk = junk_documents([story] * 8, share=1.0)
    cfg = HeuristicConfig(min_words=20)
    assert heuristic_reject_reason(story, cfg) is None
    rejected = [heuristic_reject_reason(j, cfg) is not None for j in junk]
    assert rejected[1::4] == [True, True] and rejected[2::4] == [True, True] and rejected[3::4] == [True, True]
    assert not any(heuristic_reject_reason(j, permissive()) for j in junk)


def test_icl_verdict_needs_growth_above_chance():
    from pocketlm.insights.icl import icl_verdict

    assert icl_verdict([0.01, 0.05, 0.12], best=0.6) == "agree"
    assert icl_verdict([0.01, 0.05, 0.12], best=0.3) == "partly"  # grows, but on a task at chance
    assert icl_verdict([-0.005, -0.005], best=0.235) == "disagree"  # flat at chance: shows nothing
    assert icl_verdict([0.05, 0.01, 0.12], best=0.6) == "partly"  # not monotone


def test_key_value_records_share_a_mapping_per_group():
    from pocketlm.insights.icl_tasks import mapping_records

    recs = mapping_records(groups=6)
    assert len(recs) == 6 * 12 and len({r["id"] for r in recs}) == len(recs) and mapping_records(groups=6) == recs
    mapping: dict[tuple[int, str], str] = {}
    for r in recs:
        answer = r["choices"][r["label"]]
        assert mapping.setdefault((r["group"], r["key"]), answer) == answer and len(set(r["choices"])) == 4
    for g in range(6):
        values = {v for (grp, _), v in mapping.items() if grp == g}
        assert len(values) == 3  # a one-to-one mapping of three keys
        assert all(values < set(r["choices"]) for r in recs if r["group"] == g)  # + one value outside it


def test_bundled_key_value_task_is_the_generated_one():
    from pocketlm.evaluate.prompts import load_docs, resolve_data_dir
    from pocketlm.evaluate.spec import get_spec
    from pocketlm.insights.icl_tasks import mapping_records

    docs, _ = load_docs(get_spec("key_value"), resolve_data_dir(None))
    assert [{k: v for k, v in d.items() if k != "_file"} for d in docs] == mapping_records()


def _look_up(context: str, choices: list[str]) -> int | None:
    """An ideal in-context learner: the value the context's demonstrations give the asked key, else None."""
    *demos, question = context.split("\n\n")
    seen = dict(line.split(" = ") for line in demos)
    key = question.removesuffix(" =")
    return choices.index(seen[key]) if key in seen else None


def test_key_value_shots_carry_the_answer_and_match_the_training_sequences():
    """Prompts built by pocketlm.evaluate from the task spec: at 0 shots they hold nothing but the key; at k
    shots a perfect look-up over the demonstrations answers most items (5 shots: the asked key is among the
    demonstrations ~88 % of the time, hypergeometric over the group's 11 other documents), never wrongly; and
    the training sequences are laid out exactly like those prompts."""
    import re
    from math import comb

    from pocketlm.evaluate.prompts import build_examples, load_docs, resolve_data_dir
    from pocketlm.evaluate.spec import get_spec
    from pocketlm.insights.icl_tasks import training_sequences

    spec = get_spec("key_value")
    docs, few = load_docs(spec, resolve_data_dir(None))
    zero = build_examples(spec, docs, few, 0)
    assert all(re.fullmatch(r"\w+ =", e.requests[0][0]) for e in zero)
    for shots, expected in ((1, 3 / 11), (5, 1 - comb(8, 5) / comb(11, 5))):
        examples = build_examples(spec, docs, few, shots)
        answers = [_look_up(e.requests[0][0], e.choices) for e in examples]
        assert all(a == e.label for a, e in zip(answers, examples) if a is not None)
        assert sum(a is not None for a in answers) / len(examples) == pytest.approx(expected, abs=0.08)
    line = re.compile(r"(\w+) = (\w+)")
    for i, doc in enumerate(training_sequences(50)):
        matches = [line.fullmatch(x) for x in doc.split("\n\n")]
        assert all(matches) and 6 <= len(matches) <= 16
        pairs = [m.groups() for m in matches]
        if i % 2:  # one hidden answer for the whole sequence
            assert len({v for _, v in pairs}) == 1
        else:  # a mapping: one value per key
            assert len(dict(pairs)) == len(set(pairs))


def test_repeat_answer_shots_show_the_answer_and_never_a_distractor():
    from pocketlm.evaluate.prompts import build_examples, load_docs, resolve_data_dir
    from pocketlm.evaluate.spec import get_spec
    from pocketlm.insights.icl_tasks import repeat_records

    spec = get_spec("repeat_answer")
    docs, few = load_docs(spec, resolve_data_dir(None))
    assert [{k: v for k, v in d.items() if k != "_file"} for d in docs] == repeat_records()
    for e in build_examples(spec, docs, few, 5):
        *demos, question = e.requests[0][0].split("\n\n")
        shown = {line.split(" = ")[1] for line in demos}
        assert shown == {e.choices[e.label]} and question == e.doc["key"] + " ="


def test_trained_preset_takes_model_changes_into_the_model_and_its_cache_key(monkeypatch, tmp_path):
    """The changed ModelConfig is the one trained, under its own cache folder (training itself stubbed out)."""
    import pocketlm.train.trainer as trainer
    from pocketlm.train.fixtures import bundled_data_dir, trained_preset

    data = bundled_data_dir()
    monkeypatch.setenv("POCKETLM_CACHE", str(tmp_path))  # nothing cached: every call reaches train()
    seen = []

    def fake_train(tcfg, model_cfg):
        seen.append((tcfg.out_dir, model_cfg))
        raise RuntimeError("stop")

    monkeypatch.setattr(trainer, "train", fake_train)
    for model in (None, {"n_layer": 1, "d_model": 64}):
        with pytest.raises(RuntimeError, match="stop"):
            trained_preset("micro", data_dir=data, model=model)
    (base_dir, base), (one_dir, one) = seen
    assert (one.n_layer, one.d_model) == (1, 64) and (base.n_layer, base.d_model) == (2, 32)
    assert base_dir != one_dir
