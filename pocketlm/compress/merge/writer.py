"""Write safetensors files one tensor at a time, so a merged model never sits in memory whole.

The format is an 8-byte little-endian header length, a JSON header (dtype, shape and byte range of
every tensor) and the raw bytes in header order. The driver knows every output's shape and dtype
before it computes anything, so the header goes first and each tensor is appended as it is made.
The reader is the safetensors library itself (tests load what this writes with it).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import BinaryIO

import torch
from torch import Tensor

DTYPE_CODES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
               torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
               torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2"}
DTYPES = {v: k for k, v in DTYPE_CODES.items()}


def nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    n = 1
    for s in shape:
        n *= s
    return n * torch.empty((), dtype=dtype).element_size()


class SafetensorsStream:
    """One safetensors file whose tensors are declared up front and written in that order."""

    def __init__(self, path: Path, specs: list[tuple[str, tuple[int, ...], torch.dtype]],
                 metadata: dict[str, str] | None = None):
        self.path, self.specs = path, specs
        header: dict = {"__metadata__": metadata or {"format": "pt"}}
        offset = 0
        for name, shape, dtype in specs:
            size = nbytes(shape, dtype)
            header[name] = {"dtype": DTYPE_CODES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
            offset += size
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)  # the data section starts 8-byte aligned
        self._file: BinaryIO = open(path, "wb")
        self._file.write(struct.pack("<Q", len(blob)) + blob)
        self._next = 0

    def write(self, name: str, tensor: Tensor) -> None:
        want, shape, dtype = self.specs[self._next]
        if name != want or tuple(tensor.shape) != tuple(shape) or tensor.dtype != dtype:
            raise RuntimeError(f"safetensors stream {self.path.name}: expected {want} {tuple(shape)} {dtype}, "
                               f"got {name} {tuple(tensor.shape)} {tensor.dtype}")
        t = tensor.detach().to("cpu").contiguous()
        if t.numel():
            self._file.write(t.reshape(-1).view(torch.uint8).numpy())  # bytes-like, no extra copy
        self._next += 1

    def close(self) -> None:
        if self._next != len(self.specs):
            raise RuntimeError(f"{self.path.name}: {len(self.specs) - self._next} declared tensor(s) never written")
        self._file.close()

    def abort(self) -> None:
        self._file.close()
