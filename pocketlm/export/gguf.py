"""Export a pocketlm Transformer to GGUF (llama.cpp's format).

The llama.cpp architecture, its tensor names, hyper-parameters and per-tensor layout changes are
declared by the model's family (`interop/families/`, `Family.gguf`); families without their own are
written as `llama` when their config is llama-shaped. This module is the driver over that data.

Tensor types F32, F16, BF16, Q8_0 and Q4_0 are written directly with the `gguf` package (its numpy
quantizers); K-quants and the other llama.cpp types go through llama.cpp's own quantizer
(`llama_cpp.llama_model_quantize`, from the optional llama-cpp-python extra) applied to an F32 file.

llama.cpp's `llama` graph rotates interleaved pairs (x0, x1), while pocketlm's default RoPE rotates
halves, so the family declares a permutation of the q/k projection rows (as llama.cpp's own HF
converter does).
The tokenizer is written as `none` unless a Hugging Face `tokenizer.json` with a byte-level BPE
model is given; profiling feeds token ids directly.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from pocketlm.interop.families import GGUFArch, gguf_arch
from pocketlm.utils import atomic_path, check_finite_weights

DIRECT_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0")
LLAMA_CPP_TYPES = ("Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M",
                   "Q5_K_S", "Q5_K_M", "Q6_K", "IQ4_NL", "IQ4_XS")
GGUF_TYPES = DIRECT_TYPES + LLAMA_CPP_TYPES


class GGUFExportError(ValueError):
    """A model or request that the GGUF writer cannot honour; the message says why and what to do."""


def unsupported_reasons(cfg) -> list[str]:
    """Why `cfg` cannot run as the llama.cpp architecture of its family (empty list: it can)."""
    return gguf_arch(cfg).unsupported(cfg)


def _placements(cfg, arch: GGUFArch, state: dict[str, torch.Tensor]) -> list[tuple[str, str, int]]:
    """(pocketlm name, table key, layer) per GGUF tensor name, in the table's reading order."""
    keys = list(arch.tensors)
    blocks = [k for k in keys if "{i}" in k]
    first = keys.index(blocks[0]) if blocks else len(keys)
    rows = [(k, k, -1) for k in keys[:first]]
    rows += [(k.format(i=i), k, i) for i in range(cfg.n_stored_layers) for k in blocks]
    rows += [(k, k, -1) for k in keys[first:] if k not in blocks]
    skip = {"lm_head.weight"} if cfg.tie_embeddings else set()
    placed = [(name, key, i) for name, key, i in rows if name in state and name not in skip]
    unplaced = sorted(set(state) - {name for name, _, _ in placed} - skip)
    if unplaced:
        raise GGUFExportError(f"llama.cpp's {arch.arch!r} architecture has no place for {unplaced[:5]}; "
                              "export the unpacked float model")
    return placed


def gguf_tensors(model) -> dict[str, torch.Tensor]:
    """GGUF tensor name -> float tensor (in llama.cpp's layout) for a pocketlm Transformer."""
    model.check_savable("gguf")  # float, unfused, unpacked: GGUF quantizes on export
    cfg = model.config
    arch = gguf_arch(cfg)
    state = model.state_dict()
    out = {}
    for name, key, i in _placements(cfg, arch, state):
        t = state[name]
        if key in arch.transforms:
            t = arch.transforms[key].to_gguf(t, cfg, i)
        out[arch.tensors[key].format(i=i)] = t
    return out


def _add_metadata(w, cfg, arch: GGUFArch, name: str, file_type: int) -> None:
    w.add_name(name or "pocketlm-model")
    for key, value in arch.hparams(cfg).items():
        getattr(w, f"add_{key}")(value)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(file_type)


def _add_tokenizer(w, cfg, tokenizer_json: Path | None) -> None:
    if tokenizer_json is None:
        w.add_tokenizer_model("none")
        return
    spec = json.loads(Path(tokenizer_json).read_text())
    model = spec.get("model", {})
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise GGUFExportError(f"{tokenizer_json}: only byte-level BPE tokenizer.json files are exported; "
                              "export without a tokenizer (token ids only) instead.")
    vocab = dict(model["vocab"])
    for t in spec.get("added_tokens", []):
        vocab[t["content"]] = t["id"]
    tokens = [f"[PAD{i}]" for i in range(cfg.vocab_size)]
    types = [5] * cfg.vocab_size  # 5 = unused
    special = {t["content"] for t in spec.get("added_tokens", []) if t.get("special")}
    for text, idx in vocab.items():
        if idx < cfg.vocab_size:
            tokens[idx], types[idx] = text, (3 if text in special else 1)  # 3 control, 1 normal
    merges = model.get("merges", [])
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)


def _direct_type(qtype: str, name: str, t: np.ndarray):
    """GGML type for one tensor: quantize 2-D weights whose rows split into 32-blocks, else keep F32."""
    import gguf

    T = gguf.GGMLQuantizationType
    if qtype == "F32" or t.ndim == 1:
        return T.F32
    if qtype in ("Q8_0", "Q4_0") and t.shape[-1] % 32:
        return T.F16  # llama.cpp's converter falls back the same way
    return {"F16": T.F16, "BF16": T.BF16, "Q8_0": T.Q8_0, "Q4_0": T.Q4_0}[qtype]


def export_gguf(model, path: str | Path, qtype: str = "F16", tokenizer_json: str | Path | None = None,
                threads: int | None = None) -> Path:
    """Write `model` to `path` as GGUF with tensor type `qtype`; returns the path (written atomically)."""
    import gguf

    qtype = qtype.upper()
    if qtype not in GGUF_TYPES:
        raise GGUFExportError(f"unknown GGUF type {qtype!r}; choose one of {GGUF_TYPES}")
    cfg = model.config
    check_finite_weights(model, cfg.name or "model", GGUFExportError)
    arch = gguf_arch(cfg)
    reasons = arch.unsupported(cfg)
    if reasons:
        raise GGUFExportError(
            f"model {cfg.name or '(unnamed)'} cannot be exported as llama.cpp's {arch.arch!r} architecture: "
            + "; ".join(reasons) + ". Profile it with the torch backend instead.")
    path = Path(path)
    if qtype in LLAMA_CPP_TYPES:
        return _quantize_with_llama_cpp(model, path, qtype, tokenizer_json, threads)
    file_type = {"F32": gguf.LlamaFileType.ALL_F32, "F16": gguf.LlamaFileType.MOSTLY_F16,
                 "BF16": gguf.LlamaFileType.MOSTLY_BF16, "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
                 "Q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[qtype]
    with atomic_path(path) as tmp:
        w = gguf.GGUFWriter(str(tmp), arch.arch)
        _add_metadata(w, cfg, arch, cfg.name, int(file_type))
        _add_tokenizer(w, cfg, Path(tokenizer_json) if tokenizer_json else None)
        if qtype in ("Q8_0", "Q4_0"):
            w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for name, tensor in gguf_tensors(model).items():
            arr = tensor.detach().to(torch.float32).cpu().numpy()
            ttype = _direct_type(qtype, name, arr)
            if ttype == gguf.GGMLQuantizationType.F32:
                w.add_tensor(name, arr)
            elif ttype == gguf.GGMLQuantizationType.F16:
                w.add_tensor(name, arr.astype(np.float16))
            else:
                w.add_tensor(name, gguf.quants.quantize(arr, ttype), raw_dtype=ttype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return path


def _quantize_with_llama_cpp(model, path: Path, qtype: str, tokenizer_json, threads: int | None) -> Path:
    try:
        import llama_cpp
    except ImportError as e:
        raise GGUFExportError(
            f"GGUF type {qtype} needs llama.cpp's quantizer: pip install llama-cpp-python "
            f"(builds from source in ~5 min), or use one of {DIRECT_TYPES}.") from e
    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{qtype}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmpdir, atomic_path(path) as dst:
        src = Path(tmpdir) / "f32.gguf"
        export_gguf(model, src, "F32", tokenizer_json)
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = ftype
        params.nthread = threads or 0
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
        if rc != 0:
            raise GGUFExportError(f"llama.cpp's quantizer failed ({rc}) for {qtype}")
    return path


def load_gguf_weights(model, path: str | Path) -> None:
    """Overwrite `model`'s weights (in place) with the dequantized tensors of a GGUF file we wrote.

    The inverse of `export_gguf`: it shows what a quantized GGUF file computes when run by pocketlm.
    """
    import gguf

    cfg = model.config
    arch = gguf_arch(cfg)
    state = model.state_dict()
    places = {arch.tensors[key].format(i=i): (name, key, i) for name, key, i in _placements(cfg, arch, state)}
    reader = gguf.GGUFReader(str(path))
    found = set()
    with torch.no_grad():
        for t in reader.tensors:
            if t.name not in places:
                raise GGUFExportError(f"{path}: tensor {t.name} has no place in this model")
            name, key, i = places[t.name]
            dst = state[name]
            value = torch.from_numpy(np.array(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32))
            value = value.reshape(dst.shape)
            if key in arch.transforms:
                value = arch.transforms[key].from_gguf(value, cfg, i)
            dst.copy_(value.to(dst.dtype))
            found.add(t.name)
    missing = sorted(set(places) - found)
    if missing:
        raise GGUFExportError(f"{path}: missing tensors {missing[:5]}")
