"""Prompt parity with lm-eval: its task YAMLs as shipped (only the data location swapped) build the
requests (context, continuation) from the same documents in Hugging Face schema; pocketlm's must
be identical, string for string. Also CommonsenseQA on hand-written records in the public
(HF tau/commonsense_qa) layout, and the Minerva answer normaliser on worked cases."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
lm_eval = pytest.importorskip("lm_eval")

from pocketlm.evaluate.math_answers import final_boxed_answer, minerva_equal, normalize_final_answer  # noqa: E402
from pocketlm.evaluate.prompts import BUNDLED_DATA, build_examples, load_docs  # noqa: E402
from pocketlm.evaluate.spec import builtin_tasks, get_spec  # noqa: E402

EVAL = BUNDLED_DATA / "eval"
LM_EVAL_TASKS = Path(lm_eval.__file__).parent / "tasks"


def _jsonl(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]


def _write(path: Path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def lm_eval_requests(yaml_rel: str, splits: dict[str, list[dict]], shots: int, tmp: Path, n: int):
    """lm-eval's requests from its shipped YAML, unmodified but for the data location (an include-only
    YAML pointing dataset_path json at local files), at `shots` as simple_evaluate sets them."""
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks._yaml_loader import load_yaml

    files = {name: _write(tmp / f"{name}.jsonl", rows) for name, rows in splits.items()}
    local = tmp / "task.yaml"
    local.write_text(f"include: {LM_EVAL_TASKS / yaml_rel}\ndataset_path: json\ndataset_name: null\n"
                     f"dataset_kwargs:\n  data_files: {json.dumps(files)}\n")
    task = ConfigurableTask(config=load_yaml(local))
    task.set_config(key="num_fewshot", value=shots)
    task.set_fewshot_seed(1234)
    task.build_all_requests(limit=n)
    by_doc: dict[int, list] = {}
    for inst in sorted(task.instances, key=lambda i: (i.doc_id, i.idx)):
        by_doc.setdefault(inst.doc_id, []).append(tuple(inst.args))
    return [by_doc[i] for i in sorted(by_doc)]


def pocketlm_requests(task: str, shots: int, n: int, data_dir: Path = BUNDLED_DATA):
    spec = get_spec(task)
    docs, fs = load_docs(spec, data_dir)
    return [ex.requests for ex in build_examples(spec, docs, fs, shots, limit=n)]


def _arc_like(path, stem_key="question"):
    return [{stem_key: r["question"]["stem"], "choices": {"text": [c["text"] for c in r["question"]["choices"]],
                                                          "label": [c["label"] for c in r["question"]["choices"]]},
             "answerKey": r["answerKey"]} for r in _jsonl(path)]


@pytest.mark.parametrize("shots", [0, 3])
def test_arc_challenge_prompts(tmp_path, shots):
    test = [{"question": r["query"][10:], "choices": {"text": r["choices"], "label": list("ABCD")},
             "answerKey": "ABCD"[r["gold"]]} for r in _jsonl(EVAL / "arc_challenge/arc_challenge.jsonl")]
    theirs = lm_eval_requests("arc/arc_challenge.yaml", {
        "test": test, "train": _arc_like(EVAL / "arc_challenge/ARC-Challenge-Train.jsonl")}, shots, tmp_path, 8)
    assert pocketlm_requests("arc_challenge", shots, 8) == theirs


@pytest.mark.parametrize("shots", [0, 2])
def test_openbookqa_prompts(tmp_path, shots):
    theirs = lm_eval_requests("openbookqa/openbookqa.yaml", {
        "test": _arc_like(EVAL / "openbookqa/test.jsonl", "question_stem"),
        "train": _arc_like(EVAL / "openbookqa/train.jsonl", "question_stem")}, shots, tmp_path, 8)
    assert pocketlm_requests("openbookqa", shots, 8) == theirs


def test_mmlu_prompts_one_subject(tmp_path):
    subject = "college_biology"

    def rows(split):
        with open(EVAL / f"mmlu/{split}/{subject}_{split}.csv", newline="") as f:
            return [{"question": q, "subject": subject, "choices": [a, b, c, d], "answer": "ABCD".index(ans)}
                    for q, a, b, c, d, ans in csv.reader(f)]
    theirs = lm_eval_requests(f"mmlu/default/mmlu_{subject}.yaml", {"test": rows("test"), "dev": rows("dev")}, 5,
                              tmp_path, 6)
    spec = get_spec("mmlu")
    docs, fs = load_docs(spec, BUNDLED_DATA)
    docs = [d for d in docs if d["subject"] == subject]
    mine = [ex.requests for ex in build_examples(spec, docs, fs, 5, limit=6)]
    assert mine == theirs


def test_truthfulqa_mc2_prompts(tmp_path):
    raw = json.loads((EVAL / "truthfulqa/v1/mc_task.json").read_text())
    rows = [{"question": r["question"], "mc1_targets": {"choices": list(r["mc1_targets"]),
                                                       "labels": list(r["mc1_targets"].values())},
             "mc2_targets": {"choices": list(r["mc2_targets"]), "labels": list(r["mc2_targets"].values())}}
            for r in raw]
    theirs = lm_eval_requests("truthfulqa/truthfulqa_mc2.yaml", {"validation": rows}, 0, tmp_path, 6)
    assert pocketlm_requests("truthfulqa_mc2", 0, 6) == theirs


def test_lambada_prompts(tmp_path):
    rows = [{"text": r["context"] + " " + r["continuation"]} for r in _jsonl(EVAL / "lambada/lambada_openai.jsonl")]
    theirs = lm_eval_requests("lambada/lambada_openai.yaml", {"test": rows}, 0, tmp_path, 10)
    assert pocketlm_requests("lambada_openai", 0, 10) == theirs


CSQA = [  # hand-written records in the public HF tau/commonsense_qa layout
    {"id": f"q{i}", "question": q, "question_concept": c,
     "choices": {"label": list("ABCDE"), "text": opts}, "answerKey": key}
    for i, (q, c, opts, key) in enumerate([
        ("Where would you put a cup after washing it? ", "cup", ["cupboard", "oven", "garden", "car", "bed"], "A"),
        ("What do people use to cut paper?", "cut", ["spoon", "scissors", "glue", "pen", "book"], "B"),
        ("Where do fish live?", "fish", ["desert", "tree", "water", "sky", "road"], "C"),
        ("What does a clock show?", "clock", ["weather", "news", "music", "time", "price"], "D"),
        ("What keeps you warm in winter?", "warm", ["ice", "fan", "snow", "rain", "coat"], "E"),
    ])]


@pytest.mark.parametrize("shots", [0, 1])  # 2 train records: lm-eval's rule draws k+1 of them
def test_commonsense_qa_spec_on_public_format(tmp_path, shots):
    root = tmp_path / "data"
    (root / "eval/commonsense_qa").mkdir(parents=True)
    _write(root / "eval/commonsense_qa/validation.jsonl", CSQA[:3])
    _write(root / "eval/commonsense_qa/train.jsonl", CSQA[3:])
    theirs = lm_eval_requests("commonsense_qa/default.yaml", {"validation": CSQA[:3], "train": CSQA[3:]}, shots,
                              tmp_path, 3)
    assert pocketlm_requests("commonsense_qa", shots, 3, root) == theirs
    spec = get_spec("commonsense_qa")
    docs, fs = load_docs(spec, root)
    assert [ex.label for ex in build_examples(spec, docs, fs, 0)] == [0, 1, 2]


def test_minerva_math_spec_and_answers(tmp_path):
    root = tmp_path / "data"
    (root / "eval/minerva_math").mkdir(parents=True)
    rows = [{"problem": "What is $1+1$?", "level": "Level 1", "type": "Algebra",
             "solution": "We add: $1+1=\\boxed{2}$."},
            {"problem": "Simplify $\\frac{2}{4}$.", "level": "Level 1", "type": "Prealgebra",
             "solution": "Dividing by 2 gives $\\boxed{\\frac{1}{2}}$."},
            {"problem": "How many cents in $100$ dollars?", "level": "Level 2", "type": "Prealgebra",
             "solution": "There are $\\boxed{10,\\!000 \\text{ cents}}$."}]
    _write(root / "eval/minerva_math/test.jsonl", rows)
    spec = get_spec("minerva_math")
    docs, fs = load_docs(spec, root)
    assert [d["answer"] for d in docs] == ["2", "\\frac{1}{2}", "10000"]
    ex = build_examples(spec, docs, fs, 4)
    ctx = ex[0].requests[0][0]
    assert ctx.startswith("Problem:\nFind the domain of the expression")
    assert ctx.endswith("\n\nProblem:\nWhat is $1+1$?\n\nSolution:")
    assert ctx.count("I hope it is correct.\n\nProblem:") == 4
    assert minerva_equal("So it is 2.\nFinal Answer: The final answer is $2$. I hope it is correct.", "2")
    assert minerva_equal("Final Answer: The final answer is $\\frac12$. I hope it is correct.", "\\frac{1}{2}")
    assert not minerva_equal("Final Answer: The final answer is $3$. I hope it is correct.", "2")
    assert not minerva_equal("no stated answer", "2")
    assert minerva_equal("Final Answer: The final answer is $0.5$. I hope it is correct.", "\\frac{1}{2}")


@pytest.mark.parametrize("a,b,same", [
    ("\\frac{1}{2}", "0.5", True), ("(x+1)^2", "x^2+2x+1", True), ("\\sqrt{8}", "2\\sqrt{2}", True),
    ("2", "3", False), ("x", "y", False),
    ("[2,5)", "[2,5)", True),    # sympy cannot parse intervals: identical strings still match
    ("[2,5)", "[2, 5)", False),  # ...and anything unparsable otherwise differs, as in lm-eval
    ("", "", False),
])
def test_minerva_is_equiv_analytic(a, b, same):
    from pocketlm.evaluate.math_answers import is_equiv
    assert is_equiv(a, b) is same
    assert final_boxed_answer("a \\boxed{x^{2}} b \\boxed{\\{1,2\\}}") == "\\{1,2\\}"
    assert normalize_final_answer("5 \\text{ inches}") == "5"
    assert normalize_final_answer("x = \\dfrac{3}{4}") == "\\dfrac{3}{4}"


def test_every_builtin_spec_builds_from_bundled_data():
    for name in builtin_tasks():
        spec = get_spec(name)
        if name in ("commonsense_qa", "minerva_math"):  # not redistributable here: tested on hand-written records
            continue
        docs, fs = load_docs(spec, BUNDLED_DATA)
        shots = [0] + ([2] if spec.fewshot is not None else [])
        for k in shots:
            exs = build_examples(spec, docs, fs, k, limit=5)
            assert len(exs) == 5 and all(ex.requests for ex in exs)
            if k and fs is None:  # demos from the scored split never include the scored document
                for ex in exs:
                    scored_ctx = ex.requests[0][0]
                    assert scored_ctx.count(spec.fewshot_delimiter) >= k
