"""Task files are input, not code: sandboxed templates, refused `!function`, and one clear error per
bad input (lm-eval YAMLs and pocketlm specs alike). Also lm-eval's few-shot sampling rule, checked
against lm-eval's own sampler. No model is run here."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pocketlm.evaluate.prompts import build_examples, load_docs
from pocketlm.evaluate.sources import DataError
from pocketlm.evaluate.spec import TaskSpecError, get_spec, spec_from_dict
from pocketlm.evaluate.templates import TemplateError, evaluate, render

# the three template-injection payloads reported in issue 17
PAYLOADS = [
    "{{ cycler.__init__.__globals__.os.system('touch MARKER') }}",
    "{{ lipsum.__globals__['os'].popen('touch MARKER').read() }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
]
EXPRESSIONS = [
    "lipsum.__globals__['os'].system('touch MARKER')",
    "cycler.__init__.__globals__.os.system('touch MARKER')",
    "''.__class__.__mro__[1].__subclasses__()",
]


def _payload(template: str, marker: Path) -> str:
    return template.replace("MARKER", str(marker))


@pytest.mark.parametrize("run,source", [(render, p) for p in PAYLOADS] + [(evaluate, e) for e in EXPRESSIONS])
def test_template_injection_is_refused(tmp_path, run, source):
    marker = tmp_path / "pwned"
    with pytest.raises(TemplateError, match="refused.*(__init__|__globals__|__class__).*Python internals"):
        run(_payload(source, marker), {"question": "q"})
    assert not marker.exists()


def test_templates_cannot_mutate_documents():
    doc = {"choices": ["a", "b"]}
    with pytest.raises(TemplateError, match="refused"):
        render("{{ choices.append('c') }}", doc)
    assert doc["choices"] == ["a", "b"]


def test_safe_templates_still_work():
    doc = {"text": "a b c", "choices": {"label": ["A", "B"], "text": ["x", "y"]}, "answerKey": "B"}
    assert render("{{text.split(' ')[:-1]|join(' ')}}", doc) == "a b"
    assert render("{{choices.label.index(answerKey)}}", doc) == "1"
    assert render("{{ text | regex_replace('b', 'B') }}", doc) == "a B c"


def _spec_with_text(text: str, choices="['x', 'y']") -> dict:
    return {"task": "t", "output_type": "multiple_choice", "eval": {"records": [{"q": "hi", "label": 0}]},
            "text": text, "choices": choices, "label": "label", "metrics": ["acc"]}


@pytest.mark.parametrize("template", PAYLOADS)
def test_injection_through_a_spec_is_one_clear_error(tmp_path, template):
    marker = tmp_path / "pwned"
    spec = spec_from_dict(_spec_with_text(_payload(template, marker)))
    docs, fs = load_docs(spec, tmp_path)
    with pytest.raises(DataError, match="'text' failed.*refused"):
        build_examples(spec, docs, fs, 0)
    spec = spec_from_dict(_spec_with_text("{{q}}", choices=_payload(EXPRESSIONS[0], marker)))
    with pytest.raises(DataError, match="'choices' failed.*refused"):
        build_examples(spec, docs, fs, 0)
    assert not marker.exists()


# ---------------------------------------------------------------- lm-eval YAMLs

def _data(tmp_path: Path, rows: list[dict], splits=("validation",)) -> dict:
    files = {}
    for s in splits:
        p = tmp_path / f"{s}.jsonl"
        p.write_text("".join(json.dumps(r) + "\n" for r in rows))
        files[s] = str(p)
    return files


ROWS = [{"q": f"question {i}", "options": ["yes", "no", "maybe"], "label": i % 3} for i in range(8)]


def _lm_yaml(tmp_path: Path, body: str, files: dict | None = None) -> Path:
    files = files or _data(tmp_path, ROWS)
    p = tmp_path / "task.yaml"
    p.write_text(f"task: mine\ndataset_path: json\ndataset_kwargs:\n  data_files: {json.dumps(files)}\n"
                 f"output_type: multiple_choice\n{body}")
    return p


GOOD = "validation_split: validation\ndoc_to_text: '{{q}}'\ndoc_to_choice: options\ndoc_to_target: label\n"


def test_lm_eval_yaml_reads(tmp_path):
    spec = get_spec(_lm_yaml(tmp_path, GOOD))
    docs, fs = load_docs(spec, tmp_path)
    (ex,) = build_examples(spec, docs, fs, 0, limit=1)
    assert ex.requests == [("question 0", " yes"), ("question 0", " no"), ("question 0", " maybe")]
    assert ex.label == 0 and spec.metrics == ["acc", "acc_norm"]


def test_function_tag_is_refused_and_never_imported(tmp_path):
    marker = tmp_path / "imported"
    (tmp_path / "utils.py").write_text(f"open({str(marker)!r}, 'w').write('x')\ndef process_docs(d):\n    return d\n")
    p = _lm_yaml(tmp_path, GOOD + "process_docs: !function utils.process_docs\n")
    with pytest.raises(TaskSpecError, match="never runs code from a task file.*not a module pocketlm knows"):
        get_spec(p)
    p = _lm_yaml(tmp_path, GOOD + "process_docs: !function nowhere.process_docs\n")
    with pytest.raises(TaskSpecError, match="would run Python code.*does not exist"):
        get_spec(p)
    assert not marker.exists()


def test_function_tag_in_a_pocketlm_spec_is_refused(tmp_path):
    p = tmp_path / "spec.yaml"
    p.write_text("task: t\noutput_type: multiple_choice\neval: {records: [{q: a, label: 0}]}\n"
                 "text: !function utils.doc_to_text\nchoices: \"['a']\"\nlabel: label\nmetrics: [acc]\n")
    with pytest.raises(TaskSpecError, match="never runs code"):
        get_spec(p)


def test_known_lm_eval_module_copy_is_a_builtin(tmp_path):
    """A byte-identical copy of lm-eval's hellaswag/utils.py maps to pocketlm's built-in; an edited one is refused."""
    lm_eval = pytest.importorskip("lm_eval")
    shipped = Path(lm_eval.__file__).parent / "tasks" / "hellaswag" / "utils.py"
    shutil.copy(shipped, tmp_path / "utils.py")
    rows = [{"activity_label": "Cooking", "ctx_a": "He cuts [title] onions.", "ctx_b": "then he", "endings":
             ["fries them.", "sings.", "sleeps.", "runs."], "label": "0"}] * 2
    body = ("validation_split: validation\nprocess_docs: !function utils.process_docs\ndoc_to_text: '{{query}}'\n"
            "doc_to_choice: choices\ndoc_to_target: '{{label}}'\n")
    spec = get_spec(_lm_yaml(tmp_path, body, _data(tmp_path, rows)))
    docs, _ = load_docs(spec, tmp_path)
    assert docs[0]["query"] == "Cooking: He cuts. onions. Then he" and docs[0]["gold"] == 0
    (tmp_path / "utils.py").write_text(shipped.read_text() + "\n# edited\n")
    with pytest.raises(TaskSpecError, match="not a module pocketlm knows"):
        get_spec(tmp_path / "task.yaml")


def test_template_reaching_internals_in_lm_eval_yaml(tmp_path):
    marker = tmp_path / "pwned"
    body = GOOD.replace("'{{q}}'", json.dumps(_payload(PAYLOADS[0], marker)))
    with pytest.raises(DataError, match="doc_to_text failed.*refused.*__init__"):
        get_spec(_lm_yaml(tmp_path, body))
    body = GOOD.replace("options", json.dumps(_payload(PAYLOADS[1], marker)))
    spec = get_spec(_lm_yaml(tmp_path, body))
    docs, fs = load_docs(spec, tmp_path)
    with pytest.raises(DataError, match="'choices' failed.*refused.*__globals__"):
        build_examples(spec, docs, fs, 0)
    assert not marker.exists()


def test_missing_split_is_one_clear_error(tmp_path):
    with pytest.raises(TaskSpecError, match="test_split is 'test' but dataset_kwargs.data_files has no 'test'"):
        get_spec(_lm_yaml(tmp_path, GOOD.replace("validation_split: validation", "test_split: test")))
    spec = get_spec(_lm_yaml(tmp_path, GOOD + "training_split: train\n"))  # 0-shot needs no train file
    docs, fs = load_docs(spec, tmp_path)
    assert len(build_examples(spec, docs, fs, 0)) == len(ROWS)
    with pytest.raises(DataError, match="training_split is 'train' but dataset_kwargs.data_files has no 'train'"):
        build_examples(spec, docs, fs, 2)
    with pytest.raises(TaskSpecError, match="neither test_split nor validation_split"):
        get_spec(_lm_yaml(tmp_path, GOOD.replace("validation_split: validation\n", "")))


def test_label_out_of_range_is_one_clear_error(tmp_path):
    rows = [{**r, "label": 7} for r in ROWS]
    spec = get_spec(_lm_yaml(tmp_path, GOOD, _data(tmp_path, rows)))
    docs, fs = load_docs(spec, tmp_path)
    with pytest.raises(DataError, match="label 7 is out of range for 3 choices"):
        build_examples(spec, docs, fs, 0)
    rows = [{**r, "label": "perhaps"} for r in ROWS]
    spec = get_spec(_lm_yaml(tmp_path, GOOD, _data(tmp_path, rows)))
    docs, fs = load_docs(spec, tmp_path)
    with pytest.raises(DataError, match="'perhaps' is not one of the choices"):
        build_examples(spec, docs, fs, 0)
    spec = spec_from_dict({**_spec_with_text("{{q}}"), "label": 5})
    docs, fs = load_docs(spec, tmp_path)
    with pytest.raises(DataError, match="label 5 is out of range for 2 choices"):
        build_examples(spec, docs, fs, 0)


def test_hub_dataset_is_refused(tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text("task: t\ndataset_path: allenai/ai2_arc\ntest_split: test\ndoc_to_text: q\ndoc_to_target: a\n")
    with pytest.raises(TaskSpecError, match="reads local files only.*dataset_path: json"):
        get_spec(p)


def test_include_cycle_is_refused(tmp_path):
    (tmp_path / "a.yaml").write_text("include: b.yaml\ntask: a\n")
    (tmp_path / "b.yaml").write_text("include: a.yaml\ndoc_to_text: q\n")
    with pytest.raises(TaskSpecError, match="include cycle"):
        get_spec(tmp_path / "a.yaml")


# ---------------------------------------------------------------- the few-shot sampling rule vs lm-eval's sampler

@pytest.mark.parametrize("exclude", [True, False])
def test_sampling_rule_matches_lm_eval_sampler(tmp_path, exclude):
    """lm-eval passes eval_doc (draw k+1, drop it) iff fewshot_split == test_split; pocketlm's
    fewshot_exclude_scored reproduces both branches on a separate few-shot split."""
    samplers = pytest.importorskip("lm_eval.api.samplers")
    eval_rows = [{"q": f"e{i}", "label": 0} for i in range(6)]
    train_rows = [{"q": f"t{i}", "label": 0} for i in range(10)]
    spec = spec_from_dict({"task": "t", "output_type": "multiple_choice", "eval": {"records": eval_rows},
                           "fewshot": {"records": train_rows}, "fewshot_exclude_scored": exclude,
                           "text": "{{q}}", "choices": "['a']", "label": "label", "metrics": ["acc"]})
    docs, fs = load_docs(spec, tmp_path)
    mine = build_examples(spec, docs, fs, 3, seed=1234)
    sampler = samplers.ContextSampler(train_rows, rnd=None).set_rnd(1234)
    for doc, ex in zip(eval_rows, mine):
        theirs = sampler.sample(n=3, eval_doc=doc if exclude else None)
        assert ex.requests[0][0] == "".join(f"{d['q']} a\n\n" for d in theirs) + doc["q"]


def test_missing_data_file_names_the_split(tmp_path):
    p = _lm_yaml(tmp_path, GOOD, {"validation": str(tmp_path / "nowhere.jsonl")})
    with pytest.raises(DataError, match="nowhere.jsonl .dataset_kwargs.data_files, split 'validation'. does not exist"):
        get_spec(p)


def test_yaml_alias_bomb_is_not_walked_exponentially(tmp_path):
    """Nine levels of nine aliases (9**9 leaves if expanded): refused by field, in well under a second."""
    import time
    lines = ["a0: &a0 [x]"] + [f"a{i}: &a{i} [{', '.join(['*a%d' % (i - 1)] * 9)}]" for i in range(1, 10)]
    p = tmp_path / "bomb.yaml"
    p.write_text("\n".join(lines) + "\n")
    t0 = time.perf_counter()
    with pytest.raises(TaskSpecError, match="missing required field|expands to more than"):
        get_spec(p)
    # milliseconds when refused; walking the 387M leaves would take minutes (and gigabytes), so the bound
    # only has to survive a loaded machine (a nice-19 run at load 10 on 2 cores gets a fifth of a core)
    assert time.perf_counter() - t0 < 20
