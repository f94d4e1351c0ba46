"""Evaluator behaviour: bad input errors, few-shot sampling, metrics, prefix sharing == full forward,
paired bootstrap, KL, ICL study, the lm-eval adapter and the CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
torch = pytest.importorskip("torch")
T = pytest.importorskip("transformers")

from pocketlm.evaluate.backends import Backend, ModelInputError, make_backend  # noqa: E402
from pocketlm.evaluate.compare import CompareError, compare_results, paired_bootstrap  # noqa: E402
from pocketlm.evaluate.prompts import build_examples, load_docs  # noqa: E402
from pocketlm.evaluate.runner import evaluate, load_results  # noqa: E402
from pocketlm.evaluate.scorer import Scorer  # noqa: E402
from pocketlm.evaluate.sources import DataError  # noqa: E402
from pocketlm.evaluate.spec import TaskSpecError, get_spec, load_spec_file, spec_from_dict  # noqa: E402
from pocketlm.evaluate.tiny import SHARED, save_tiny_llama  # noqa: E402

needs_tokenizer = pytest.mark.skipif(not (SHARED / "tokenizers/minimind/tokenizer.json").is_file(),
                                     reason="shared/data/tokenizers/minimind is absent")


def _mc_spec(records, **kw):
    raw = {"task": "toy", "output_type": "multiple_choice", "eval": {"records": records}, "fewshot": "eval",
           "text": "Q: {{q}}\nA:", "choices": "opts", "label": "gold", "metrics": ["acc", "acc_norm"]}
    raw.update(kw)
    return spec_from_dict(raw)


# ------------------------------------------------------------------ bad input
def test_task_file_missing_fields(tmp_path):
    f = tmp_path / "broken.yaml"
    f.write_text("task: broken\noutput_type: multiple_choice\neval: {path: x.jsonl, format: jsonl}\n"
                 "metrics: [acc]\ntext: 'Q: {{q}}'\n")
    with pytest.raises(TaskSpecError, match=r"missing required field\(s\) \['choices'\]"):
        load_spec_file(f)
    f.write_text("task: broken\noutput_type: multiple_choice\nmetrics: [acc]\n")
    with pytest.raises(TaskSpecError, match="eval"):
        load_spec_file(f)


def test_bad_spec_values():
    with pytest.raises(TaskSpecError, match="output_type"):
        spec_from_dict({"task": "t", "output_type": "classify", "eval": {"records": []}, "metrics": ["acc"]})
    with pytest.raises(TaskSpecError, match="bleu"):
        _mc_spec([], metrics=["bleu"])
    with pytest.raises(TaskSpecError, match="unknown format"):
        _mc_spec([], eval={"path": "a.parquet", "format": "parquet"})
    with pytest.raises(TaskSpecError, match="unknown field"):
        _mc_spec([], choises="opts")


def test_unknown_task():
    with pytest.raises(TaskSpecError, match="unknown task 'hellaswagg'.*hellaswag"):
        get_spec("hellaswagg")


def test_label_out_of_range():
    spec = _mc_spec([{"q": "a", "opts": ["x", "y"], "gold": 2}, {"q": "b", "opts": ["x", "y"], "gold": 0}])
    docs, fs = load_docs(spec, Path("."))
    with pytest.raises(DataError, match="label 2 is out of range for 2 choices"):
        build_examples(spec, docs, fs, 0)


def test_missing_data_file_names_the_fix(tmp_path):
    spec = get_spec("arc_easy")
    with pytest.raises(DataError, match="not found.*--data-dir"):
        load_docs(spec, tmp_path)


def test_zero_shot_only_task_refuses_shots():
    spec = get_spec("truthfulqa_mc2")
    with pytest.raises(TaskSpecError, match="zero-shot only"):
        build_examples(spec, [], None, 1)


@needs_tokenizer
def test_model_without_tokenizer(tmp_path):
    from pocketlm.evaluate.loading import load_for_eval
    d = save_tiny_llama(tmp_path / "m")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (d / name).unlink()
    with pytest.raises(ModelInputError, match="no tokenizer"):
        load_for_eval(d)
    with pytest.raises(ModelInputError, match="no tokenizer"):
        Scorer(Backend(lambda i, m: None), None)
    with pytest.raises(ModelInputError, match="cannot evaluate"):
        make_backend(object())


# ------------------------------------------------------------------ few-shot sampling
def test_demos_never_include_the_scored_document():
    records = [{"q": f"question {i}", "opts": ["x", "y"], "gold": i % 2} for i in range(7)]
    spec = _mc_spec(records)
    docs, fs = load_docs(spec, Path("."))
    a = build_examples(spec, docs, fs, 5, seed=1)
    b = build_examples(spec, docs, fs, 5, seed=1)
    c = build_examples(spec, docs, fs, 5, seed=2)
    assert [e.requests for e in a] == [e.requests for e in b]  # seeded: deterministic
    assert [e.requests for e in a] != [e.requests for e in c]
    for ex in a:
        ctx = ex.requests[0][0]
        own = f"Q: question {ex.doc_id}\nA:"
        assert ctx.endswith(own) and own not in ctx[:-len(own)]
        assert sum(f"Q: question {i}\nA:" in ctx for i in range(7)) == 6  # 5 distinct demos + itself


# ------------------------------------------------------------------ metrics & scoring
@needs_tokenizer
def test_prefix_sharing_equals_full_forward(tmp_path):
    d = save_tiny_llama(tmp_path / "m")
    model = T.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    tok = T.AutoTokenizer.from_pretrained(d)
    groups = [[("The cat sat on the", " mat"), ("The cat sat on the", " hat and the rest"),
               ("The cat sat on the", " m")],
              [("Short", " one"), ("Short", " two words")],
              [("A longer context about dogs that bark loudly at night", " yes"),
               ("A longer context about dogs that bark loudly at night", " no")],
              [("Alice went home", ". The end"), ("Bob went home", ". The end")]]
    shared = Scorer(make_backend(model, tok), tok).loglikelihood_groups(groups)
    full = Scorer(make_backend(model, tok), tok, share_prefix=False).loglikelihood_groups(groups)
    # reference: one unpadded forward per request, log-softmax by hand
    for g, sg, fg in zip(groups, shared, full):
        for (ctx, cont), s, f in zip(g, sg, fg):
            c_ids, k_ids = Scorer(make_backend(model, tok), tok).tok.encode_pair(ctx, cont)
            ids = torch.tensor([c_ids + k_ids])
            with torch.no_grad():
                lp = model(ids).logits[0, :-1].log_softmax(-1)
            ref = float(sum(lp[len(c_ids) - 1 + i, t] for i, t in enumerate(k_ids)))
            assert s[0] == pytest.approx(ref, abs=1e-4) and f[0] == pytest.approx(ref, abs=1e-4)
            assert s[1] == f[1]


def test_mc2_and_acc_norm():
    from pocketlm.evaluate.metrics import multiple_choice_scores
    from pocketlm.evaluate.prompts import Example
    ex = Example(0, [], labels=[1, 1, 0], choices=["a", "b", "c"])
    lls = np.log([0.2, 0.3, 0.5])
    assert multiple_choice_scores(ex, lls, ["mc2"])["mc2"] == pytest.approx(0.5)
    ex = Example(0, [], label=1, choices=["ab", "abcdef"])
    s = multiple_choice_scores(ex, [-2.0, -3.0], ["acc", "acc_norm"])
    assert s == {"acc": 0.0, "acc_norm": 1.0}  # -3/6 > -2/2


def test_paired_bootstrap_detects_real_difference():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2, 400).astype(float)
    b = a.copy()
    flip = rng.choice(400, 60, replace=False)
    b[flip] = 1.0  # B is right wherever A was, plus more
    r = paired_bootstrap(a, b, n_boot=2000)
    assert r["diff"] == pytest.approx(b.mean() - a.mean())
    assert 0 < r["ci_low"] < r["diff"] < r["ci_high"] and r["p_value"] < 0.01
    same = paired_bootstrap(a, a, n_boot=500)
    assert same["ci_low"] == same["ci_high"] == 0.0


# ------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    if not (SHARED / "tokenizers/minimind/tokenizer.json").is_file():
        pytest.skip("shared/data/tokenizers/minimind is absent")
    root = tmp_path_factory.mktemp("models")
    a = save_tiny_llama(root / "a", seed=0)
    b = save_tiny_llama(root / "b", seed=1)
    return a, b


def test_results_compare_kl_and_cli(two_models, tmp_path):
    from typer.testing import CliRunner

    from pocketlm.cli import app
    a, b = two_models
    runner = CliRunner()
    ra, rb = tmp_path / "a.json", tmp_path / "b.json"
    for model, out in ((a, ra), (b, rb)):
        r = runner.invoke(app, ["eval", str(model), "--tasks", "arc_easy,boolq,gsm8k", "--shots", "0",
                                "--limit", "2", "-o", str(out)])
        assert r.exit_code == 0, r.output
        assert "arc_easy" in r.output
    res = load_results(ra)
    rec = res["results"]["arc_easy"]["0"]["records"][0]
    assert len(rec["loglikelihoods"]) == 4 and rec["label"] in range(4)
    assert set(res["groups"]) >= {"problem_solving", "commonsense", "math"}
    acc = res["results"]["arc_easy"]["0"]["metrics"]
    assert acc["acc"] == pytest.approx(np.mean([r["scores"]["acc"] for r in res["results"]["arc_easy"]["0"]["records"]]))
    r = runner.invoke(app, ["eval", "compare", str(ra), str(rb)])
    assert r.exit_code == 0 and "arc_easy" in r.output and "CI" in r.output, r.output
    rows = compare_results(load_results(ra), load_results(rb), n_boot=200)
    assert {x["task"] for x in rows} == {"arc_easy", "boolq", "gsm8k"}
    # a results file scored on other data cannot be paired
    other = json.loads(rb.read_text())
    other["results"]["arc_easy"]["0"]["records"][0]["prompt_sha"] = "0" * 16
    with pytest.raises(CompareError, match="different prompts"):
        compare_results(load_results(ra), other)
    text = tmp_path / "t.txt"
    text.write_text("Once upon a time there was a little dog. It liked to run in the park every day. " * 5)
    r = runner.invoke(app, ["eval", "kl", str(a), str(a), "--text", str(text)])
    assert r.exit_code == 0, r.output
    assert "kl_mean         0\n" in r.output or "kl_mean         -0\n" in r.output or "e-" in r.output
    assert "top1_agreement  1\n" in r.output
    r = runner.invoke(app, ["eval", "kl", str(a), str(b), "--text", str(text)])
    kl = float(next(line.split()[1] for line in r.output.splitlines() if line.startswith("kl_mean")))
    assert kl > 0.01
    r = runner.invoke(app, ["eval", "hellaswagg_model_dir", "--tasks", "nosuchtask"])
    assert r.exit_code == 2 and "does not exist" in r.output
    r = runner.invoke(app, ["eval", str(a), "--tasks", "nosuchtask"])
    assert r.exit_code == 2 and "unknown task" in r.output


def test_kl_matches_direct_computation(two_models):
    from pocketlm.evaluate.kl import next_token_kl
    a, b = two_models
    ma = T.AutoModelForCausalLM.from_pretrained(a, dtype=torch.float32).eval()
    mb = T.AutoModelForCausalLM.from_pretrained(b, dtype=torch.float32).eval()
    tok = T.AutoTokenizer.from_pretrained(a)
    text = "The quick brown fox jumps over the lazy dog. " * 4
    res = next_token_kl(ma, mb, tok, text, window=16)
    ids = torch.tensor([tok.encode(text)])
    with torch.no_grad():
        pa = torch.softmax(ma(ids).logits[0, :-1], -1)
        pb = torch.softmax(mb(ids).logits[0, :-1], -1)
    # windows of 16 change the context, so compare only the first window's positions exactly
    first = next_token_kl(ma, mb, tok, text, window=16, max_tokens=17)
    ref = (pa[:16] * (pa[:16].log() - pb[:16].log())).sum(-1).mean().item()
    assert first["kl_mean"] == pytest.approx(ref, rel=1e-4)
    assert res["tokens"] == ids.shape[1] - 1


def test_icl_study_writes_table_and_figure(two_models, tmp_path):
    from pocketlm.evaluate.icl import icl_study
    a, _ = two_models
    model = T.AutoModelForCausalLM.from_pretrained(a, dtype=torch.float32).eval()
    tok = T.AutoTokenizer.from_pretrained(a)
    study = icl_study([("tiny", model, tok, 1_000_000)], tasks=["arc_easy", "piqa"], shots=[0, 1], limit=4,
                      out_dir=tmp_path)
    zero = [r for r in study["rows"] if r["shots"] == 0]
    assert all(r["gain"] == 0 for r in zero) and len(study["rows"]) == 4
    assert (tmp_path / "icl_gain.png").stat().st_size > 10_000
    assert "gain@1" in (tmp_path / "icl_table.md").read_text()


def test_lm_eval_adapter_runs_a_task(two_models):
    pytest.importorskip("lm_eval")
    from lm_eval import evaluator
    from lm_eval.models.huggingface import HFLM

    from pocketlm.evaluate.lm_eval_adapter import PocketLM
    a, _ = two_models
    model = T.AutoModelForCausalLM.from_pretrained(a, dtype=torch.float32).eval()
    tok = T.AutoTokenizer.from_pretrained(a)
    lm = PocketLM(model=model, tokenizer=tok)
    hf = HFLM(pretrained=model, tokenizer=tok, batch_size=4)
    from lm_eval.api.instance import Instance
    reqs = [Instance("loglikelihood", {}, ("The sky is", c), i) for i, c in enumerate([" blue", " green today"])]
    reqs.append(Instance("loglikelihood", {}, ("", "Hello world"), 2))
    ours, theirs = lm.loglikelihood(reqs), hf.loglikelihood(reqs)
    for (x, g), (y, h) in zip(ours, theirs):
        assert x == pytest.approx(y, abs=1e-4) and g == h
    roll = [Instance("loglikelihood_rolling", {}, ("One two three four five six.",), 0)]
    assert lm.loglikelihood_rolling(roll)[0] == pytest.approx(hf.loglikelihood_rolling(roll)[0], abs=1e-4)
    gen = [Instance("generate_until", {}, ("Question: 1+1?\nAnswer:", {"until": ["\n\n"], "max_gen_toks": 8,
                                                                        "do_sample": False}), 0)]
    assert lm.generate_until(gen) == hf.generate_until(gen)
    del evaluator
