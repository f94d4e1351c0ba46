"""Prune a saved model into a new directory that transformers loads, with the measured report beside it.

The output is built in a hidden sibling folder and renamed into place at the end, so a killed run leaves
no directory that looks complete. Contents: `config.json` + `model.safetensors` (+ tokenizer files) in
the model's Hugging Face family (pocketlm's own format when no family can express it), `recipe.yaml`
(repeat with `--recipe`), `prune_report.json`, and `model.gguf` when asked for and the family exports.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from pocketlm.compress.calibration import CalibSpec, calibration_batches, encode_text
from pocketlm.compress.measure import compare_on_tokens, decode_latency, runtime_line, threads_note
from pocketlm.compress.prune.driver import prune
from pocketlm.compress.recipe import PruneRecipe
from pocketlm.compress.report import PruneReport
from pocketlm.data.corpus.heldout import DEFAULT_EVAL_TEXT  # held out from every bundled fixture's training
from pocketlm.utils import replace_dir, temp_dir_beside


class OutputExistsError(ValueError):
    """The output directory exists; pass overwrite=True (--overwrite) to replace it."""


def open_model_and_tokenizer(ref: str | Path, tokenizer: str | Path | None = None) -> tuple[Any, Any]:
    """(fp32 model, tokenizer or None) for a MODEL argument (see pocketlm.runtime; llama2.c `.bin` too)."""
    from pocketlm.runtime import open_model, open_tokenizer

    model = open_model(ref, "fp32")
    tok = open_tokenizer(ref, tokenizer)
    if tokenizer is not None and tok is None:
        raise FileNotFoundError(f"--tokenizer {tokenizer}: no tokenizer.json / tokenizer.model / vocab.json there")
    return model, tok


def _save(model: Any, tok: Any, out: Path, notes: list[str]) -> str:
    from pocketlm.interop import UnsupportedModelError, save_hf, save_native

    try:
        save_hf(model, out, tokenizer=tok)
        return "huggingface"
    except UnsupportedModelError as e:
        save_native(model, out, tokenizer=tok)
        notes.append(f"saved in pocketlm's format: {e}")
        return "pocketlm"


def prune_checkpoint(model_ref: str | Path, recipe: PruneRecipe, out_dir: str | Path, *,
                     tokenizer: str | Path | None = None, eval_text: str | Path | None = None,
                     eval_tokens: int = 16384, measure: bool = True, gguf: str | None = None,
                     overwrite: bool = False, progress: bool = False) -> PruneReport:
    """Load `model_ref`, prune it by `recipe`, measure it against the dense model, write `out_dir`."""
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} exists; choose another --out or pass --overwrite")
    t0 = time.perf_counter()
    model, tok = open_model_and_tokenizer(model_ref, tokenizer)
    if tok is None:
        raise ValueError(f"{model_ref} has no tokenizer to turn calibration text into tokens: save tokenizer files "
                         "next to the model, or pass --tokenizer PATH")
    spec = CalibSpec.parse(recipe.calib, default_seq_len=min(512, model.config.max_seq_len))
    if spec.seq_len > model.config.max_seq_len:
        raise ValueError(f"calibration length {spec.seq_len} exceeds the model's context {model.config.max_seq_len}; "
                         f"use e.g. --calib {spec.source}:{spec.n}x{model.config.max_seq_len}")
    calib, calib_record = calibration_batches(spec, tok, seed=recipe.seed)
    dense = copy.deepcopy(model) if measure else None
    report = prune(model, recipe=recipe, calib=calib, progress=progress)
    report.calibration = calib_record
    if measure:
        text_path = Path(eval_text) if eval_text else DEFAULT_EVAL_TEXT
        ids = torch.tensor(encode_text(tok, text_path.read_text())[:eval_tokens])
        report.evaluation = {"text": str(text_path), **compare_on_tokens(dense, model, ids, spec.seq_len)}
        before, after = decode_latency(dense), decode_latency(model)
        with tempfile.TemporaryDirectory() as tmp_dense:  # the dense model, saved the same way
            _save(dense, None, Path(tmp_dense), [])
            bytes_before = (Path(tmp_dense) / "model.safetensors").stat().st_size
        report.runtime = {"decode_before": before, "decode_after": after, "threads": threads_note(),
                          "file_bytes_before": bytes_before}
    tmp = temp_dir_beside(out)
    try:
        report.runtime["format"] = _save(model, tok, tmp, report.notes)
        recipe.save(tmp / "recipe.yaml")
        if gguf:
            _write_gguf(model, tmp, gguf, report.notes)
        weights = tmp / "model.safetensors"
        if measure:
            report.runtime["file_bytes_after"] = weights.stat().st_size
            report.notes.append(runtime_line(report.runtime["decode_before"], report.runtime["decode_after"],
                                             report.runtime["file_bytes_before"], weights.stat().st_size))
        report.runtime["total_s"] = time.perf_counter() - t0  # load + prune + measure + save; wall_s: prune only
        report.write(tmp / "prune_report.json")
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report


def _write_gguf(model: Any, folder: Path, qtype: str, notes: list[str]) -> None:
    from pocketlm.export.gguf import export_gguf, unsupported_reasons

    reasons = unsupported_reasons(model.config)
    if reasons:
        notes.append(f"no GGUF written: {'; '.join(reasons)}")
        return
    tok_json = folder / "tokenizer.json"
    export_gguf(model, folder / "model.gguf", qtype=qtype, tokenizer_json=tok_json if tok_json.is_file() else None)
