"""ggml block bytes from integer codes and scales chosen elsewhere (GPTQ, AWQ, RTN on a GGUF grid).

Each encoder takes one tensor's codes and stored parameters, blocks laid along the rows' K columns
(K a multiple of the block), and returns uint8 [N, K / block * bytes_per_block] in the layout of
ggml's `block_q8_0`, `block_q4_0`, `block_q4_1`, `block_q5_0`, `block_q4_K` and `block_q6_K`
(ggml-common.h), which is what `gguf.quants.dequantize` and llama.cpp read. Codes are the stored
unsigned integers (Q4_0: 0..15 for d · (q - 8); Q6_K: 0..63 for d · sc · (q - 32)).
"""

from __future__ import annotations

import numpy as np

QK_K = 256


def _fp16_bytes(x: np.ndarray) -> np.ndarray:
    """[nb] float values already representable in fp16 -> [nb, 2] little-endian bytes."""
    return np.ascontiguousarray(x.astype(np.float16)).view(np.uint8).reshape(-1, 2)


def _nibbles_split(q: np.ndarray) -> np.ndarray:
    """[nb, 32] codes -> [nb, 16] bytes: element j in the low nibble, element j + 16 in the high one."""
    return (q[:, :16] & 15) | ((q[:, 16:] & 15) << 4)


def _blocks(codes: np.ndarray, block: int) -> np.ndarray:
    n, k = codes.shape
    if k % block:
        raise ValueError(f"rows of {k} columns do not split into blocks of {block}")
    return codes.reshape(n * (k // block), block).astype(np.uint8)


def _rows(blocks: np.ndarray, n: int) -> np.ndarray:
    return np.ascontiguousarray(blocks).reshape(n, -1)


def encode_q8_0(codes: np.ndarray, d: np.ndarray) -> np.ndarray:
    """codes int8 values [N, K]; d [N, K/32]."""
    q = codes.astype(np.int8).reshape(-1, 32).view(np.uint8)
    return _rows(np.concatenate([_fp16_bytes(d.reshape(-1)), q], 1), codes.shape[0])


def encode_q4_0(codes: np.ndarray, d: np.ndarray) -> np.ndarray:
    q = _blocks(codes, 32)
    return _rows(np.concatenate([_fp16_bytes(d.reshape(-1)), _nibbles_split(q)], 1), codes.shape[0])


def encode_q4_1(codes: np.ndarray, d: np.ndarray, m: np.ndarray) -> np.ndarray:
    q = _blocks(codes, 32)
    parts = [_fp16_bytes(d.reshape(-1)), _fp16_bytes(m.reshape(-1)), _nibbles_split(q)]
    return _rows(np.concatenate(parts, 1), codes.shape[0])


def encode_q5_0(codes: np.ndarray, d: np.ndarray) -> np.ndarray:
    q = _blocks(codes, 32)
    qh = np.packbits((q >> 4) & 1, axis=-1, bitorder="little")  # bit i of the uint32 = element i's 5th bit
    return _rows(np.concatenate([_fp16_bytes(d.reshape(-1)), qh, _nibbles_split(q)], 1), codes.shape[0])


def _pack_k_scales(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """[nb, 8] 6-bit scales and mins -> ggml's 12 bytes (get_scale_min_k4 reads them back)."""
    sc, m = sc.astype(np.uint8), m.astype(np.uint8)
    low_sc = sc[:, :4] | ((sc[:, 4:] >> 4) << 6)
    low_m = m[:, :4] | ((m[:, 4:] >> 4) << 6)
    rest = (sc[:, 4:] & 15) | ((m[:, 4:] & 15) << 4)
    return np.concatenate([low_sc, low_m, rest], 1)


def encode_q4_k(codes: np.ndarray, d: np.ndarray, dmin: np.ndarray, sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """codes 0..15 [N, K]; d, dmin [N, K/256]; sc, m 0..63 [N, K/32]: w = d·sc·q - dmin·m."""
    q = _blocks(codes, QK_K).reshape(-1, 4, 2, 32)  # pairs of 32-element sub-blocks share bytes
    qs = (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(-1, 128)
    parts = [_fp16_bytes(d.reshape(-1)), _fp16_bytes(dmin.reshape(-1)),
             _pack_k_scales(sc.reshape(-1, 8), m.reshape(-1, 8)), qs]
    return _rows(np.concatenate(parts, 1), codes.shape[0])


def encode_q6_k(codes: np.ndarray, d: np.ndarray, sc: np.ndarray) -> np.ndarray:
    """codes 0..63 [N, K]; d [N, K/256]; sc int8 [N, K/16]: w = d·sc·(q - 32)."""
    q = _blocks(codes, QK_K).reshape(-1, 2, 128)  # two halves of 128 elements
    low, high = q & 15, q >> 4
    ql = (low[:, :, :64] | (low[:, :, 64:] << 4)).reshape(-1, 128)
    h = high.reshape(-1, 2, 4, 32)
    qh = (h[:, :, 0] | (h[:, :, 1] << 2) | (h[:, :, 2] << 4) | (h[:, :, 3] << 6)).reshape(-1, 64)
    scales = sc.reshape(-1, 16).astype(np.int8).view(np.uint8)
    return _rows(np.concatenate([ql, qh, scales, _fp16_bytes(d.reshape(-1))], 1), codes.shape[0])
