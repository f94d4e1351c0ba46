"""pocketlm's own batch-1 CPU matmuls (AVX-512), built from `cpu_gemv.c` at first use, and their layer.

torch's batch-1 kernels for bf16 (oneDNN) and weight-only int8/int4 read weights 2-4x slower than
ggml's dot products at decode (docs/benchmarks.md, issue 18). `cpu_gemv.c` holds GEMVs for fp32,
bf16 (`_mm512_dpbf16_ps`), int8 per channel (VNNI on block-quantized activations, or fp32 FMA on
widened weights) and int4 groups (VNNI, 16 rows interleaved). The source has no torch headers: it
compiles in about a second with the system compiler, together with `native_decode.c` (the whole
batch-1 decode step in C, `native_decode.py`) into one library,

    $CC (default cc) -O3 -march=native -fopenmp -shared -fPIC cpu_gemv.c native_decode.c -lm

into `<cache root>/kernels/cpu_gemv-<key>.so` (key: source hash, compiler version, CPU flags),
written atomically, and is loaded with ctypes. OpenMP resolves to the libgomp torch already loaded,
so the kernels share torch's thread pool and run on `torch.get_num_threads()` threads.

`CpuGemvLinear` runs one linear on these kernels for a few rows of x (decode), and torch's own
kernel for more (prefill) where its weights allow; `pocketlm.runtime.kernel_choice` times it
beside torch's paths and keeps whichever is fastest on the device. In eager mode the layer calls
the library directly (a ctypes call, ~2 us); under torch.compile it is the custom op
`pocketlm::cpu_gemv` (with a fake implementation), so the compiled flat decode step calls it
without a graph break. Without a compiler or the CPU flags the kernels are not a candidate:
`unavailable()` gives the one-line reason and nothing else changes.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import shutil
import subprocess
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pocketlm.model.linears import int8_matmul
from pocketlm.model.relayout import tile_blocks_in_place

SOURCE = Path(__file__).with_name("cpu_gemv.c")
SOURCES = (SOURCE, Path(__file__).with_name("native_decode.c"))  # one library: the kernels and the decode step
HEADERS = (Path(__file__).with_name("pl_bf16.h"),)  # included by both (part of the build key)
CFLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC")
REQUIRED_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512_vnni")
BF16_FLAG = "avx512_bf16"
MAX_ROWS = 4  # more rows than this (prefill) go to torch's kernel where the layer's weights allow
KERNELS = ("f32", "bf16", "i8v", "i8f", "i4", "f32t", "bf16t", "i8t")  # in pl_gemv's order
TILED = ("i4", "f32t", "bf16t", "i8t")  # kernels on their own 16-row-interleaved copy (every M runs in C)
_ARGS = ctypes.c_int64 * 13  # pl_gemv's one argument: kernel, x, x_bf16, w, s, z, bias, y, M, K, N, group, threads


class NativeKernelNote(UserWarning):
    """pocketlm's CPU kernels could not be built or loaded here; torch's kernels are used instead."""


# ---------------------------------------------------------------------------------------------
# building and loading
# ---------------------------------------------------------------------------------------------


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def _compiler() -> tuple[str, str] | None:
    """(path, first line of --version) of $CC (default cc), or None if it does not run."""
    cc = shutil.which(os.environ.get("CC", "cc"))
    if cc is None:
        return None
    try:
        out = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return cc, (out.stdout.splitlines() or [""])[0]


def build_key() -> str:
    """What the built library depends on: the source, the compiler, its flags and the CPU's flags."""
    cc = _compiler()
    parts = [*(src.read_bytes().hex() for src in SOURCES + HEADERS), repr(cc[1] if cc else None), " ".join(CFLAGS), " ".join(sorted(_cpu_flags()))]
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()[:16]


def source_hash() -> str:
    return hashlib.sha1(b"".join(src.read_bytes() for src in SOURCES + HEADERS)).hexdigest()[:16]


def _build(out: Path, cc: str) -> None:
    from pocketlm.utils import atomic_path

    with atomic_path(out) as tmp:
        cmd = [cc, *CFLAGS, *map(str, SOURCES), "-lm", "-o", str(tmp)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if done.returncode != 0 or not tmp.exists() or tmp.stat().st_size == 0:
            first = (done.stderr.strip().splitlines() or ["no output written"])[0]
            raise RuntimeError(f"{' '.join(cmd[:2])} ... failed: {first}")


@functools.lru_cache(maxsize=None)
def _load() -> tuple[ctypes.CDLL | None, str | None]:
    flags = _cpu_flags()
    missing = [f for f in REQUIRED_FLAGS if f not in flags]
    if missing:
        return None, f"this CPU lacks {', '.join(missing)}"
    cc = _compiler()
    if cc is None:
        return None, f"no C compiler ({os.environ.get('CC', 'cc')!r} not found or not runnable; set CC)"
    from pocketlm.utils import cache_root

    key = build_key()
    out = cache_root() / "kernels" / f"cpu_gemv-{key}.so"
    try:
        if not out.exists():
            _build(out, cc[0])
        lib = ctypes.CDLL(str(out))
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        if isinstance(e, OSError) and out.exists():
            out.unlink(missing_ok=True)  # an unloadable build is rebuilt next time, not trusted
        return None, f"could not build or load {SOURCE.name}: {e}"
    lib.pl_gemv.argtypes, lib.pl_gemv.restype = [ctypes.c_void_p], ctypes.c_int
    lib.pl_decode_step.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int]
    lib.pl_decode_step.restype = ctypes.c_int
    lib.has_bf16 = bool(lib.pl_has_bf16()) and BF16_FLAG in flags
    lib.build_key = key
    return lib, None


def library() -> ctypes.CDLL | None:
    """The loaded kernels (built at first call), or None where they cannot run (see `unavailable`)."""
    lib, reason = _load()
    if lib is None and not getattr(_load, "noted", False):
        _load.noted = True
        warnings.warn(f"pocketlm CPU kernels not used: {reason}; torch's kernels stay the candidates",
                      NativeKernelNote, stacklevel=2)
    return lib


def build_id() -> str:
    """The loaded library's build key (source, compiler, CPU flags), or "none" where it does not run."""
    lib = library()
    return lib.build_key if lib is not None else "none"


def unavailable() -> str | None:
    """None if the kernels run here, else the one-line reason they do not."""
    return _load()[1]


def kernels_for(kind: str) -> tuple[str, ...]:
    """The kernels of this library that take weights of `kind` (fp32 | bf16 | int8 | int4) on this machine."""
    lib = library()
    if lib is None:
        return ()
    return {"fp32": ("f32", "f32t"), "bf16": ("bf16", "bf16t") if lib.has_bf16 else (),
            "int8": ("i8v", "i8f", "i8t"), "int4": ("i4",)}.get(kind, ())


def reset() -> None:
    """Forget the loaded library and its note (tests that change $CC or the cache root)."""
    _load.cache_clear()
    _load.noted = False


# ---------------------------------------------------------------------------------------------
# the call: eager through ctypes, compiled through a custom op
# ---------------------------------------------------------------------------------------------


def gemv(x: Tensor, weight: Tensor, scales: Tensor | None, zeros: Tensor | None, bias: Tensor | None,
         kernel: str, out_features: int, group_size: int) -> Tensor:
    """y = x W^T (+ bias) on `kernel`, x [..., K] -> [..., out_features] in x's dtype."""
    k = x.shape[-1]
    m = x.numel() // k
    if m > MAX_ROWS and kernel not in TILED:  # prefill: torch's kernel reads the same weights
        if kernel in ("f32", "bf16"):
            return F.linear(x, weight, bias)
        y = int8_matmul(x, weight, scales.to(torch.bfloat16))  # Int8Linear's own matmul
        return y.to(x.dtype) if bias is None else (y.float() + bias).to(x.dtype)
    dtype = x.dtype
    want = weight.dtype if kernel in ("f32", "bf16", "f32t", "bf16t") else (dtype if dtype in _X_DTYPES else torch.float32)
    xc = x if dtype == want and x.is_contiguous() else x.to(want).contiguous()
    y = torch.empty(*x.shape[:-1], out_features, dtype=want)
    rc = library().pl_gemv(_ARGS(_KERNEL_IDS[kernel], xc.data_ptr(), want == torch.bfloat16, weight.data_ptr(),
                                 0 if scales is None else scales.data_ptr(), 0 if zeros is None else zeros.data_ptr(),
                                 0 if bias is None else bias.data_ptr(), y.data_ptr(), m, k, out_features,
                                 group_size, torch.get_num_threads()))
    if rc != 0:
        raise RuntimeError(f"cpu_gemv {kernel} failed (code {rc}: {'out of memory' if rc == -1 else 'bad shape'})")
    return y if want == dtype else y.to(dtype)


_X_DTYPES = (torch.float32, torch.bfloat16)
_KERNEL_IDS = {name: i for i, name in enumerate(KERNELS)}


@torch.library.custom_op("pocketlm::cpu_gemv", mutates_args=())
def cpu_gemv_op(x: Tensor, weight: Tensor, scales: Tensor | None, zeros: Tensor | None, bias: Tensor | None,
                kernel: str, out_features: int, group_size: int) -> Tensor:
    """`gemv` as an op of its own, so torch.compile calls it as is (no graph break)."""
    return gemv(x, weight, scales, zeros, bias, kernel, out_features, group_size)


@cpu_gemv_op.register_fake
def _cpu_gemv_shape(x: Tensor, weight: Tensor, scales: Tensor | None, zeros: Tensor | None, bias: Tensor | None,
                    kernel: str, out_features: int, group_size: int) -> Tensor:
    return x.new_empty(*x.shape[:-1], out_features)


def gemv_any(x: Tensor, weight: Tensor, scales: Tensor | None, zeros: Tensor | None, bias: Tensor | None,
             kernel: str, out_features: int, group_size: int) -> Tensor:
    """The custom op while torch.compile traces, the direct call otherwise (no dispatcher round trip)."""
    call = cpu_gemv_op if torch.compiler.is_compiling() else gemv
    return call(x, weight, scales, zeros, bias, kernel, out_features, group_size)


# ---------------------------------------------------------------------------------------------
# the layer
# ---------------------------------------------------------------------------------------------


def tile_rows(weight: Tensor, per_lane: int, k_multiple: int = 1, in_place: bool = False) -> Tensor:
    """[N, K] -> [N/16, K', 16, per_lane] (16 rows interleaved, `per_lane` inputs per row in each 4-byte lane),
    zero rows to a multiple of 16 and zero inputs to a multiple of `per_lane` and `k_multiple`.

    `in_place`: where no padding is needed, rearrange `weight`'s own storage (it then holds the tiled
    values) instead of copying it (`relayout.tile_blocks_in_place`)."""
    n, k = weight.shape
    kp = -(-k // math.lcm(per_lane, k_multiple)) * math.lcm(per_lane, k_multiple)
    nb = -(-n // 16)
    if kp == k and nb * 16 == n:  # no padding: no padded copy either
        blocks = weight.contiguous().view(nb, 16, kp // per_lane, per_lane)
        if in_place and weight.is_contiguous():
            return tile_blocks_in_place(blocks, (0, 2, 1, 3))
        return blocks.permute(0, 2, 1, 3).contiguous()
    w = F.pad(weight, (0, kp - k, 0, nb * 16 - n))
    return w.view(nb, 16, kp // per_lane, per_lane).permute(0, 2, 1, 3).contiguous()


def pack_int4(codes: Tensor, scales: Tensor, zeros: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """codes [N, K] in 0..15, scales / zeros [N, G] -> the i4 kernel's 16-row-interleaved layout.

    Returns (bytes [N/16, K/8, 64] uint8, scales, zeros [N/16, G, 16] bf16), N padded to 16 rows."""
    n, k = codes.shape
    nb = -(-n // 16)
    pad = nb * 16 - n
    q = F.pad(codes.to(torch.uint8), (0, 0, 0, pad)).view(nb, 16, k // 8, 2, 4)  # (block, row, chunk, half, j)
    packed = (q[:, :, :, 0] | (q[:, :, :, 1] << 4)).permute(0, 2, 1, 3).contiguous()  # (block, chunk, row, j)

    def per_block(t: Tensor) -> Tensor:
        t = F.pad(t.to(torch.bfloat16), (0, 0, 0, pad), value=0.0)
        return t.view(nb, 16, -1).permute(0, 2, 1).contiguous()

    return packed.view(nb, k // 8, 64), per_block(scales), per_block(zeros)


class CpuGemvLinear(nn.Module):
    """One linear on a `cpu_gemv` kernel; keeps a fused layer's `splits`. An inference layout, never saved.

    f32 / bf16 / i8v / i8f read the weights as the layer they replace holds them (shared storage: a
    tied head keeps one matrix); i4 holds its own interleaved copy of the codes."""

    def __init__(self, kernel: str, in_features: int, out_features: int, weight: Tensor,
                 scales: Tensor | None = None, zeros: Tensor | None = None, bias: Tensor | None = None,
                 splits: list[int] | None = None, group_size: int = 0):
        super().__init__()
        if kernel not in KERNELS:
            raise ValueError(f"unknown cpu_gemv kernel {kernel!r}; choose from {KERNELS}")
        self.kernel, self.group_size = kernel, group_size
        self.in_features, self.out_features = in_features, out_features
        self.splits = list(splits or [out_features])
        for name, t in (("weight", weight), ("scales", scales), ("zeros", zeros), ("bias", bias)):
            self.register_buffer(name, None if t is None else t.detach(), persistent=False)

    @classmethod
    def from_layer(cls, layer: nn.Module, kernel: str, reuse: bool = False) -> "CpuGemvLinear":
        """The same linear as `layer` (nn.Linear fp32/bf16, Int8Linear or Int4Linear) on `kernel`.

        `reuse`: a tiled kernel (f32t, bf16t, i8t) rearranges `layer`'s weight in its own storage instead
        of copying it, so the layer is consumed; only for a layer nothing else reads (the runtime's swap)."""
        n, k = layer.out_features, layer.in_features
        splits = getattr(layer, "splits", None)
        if kernel in ("f32", "bf16", "f32t", "bf16t"):
            bias = None if layer.bias is None else layer.bias.detach()
            weight = layer.weight.detach()
            if kernel in ("f32t", "bf16t"):
                weight = tile_rows(weight, 1 if kernel == "f32t" else 2, in_place=reuse)
            return cls(kernel, k, n, weight, bias=bias, splits=splits)
        bias = None if layer.bias is None else layer.bias.detach().float()
        if kernel in ("i8v", "i8f"):
            return cls(kernel, k, n, layer.qweight, layer.scales.float(), bias=bias, splits=splits)
        if kernel == "i8t":
            scales = F.pad(layer.scales.float(), (0, -(-n // 16) * 16 - n))
            return cls(kernel, k, n, tile_rows(layer.qweight, 4, 32, in_place=reuse), scales, bias=bias, splits=splits)
        sz = layer.scales_and_zeros  # [G, N, 2]
        packed, s, z = pack_int4(layer.codes(), sz[..., 0].t(), sz[..., 1].t())
        return cls("i4", k, n, packed, s, z, bias, splits, layer.group_size)

    def forward(self, x: Tensor) -> Tensor:
        return gemv_any(x, self.weight, self.scales, self.zeros, self.bias, self.kernel, self.out_features,
                        self.group_size)

    def weight_bytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.buffers())

    def extra_repr(self) -> str:
        group = f", group={self.group_size}" if self.group_size else ""
        return f"in={self.in_features}, out={self.splits}, cpu_gemv {self.kernel}{group}"


__all__ = ["CpuGemvLinear", "NativeKernelNote", "build_id", "build_key", "cpu_gemv_op", "gemv", "kernels_for", "library",
           "pack_int4", "reset", "source_hash", "unavailable"]
