"""Changing a weight's memory layout without holding two copies of it (issue 18's fp32 load peak).

A kernel layout (a transposed LM head, a 16-row-tiled matrix) is a copy of the weight in another
order. Made the plain way (`w.t().contiguous()`), the original and the copy exist together until the
original is freed: for SmolLM-135M's tied 49152 x 576 head that is 108 MiB more at the peak of every
open than the model holds after it. Here
- `tile_blocks_in_place` rearranges a matrix whose layout only permutes elements within blocks of rows
  (the tiled kernels' 16-row interleave) in its own storage, one chunk of blocks at a time;
- `transpose_releasing` copies a matrix into its transpose a block of rows at a time and hands each
  copied block's pages back to the operating system at once (`madvise(MADV_DONTNEED)`, Linux), so
  the original shrinks as the copy grows;
each only where `owns_storage` says nothing else reads the tensor's memory, else they copy as before.
"""

from __future__ import annotations

import ctypes
import mmap
import sys

import torch
from torch import Tensor

CHUNK_BYTES = 4 << 20  # rows moved per step: the most either function holds beside the weight
MADV_DONTNEED = 4  # Linux's value


def owns_storage(t: Tensor) -> bool:
    """True if `t` is the only tensor on its storage, covers all of it, and torch allocated it (not a
    NumPy array, a buffer or a file mapping someone else owns): its memory may be rearranged or released."""
    storage = t.untyped_storage()
    count = getattr(torch._C, "_storage_Use_Count", None)  # private: without it, nothing is shared-checked
    if count is None or t.device.type != "cpu" or not storage.resizable():
        return False
    # the tensor and `storage` (this function's handle) are the two users when nothing else holds it
    return count(storage._cdata) == 2 and t.storage_offset() == 0 and storage.nbytes() == t.numel() * t.element_size()


def tile_blocks_in_place(blocks: Tensor, order: tuple[int, ...]) -> Tensor:
    """`blocks.permute(order).contiguous()` written over `blocks`' own memory, where `order` keeps dim 0
    (each block is permuted within itself). `blocks` must be contiguous; returns the rearranged view."""
    if order[0] != 0 or not blocks.is_contiguous():
        raise ValueError("tile_blocks_in_place permutes within contiguous blocks along dim 0")
    per_block = max(1, blocks[0].numel() * blocks.element_size())
    step = max(1, CHUNK_BYTES // per_block)
    for b0 in range(0, blocks.shape[0], step):
        chunk = blocks[b0:b0 + step]
        chunk.view(-1).copy_(chunk.permute(order).contiguous().view(-1))
    return blocks.view(blocks.shape[0], *(blocks.shape[d] for d in order[1:]))


def transpose_releasing(w: Tensor) -> Tensor:
    """`w.t().contiguous()` for a 2-D `w`, releasing the pages of `w`'s rows as soon as they are copied
    when `w` owns its storage (`owns_storage`, Linux); `w` must not be read afterwards in that case."""
    rows, cols = w.shape
    out = torch.empty(cols, rows, dtype=w.dtype, device=w.device)
    release = _page_releaser(w) if w.is_contiguous() and owns_storage(w) else None
    step = max(1, CHUNK_BYTES // max(1, cols * w.element_size()))
    with torch.no_grad():
        for r0 in range(0, rows, step):
            r1 = min(rows, r0 + step)
            out[:, r0:r1].copy_(w[r0:r1].t())
            if release is not None:
                release(r1 * cols * w.element_size())
    return out


def _page_releaser(w: Tensor):
    """A function `release(nbytes)` dropping the whole pages of w's first `nbytes` not dropped yet; None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    page, base = mmap.PAGESIZE, w.data_ptr()
    done = -(-base // page) * page  # the first whole page inside the tensor

    def release(nbytes: int) -> None:
        nonlocal done
        end = (base + nbytes) // page * page
        if end > done and madvise(done, end - done, MADV_DONTNEED) == 0:
            done = end

    return release


__all__ = ["owns_storage", "tile_blocks_in_place", "transpose_releasing"]
