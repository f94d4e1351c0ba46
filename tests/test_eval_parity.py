"""Parity with lm-evaluation-harness: same tiny transformers-saved checkpoint (loaded by pocketlm's
own `load_model` into its Transformer, and by transformers for lm-eval), same local documents ->
pocketlm's per-example log-likelihoods equal lm-eval's HF backend (HFLM) within 1e-4, identical
accuracies, identical GSM8K generations and extracted answers.

lm-eval runs its *own* installed task YAMLs (prompt templates, HellaSwag/WinoGrande processing,
GSM8K filters); only the dataset is redirected to local jsonl written in the Hugging Face schema
from pocketlm's bundled subsets, which pocketlm reads in their original formats.
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

N_DOCS = 12
EVAL = BUNDLED_DATA / "eval"
LM_EVAL_TASKS = Path(lm_eval.__file__).parent / "tasks"


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


# ---- bundled files (original formats) -> Hugging Face schema that lm-eval's YAMLs expect
def _arc_eval(name):
    return [{"question": r["query"][len("Question: "):], "choices": {"text": r["choices"], "label": list("ABCD")},
             "answerKey": "ABCD"[r["gold"]]} for r in _jsonl(EVAL / name / f"{name}.jsonl")]


def _arc_train(fname, name):
    return [{"question": r["question"]["stem"],
             "choices": {"text": [c["text"] for c in r["question"]["choices"]],
                         "label": [c["label"] for c in r["question"]["choices"]]},
             "answerKey": r["answerKey"]} for r in _jsonl(EVAL / name / fname)]


def _hellaswag():
    lines = bz2.decompress((EVAL / "hellaswag" / "hellaswag_val_full.txt.bz2").read_bytes()).decode().split("\n")
    out = []
    for i in range(0, len(lines) - 5, 6):
        parts = split_hellaswag_context(lines[i])
        out.append({**parts, "endings": lines[i + 2:i + 6], "label": lines[i + 1]})
    return out


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


CASES = {  # task: (lm-eval yaml, eval rows, few-shot rows or None = same split)
    "arc_easy": ("arc/arc_easy.yaml", lambda: _arc_eval("arc_easy"),
                 lambda: _arc_train("ARC-Easy-Train.jsonl", "arc_easy")),
    "hellaswag": ("hellaswag/hellaswag.yaml", _hellaswag, None),
    "piqa": ("piqa/piqa.yaml", _piqa, None),
    "winogrande": ("winogrande/default.yaml", _winogrande, None),
    "boolq": ("super_glue/boolq/default.yaml", _boolq, None),
    "gsm8k": ("gsm8k/gsm8k.yaml", lambda: _jsonl(EVAL / "gsm8k" / "test.jsonl"),
              lambda: _jsonl(EVAL / "gsm8k" / "train.jsonl")),
}
GEN_TOKENS = 24


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = save_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))
    model = T.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    tok = T.AutoTokenizer.from_pretrained(d)
    from lm_eval.models.huggingface import HFLM

    from pocketlm.evaluate.loading import load_for_eval
    pocket_model, pocket_tok = load_for_eval(d)  # pocketlm.interop.load_model -> pocketlm Transformer
    return pocket_model, pocket_tok, HFLM(pretrained=model, tokenizer=tok, batch_size=8)


def _run_lm_eval(task: str, shots: int, hflm, tmp: Path, n: int) -> list[dict]:
    from lm_eval import evaluator
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks._yaml_loader import load_yaml

    yaml_rel, eval_rows, fs_rows = CASES[task]
    files = {"test": _write(tmp / f"{task}_test.jsonl", eval_rows())}
    if fs_rows is not None:
        files["train"] = _write(tmp / f"{task}_train.jsonl", fs_rows())
    cfg = load_yaml(LM_EVAL_TASKS / yaml_rel)
    cfg.pop("tag", None)
    cfg.update(dataset_path="json", dataset_name=None, dataset_kwargs={"data_files": files}, test_split="test",
               validation_split=None, training_split="train" if fs_rows else None,
               fewshot_split="train" if fs_rows else "test", num_fewshot=shots)
    if task == "gsm8k":
        cfg["generation_kwargs"] = {**cfg["generation_kwargs"], "max_gen_toks": GEN_TOKENS}
    t = ConfigurableTask(config=cfg)
    t.set_fewshot_seed(1234)
    out = evaluator.evaluate(lm=hflm, task_dict={task: t}, limit=n, log_samples=True)
    return out["samples"][task], out["results"][task]


def _run_pocketlm(task, shots, model, tok, n):
    spec = get_spec(task)
    if task == "gsm8k":
        spec.generation = {**spec.generation, "max_gen_toks": GEN_TOKENS}
    res = evaluate(model, tok, [spec], shots=[shots], limit=n, show_progress=False)
    return res["results"][task][str(shots)]


@pytest.mark.parametrize("task,shots", [(t, k) for t in ("arc_easy", "hellaswag", "piqa", "winogrande", "boolq")
                                        for k in (0, 5)])
def test_multiple_choice_parity(tiny, tmp_path, task, shots):
    model, tok, hflm = tiny
    n = 6 if (task, shots) == ("boolq", 5) else N_DOCS  # 5-shot BoolQ prompts are long: keep CI time down
    samples, lm_res = _run_lm_eval(task, shots, hflm, tmp_path, n)
    mine = _run_pocketlm(task, shots, model, tok, n)
    samples = sorted(samples, key=lambda s: s["doc_id"])
    assert len(samples) == len(mine["records"]) == n
    worst = 0.0
    for s, rec in zip(samples, mine["records"]):
        theirs = [r[0][0] for r in s["resps"]]
        assert len(theirs) == len(rec["loglikelihoods"])
        worst = max(worst, max(abs(a - b) for a, b in zip(theirs, rec["loglikelihoods"])))
        assert [bool(r[0][1]) for r in s["resps"]] == rec["is_greedy"]
        assert s["acc"] == rec["scores"]["acc"], f"doc {s['doc_id']}"
        if "acc_norm" in s:
            assert s["acc_norm"] == rec["scores"]["acc_norm"], f"doc {s['doc_id']}"
    assert worst < 1e-4
    assert mine["metrics"]["acc"] == pytest.approx(lm_res["acc,none"])
    assert mine["metrics"]["acc_stderr"] == pytest.approx(lm_res["acc_stderr,none"])


def test_gsm8k_generation_parity(tiny, tmp_path):
    model, tok, hflm = tiny
    n = 6
    samples, lm_res = _run_lm_eval("gsm8k", 5, hflm, tmp_path, n)
    mine = _run_pocketlm("gsm8k", 5, model, tok, n)
    strict = sorted([s for s in samples if s["filter"] == "strict-match"], key=lambda s: s["doc_id"])
    flexible = sorted([s for s in samples if s["filter"] == "flexible-extract"], key=lambda s: s["doc_id"])
    for s, f, rec in zip(strict, flexible, mine["records"]):
        assert s["resps"][0][0] == rec["generation"]
        assert s["filtered_resps"][0] == rec["extracted"]["strict-match"]
        assert f["filtered_resps"][0] == rec["extracted"]["flexible-extract"]
        assert s["exact_match"] == rec["scores"]["exact_match"]
    assert mine["metrics"]["exact_match"] == pytest.approx(lm_res["exact_match,strict-match"])
    assert mine["metrics"]["exact_match,flexible-extract"] == pytest.approx(lm_res["exact_match,flexible-extract"])
