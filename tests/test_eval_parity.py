"""Parity with lm-evaluation-harness on its task YAMLs as shipped.

lm-eval 0.4.13 runs the task configs installed in its package, unmodified: each test writes a
three-line YAML that ``include:``s the shipped file and only points the dataset at local files
(``dataset_path: json`` + ``data_files``), the way an lm-eval user swaps in local data, and runs it
through lm-eval's evaluator (as ``simple_evaluate`` runs it) with its HF backend (HFLM) on a tiny
transformers-saved Llama.
The same YAML is then evaluated by pocketlm (its lm-eval reader), and pocketlm's built-in spec of the
task reads the bundled files in their original formats. Both must give lm-eval's per-example
log-likelihoods within 1e-4, the same greedy flags and the same per-example outcomes (acc, acc_norm,
mc2, exact match, generated text and extracted answers), at 0 and 5 shots and the task's default.

Data: the bundled subsets, rewritten in the Hugging Face schema the shipped YAMLs read. Splits that
are not in the shared data (HellaSwag/PIQA/WinoGrande/BoolQ train) point at the validation file,
so lm-eval's demonstrations come from the same documents pocketlm's built-in specs draw from.
CommonsenseQA is not in the shared data at all: its records here are ARC-Easy questions put in
CommonsenseQA's public format (five labelled choices A-E, ``answerKey``), a format fixture only.
"""

from __future__ import annotations

import bz2
import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

lm_eval = pytest.importorskip("lm_eval")
torch = pytest.importorskip("torch")
T = pytest.importorskip("transformers")

from pocketlm.evaluate.processors import split_hellaswag_context  # noqa: E402
from pocketlm.evaluate.prompts import BUNDLED_DATA  # noqa: E402
from pocketlm.evaluate.runner import evaluate  # noqa: E402
from pocketlm.evaluate.spec import get_spec  # noqa: E402
from pocketlm.evaluate.tiny import SHARED, save_tiny_llama  # noqa: E402

if not (SHARED / "tokenizers" / "minimind" / "tokenizer.json").is_file():
    pytest.skip("shared/data/tokenizers/minimind is absent (needed for a real tokenizer)", allow_module_level=True)

EVAL = BUNDLED_DATA / "eval"
LM_EVAL_TASKS = Path(lm_eval.__file__).parent / "tasks"
MMLU_SUBJECTS = ("college_biology", "elementary_mathematics", "high_school_geography")


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write(path: Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


# ---- bundled files (original formats) -> the Hugging Face schema the shipped YAMLs read
def _arc_test(name):
    return [{"question": r["query"][len("Question: "):], "choices": {"text": r["choices"], "label": list("ABCD")},
             "answerKey": "ABCD"[r["gold"]]} for r in _jsonl(EVAL / name / f"{name}.jsonl")]


def _arc_original(path):
    return [{"question": r["question"]["stem"],
             "choices": {"text": [c["text"] for c in r["question"]["choices"]],
                         "label": [c["label"] for c in r["question"]["choices"]]},
             "answerKey": r["answerKey"]} for r in _jsonl(path)]


def _openbookqa(split):
    return [{"id": r["id"], "question_stem": r["question"]["stem"],
             "choices": {"text": [c["text"] for c in r["question"]["choices"]],
                         "label": [c["label"] for c in r["question"]["choices"]]},
             "answerKey": r["answerKey"]} for r in _jsonl(EVAL / "openbookqa" / f"{split}.jsonl")]


def _hellaswag():
    lines = bz2.decompress((EVAL / "hellaswag" / "hellaswag_val_full.txt.bz2").read_bytes()).decode().split("\n")
    return [{**split_hellaswag_context(lines[i]), "endings": lines[i + 2:i + 6], "label": lines[i + 1]}
            for i in range(0, len(lines) - 5, 6)]


def _piqa():
    labels = (EVAL / "piqa" / "valid-labels.lst").read_text().split()
    return [{**r, "label": int(lab)} for r, lab in zip(_jsonl(EVAL / "piqa" / "valid.jsonl"), labels)]


def _winogrande():
    out = []
    for r in _jsonl(EVAL / "winogrande" / "winogrande.jsonl"):
        a, b = r["context_options"]
        k = 0
        while k < min(len(a), len(b)) and a[k] == b[k]:
            k += 1
        out.append({"sentence": a[:k] + "_ " + r["continuation"], "option1": a[k:], "option2": b[k:],
                    "answer": str(r["gold"] + 1)})
    return out


def _boolq():
    out = []
    for r in _jsonl(EVAL / "boolq" / "boolq.jsonl"):
        passage, question = r["query"][len("Passage: "):].rsplit("\nQuestion: ", 1)
        out.append({"passage": passage, "question": question[:-1], "label": r["gold"]})
    return out


def _truthfulqa():
    rows = json.loads((EVAL / "truthfulqa" / "v1" / "mc_task.json").read_text())
    return [{"question": r["question"],
             **{k: {"choices": list(r[k]), "labels": list(r[k].values())} for k in ("mc1_targets", "mc2_targets")}}
            for r in rows]


def _lambada():
    return [{"text": r["context"] + " " + r["continuation"]} for r in _jsonl(EVAL / "lambada" / "lambada_openai.jsonl")]


def _mmlu(subject, split):
    import csv
    rows = csv.reader((EVAL / "mmlu" / split / f"{subject}_{split}.csv").read_text().splitlines())
    return [{"question": q, "subject": subject, "choices": [a, b, c, d], "answer": "ABCD".index(ans)}
            for q, a, b, c, d, ans in rows]


def _commonsense_qa():
    """ARC-Easy questions in CommonsenseQA's format (a fifth choice added): format fixture, not CSQA."""
    out = []
    for n, r in enumerate(_jsonl(EVAL / "arc_easy" / "arc_easy.jsonl")):
        if len(r["choices"]) == 4:
            out.append({"id": f"arc{n}", "question": r["query"][len("Question: "):], "question_concept": "science",
                        "choices": {"label": list("ABCDE"), "text": r["choices"] + ["none of these"]},
                        "answerKey": "ABCDE"[r["gold"]]})
    return out


def _gsm8k(split):
    return _jsonl(EVAL / "gsm8k" / f"{split}.jsonl")


# task: (shipped YAML under lm_eval/tasks, {split: rows}, pocketlm built-in spec, shot counts)
CASES = {
    "arc_easy": ("arc/arc_easy.yaml", lambda: {"test": _arc_test("arc_easy"),
                                               "train": _arc_original(EVAL / "arc_easy" / "ARC-Easy-Train.jsonl")}),
    "arc_challenge": ("arc/arc_challenge.yaml", lambda: {
        "test": _arc_test("arc_challenge"),
        "train": _arc_original(EVAL / "arc_challenge" / "ARC-Challenge-Train.jsonl")}),
    "hellaswag": ("hellaswag/hellaswag.yaml", lambda: {"validation": _hellaswag(), "train": _hellaswag()}),
    "piqa": ("piqa/piqa.yaml", lambda: {"validation": _piqa(), "train": _piqa()}),
    "winogrande": ("winogrande/default.yaml", lambda: {"validation": _winogrande(), "train": _winogrande()}),
    "boolq": ("super_glue/boolq/default.yaml", lambda: {"validation": _boolq(), "train": _boolq()}),
    "openbookqa": ("openbookqa/openbookqa.yaml", lambda: {"test": _openbookqa("test"), "train": _openbookqa("train")}),
    "commonsense_qa": ("commonsense_qa/default.yaml", lambda: {"validation": _commonsense_qa()[:16],
                                                               "train": _commonsense_qa()[16:]}),
    "truthfulqa_mc2": ("truthfulqa/truthfulqa_mc2.yaml", lambda: {"validation": _truthfulqa()}),
    "lambada_openai": ("lambada/lambada_openai.yaml", lambda: {"test": _lambada()}),
    "gsm8k": ("gsm8k/gsm8k.yaml", lambda: {"test": _gsm8k("test"), "train": _gsm8k("train")}),
    **{f"mmlu_{s}": (f"mmlu/default/mmlu_{s}.yaml", (lambda s=s: {"test": _mmlu(s, "test"), "dev": _mmlu(s, "dev")}))
       for s in MMLU_SUBJECTS},
}
N_DOCS = {"gsm8k": 1, "boolq": 6}  # long prompts / 256-token generations: fewer documents
DEFAULT_N = 8
FEWSHOT_N = 4  # a 5-shot prompt is ~6x longer: half the documents keep every code path and the CI time


def write_local_yaml(root: Path, task: str) -> Path:
    """The shipped YAML of `task` with only its data location swapped: an include-only file, its data beside it
    (a task file may read data in its own folder; elsewhere needs --allow-any-data-path)."""
    shipped, splits = CASES[task]
    files = {name: _write(root / "tasks" / task / "data" / f"{name}.jsonl", rows) for name, rows in splits().items()}
    path = root / "tasks" / task / f"{task}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"include: {LM_EVAL_TASKS / shipped}\ndataset_path: json\ndataset_name: null\n"
                    f"dataset_kwargs:\n  data_files: {json.dumps(files)}\n")
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Tiny model for both harnesses; local data + the include-only YAML of every task."""
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from pocketlm.evaluate.loading import load_for_eval

    root = tmp_path_factory.mktemp("parity")
    d = save_tiny_llama(root / "tiny_llama")
    hf = T.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    hflm = HFLM(pretrained=hf, tokenizer=T.AutoTokenizer.from_pretrained(d), batch_size=8)
    model, tok = load_for_eval(d)  # pocketlm's own Transformer via load_model
    yamls = root / "tasks"
    for task in CASES:
        write_local_yaml(root, task)
    csqa = root / "pocket_data" / "eval" / "commonsense_qa"  # the built-in spec's layout
    for name in ("validation", "train"):
        _write(csqa / f"{name}.jsonl", _jsonl(root / "tasks" / "commonsense_qa" / "data" / f"{name}.jsonl"))
    return {"hflm": hflm, "model": model, "tok": tok, "yamls": yamls, "model_dir": d,
            "pocket_data": root / "pocket_data",
            "manager": TaskManager(include_path=str(yamls), include_defaults=False), "lm": {}, "pocket": {}}


def run_lm_eval(manager, lm, task: str, shots: int | None, limit: int, bootstrap_iters: int = 0
                ) -> tuple[list[dict], dict]:
    """lm-eval's simple_evaluate for one task, minus its environment report (which shells out to pip):
    the task from the TaskManager, num_fewshot and the few-shot seed set as simple_evaluate sets them."""
    from lm_eval import evaluator
    loaded = manager.load([task])
    for obj in loaded["tasks"].values():
        if shots is not None and obj.get_config("num_fewshot") != 0:
            obj.set_config(key="num_fewshot", value=shots)
        elif obj.get_config("num_fewshot") is None:
            obj.set_config(key="num_fewshot", value=0)
        obj.set_fewshot_seed(seed=1234)
    out = evaluator.evaluate(lm=lm, task_dict=loaded, limit=limit, log_samples=True, bootstrap_iters=bootstrap_iters)
    return sorted(out["samples"][task], key=lambda s: s["doc_id"]), out["results"][task]


def _lm_eval(env, task: str, shots: int | None, n: int):
    key = (task, shots, n)
    if key not in env["lm"]:
        env["lm"][key] = run_lm_eval(env["manager"], env["hflm"], task, shots, n)
    return env["lm"][key]


def _pocketlm(env, task, shots, n, builtin: bool):
    if builtin:
        name = "mmlu" if task.startswith("mmlu_") else task
        data_dir = env["pocket_data"] if task == "commonsense_qa" else None
        key = (name, shots, n)
        if key not in env["pocket"]:  # MMLU: one run over the three subjects serves all three tests
            res = evaluate(env["model"], env["tok"], [get_spec(name)], shots=None if shots is None else [shots],
                           limit=None if name == "mmlu" else n, data_dir=data_dir, show_progress=False)
            (by_shot,) = res["results"][name].values()
            env["pocket"][key] = by_shot["records"]
        records = env["pocket"][key]
        if name == "mmlu":  # one task over the bundled subjects, in file order: this subject's records
            start = MMLU_SUBJECTS.index(task[len("mmlu_"):]) * 12
            records = records[start:start + n]
        return records
    path = env["yamls"] / task / f"{task}.yaml"
    res = evaluate(env["model"], env["tok"], [str(path)], shots=None if shots is None else [shots], limit=n,
                   show_progress=False)
    (by_shot,) = res["results"][task].values()
    return by_shot["records"]


def _compare_loglikelihood(task, samples, records):
    assert len(samples) == len(records)
    worst = 0.0
    for s, rec in zip(samples, records):
        theirs = [r[0][0] for r in s["resps"]]
        assert len(theirs) == len(rec["loglikelihoods"]), f"{task} doc {s['doc_id']}: request count"
        worst = max(worst, max(abs(a - b) for a, b in zip(theirs, rec["loglikelihoods"])))
        assert [bool(r[0][1]) for r in s["resps"]] == rec["is_greedy"], f"{task} doc {s['doc_id']}"
        if task == "truthfulqa_mc2":  # lm-eval names MC2's probability mass 'acc'
            assert rec["scores"]["mc2"] == pytest.approx(s["acc"], abs=1e-4)  # follows from the 1e-4 on lls
            continue
        for metric in ("acc", "acc_norm"):
            if metric in s:
                assert s[metric] == rec["scores"][metric], f"{task} doc {s['doc_id']}: {metric}"
    assert worst < 1e-4, f"{task}: max |Δ loglik| {worst:.2e}"


def _compare_generation(samples, records):
    by_filter: dict[str, list] = {}
    for s in samples:
        by_filter.setdefault(s["filter"], []).append(s)
    for name, group in by_filter.items():
        group = sorted(group, key=lambda s: s["doc_id"])
        assert len(group) == len(records)
        for s, rec in zip(group, records):
            assert s["resps"][0][0] == rec["generation"], f"doc {s['doc_id']}: generated text"
            assert s["filtered_resps"][0] == rec["extracted"][name], f"doc {s['doc_id']}: {name}"
            key = "exact_match" if name == "strict-match" else f"exact_match,{name}"
            assert s["exact_match"] == rec["scores"][key], f"doc {s['doc_id']}: {name}"


def _check(env, task, shots, paths=(True, False)):
    """lm-eval on the shipped YAML vs pocketlm's built-in spec (True) and its reader of the YAML (False)."""
    n = N_DOCS.get(task, DEFAULT_N if shots == 0 else FEWSHOT_N)
    samples, _ = _lm_eval(env, task, shots, n)
    for builtin in paths:
        records = _pocketlm(env, task, shots, n, builtin)
        if task == "gsm8k":
            _compare_generation(samples, records)
        else:
            _compare_loglikelihood(task, samples, records)


MC_TASKS = ["arc_easy", "arc_challenge", "hellaswag", "piqa", "winogrande", "boolq", "openbookqa", "commonsense_qa",
            "mmlu_college_biology", "mmlu_elementary_mathematics", "mmlu_high_school_geography"]


@pytest.mark.parametrize("shots", [0, 5])
@pytest.mark.parametrize("task", MC_TASKS)
def test_shipped_yaml_parity(env, task, shots):
    _check(env, task, shots)


@pytest.mark.parametrize("task", ["truthfulqa_mc2", "lambada_openai",
                                  pytest.param("gsm8k", marks=pytest.mark.slow)])  # 256-token generations
def test_shipped_yaml_parity_default_shots(env, task):
    """Each task at its shipped num_fewshot (truthfulqa 0, lambada unset = 0, gsm8k 5)."""
    _check(env, task, None)


@pytest.mark.slow
def test_gsm8k_zero_shot_generation_parity(env):
    _check(env, "gsm8k", 0, paths=(True,))  # the YAML path's generations are checked at the default 5 shots


@pytest.mark.parametrize("task", list(CASES))
def test_builtin_spec_default_shots_match_shipped(env, task):
    """pocketlm's default shot count is the shipped YAML's num_fewshot (unset = 0)."""
    from lm_eval.tasks._yaml_loader import load_yaml
    shipped = load_yaml(LM_EVAL_TASKS / CASES[task][0], resolve_func=False)
    name = "mmlu" if task.startswith("mmlu_") else task
    assert get_spec(name).num_fewshot == (shipped.get("num_fewshot") or 0)
    assert get_spec(env["yamls"] / task / f"{task}.yaml").num_fewshot == (shipped.get("num_fewshot") or 0)


def test_lm_eval_aggregates_match(env):
    """Task-level numbers too: accuracy and its standard error from pocketlm's reader of the YAML."""
    _, lm_res = run_lm_eval(env["manager"], env["hflm"], "arc_easy", 5, DEFAULT_N, bootstrap_iters=1000)
    res = evaluate(env["model"], env["tok"], [str(env["yamls"] / "arc_easy" / "arc_easy.yaml")], shots=[5],
                   limit=DEFAULT_N, show_progress=False)
    m = res["results"]["arc_easy"]["5"]["metrics"]
    assert m["acc"] == pytest.approx(lm_res["acc,none"])
    assert m["acc_norm"] == pytest.approx(lm_res["acc_norm,none"])
    assert m["acc_stderr"] == pytest.approx(lm_res["acc_stderr,none"])


def test_cli_evaluates_an_lm_eval_yaml(env, tmp_path):
    """`pocketlm eval MODEL --tasks task.yaml` on the include-only lm-eval YAML, end to end."""
    import subprocess
    import sys
    out = tmp_path / "results.json"
    run = subprocess.run([sys.executable, "-m", "pocketlm.cli", "eval", str(env["model_dir"]), "--tasks",
                          str(env["yamls"] / "piqa" / "piqa.yaml"), "--shots", "5", "--limit", str(DEFAULT_N),
                          "-o", str(out)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "| piqa | commonsense | 5 |" in run.stdout
    samples, _ = _lm_eval(env, "piqa", 5, DEFAULT_N)
    _compare_loglikelihood("piqa", samples, json.loads(out.read_text())["results"]["piqa"]["5"]["records"])
