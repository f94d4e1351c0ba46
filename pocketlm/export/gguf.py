"""Export a pocketlm Transformer to GGUF (llama.cpp's format).

Which llama.cpp architecture a model is written as, its tensor names, hyper-parameter keys and
per-tensor layout changes are data the families declare (`interop/families/`, `GGUFArch`): the
family's own architecture when its llama.cpp graph computes the config, else the first one that does
(`gguf_arch`); a model no graph computes gets one error naming why (and, for OPT, the runtimes that
run it). This module is the driver over that data: it concatenates pocketlm tensors llama.cpp reads
as one (a fused q/k/v, Phi-3's gate/up), splits stacked experts, and applies the declared transforms
(pair-RoPE row permutations, Gemma's 1 + w norms).

F32, F16, BF16, Q8_0 and Q4_0 are written directly with the `gguf` package; K-quants and the other
llama.cpp types go through llama.cpp's own quantizer (`llama_cpp.llama_model_quantize`, optional
llama-cpp-python extra) applied to an F32 file. A tensor whose row width the type's block does not
divide falls back (F16 here, llama.cpp's own fallback chain for its types) and is reported. The
vocabulary is the model's tokenizer (`gguf_vocab`), or llama.cpp's `none` model when there is none
(random-weight catalog models: llama.cpp runs them on token ids).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from dataclasses import dataclass

from pocketlm.interop.families import GGUFArch, gguf_arch, gguf_refusal
from pocketlm.interop.families.base import TensorKey, rows_axis
from pocketlm.export.errors import GGUFExportError
from pocketlm.export.gguf_vocab import read_vocab, write_vocab
from pocketlm.utils import atomic_path, check_finite_weights

log = logging.getLogger(__name__)

DIRECT_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0")
LLAMA_CPP_TYPES = ("Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M",
                   "Q5_K_S", "Q5_K_M", "Q6_K", "IQ4_NL", "IQ4_XS")
GGUF_TYPES = DIRECT_TYPES + LLAMA_CPP_TYPES


def unsupported_reasons(cfg) -> list[str]:
    """Why llama.cpp cannot run `cfg` as any architecture pocketlm writes (empty list: it can)."""
    refusal = gguf_refusal(cfg)
    return [refusal] if refusal else []


@dataclass(frozen=True)
class Placement:
    """Where GGUF tensors come from: pocketlm tensors `src` (rows side by side) -> GGUF names `dst`."""

    src: tuple[str, ...]
    key: TensorKey  # the arch table's key (for its transform)
    layer: int
    dst: tuple[str, ...]


def _names(key: TensorKey, i: int) -> tuple[str, ...]:
    return tuple(k.format(i=i) for k in ((key,) if isinstance(key, str) else key))


def placements(cfg, arch: GGUFArch, state) -> list[Placement]:
    """Every GGUF tensor of the model, in the table's reading order; raises if a tensor has no place."""
    keys = list(arch.tensors)
    in_block = [k for k in keys if "{i}" in (k if isinstance(k, str) else k[0])]
    first = keys.index(in_block[0]) if in_block else len(keys)
    rows = [(k, -1) for k in keys[:first]]
    rows += [(k, i) for i in range(cfg.n_stored_layers) for k in in_block]
    rows += [(k, -1) for k in keys[first:] if k not in in_block]
    skip = {"lm_head.weight"} if cfg.tie_embeddings else set()
    placed = []
    for key, i in rows:
        src = _names(key, i)
        if all(n in state for n in src) and not set(src) & skip:
            placed.append(Placement(src, key, i, _names(arch.tensors[key], i)))
    sources = [n for p in placed for n in p.src]
    twice = sorted({n for n in sources if sources.count(n) > 1})
    if twice:
        raise GGUFExportError(f"{arch.arch!r} table places {twice[:3]} twice")
    unplaced = sorted(set(state) - set(sources) - skip)
    if unplaced:
        raise GGUFExportError(f"llama.cpp's {arch.arch!r} architecture has no place for {unplaced[:5]}; "
                              "export the unpacked float model")
    return placed


def _float_state(model) -> dict[str, torch.Tensor]:
    """The model's float tensors in the unfused layout GGUF tables name."""
    if model.transforms.fused and not (model.transforms.packed or model.transforms.quantization):
        model.unfuse()  # exact; fused again by the caller
        try:
            return dict(model.state_dict())
        finally:
            model.fuse()
    model.check_savable("gguf")  # float, unpacked: GGUF quantizes on export
    return dict(model.state_dict())


def gguf_tensors(model) -> dict[str, torch.Tensor]:
    """GGUF tensor name -> float tensor (in llama.cpp's layout) for a pocketlm Transformer."""
    cfg = model.config
    arch = gguf_arch(cfg)
    state = _float_state(model)
    out = {}
    for p in placements(cfg, arch, state):
        parts = [state[n] for n in p.src]
        t = torch.cat(parts, dim=rows_axis(parts[0])) if len(parts) > 1 else parts[0]
        if p.key in arch.transforms:
            t = arch.transforms[p.key].to_gguf(t, cfg, p.layer)
        pieces = t.chunk(len(p.dst), dim=rows_axis(t)) if len(p.dst) > 1 else (t,)
        out.update({name: piece.contiguous() for name, piece in zip(p.dst, pieces)})
    if arch.extra is not None:
        out.update({name: torch.as_tensor(np.asarray(v, dtype=np.float32)) for name, v in arch.extra(cfg).items()})
    return out


def _add_metadata(w, cfg, arch: GGUFArch, name: str, file_type: int) -> None:
    w.add_name(name or "pocketlm-model")
    for key, value in arch.hparams(cfg).items():
        getattr(w, f"add_{key}")(value)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(file_type)


# tensors llama.cpp's converter keeps in F32 whatever the file type: routers and learned positions
KEEP_F32 = ("ffn_gate_inp", "position_embd", "rope_factors")


def block_size(qtype: str) -> int:
    """Weights per quantization block of a GGUF type (1 for float types)."""
    import gguf

    return gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[_TYPE_OF_FILE.get(qtype, qtype)]][0]


# the tensor type a file type mostly holds (K-quant mixes are named after their main type)
_TYPE_OF_FILE = {"Q3_K_S": "Q3_K", "Q3_K_M": "Q3_K", "Q3_K_L": "Q3_K", "Q4_K_S": "Q4_K", "Q4_K_M": "Q4_K",
                 "Q5_K_S": "Q5_K", "Q5_K_M": "Q5_K"}


def tensor_type(qtype: str, name: str, shape: tuple[int, ...]) -> tuple[str, str]:
    """(GGML type, reason) of one tensor written directly as `qtype`: 1-D tensors and routers stay F32;
    a row width the type's block does not divide falls back to F16, as llama.cpp's converter does."""
    if qtype == "F32" or len(shape) == 1 or any(k in name for k in KEEP_F32):
        return "F32", ""
    if shape[-1] % block_size(qtype):
        return "F16", f"row width {shape[-1]} is not a multiple of {qtype}'s block of {block_size(qtype)}"
    return qtype, ""


def check_qtype(qtype: str) -> str:
    """`qtype` upper-cased if GGUF files of that type can be written (needs no model), else GGUFExportError."""
    if qtype.upper() not in GGUF_TYPES:
        raise GGUFExportError(f"unknown GGUF type {qtype.upper()!r}; choose one of {GGUF_TYPES}")
    return qtype.upper()


def export_gguf(model, path: str | Path, qtype: str = "F16", tokenizer_json: str | Path | None = None,
                threads: int | None = None, *,
                tensor_overrides: Mapping[str, tuple[np.ndarray, Any]] | None = None,
                stand_in_vocab: bool = True) -> Path:
    """Write `model` to `path` as GGUF with tensor type `qtype`; returns the path (written atomically).

    `tokenizer_json`: the model's Hugging Face tokenizer.json (or its directory), written as llama.cpp's
    vocabulary; without one, a stand-in vocabulary of `<id>` tokens (`stand_in_vocab`) lets llama.cpp
    load a random-weight model fed token ids. `tensor_overrides`: GGUF tensor name -> (array, GGML
    type) written as they are (already quantized blocks, e.g. GPTQ's), never requantized. Tensors
    whose width a quantized type cannot take are written as F16 and logged (see `fallbacks`).
    """
    import gguf

    qtype = check_qtype(qtype)
    cfg = model.config
    refusal = gguf_refusal(cfg)
    if refusal:
        raise GGUFExportError(f"cannot export {cfg.name or 'this model'} to GGUF: {refusal}")
    check_finite_weights(model, cfg.name or "model", GGUFExportError)
    arch = gguf_arch(cfg)
    path = Path(path)
    if tokenizer_json is None and not stand_in_vocab:
        raise GGUFExportError("no tokenizer given: pass tokenizer_json=<model dir or tokenizer.json>, or "
                              "stand_in_vocab=True for a file llama.cpp runs on token ids only")
    vocab = read_vocab(tokenizer_json, cfg.vocab_size) if tokenizer_json is not None else None
    if qtype in LLAMA_CPP_TYPES:
        if tensor_overrides:
            raise GGUFExportError(f"tensor_overrides are written as they are into files of a type pocketlm writes "
                                  f"itself {DIRECT_TYPES}; {qtype} is llama.cpp's quantizer's, which would "
                                  "requantize them")
        return _quantize_with_llama_cpp(model, path, qtype, tokenizer_json, threads)
    tensors = gguf_tensors(model)
    overrides = _check_overrides(tensor_overrides or {}, tensors)
    file_type = {"F32": gguf.LlamaFileType.ALL_F32, "F16": gguf.LlamaFileType.MOSTLY_F16,
                 "BF16": gguf.LlamaFileType.MOSTLY_BF16, "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
                 "Q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[qtype]
    T = gguf.GGMLQuantizationType
    fell_back = {}
    with atomic_path(path) as tmp:
        w = gguf.GGUFWriter(str(tmp), arch.arch)
        _add_metadata(w, cfg, arch, cfg.name, int(file_type))
        write_vocab(w, vocab, cfg.vocab_size)
        if qtype in ("Q8_0", "Q4_0") or overrides:
            w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for name, tensor in tensors.items():
            if name in overrides:
                data, ttype = overrides[name]
                w.add_tensor(name, data, raw_dtype=ttype)
                continue
            arr = tensor.detach().to(torch.float32).cpu().numpy()
            ttype, reason = tensor_type(qtype, name, arr.shape)
            if reason and qtype != "F32":
                fell_back[name] = reason
            if ttype == "F32":
                w.add_tensor(name, arr)
            elif ttype == "F16":
                w.add_tensor(name, arr.astype(np.float16))
            else:
                w.add_tensor(name, gguf.quants.quantize(arr, T[ttype]), raw_dtype=T[ttype])
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    if fell_back:
        log.warning("%s: %d tensor(s) written as F16 instead of %s: %s", path.name, len(fell_back), qtype,
                    "; ".join(f"{k} ({v})" for k, v in list(fell_back.items())[:8]))
    return path


def fallbacks(path: str | Path, qtype: str) -> dict[str, str]:
    """Tensors of a GGUF file that are not of (the main type of) `qtype` because their row width is
    not a multiple of its block: name -> the type they were written as (llama.cpp's rule)."""
    import gguf

    qtype = qtype.upper()
    out = {}
    for t in gguf.GGUFReader(str(path)).tensors:
        width = int(t.shape[0])
        kept = any(k in t.name for k in KEEP_F32)
        if len(t.shape) > 1 and not kept and width % block_size(qtype) and \
                t.tensor_type.name != _TYPE_OF_FILE.get(qtype, qtype):
            out[t.name] = t.tensor_type.name
    return out


def _check_overrides(overrides: Mapping[str, tuple[np.ndarray, Any]], tensors: dict[str, torch.Tensor]) -> dict:
    import gguf

    out = {}
    for name, (data, ttype) in overrides.items():
        if name not in tensors:
            raise GGUFExportError(f"tensor_overrides: {name!r} is not a tensor of this model's GGUF file "
                                  f"(e.g. {list(tensors)[:3]})")
        ttype = gguf.GGMLQuantizationType(ttype)
        data = np.asarray(data)
        shape = gguf.quant_shape_from_byte_shape(data.shape, ttype) if data.dtype == np.uint8 else data.shape
        if tuple(shape) != tuple(tensors[name].shape):
            raise GGUFExportError(f"tensor_overrides: {name} holds {tuple(shape)} {ttype.name} values; the model's "
                                  f"tensor is {tuple(tensors[name].shape)}")
        out[name] = (data, ttype)
    return out


def _quantize_with_llama_cpp(model, path: Path, qtype: str, tokenizer_json, threads: int | None) -> Path:
    from pocketlm.export.llama_quantize import llama_cpp_quantize

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmpdir, atomic_path(path) as dst:
        src = Path(tmpdir) / "f32.gguf"
        export_gguf(model, src, "F32", tokenizer_json)
        llama_cpp_quantize(src, dst, qtype, threads=threads)
    moved = fallbacks(path, qtype)
    if moved:
        log.warning("%s: %d tensor(s) fell back from %s (width not a multiple of its block): %s", path.name,
                    len(moved), qtype, ", ".join(f"{k}={v}" for k, v in list(moved.items())[:8]))
    return path


def load_gguf_weights(model, path: str | Path) -> None:
    """Overwrite `model`'s weights (in place) with the dequantized tensors of a GGUF file we wrote.

    The inverse of `export_gguf`: it shows what a quantized GGUF file computes when run by pocketlm.
    """
    import gguf

    cfg = model.config
    arch = gguf_arch(cfg)
    state = model.state_dict()
    reader = gguf.GGUFReader(str(path))
    stored = {}
    for t in reader.tensors:
        value = np.array(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        stored[t.name] = torch.from_numpy(value.reshape(tuple(int(d) for d in reversed(t.shape))))
    extra = set(arch.extra(cfg)) if arch.extra is not None else set()
    used = set(extra)
    with torch.no_grad():
        for p in placements(cfg, arch, state):
            missing = [n for n in p.dst if n not in stored]
            if missing:
                raise GGUFExportError(f"{path}: missing tensors {missing[:5]}")
            pieces = [stored[n] for n in p.dst]
            value = torch.cat(pieces, dim=rows_axis(pieces[0])) if len(pieces) > 1 else pieces[0]
            if p.key in arch.transforms:
                value = arch.transforms[p.key].from_gguf(value, cfg, p.layer)
            dsts = [state[n] for n in p.src]
            sizes = [d.shape[rows_axis(d)] if d.dim() else 1 for d in dsts]
            parts = value.split(sizes, dim=rows_axis(value)) if len(dsts) > 1 else (value,)
            for dst, part in zip(dsts, parts):
                dst.copy_(part.reshape(dst.shape).to(dst.dtype))
            used.update(p.dst)
    unknown = sorted(set(stored) - used)
    if unknown:
        raise GGUFExportError(f"{path}: tensor {unknown[0]} has no place in this model")
