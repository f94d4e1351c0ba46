"""llama.cpp's importance matrix computed inside llama.cpp, as the `llama-imatrix` tool does.

`llama_cpp_imatrix(gguf_path, sequences)` loads the file with llama-cpp-python, registers an evaluation
callback on the context (`cb_eval`, the hook llama-imatrix uses) and decodes each token sequence with
logits for every position (llama-imatrix computes perplexity, so no layer drops rows). For every
matrix multiplication whose weight is a block tensor (`blk.*`) it accumulates, per input column, the
sum of the squared activations and the number of rows, and returns their quotient per weight name:
- `MUL_MAT` with fewer than 16 rows is skipped, as llama-imatrix does;
- `MUL_MAT_ID` (routed experts): each (token, top-k slot) adds to the expert it selected, one row of
  values and one count per expert; an expert no token reached gets 1.0 (llama-quantize's rule);
- `output.weight` only with `process_output=True` (llama-imatrix --process-output).
The result is what `export.llama_quantize.llama_cpp_quantize(imatrix=...)` takes.

The callback reads ggml's `struct ggml_tensor` through ctypes; its layout is checked at the first call
against ggml's own accessors (`ggml_get_name`, `ggml_get_data`), so a ggml whose layout moved fails
with one clear error instead of reading garbage.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from pocketlm.export.errors import GGUFExportError

GGML_TYPE_F32, GGML_TYPE_I32 = 0, 26
MIN_ROWS = 16  # llama-imatrix ignores smaller matrix multiplications


class _Tensor(ctypes.Structure):
    """ggml.h's `struct ggml_tensor` (GGML_MAX_DIMS 4, GGML_MAX_OP_PARAMS 64, GGML_MAX_SRC 10, GGML_MAX_NAME 64)."""

    _fields_ = [("type", ctypes.c_int), ("buffer", ctypes.c_void_p), ("ne", ctypes.c_int64 * 4),
                ("nb", ctypes.c_size_t * 4), ("op", ctypes.c_int), ("op_params", ctypes.c_int32 * 16),
                ("flags", ctypes.c_int32), ("src", ctypes.c_void_p * 10), ("view_src", ctypes.c_void_p),
                ("view_offs", ctypes.c_size_t), ("data", ctypes.c_void_p), ("name", ctypes.c_char * 64),
                ("extra", ctypes.c_void_p), ("padding", ctypes.c_char * 8)]


def _ggml():
    import llama_cpp

    lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    lib.ggml_get_name.restype, lib.ggml_get_name.argtypes = ctypes.c_char_p, [ctypes.c_void_p]
    lib.ggml_get_data.restype, lib.ggml_get_data.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
    lib.ggml_op_name.restype, lib.ggml_op_name.argtypes = ctypes.c_char_p, [ctypes.c_int]
    return llama_cpp, lib


def _op_ids(lib) -> tuple[int, int]:
    """The enum values of MUL_MAT and MUL_MAT_ID in this ggml, found by name."""
    found: dict[bytes, int] = {}
    for i in range(1, 128):  # stop at the second name: reading past GGML_OP_COUNT is undefined
        found.setdefault(lib.ggml_op_name(i), i)
        if b"MUL_MAT" in found and b"MUL_MAT_ID" in found:
            return found[b"MUL_MAT"], found[b"MUL_MAT_ID"]
    raise GGUFExportError("this ggml has no MUL_MAT / MUL_MAT_ID operations by those names")


def _weight_name(raw: bytes) -> str:
    """ggml-sched's copies are named `backend#name#n`; the weight is `name`."""
    name = raw.decode(errors="replace")
    return name.split("#")[1] if "#" in name else name


def _array(t: _Tensor, dtype) -> np.ndarray:
    """A tensor's data as a numpy view [ne3, ne2, ne1, ne0] with ggml's byte strides (host memory)."""
    shape = tuple(int(n) for n in reversed(t.ne))
    strides = tuple(int(s) for s in reversed(t.nb))
    span = sum((n - 1) * s for n, s in zip(shape, strides)) + np.dtype(dtype).itemsize
    return np.ndarray(shape, dtype, buffer=(ctypes.c_char * span).from_address(t.data), strides=strides)


class _Collector:
    def __init__(self, lib, process_output: bool):
        self.lib, self.process_output = lib, process_output
        self.mul_mat, self.mul_mat_id = _op_ids(lib)
        self.sums: dict[str, np.ndarray] = {}
        self.counts: dict[str, np.ndarray] = {}
        self.checked, self.error = False, None

    def _check_layout(self, ptr: int, t: _Tensor) -> None:
        if self.lib.ggml_get_name(ptr) != t.name or self.lib.ggml_get_data(ptr) != t.data:
            raise GGUFExportError("this ggml's struct ggml_tensor layout differs from the one pocketlm reads; "
                                  "compute the importance matrix with compress.quantize.imatrix instead")
        self.checked = True

    def __call__(self, ptr: int, ask: bool, _user) -> bool:
        try:
            t = _Tensor.from_address(ptr)
            if not self.checked:
                self._check_layout(ptr, t)
            if t.op not in (self.mul_mat, self.mul_mat_id):
                return False
            src0, src1 = _Tensor.from_address(t.src[0]), _Tensor.from_address(t.src[1])
            name = _weight_name(src0.name)
            if ask:
                if t.op == self.mul_mat_id:
                    return True
                wanted = name.startswith("blk.") or (self.process_output and name == "output.weight")
                return wanted and src1.ne[1] >= MIN_ROWS and src1.type == GGML_TYPE_F32
            x = _array(src1, np.float32).astype(np.float64)
            if t.op == self.mul_mat_id:
                self._add_routed(name, src0, x, _array(_Tensor.from_address(t.src[2]), np.int32))
            else:
                self._add_dense(name, src0, x)
            return True
        except Exception as e:  # an exception cannot cross the C callback: keep it, stop the graph
            self.error = self.error or e
            return False

    def _slot(self, name: str, n_mat: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
        if name not in self.sums:
            self.sums[name], self.counts[name] = np.zeros((n_mat, cols)), np.zeros(n_mat)
        return self.sums[name], self.counts[name]

    def _add_dense(self, name: str, w: _Tensor, x: np.ndarray) -> None:
        ne2, ne3 = int(w.ne[2]), int(w.ne[3])
        sums, counts = self._slot(name, ne2 * ne3, x.shape[-1])
        for i3 in range(x.shape[0]):
            for i2 in range(x.shape[1]):
                sums[(i3 % ne3) * ne2 + (i2 % ne2)] += np.square(x[i3, i2]).sum(0)
        counts += x.shape[0] * x.shape[1] * x.shape[2] / (ne2 * ne3)

    def _add_routed(self, name: str, w: _Tensor, x: np.ndarray, ids: np.ndarray) -> None:
        # x [1, tokens, ne11, cols]; ids [1, 1, tokens, n_used]: slot k of token r read x[r, k % ne11]
        sums, counts = self._slot(name, int(w.ne[2]), x.shape[-1])
        ids = ids[0, 0]
        for k in range(ids.shape[1]):
            experts = ids[:, k]
            np.add.at(sums, experts, np.square(x[0, :, k % x.shape[2]]))
            np.add.at(counts, experts, 1)

    def result(self) -> dict[str, np.ndarray]:
        out = {}
        for name, sums in self.sums.items():
            counts = self.counts[name][:, None]
            out[name] = np.where(counts > 0, sums / np.maximum(counts, 1), 1.0).astype(np.float32).reshape(-1)
        return out


def llama_cpp_imatrix(path: str | Path, sequences: Iterable[Sequence[int]], *, threads: int = 1,
                      process_output: bool = False) -> dict[str, np.ndarray]:
    """GGUF weight name -> llama.cpp's importance values over `sequences` (token id lists, each decoded
    from an empty cache in one batch), computed by llama.cpp on the weights of `path`."""
    llama_cpp, lib = _ggml()
    sequences = [list(map(int, s)) for s in sequences]
    if not sequences or min(map(len, sequences)) < MIN_ROWS:
        raise GGUFExportError(f"the importance matrix needs sequences of at least {MIN_ROWS} tokens")
    collector = _Collector(lib, process_output)
    callback = llama_cpp.ggml_backend_sched_eval_callback(collector)
    llama_cpp.llama_backend_init()
    mparams = llama_cpp.llama_model_default_params()
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), mparams)
    if not model:
        raise GGUFExportError(f"llama.cpp could not load {path}")
    n = max(map(len, sequences))
    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = n
    cparams.n_threads = cparams.n_threads_batch = threads
    cparams.cb_eval, cparams.cb_eval_user_data = callback, None
    ctx = llama_cpp.llama_init_from_model(model, cparams)
    batch = llama_cpp.llama_batch_init(n, 0, 1)
    try:
        for seq in sequences:
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
            batch.n_tokens = len(seq)
            for i, tok in enumerate(seq):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, i, 1
                batch.seq_id[i][0], batch.logits[i] = 0, True
            rc = llama_cpp.llama_decode(ctx, batch)
            if collector.error is not None:
                raise collector.error
            if rc != 0:
                raise GGUFExportError(f"llama.cpp failed to decode a calibration sequence ({rc})")
    finally:
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(ctx)
        llama_cpp.llama_model_free(model)
    return collector.result()
