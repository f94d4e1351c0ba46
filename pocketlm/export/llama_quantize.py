"""llama.cpp's own quantizer, with or without an importance matrix: the one place pocketlm calls it.

`llama_cpp_quantize(src, dst, "Q4_K_M", imatrix=...)` runs `llama_model_quantize` from the optional
llama-cpp-python extra on an F32/F16 GGUF file, as the `llama-quantize` tool does. `imatrix` maps GGUF
weight names to llama.cpp's importance values: per input column, the mean over calibration tokens of
the squared activation that multiplies it (for stacked experts, one such row per expert, expert-major,
each expert averaged over the tokens routed to it). That is what `llama-quantize` hands the library
after reading `llama-imatrix`'s file (`in_sum2 / counts`, 1 where an expert saw no token); llama.cpp's C
API takes it as a NULL-terminated `llama_model_imatrix_data` array, so no tool and no file format sits
between pocketlm's statistics and the quantizer. `compress.quantize.imatrix` computes them.

Tensors with no entry are quantized without one (llama.cpp logs it). Entries are checked here, before
llama.cpp sees them: a name not in the file, a size other than columns x experts, or a non-finite or
negative value is one clear error.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Mapping

import numpy as np

from pocketlm.export.errors import GGUFExportError

GGML_TYPE_F16 = 1
# llama_model_kv_override tags
_KV_INT, _KV_STR = 0, 3


def _llama_cpp(qtype: str):
    try:
        import llama_cpp
    except ImportError as e:
        raise GGUFExportError(f"GGUF type {qtype} needs llama.cpp's quantizer: pip install llama-cpp-python "
                              "(the optional llama extra)") from e
    if not hasattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{qtype}"):
        raise GGUFExportError(f"llama.cpp has no file type {qtype!r} (e.g. Q4_0, Q4_K_M, Q4_K_S, Q6_K)")
    return llama_cpp


def check_imatrix(src: str | Path, imatrix: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`imatrix` as contiguous float32 arrays, each checked against the weight of that name in `src`."""
    import gguf

    shapes = {t.name: [int(d) for d in t.shape] for t in gguf.GGUFReader(str(src)).tensors}
    out = {}
    for name, values in imatrix.items():
        if name not in shapes:
            raise GGUFExportError(f"imatrix entry {name!r} is not a tensor of {Path(src).name} "
                                  f"(e.g. {list(shapes)[:3]})")
        dims = shapes[name]  # ggml order: columns first
        want = dims[0] * (dims[2] if len(dims) > 2 else 1)
        arr = np.ascontiguousarray(np.asarray(values, dtype=np.float32).reshape(-1))
        if arr.size != want:
            raise GGUFExportError(f"imatrix entry {name!r} holds {arr.size} values; the tensor needs {want} "
                                  "(input columns x experts)")
        if not np.all(np.isfinite(arr)) or (arr < 0).any():
            raise GGUFExportError(f"imatrix entry {name!r} has non-finite or negative values; importance is a "
                                  "mean of squares")
        out[name] = arr
    return out


def _imatrix_array(llama_cpp, entries: dict[str, np.ndarray]):
    array = (llama_cpp.llama_model_imatrix_data * (len(entries) + 1))()
    for slot, (name, arr) in zip(array, entries.items()):
        slot.name = name.encode()
        slot.data = arr.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        slot.size = arr.size
    return array  # the last slot stays zero: the terminator


def _kv_array(llama_cpp, values: dict[str, int | str]):
    array = (llama_cpp.llama_model_kv_override * (len(values) + 1))()
    for slot, (key, value) in zip(array, values.items()):
        slot.key = key.encode()
        if isinstance(value, int):
            slot.tag, slot.value.val_i64 = _KV_INT, value
        else:
            slot.tag, slot.value.val_str = _KV_STR, value.encode()[:127]
    return array


def llama_cpp_quantize(src: str | Path, dst: str | Path, qtype: str, *,
                       imatrix: Mapping[str, np.ndarray] | None = None, imatrix_dataset: str = "",
                       pure: bool = False, rest_f16: bool = False, threads: int | None = None) -> Path:
    """Quantize GGUF `src` into `dst` with llama.cpp's quantizer as llama file type `qtype`.

    `pure`: every quantizable tensor gets `qtype`'s main type (llama-quantize --pure; else llama.cpp's
    mix, e.g. Q6_K for some attn_v/ffn_down rows in Q4_K_M). `rest_f16`: the token embedding and the
    output matrix are written F16 (--token-embedding-type / --output-tensor-type f16). `imatrix`: see
    the module docstring; its entry count and `imatrix_dataset` are recorded in the file's metadata
    under llama-quantize's keys. `threads`: None or 0 uses every core. Returns `dst`.
    """
    qtype = qtype.upper()
    llama_cpp = _llama_cpp(qtype)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{qtype}")
    params.nthread = threads or 0
    params.pure = pure
    if rest_f16:
        params.output_tensor_type = params.token_embedding_type = GGML_TYPE_F16
    keep = []  # the arrays llama.cpp reads must live until it returns
    if imatrix:
        entries = check_imatrix(src, imatrix)
        keep += [entries, _imatrix_array(llama_cpp, entries),
                 _kv_array(llama_cpp, {"quantize.imatrix.entries_count": len(entries),
                                       "quantize.imatrix.dataset": imatrix_dataset or "pocketlm calibration"})]
        params.imatrix, params.kv_overrides = keep[1], keep[2]
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise GGUFExportError(f"llama.cpp's quantizer failed ({rc}) for {qtype}")
    return dst
