"""Export a pocketlm Transformer to GGUF (llama.cpp's format) under the `llama` architecture.

Tensor types F32, F16, BF16, Q8_0 and Q4_0 are written directly with the `gguf` package (its numpy
quantizers); K-quants and the other llama.cpp types go through llama.cpp's own quantizer
(`llama_cpp.llama_model_quantize`, from the optional llama-cpp-python extra) applied to an F32 file.

llama.cpp's `llama` graph rotates interleaved pairs (x0, x1), while pocketlm's default RoPE rotates
halves, so the q/k projection rows are permuted on export (as llama.cpp's own HF converter does).
The tokenizer is written as `none` unless a Hugging Face `tokenizer.json` with a byte-level BPE
model is given; profiling feeds token ids directly.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from pocketlm.utils import atomic_path

DIRECT_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0")
LLAMA_CPP_TYPES = ("Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M",
                   "Q5_K_S", "Q5_K_M", "Q6_K", "IQ4_NL", "IQ4_XS")
GGUF_TYPES = DIRECT_TYPES + LLAMA_CPP_TYPES


class GGUFExportError(ValueError):
    """A model or request that the GGUF writer cannot honour; the message says why and what to do."""


def unsupported_reasons(cfg) -> list[str]:
    """Why `cfg` cannot run as llama.cpp's `llama` architecture (empty list: it can)."""
    rules = [
        (cfg.attention == "standard", "attention must be standard (MHA/GQA/MQA), not MLA"),
        (cfg.positions == "rope" and cfg.rotary_fraction == 1.0, "positions must be full RoPE"),
        (cfg.rope_scaling is None or cfg.rope_scaling.get("rope_type", "default") in ("default", "linear"),
         "rope_scaling must be none or linear"),
        (cfg.norm == "rmsnorm" and cfg.norm_affine and not cfg.norm_unit_offset, "norm must be plain RMSNorm"),
        (cfg.norm_placement == "pre" and not cfg.parallel_residual, "blocks must be pre-norm, sequential"),
        (cfg.ffn_type == "gated" and cfg.activation == "silu" and not cfg.mlp_bias,
         "FFN must be gated SiLU (SwiGLU) without bias"),
        (cfg.n_experts == 0, "mixture-of-experts is not exported"),
        (cfg.qk_norm == "none" and cfg.clip_qkv is None, "no qk-norm or qkv clipping"),
        (cfg.attn_logit_softcap is None and cfg.final_logit_softcap is None, "no logit soft-capping"),
        (cfg.sliding_window is None, "no sliding-window attention"),
        (cfg.attn_scale is None or abs(cfg.attn_scale - cfg.dim_head ** -0.5) < 1e-9,
         "attention scale must be head_dim^-0.5"),
        (cfg.embed_scale == 1.0 and cfg.logit_scale == 1.0 and cfg.residual_scale == 1.0,
         "no embedding/logit/residual scaling"),
        (cfg.embed_proj_dim is None and not cfg.embed_norm and not cfg.lm_head_bias and cfg.final_norm,
         "plain embedding and LM head"),
        (cfg.block_repeat == 1 and not cfg.shared_ffn, "no parameter sharing across blocks"),
        (all(not isinstance(getattr(cfg, f), list) for f in ("n_head", "n_kv_head", "intermediate_size")),
         "per-layer head counts / FFN widths are not exported"),
    ]
    return [msg for ok, msg in rules if not ok]


def _permute_rope(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Rows of a q/k projection from half-rotation order to llama.cpp's interleaved-pair order."""
    rows = w.shape[0]
    hd = rows // n_head
    tail = w.shape[1:]
    return w.reshape(n_head, 2, hd // 2, *tail).transpose(1, 2).reshape(rows, *tail)


def llama_tensors(model) -> dict[str, torch.Tensor]:
    """GGUF tensor name -> float tensor for a pocketlm Transformer of the llama family."""
    cfg = model.config
    model.check_savable("gguf")  # float, unfused, unpacked: GGUF quantizes on export
    out = {"token_embd.weight": model.embed.weight}
    for i, blk in enumerate(model.blocks):
        a, m = blk.attn, blk.mlp
        p = f"blk.{i}."
        out[p + "attn_norm.weight"] = blk.attn_norm.weight
        q, k = a.q_proj.weight, a.k_proj.weight
        if not cfg.rope_interleaved:
            q, k = _permute_rope(q, a.n_head), _permute_rope(k, a.n_kv)
        out[p + "attn_q.weight"], out[p + "attn_k.weight"] = q, k
        out[p + "attn_v.weight"] = a.v_proj.weight
        if cfg.qkv_bias:
            qb, kb = a.q_proj.bias, a.k_proj.bias
            if not cfg.rope_interleaved:
                qb, kb = _permute_rope(qb, a.n_head), _permute_rope(kb, a.n_kv)
            out[p + "attn_q.bias"], out[p + "attn_k.bias"], out[p + "attn_v.bias"] = qb, kb, a.v_proj.bias
        out[p + "attn_output.weight"] = a.o_proj.weight
        if cfg.attn_out_bias:
            out[p + "attn_output.bias"] = a.o_proj.bias
        out[p + "ffn_norm.weight"] = blk.mlp_norm.weight
        out[p + "ffn_gate.weight"] = m.gate_proj.weight
        out[p + "ffn_up.weight"] = m.up_proj.weight
        out[p + "ffn_down.weight"] = m.down_proj.weight
    out["output_norm.weight"] = model.final_norm.weight
    if not cfg.tie_embeddings:
        out["output.weight"] = model.lm_head.weight
    return out


def _add_metadata(w, cfg, name: str, file_type: int) -> None:
    w.add_name(name or "pocketlm-model")
    w.add_context_length(cfg.max_seq_len)
    w.add_embedding_length(cfg.d_model)
    w.add_block_count(cfg.n_layer)
    w.add_feed_forward_length(cfg.ffn_dim(0))
    w.add_head_count(cfg.heads(0))
    w.add_head_count_kv(cfg.kv_heads(0))
    w.add_key_length(cfg.dim_head)
    w.add_value_length(cfg.dim_head)
    w.add_rope_dimension_count(cfg.dim_head)
    w.add_rope_freq_base(float(cfg.rope_theta))
    if cfg.rope_scaling and cfg.rope_scaling.get("rope_type") == "linear":
        import gguf

        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(cfg.rope_scaling["factor"]))
    w.add_layer_norm_rms_eps(float(cfg.norm_eps))
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
    reasons = unsupported_reasons(cfg)
    if reasons:
        raise GGUFExportError(
            f"model {cfg.name or '(unnamed)'} cannot be exported as llama.cpp's 'llama' architecture: "
            + "; ".join(reasons) + ". Profile it with the torch backend instead.")
    path = Path(path)
    if qtype in LLAMA_CPP_TYPES:
        return _quantize_with_llama_cpp(model, path, qtype, tokenizer_json, threads)
    file_type = {"F32": gguf.LlamaFileType.ALL_F32, "F16": gguf.LlamaFileType.MOSTLY_F16,
                 "BF16": gguf.LlamaFileType.MOSTLY_BF16, "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
                 "Q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[qtype]
    with atomic_path(path) as tmp:
        w = gguf.GGUFWriter(str(tmp), "llama")
        _add_metadata(w, cfg, cfg.name, int(file_type))
        _add_tokenizer(w, cfg, Path(tokenizer_json) if tokenizer_json else None)
        if qtype in ("Q8_0", "Q4_0"):
            w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for name, tensor in llama_tensors(model).items():
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


def _unpermute_rope(w: torch.Tensor, n_head: int) -> torch.Tensor:
    rows = w.shape[0]
    hd = rows // n_head
    tail = w.shape[1:]
    return w.reshape(n_head, hd // 2, 2, *tail).transpose(1, 2).reshape(rows, *tail)


def load_gguf_weights(model, path: str | Path) -> None:
    """Overwrite `model`'s weights (in place) with the dequantized tensors of a GGUF file we wrote.

    The inverse of `export_gguf`: it shows what a quantized GGUF file computes when run by pocketlm.
    """
    import gguf

    cfg = model.config
    reader = gguf.GGUFReader(str(path))
    targets = llama_tensors(model)
    found = set()
    with torch.no_grad():
        for t in reader.tensors:
            if t.name not in targets:
                raise GGUFExportError(f"{path}: tensor {t.name} has no place in this model")
            arr = gguf.quants.dequantize(t.data, t.tensor_type)
            dst = targets[t.name]
            value = torch.from_numpy(np.array(arr, dtype=np.float32)).reshape(dst.shape)
            if not cfg.rope_interleaved and (".attn_q." in t.name or ".attn_k." in t.name):
                layer = int(t.name.split(".")[1])
                a = model.blocks[layer].attn
                value = _unpermute_rope(value, a.n_head if ".attn_q." in t.name else a.n_kv)
            _source_param(model, t.name).copy_(value.to(dst.dtype))
            found.add(t.name)
    missing = sorted(set(targets) - found)
    if missing:
        raise GGUFExportError(f"{path}: missing tensors {missing[:5]}")


def _source_param(model, name: str) -> torch.Tensor:
    """The model tensor that GGUF tensor `name` was written from (without permutation)."""
    if name == "token_embd.weight":
        return model.embed.weight
    if name == "output_norm.weight":
        return model.final_norm.weight
    if name == "output.weight":
        return model.lm_head.weight
    _, i, part, kind = name.split(".")
    blk = model.blocks[int(i)]
    module = {"attn_norm": blk.attn_norm, "ffn_norm": blk.mlp_norm, "attn_q": blk.attn.q_proj,
              "attn_k": blk.attn.k_proj, "attn_v": blk.attn.v_proj, "attn_output": blk.attn.o_proj,
              "ffn_gate": blk.mlp.gate_proj, "ffn_up": blk.mlp.up_proj, "ffn_down": blk.mlp.down_proj}[part]
    return getattr(module, kind)
