"""Malformed and hostile task specs: templates that try to reach Python, structure errors, YAML bombs,
data paths that leave the data folder, broken data files. Security cases assert no marker file appears."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.fuzz.conftest import assert_one_line

RECORDS = [{"q": "one", "a": "x", "label": 0}, {"q": "two", "a": "y", "label": 1}]


def _spec(**over) -> dict:
    base = {"task": "fz", "output_type": "multiple_choice", "eval": {"records": RECORDS}, "text": "{{q}}",
            "choices": "['x', 'y']", "label": "label", "metrics": ["acc"]}
    return {**base, **over}


def _write(path: Path, spec) -> Path:
    path.write_text(spec if isinstance(spec, str) else json.dumps(spec))
    return path


def _load(path: Path, data_dir: Path | None = None, shots: int = 0):
    """Everything `pocketlm eval` does with a spec before the model runs: parse, read data, render prompts."""
    from pocketlm.evaluate.prompts import build_examples, load_docs
    from pocketlm.evaluate.spec import get_spec

    spec = get_spec(path)
    docs, fs = load_docs(spec, data_dir or path.parent)
    return build_examples(spec, docs, fs, shots, limit=2)


def _refused(path: Path, *names: str, data_dir: Path | None = None) -> None:
    with pytest.raises(ValueError) as err:
        _load(path, data_dir)
    assert_one_line(err.value, *names)


# ---- templates that try to run code ---------------------------------------------------------------------
def _injections(marker: Path) -> dict[str, dict]:
    cmd = f"touch {marker}"
    return {
        "cycler_globals": {"text": "{{ cycler.__init__.__globals__.os.system('%s') }}" % cmd},
        "joiner_globals": {"text": "{{ joiner.__init__.__globals__.os.system('%s') }}" % cmd},
        "namespace_globals": {"text": "{{ namespace.__init__.__globals__.os.system('%s') }}" % cmd},
        "lipsum_choices": {"choices": "lipsum.__globals__['os'].popen('%s').read()" % cmd},
        "lipsum_getitem": {"text": "{{ lipsum['__globals__']['os'].system('%s') }}" % cmd},
        "mro_subclasses": {"text": "{{ ''.__class__.__mro__[1].__subclasses__() }}"},
        "for_subclasses": {"text": "{% for c in [].__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}"},
        "attr_filter": {"text": "{{ (q|attr('__class__')).__mro__ }}"},
        "format_globals": {"text": "{{ '{0.__class__.__init__.__globals__}'.format(q) }}"},
        "self_dict": {"text": "{{ self.__init__.__globals__ }}"},
        "label_class": {"label": "q.__class__.__init__.__globals__"},
        "target_code": {"label": "(q.__class__.__base__.__subclasses__()|list)[0]"},
        "mutation": {"text": "{{ choices.append('z') }}", "eval": {"records": [{"q": "a", "label": 0,
                                                                                 "choices": ["x"]}]}},
        "dict_mutation": {"text": "{{ meta.update({'a': 1}) }}",
                          "eval": {"records": [{"q": "a", "label": 0, "meta": {}}]}},
        "import_statement": {"text": "{% import 'os' as os %}{{ os }}"},
        "include_file": {"text": "{% include '/etc/hostname' %}"},
        "huge_repeat": {"text": "{{ 'a' * 10000000000 }}"},
        "huge_range": {"text": "{{ range(10000000000) | list | length }}"},
        "huge_power": {"text": "{{ 10 ** 100000000 }}"},
    }


INJECTION_NAMES = sorted(_injections(Path("m")))


@pytest.mark.parametrize("name", INJECTION_NAMES)
def test_template_never_runs_code(tmp_path, name) -> None:
    marker = tmp_path / "PWNED"
    path = _write(tmp_path / "evil.json", _spec(**_injections(marker)[name]))
    with pytest.raises(ValueError) as err:
        _load(path)
    assert_one_line(err.value, "fz")
    assert not marker.exists()


def test_function_tag_in_a_yaml_spec_never_imports(tmp_path) -> None:
    marker = tmp_path / "PWNED"
    (tmp_path / "hostile.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef f(d):\n    return d\n")
    path = tmp_path / "spec.yaml"
    path.write_text("task: t\noutput_type: multiple_choice\neval: {records: [{q: a, label: 0}]}\n"
                    "text: !function hostile.f\nchoices: \"['a']\"\nlabel: label\nmetrics: [acc]\n")
    _refused(path, "spec.yaml", "!function")
    assert not marker.exists()


def test_lm_eval_custom_dataset_is_code(tmp_path) -> None:
    path = tmp_path / "lm.yaml"
    path.write_text("task: t\ncustom_dataset: !function hostile.load\noutput_type: multiple_choice\n"
                    "doc_to_text: q\ndoc_to_choice: [a]\ndoc_to_target: 0\n")
    _refused(path, "lm.yaml")


def test_lm_eval_hub_dataset_is_refused(tmp_path) -> None:
    path = tmp_path / "lm.yaml"
    path.write_text("task: t\ndataset_path: allenai/ai2_arc\noutput_type: multiple_choice\ntest_split: test\n"
                    "doc_to_text: q\ndoc_to_choice: [a]\ndoc_to_target: 0\n")
    _refused(path, "lm.yaml", "local files only")


# ---- structure ------------------------------------------------------------------------------------------
STRUCTURE = {
    "list": [], "string": "\"just text\"", "null": "null",
    "no_task": {k: v for k, v in _spec().items() if k != "task"},
    "no_output_type": {k: v for k, v in _spec().items() if k != "output_type"},
    "bad_output_type": _spec(output_type="classification"),
    "bad_group": _spec(group="trivia"),
    "eval_not_mapping": _spec(eval=["a.jsonl"]),
    "eval_no_path": _spec(eval={"format": "jsonl"}),
    "unknown_format": _spec(eval={"path": "a.xml", "format": "xml"}),
    "unknown_process": _spec(eval={"records": RECORDS, "process": "strip_all"}),
    "metrics_not_list": _spec(metrics="acc"),
    "metrics_empty": _spec(metrics=[]),
    "unknown_metric": _spec(metrics=["bleu"]),
    "mc_no_choices": {k: v for k, v in _spec().items() if k != "choices"},
    "mc_no_label": {k: v for k, v in _spec().items() if k != "label"},
    "gen_no_answer": _spec(output_type="generate_until", target="a", metrics=["exact_match"]),
    "bad_sampler": _spec(fewshot_sampler="best"),
    "num_fewshot_negative": _spec(num_fewshot=-1, fewshot="eval"),
    "num_fewshot_string": _spec(num_fewshot="2", fewshot="eval"),
    "num_fewshot_without_split": _spec(num_fewshot=2),
    "exclude_scored_string": _spec(fewshot_exclude_scored="yes"),
    "unknown_field": _spec(txt="{{q}}"),
    "label_out_of_range": _spec(label="5"),
    "undefined_field": _spec(text="{{ question }}"),
    "bad_jinja": _spec(text="{{ q "),
    "records_not_mappings": _spec(eval={"records": [1, 2]}),
    "empty_records": _spec(eval={"records": []}),
}


@pytest.mark.parametrize("kind", sorted(STRUCTURE))
def test_spec_structure(tmp_path, kind) -> None:
    _refused(_write(tmp_path / "spec.json", STRUCTURE[kind]), "spec.json" if kind in (
        "list", "string", "null", "no_task") else "fz" if kind not in ("no_output_type",) else "spec.json")


YAML_CASES = {
    "invalid": "task: [unclosed\n",
    "tabs": "task:\n\t- x\n",
    "alias_bomb": "\n".join(["a0: &a0 [x, x, x, x, x, x, x, x, x]"] +
                            [f"a{i}: &a{i} [{', '.join(['*a%d' % (i - 1)] * 9)}]" for i in range(1, 10)]) + "\n",
    "deep": "a: " + "[" * 20000 + "]" * 20000 + "\n",
    "huge": "task: t\n" + "# padding\n" * 200_000,
    "python_tag": "task: !!python/object/apply:os.system ['true']\n",
    "include_cycle": "include: spec.yaml\ntask: t\n",
    "include_not_string": "include: [5]\ntask: t\n",
    "include_missing": "include: nowhere.yaml\ntask: t\n",
}


@pytest.mark.parametrize("kind", sorted(YAML_CASES))
def test_spec_yaml(tmp_path, kind) -> None:
    import time

    path = tmp_path / "spec.yaml"
    path.write_text(YAML_CASES[kind])
    t0 = time.perf_counter()
    _refused(path, "spec.yaml" if kind != "include_missing" else "nowhere.yaml")
    # refused in well under a second on a quiet machine; an alias bomb that got expanded would take hours,
    # so the bound only needs to survive a loaded CI machine
    assert time.perf_counter() - t0 < 60


# ---- data paths leave the data folder --------------------------------------------------------------------
@pytest.fixture()
def data_dir(tmp_path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    (d / "ok.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    (tmp_path / "secret.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return d


@pytest.mark.parametrize("path", ["/etc/hostname", "../secret.jsonl", "../*.jsonl", "sub/../../secret.jsonl",
                                  "link.jsonl"])
def test_data_path_outside_the_data_folder(tmp_path, data_dir, path) -> None:
    (data_dir / "link.jsonl").symlink_to(tmp_path / "secret.jsonl")
    spec_dir = tmp_path / "specs"
    spec_dir.mkdir()
    spec = _write(spec_dir / "spec.json", _spec(eval={"path": path, "format": "jsonl"}))
    _refused(spec, "outside the data folder", "--allow-any-data-path", data_dir=data_dir)


def test_data_path_inside_is_accepted_and_the_flag_allows_outside(tmp_path, data_dir) -> None:
    from pocketlm.evaluate.sources import any_data_path

    spec_dir = tmp_path / "specs"
    spec_dir.mkdir()
    inside = _write(spec_dir / "in.json", _spec(eval={"path": "ok.jsonl", "format": "jsonl"}))
    assert len(_load(inside, data_dir)) == 2
    outside = _write(spec_dir / "out.json", _spec(eval={"path": "../secret.jsonl", "format": "jsonl"}))
    with any_data_path():
        assert len(_load(outside, data_dir)) == 2


@pytest.mark.parametrize("name", ["/etc/hostname", "../secret.jsonl"])
def test_lm_eval_data_files_outside(tmp_path, data_dir, monkeypatch, name) -> None:
    monkeypatch.chdir(data_dir)
    spec_dir = tmp_path / "specs"
    spec_dir.mkdir()
    path = spec_dir / "lm.yaml"
    path.write_text(f"task: t\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {name}\n"
                    "test_split: test\noutput_type: multiple_choice\ndoc_to_text: q\ndoc_to_choice: [x, y]\n"
                    "doc_to_target: label\n")
    _refused(path, "outside the data folder")


# ---- data files -------------------------------------------------------------------------------------------
DATA_FILES = {
    "jsonl_bad_line": ("jsonl", '{"q": "a", "label": 0}\n{not json}\n'),
    "json_not_list": ("json", '{"q": "a"}'),
    "json_invalid": ("json", "[{"),
    "csv_row_mismatch": ("csv", "q,label\na,0\nb\n"),
    "hellaswag_not_6": ("hellaswag_txt", "a\n0\nb\nc\n"),
    "hellaswag_label": ("hellaswag_txt", "ctx\nx\na\nb\nc\nd\n"),
    "empty_jsonl": ("jsonl", ""),
    "blank_jsonl": ("jsonl", "\n\n\n"),
    "binary": ("jsonl", "\udcff"),
    "hf_json_not_records": ("hf_json", "[1, 2, 3]"),
}


@pytest.mark.parametrize("kind", sorted(DATA_FILES))
def test_broken_data_file(tmp_path, kind) -> None:
    fmt, text = DATA_FILES[kind]
    f = tmp_path / "d.txt"
    if kind == "binary":
        f.write_bytes(b"\xff\xfe\x00garbage")
    else:
        f.write_text(text)
    _refused(_write(tmp_path / "spec.json", _spec(eval={"path": "d.txt", "format": fmt})), "d.txt" if kind not in (
        "empty_jsonl", "blank_jsonl") else "no documents")


def test_missing_data_file(tmp_path) -> None:
    _refused(_write(tmp_path / "spec.json", _spec(eval={"path": "gone.jsonl"})), "gone.jsonl", "--data-dir")


# ---- scores ------------------------------------------------------------------------------------------------
def test_nan_scores_are_refused(tmp_path) -> None:
    import torch

    from pocketlm.evaluate.runner import evaluate
    from pocketlm.evaluate.tiny import SHARED, save_tiny_llama
    from pocketlm.runtime import open_model, open_tokenizer

    if not (SHARED / "tokenizers/minimind/tokenizer.json").is_file():
        pytest.skip("shared tokenizer absent")
    d = save_tiny_llama(tmp_path / "m", hidden=32, layers=1, heads=2)
    model, tok = open_model(d), open_tokenizer(d)
    with torch.no_grad():
        model.final_norm.weight.fill_(float("nan"))  # as a model that diverged after loading would
    spec = _write(tmp_path / "spec.json", _spec())
    with pytest.raises(ValueError) as err:
        evaluate(model, tok, [str(spec)], limit=2, show_progress=False)
    assert_one_line(err.value, "fz", "NaN")


def test_limit_must_be_positive() -> None:
    from pocketlm.evaluate.runner import evaluate

    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError) as err:
            evaluate(None, None, [], limit=bad)
        assert_one_line(err.value, "--limit")


def test_profile_worker_runs_isolated(tmp_path) -> None:
    """`python -P` (how the profile worker starts) never imports a json.py from the working folder."""
    import subprocess
    import sys

    from pocketlm.profile.runner import worker_command
    from pocketlm.profile.setting import Setting

    marker = tmp_path / "PWNED"
    (tmp_path / "json.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    argv, _ = worker_command(Setting("m", threads=1))
    assert "-P" in argv[1:3]
    subprocess.run([sys.executable, "-P", "-c", "import json"], cwd=tmp_path, check=True,
                   env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert not marker.exists()
