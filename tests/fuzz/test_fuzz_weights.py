"""Malformed weights and model folders: truncated or lying safetensors, stray files, indexes that point
outside the folder, NaN weights, hostile pickles. Each is opened through `pocketlm.runtime.open_model`
(the path every command takes) and must be refused with one line naming the file, or loaded correctly."""

from __future__ import annotations

import json
import pickle
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.fuzz.conftest import assert_one_line, assert_refused, run_cli


def _open(path: Path):
    from pocketlm.runtime import open_model

    return open_model(path)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _refused(path: Path, *names: str) -> None:
    with pytest.raises(Exception) as err:
        _open(path)
    assert_one_line(err.value, *names)


def _state(d: Path) -> dict:
    return load_file(str(d / "model.safetensors"))


def _bytes(d: Path) -> bytes:
    return (d / "model.safetensors").read_bytes()


# ---- the bytes of model.safetensors -------------------------------------------------------------------
CORRUPTIONS = {
    "empty": lambda b: b"",
    "truncated_half": lambda b: b[: len(b) // 2],
    "truncated_header": lambda b: b[:12],
    "garbage": lambda b: bytes(range(256)) * 8,
    "header_len_huge": lambda b: struct.pack("<Q", 1 << 60) + b[8:],
    "header_not_json": lambda b: struct.pack("<Q", 16) + b"{not json at all" + b[24:],
    "header_len_zero": lambda b: struct.pack("<Q", 0) + b[8:],
    "zeros": lambda b: bytes(len(b)),
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
@pytest.mark.parametrize("fmt", ["hf", "native"])
def test_corrupt_safetensors(tmp_path, hf_dir, native_dir, kind, fmt) -> None:
    d = _copy(hf_dir if fmt == "hf" else native_dir, tmp_path / "m")
    (d / "model.safetensors").write_bytes(CORRUPTIONS[kind](_bytes(d)))
    _refused(d, "model.safetensors")


# ---- tensors that do not match the config ---------------------------------------------------------------
def _edit_state(d: Path, edit) -> None:
    state = _state(d)
    edit(state)
    save_file(state, str(d / "model.safetensors"), metadata={"format": "pt"})


STATE_EDITS = {
    "missing_tensor": lambda s: s.pop(sorted(s)[0]),
    "extra_tensor": lambda s: s.__setitem__("model.layers.9.mlp.up_proj.weight", torch.zeros(2, 2)),
    "wrong_shape": lambda s: s.__setitem__(k := sorted(s)[-1], torch.zeros(*[n + 1 for n in s[k].shape])),
    "nan_weight": lambda s: s[sorted(s)[-1]].view(-1).__setitem__(0, float("nan")),
    "inf_weight": lambda s: s[sorted(s)[-1]].view(-1).__setitem__(3, float("inf")),
    "neg_inf_weight": lambda s: s[sorted(s)[0]].view(-1).__setitem__(1, float("-inf")),
}


@pytest.mark.parametrize("kind", sorted(STATE_EDITS))
@pytest.mark.parametrize("fmt", ["hf", "native"])
def test_weights_contradict_the_config(tmp_path, hf_dir, native_dir, kind, fmt) -> None:
    d = _copy(hf_dir if fmt == "hf" else native_dir, tmp_path / "m")
    _edit_state(d, STATE_EDITS[kind])
    _refused(d, str(d))


@pytest.mark.parametrize("field,value", [("num_hidden_layers", 3), ("hidden_size", 48), ("vocab_size", 65),
                                         ("tie_word_embeddings", True), ("intermediate_size", 40)])
def test_config_contradicts_the_weights(tmp_path, hf_dir, field, value) -> None:
    d = _copy(hf_dir, tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, field: value}))
    _refused(d, str(d))


@pytest.mark.parametrize("field,value", [("d_model", 48), ("n_layer", 3), ("vocab_size", 80), ("norm_eps", -1.0),
                                         ("n_head", "4")])
def test_native_config_contradicts_the_weights(tmp_path, native_dir, field, value) -> None:
    d = _copy(native_dir, tmp_path / "m")
    cfg = json.loads((d / "pocketlm.json").read_text())
    (d / "pocketlm.json").write_text(json.dumps({**cfg, field: value}))
    _refused(d, "pocketlm")


@pytest.mark.parametrize("text", ["[]", "null", "{", '"x"', '{"transforms": "fused"}'])
def test_broken_native_config(tmp_path, native_dir, text) -> None:
    d = _copy(native_dir, tmp_path / "m")
    (d / "pocketlm.json").write_text(text)
    _refused(d, "pocketlm.json")


def test_native_weights_missing(tmp_path, native_dir) -> None:
    d = _copy(native_dir, tmp_path / "m")
    (d / "model.safetensors").unlink()
    _refused(d, "model.safetensors")


# ---- which files hold the weights -----------------------------------------------------------------------
def test_stray_backup_never_overrides_the_canonical_file(tmp_path, hf_dir, tiny_model) -> None:
    d = _copy(hf_dir, tmp_path / "m")
    state = {k: torch.full_like(v, float("nan")) for k, v in _state(d).items()}
    save_file(state, str(d / "model_backup.safetensors"))
    model = _open(d)
    assert torch.equal(model.embed.weight, tiny_model.embed.weight)


def test_single_non_canonical_file_is_accepted(tmp_path, hf_dir, tiny_model) -> None:
    d = _copy(hf_dir, tmp_path / "m")
    (d / "model.safetensors").rename(d / "weights.safetensors")
    assert torch.equal(_open(d).embed.weight, tiny_model.embed.weight)


def test_two_loose_files_without_an_index_are_ambiguous(tmp_path, hf_dir) -> None:
    d = _copy(hf_dir, tmp_path / "m")
    (d / "model.safetensors").rename(d / "a.safetensors")
    shutil.copy(d / "a.safetensors", d / "b.safetensors")
    _refused(d, "a.safetensors", "index")


def _sharded(d: Path) -> dict:
    state = _state(d)
    (d / "model.safetensors").unlink()
    names = sorted(state)
    half = len(names) // 2
    for i, part in enumerate((names[:half], names[half:])):
        save_file({k: state[k] for k in part}, str(d / f"model-0000{i + 1}-of-00002.safetensors"))
    return {k: f"model-0000{1 if k in names[:half] else 2}-of-00002.safetensors" for k in names}


def test_index_is_followed(tmp_path, hf_dir, tiny_model) -> None:
    d = _copy(hf_dir, tmp_path / "m")
    weight_map = _sharded(d)
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    save_file({"junk": torch.zeros(1)}, str(d / "model_backup.safetensors"))  # not in the index: ignored
    assert torch.equal(_open(d).embed.weight, tiny_model.embed.weight)


INDEX_CASES = {
    "not_json": "{weight_map",
    "list": "[]",
    "no_weight_map": '{"metadata": {}}',
    "weight_map_list": '{"weight_map": []}',
    "empty_map": '{"weight_map": {}}',
    "missing_file": '{"weight_map": {"a": "model-00009-of-00009.safetensors"}}',
    "parent_path": '{"weight_map": {"a": "../evil.safetensors"}}',
    "absolute_path": '{"weight_map": {"a": "/etc/hostname"}}',
    "subfolder": '{"weight_map": {"a": "sub/x.safetensors"}}',
    "non_string": '{"weight_map": {"a": 5}}',
}


@pytest.mark.parametrize("kind", sorted(INDEX_CASES))
def test_bad_index(tmp_path, hf_dir, kind) -> None:
    d = _copy(hf_dir, tmp_path / "m")
    _sharded(d)
    (tmp_path / "evil.safetensors").write_bytes(b"")
    (d / "model.safetensors.index.json").write_text(INDEX_CASES[kind])
    _refused(d, "model.safetensors.index.json")


def test_no_weights_at_all(tmp_path, hf_dir) -> None:
    d = _copy(hf_dir, tmp_path / "m")
    (d / "model.safetensors").unlink()
    _refused(d, "no weights")


def test_weights_that_are_a_folder(tmp_path, hf_dir) -> None:
    d = _copy(hf_dir, tmp_path / "m")
    (d / "model.safetensors").unlink()
    (d / "model.safetensors").mkdir()
    _refused(d, "model.safetensors", "regular file")


def test_weights_that_are_a_fifo(tmp_path, hf_dir) -> None:
    import os

    d = _copy(hf_dir, tmp_path / "m")
    (d / "model.safetensors").unlink()
    os.mkfifo(d / "model.safetensors")
    _refused(d, "model.safetensors", "regular file")


# ---- pickles: never unpickled beyond weights-only --------------------------------------------------------
class _Hostile:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_hostile_pickle_bin_never_runs(tmp_path, hf_dir) -> None:
    d = _copy(hf_dir, tmp_path / "m")
    (d / "model.safetensors").unlink()
    marker = tmp_path / "PWNED"
    (d / "pytorch_model.bin").write_bytes(pickle.dumps({"w": _Hostile(str(marker))}))
    _refused(d, "pytorch_model.bin", "weights_only")
    assert not marker.exists()


@pytest.mark.parametrize("payload", [b"", b"garbage" * 10, pickle.dumps([1, 2, 3])[:5]])
def test_garbage_pickle_bin(tmp_path, hf_dir, payload) -> None:
    d = _copy(hf_dir, tmp_path / "m")
    (d / "model.safetensors").unlink()
    (d / "pytorch_model.bin").write_bytes(payload)
    _refused(d, "pytorch_model.bin")


# ---- through the CLI: what the user sees ----------------------------------------------------------------
def test_cli_nan_weights_refused_by_eval(tmp_path, hf_dir) -> None:
    d = _copy(hf_dir, tmp_path / "m")
    _edit_state(d, STATE_EDITS["nan_weight"])
    assert_refused(*run_cli("eval", "run", d, "--tasks", "arc_easy", "--limit", "1"), "NaN")


def test_cli_model_argument_is_a_plain_file(tmp_path) -> None:
    f = tmp_path / "weights.safetensors"
    f.write_bytes(b"x" * 64)
    assert_refused(*run_cli("info", f), "weights.safetensors")


def test_cli_missing_model_path() -> None:
    assert_refused(*run_cli("info", "./no/such/model"), "no/such/model")


def test_llama2c_garbage(tmp_path) -> None:
    f = tmp_path / "stories.bin"
    f.write_bytes(struct.pack("<7i", 1 << 30, 1 << 30, 1 << 20, 1 << 20, 1 << 20, 1 << 20, 1 << 20) + b"\0" * 64)
    assert_refused(*run_cli("info", f), "stories.bin")


def test_nan_model_is_refused_by_quantization_and_export(tiny_model, tmp_path) -> None:
    import copy

    from pocketlm.export.gguf import export_gguf
    from pocketlm.model.quantize import quantize_model

    broken = copy.deepcopy(tiny_model)
    with torch.no_grad():
        broken.blocks[0].mlp.down_proj.weight[0, 0] = float("nan")
    for call in (lambda: quantize_model(broken, "int8"), lambda: export_gguf(broken, tmp_path / "m.gguf")):
        with pytest.raises(ValueError) as err:
            call()
        assert_one_line(err.value, "NaN")
    assert not (tmp_path / "m.gguf").exists()
