/* pocketlm's batch-1 CPU matmuls (y = x W^T for a few rows of x), AVX-512.
 *
 * Built at first use by pocketlm/model/cpu_gemv.py with the system C compiler (no torch headers):
 *   cc -O3 -march=native -fopenmp -shared -fPIC cpu_gemv.c
 * Every kernel reads each weight once per call and splits output rows over OpenMP threads (torch's
 * own libgomp when torch is loaded: one thread pool). Shapes: x [M, K], W [N, K], y [M, N], any K, N.
 *
 * f32   W fp32 [N, K] as stored (no copy);          x fp32;  FMA, lanes along K.
 * bf16  W bf16 [N, K] as stored;                    x bf16;  _mm512_dpbf16_ps, fp32 sums, y rounded
 *                                                            to bf16 (nearest even).
 * i8v   W int8 [N, K] per output channel scale s_n; x quantized per block of 32 to int8 (one scale
 *       per block, as llama.cpp's Q8_0 activations); VNNI dpbusd on |xq| and W with xq's sign.
 * i8f   the same weights; x kept in fp32, W widened to fp32 and FMA'd (no activation rounding).
 * i4    codes q in [0, 15], w = (q - 8) s + z per group of `gs` inputs (gs a multiple of 32), repacked:
 *       16 output rows interleaved, so one vector lane is one row and a group's scale is one vector.
 *       Block b of 16 rows, chunk c of 8 inputs: 64 bytes, byte 4r+j = q[16b+r, 8c+j] (low nibble)
 *       | q[16b+r, 8c+4+j] << 4; s and z bf16 [N/16, G, 16]. x quantized per block of 32 (VNNI);
 *       the zero-point term uses the exact fp32 sum of x over each group.
 * x_bf16 = 1: x (and y) are bf16, else fp32. bias may be NULL (same dtype as y for f32/bf16, fp32 for
 * the integer kernels). Returns 0, or -1 where a scratch allocation failed.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pl_bf16.h"

#define QBLOCK 32


static inline void store_y(void *y, int y_bf16, int64_t i, float v) {
    if (y_bf16) ((uint16_t *)y)[i] = f32_to_bf16(v);
    else ((float *)y)[i] = v;
}

static inline float bias_at(const void *bias, int bias_bf16, int64_t n) {
    if (!bias) return 0.0f;
    return bias_bf16 ? bf16_to_f32(((const uint16_t *)bias)[n]) : ((const float *)bias)[n];
}

/* x [M, K] (fp32 or bf16) -> fp32, zero-padded to Kp columns */
static float *x_to_f32(const void *x, int x_bf16, int64_t M, int64_t K, int64_t Kp) {
    float *xf = (float *)aligned_alloc(64, (size_t)(M * Kp * 4 + 64) & ~(size_t)63);
    if (!xf) return NULL;
    for (int64_t m = 0; m < M; m++) {
        float *row = xf + m * Kp;
        for (int64_t k = 0; k < K; k++)
            row[k] = x_bf16 ? bf16_to_f32(((const uint16_t *)x)[m * K + k]) : ((const float *)x)[m * K + k];
        for (int64_t k = K; k < Kp; k++) row[k] = 0.0f;
    }
    return xf;
}

static inline __mmask16 tail16(int64_t left) { return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1); }
static inline __mmask32 tail32(int64_t left) { return left >= 32 ? (__mmask32)0xffffffffu : (__mmask32)((1u << left) - 1); }
static inline __mmask64 tail64(int64_t left) { return left >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << left) - 1); }

/* ---------------------------------------------------------------------------------------------- */
/* fp32                                                                                           */
/* ---------------------------------------------------------------------------------------------- */

#define ROWS 4
#define PREFETCH_ROWS 8 /* plain layouts: fetch the rows two blocks ahead (4 short streams defeat the prefetcher) */
#define INLINE static inline __attribute__((always_inline))

/* the sums of R (<= 4) accumulators, four at once by transposing 128-bit blocks */
INLINE void reduce_rows(const int R, const __m512 *acc, float *out) {
    if (R < 4) {
        for (int r = 0; r < R; r++) out[r] = _mm512_reduce_add_ps(acc[r]);
        return;
    }
    __m512 ab = _mm512_add_ps(_mm512_shuffle_f32x4(acc[0], acc[1], 0x44), _mm512_shuffle_f32x4(acc[0], acc[1], 0xEE));
    __m512 cd = _mm512_add_ps(_mm512_shuffle_f32x4(acc[2], acc[3], 0x44), _mm512_shuffle_f32x4(acc[2], acc[3], 0xEE));
    __m512 t = _mm512_add_ps(_mm512_shuffle_f32x4(ab, cd, 0x88), _mm512_shuffle_f32x4(ab, cd, 0xDD));
    t = _mm512_add_ps(t, _mm512_permute_ps(t, 0x4E));
    t = _mm512_add_ps(t, _mm512_permute_ps(t, 0xB1));
    float lanes[16];
    _mm512_storeu_ps(lanes, t);
    for (int r = 0; r < 4; r++) out[r] = lanes[4 * r];
}

/* Each kernel's row block is written for a constant count R of rows (1..ROWS), so the compiler keeps
 * the R accumulators in registers; DISPATCH_ROWS calls it with the block's count. */
/* for each block of ROWS output rows (blocks split over the nt threads) and each row m of x: n0, rows, m */
#define FOR_ROW_BLOCKS(N, M, ...)                                                     \
    _Pragma("omp parallel for num_threads(nt) schedule(static) if (nt > 1)")          \
    for (int64_t b_ = 0; b_ < ((N) + ROWS - 1) / ROWS; b_++) {                       \
        int64_t n0 = b_ * ROWS;                                                       \
        int rows = (N) - n0 < ROWS ? (int)((N) - n0) : ROWS;                          \
        for (int64_t m = 0; m < (M); m++) { __VA_ARGS__ }                              \
    }

#define DISPATCH_ROWS(fn, rows, ...) \
    switch (rows) { case 4: fn(4, __VA_ARGS__); break; case 3: fn(3, __VA_ARGS__); break; \
                    case 2: fn(2, __VA_ARGS__); break; default: fn(1, __VA_ARGS__); }

INLINE void f32_rows(const int R, const float *xm, const float *w, int64_t K, float *acc_out) {
    __m512 acc[ROWS];
    for (int r = 0; r < R; r++) acc[r] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
        __m512 xv = _mm512_loadu_ps(xm + k);
        for (int r = 0; r < R; r++) {
            _mm_prefetch((const char *)(w + (r + PREFETCH_ROWS) * K + k), _MM_HINT_T0);
            acc[r] = _mm512_fmadd_ps(_mm512_loadu_ps(w + r * K + k), xv, acc[r]);
        }
    }
    if (k < K) {
        __mmask16 t = tail16(K - k);
        __m512 xv = _mm512_maskz_loadu_ps(t, xm + k);
        for (int r = 0; r < R; r++) acc[r] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(t, w + r * K + k), xv, acc[r]);
    }
    reduce_rows(R, acc, acc_out);
}

int pl_gemv_f32(const float *x, const float *w, const float *bias, float *y, int64_t M, int64_t K, int64_t N,
                int nt) {
    FOR_ROW_BLOCKS(N, M,
        float sums[ROWS];
        DISPATCH_ROWS(f32_rows, rows, x + m * K, w + n0 * K, K, sums);
        for (int r = 0; r < rows; r++) y[m * N + n0 + r] = sums[r] + (bias ? bias[n0 + r] : 0.0f);
    )
    return 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* bf16                                                                                           */
/* ---------------------------------------------------------------------------------------------- */

int pl_has_bf16(void) {
#ifdef __AVX512BF16__
    return 1;
#else
    return 0;
#endif
}

#ifdef __AVX512BF16__
INLINE void bf16_rows(const int R, const uint16_t *xm, const uint16_t *w, int64_t K, float *acc_out) {
    __m512 acc[ROWS];
    for (int r = 0; r < R; r++) acc[r] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
        __m512bh xv = (__m512bh)_mm512_loadu_si512(xm + k);
        for (int r = 0; r < R; r++) {
            _mm_prefetch((const char *)(w + (r + PREFETCH_ROWS) * K + k), _MM_HINT_T0);
            acc[r] = _mm512_dpbf16_ps(acc[r], (__m512bh)_mm512_loadu_si512(w + r * K + k), xv);
        }
    }
    if (k < K) {
        __mmask32 t = tail32(K - k);
        __m512bh xv = (__m512bh)_mm512_maskz_loadu_epi16(t, xm + k);
        for (int r = 0; r < R; r++)
            acc[r] = _mm512_dpbf16_ps(acc[r], (__m512bh)_mm512_maskz_loadu_epi16(t, w + r * K + k), xv);
    }
    reduce_rows(R, acc, acc_out);
}
#endif

int pl_gemv_bf16(const uint16_t *x, const uint16_t *w, const uint16_t *bias, uint16_t *y, int64_t M, int64_t K,
                 int64_t N, int nt) {
#ifdef __AVX512BF16__
    FOR_ROW_BLOCKS(N, M,
        float sums[ROWS];
        DISPATCH_ROWS(bf16_rows, rows, x + m * K, w + n0 * K, K, sums);
        for (int r = 0; r < rows; r++) y[m * N + n0 + r] = f32_to_bf16(sums[r] + bias_at(bias, 1, n0 + r));
    )
    return 0;
#else
    (void)x; (void)w; (void)bias; (void)y; (void)M; (void)K; (void)N; (void)nt;
    return -2;
#endif
}

/* ---------------------------------------------------------------------------------------------- */
/* activations quantized per block of 32 (Q8_0's rule: d = max|x| / 127, q = round(x / d))           */
/* ---------------------------------------------------------------------------------------------- */

/* xq [Kp] int8 (zero past K), d [Kp / 32]; Kp a multiple of 64 */
static void quantize_row(const float *xf, int64_t Kp, int8_t *xq, float *d) {
    for (int64_t b = 0; b < Kp / QBLOCK; b++) {
        const float *src = xf + b * QBLOCK;
        __m512 v0 = _mm512_loadu_ps(src), v1 = _mm512_loadu_ps(src + 16);
        float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
        float db = amax / 127.0f, id = amax > 0.0f ? 127.0f / amax : 0.0f;
        d[b] = db;
        __m512 s = _mm512_set1_ps(id);
        __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, s)), q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, s));
        _mm_storeu_si128((__m128i *)(xq + b * QBLOCK), _mm512_cvtsepi32_epi8(q0));
        _mm_storeu_si128((__m128i *)(xq + b * QBLOCK + 16), _mm512_cvtsepi32_epi8(q1));
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* int8 per output channel                                                                        */
/* ---------------------------------------------------------------------------------------------- */

/* one row block of i8v: |xq| chunks xa, their sign masks, per-lane block scales dv; nc chunks of 64 */
INLINE void i8v_rows(const int R, const uint8_t *xa, const __mmask64 *neg, const __m512 *dv, const int8_t *w,
                     int64_t K, int64_t nc, float *acc_out) {
    __m512 acc[ROWS];
    for (int r = 0; r < R; r++) acc[r] = _mm512_setzero_ps();
    const __m512i zero = _mm512_setzero_si512();
    for (int64_t c = 0; c < nc; c++) {
        __mmask64 t = tail64(K - c * 64);
        __m512i xav = _mm512_load_si512(xa + c * 64);
        for (int r = 0; r < R; r++) {
            __m512i wv = _mm512_maskz_loadu_epi8(t, w + r * K + c * 64);
            wv = _mm512_mask_sub_epi8(wv, neg[c], zero, wv);  /* w * sign(x): |x| stays unsigned */
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, xav, wv)), dv[c], acc[r]);
        }
    }
    reduce_rows(R, acc, acc_out);
}

int pl_gemv_i8v(const void *x, int x_bf16, const int8_t *w, const float *scales, const float *bias, void *y,
                int64_t M, int64_t K, int64_t N, int nt) {
    int64_t Kp = (K + 63) / 64 * 64, nc = Kp / 64;
    float *xf = x_to_f32(x, x_bf16, M, K, Kp);
    uint8_t *xa = (uint8_t *)aligned_alloc(64, (size_t)(M * Kp));
    __mmask64 *neg = (__mmask64 *)malloc((size_t)(M * nc) * sizeof(__mmask64));
    __m512 *dv = (__m512 *)aligned_alloc(64, (size_t)(M * nc) * sizeof(__m512));
    float *d = (float *)malloc((size_t)(M * Kp / QBLOCK) * sizeof(float));
    if (!xf || !xa || !neg || !dv || !d) {
        free(xf); free(xa); free(neg); free(dv); free(d);
        return -1;
    }
    for (int64_t m = 0; m < M; m++) {  /* |xq| as u8, its signs as a mask, block scales per lane */
        int8_t *xq = (int8_t *)(xa + m * Kp);
        quantize_row(xf + m * Kp, Kp, xq, d + m * Kp / QBLOCK);
        for (int64_t c = 0; c < nc; c++) {
            __m512i v = _mm512_loadu_si512(xq + c * 64);
            neg[m * nc + c] = _mm512_movepi8_mask(v);
            _mm512_storeu_si512(xa + m * Kp + c * 64, _mm512_abs_epi8(v));
            const float *db = d + m * Kp / QBLOCK + 2 * c;
            dv[m * nc + c] = _mm512_mask_blend_ps((__mmask16)0xff00, _mm512_set1_ps(db[0]), _mm512_set1_ps(db[1]));
        }
    }
    FOR_ROW_BLOCKS(N, M,
        float sums[ROWS];
        DISPATCH_ROWS(i8v_rows, rows, xa + m * Kp, neg + m * nc, dv + m * nc, w + n0 * K, K, nc, sums);
        for (int r = 0; r < rows; r++)
            store_y(y, x_bf16, m * N + n0 + r, sums[r] * scales[n0 + r] + (bias ? bias[n0 + r] : 0.0f));
    )
    free(xf); free(xa); free(neg); free(dv); free(d);
    return 0;
}

INLINE void i8f_rows(const int R, const float *xm, const int8_t *w, int64_t K, float *acc_out) {
    __m512 acc[ROWS];
    for (int r = 0; r < R; r++) acc[r] = _mm512_setzero_ps();
    for (int64_t k = 0; k < K; k += 16) {
        __mmask16 t = tail16(K - k);
        __m512 xv = _mm512_load_ps(xm + k);
        for (int r = 0; r < R; r++) {
            __m128i wb = _mm_maskz_loadu_epi8(t, w + r * K + k);
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(wb)), xv, acc[r]);
        }
    }
    reduce_rows(R, acc, acc_out);
}

int pl_gemv_i8f(const void *x, int x_bf16, const int8_t *w, const float *scales, const float *bias, void *y,
                int64_t M, int64_t K, int64_t N, int nt) {
    int64_t Kp = (K + 15) / 16 * 16;
    float *xf = x_to_f32(x, x_bf16, M, K, Kp);
    if (!xf) return -1;
    FOR_ROW_BLOCKS(N, M,
        float sums[ROWS];
        DISPATCH_ROWS(i8f_rows, rows, xf + m * Kp, w + n0 * K, K, sums);
        for (int r = 0; r < rows; r++)
            store_y(y, x_bf16, m * N + n0 + r, sums[r] * scales[n0 + r] + (bias ? bias[n0 + r] : 0.0f));
    )
    free(xf);
    return 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* int4 grouped, 16 rows interleaved                                                              */
/* ---------------------------------------------------------------------------------------------- */

static inline __m512 bf16x16_to_f32(const uint16_t *p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}

int pl_gemv_i4(const void *x, int x_bf16, const uint8_t *packed, const uint16_t *s, const uint16_t *z,
               const float *bias, void *y, int64_t M, int64_t K, int64_t N, int64_t gs, int nt) {
    if (K % QBLOCK || gs % QBLOCK || K % gs) return -3;
    int64_t G = K / gs, nqb = K / QBLOCK, bpg = gs / QBLOCK;
    float *xf = x_to_f32(x, x_bf16, M, K, K);
    int8_t *xq = (int8_t *)aligned_alloc(64, (size_t)(M * K + 64) & ~(size_t)63);
    float *d = (float *)malloc((size_t)(M * nqb) * sizeof(float));
    float *xsum = (float *)malloc((size_t)(M * G) * sizeof(float));
    if (!xf || !xq || !d || !xsum) {
        free(xf); free(xq); free(d); free(xsum);
        return -1;
    }
    for (int64_t m = 0; m < M; m++) {
        quantize_row(xf + m * K, K, xq + m * K, d + m * nqb);
        for (int64_t g = 0; g < G; g++) {
            __m512 acc = _mm512_setzero_ps();
            for (int64_t k = g * gs; k < (g + 1) * gs; k += 16) acc = _mm512_add_ps(acc, _mm512_loadu_ps(xf + m * K + k));
            xsum[m * G + g] = _mm512_reduce_add_ps(acc);
        }
    }
    int64_t nb = (N + 15) / 16;
    const __m512i low = _mm512_set1_epi8(0x0f);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *wb = packed + b * (K / 8) * 64;
        for (int64_t m = 0; m < M; m++) {
            const int32_t *xq4 = (const int32_t *)(xq + m * K);  /* 4 codes at a time, broadcast to all rows */
            const float *dm = d + m * nqb;
            __m512 acc = _mm512_setzero_ps();
            for (int64_t g = 0; g < G; g++) {
                __m512 sg = bf16x16_to_f32(s + (b * G + g) * 16);
                __m512 zg = bf16x16_to_f32(z + (b * G + g) * 16);
                for (int64_t qb = g * bpg; qb < (g + 1) * bpg; qb++) {
                    __m512i iacc = _mm512_setzero_si512();
                    for (int64_t c = qb * 4; c < qb * 4 + 4; c++) {  /* 4 chunks of 8 inputs */
                        __m512i v = _mm512_loadu_si512(wb + c * 64);
                        __m512i lo = _mm512_and_si512(v, low);
                        __m512i hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
                        iacc = _mm512_dpbusd_epi32(iacc, lo, _mm512_set1_epi32(xq4[2 * c]));
                        iacc = _mm512_dpbusd_epi32(iacc, hi, _mm512_set1_epi32(xq4[2 * c + 1]));
                    }
                    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(iacc), _mm512_mul_ps(sg, _mm512_set1_ps(dm[qb])), acc);
                }
                /* sum_k ((q - 8) s + z) x = s sum q x + (z - 8 s) sum x */
                __m512 offset = _mm512_fnmadd_ps(_mm512_set1_ps(8.0f), sg, zg);
                acc = _mm512_fmadd_ps(offset, _mm512_set1_ps(xsum[m * G + g]), acc);
            }
            float out[16];
            _mm512_storeu_ps(out, acc);
            int64_t rows = N - b * 16 < 16 ? N - b * 16 : 16;
            for (int64_t r = 0; r < rows; r++)
                store_y(y, x_bf16, m * N + b * 16 + r, out[r] + (bias ? bias[b * 16 + r] : 0.0f));
        }
    }
    free(xf); free(xq); free(d); free(xsum);
    return 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* tiled layouts: 16 output rows interleaved, one vector lane per row, one weight stream per block   */
/* (64 bytes per step: f32 16 rows x 1 input, bf16 16 x 2, int8 16 x 4; rows padded to 16)          */
/* ---------------------------------------------------------------------------------------------- */

static inline void store_rows(void *y, int y_bf16, int64_t at, int64_t rows, __m512 v, const float *bias,
                              const uint16_t *bias16, int64_t n0) {
    float out[16];
    _mm512_storeu_ps(out, v);
    for (int64_t r = 0; r < rows; r++) {
        float b = bias ? bias[n0 + r] : (bias16 ? bf16_to_f32(bias16[n0 + r]) : 0.0f);
        store_y(y, y_bf16, at + r, out[r] + b);
    }
}

int pl_gemv_f32t(const float *x, const float *w, const float *bias, float *y, int64_t M, int64_t K, int64_t N,
                 int nt) {
    int64_t nb = (N + 15) / 16;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int64_t b = 0; b < nb; b++) {
        const float *wb = w + b * K * 16;
        for (int64_t m = 0; m < M; m++) {
            const float *xm = x + m * K;
            __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
            int64_t k = 0;
            for (; k + 4 <= K; k += 4) {
                a0 = _mm512_fmadd_ps(_mm512_loadu_ps(wb + (k + 0) * 16), _mm512_set1_ps(xm[k + 0]), a0);
                a1 = _mm512_fmadd_ps(_mm512_loadu_ps(wb + (k + 1) * 16), _mm512_set1_ps(xm[k + 1]), a1);
                a2 = _mm512_fmadd_ps(_mm512_loadu_ps(wb + (k + 2) * 16), _mm512_set1_ps(xm[k + 2]), a2);
                a3 = _mm512_fmadd_ps(_mm512_loadu_ps(wb + (k + 3) * 16), _mm512_set1_ps(xm[k + 3]), a3);
            }
            for (; k < K; k++) a0 = _mm512_fmadd_ps(_mm512_loadu_ps(wb + k * 16), _mm512_set1_ps(xm[k]), a0);
            __m512 acc = _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3));
            store_rows(y, 0, m * N + b * 16, N - b * 16 < 16 ? N - b * 16 : 16, acc, bias, NULL, b * 16);
        }
    }
    return 0;
}

/* w: [N/16, K2, 16, 2] bf16 with K2 = ceil(K / 2) (an odd K padded with a zero input) */
int pl_gemv_bf16t(const uint16_t *x, const uint16_t *w, const uint16_t *bias, uint16_t *y, int64_t M, int64_t K,
                  int64_t N, int nt) {
#ifdef __AVX512BF16__
    int64_t K2 = (K + 1) / 2, nb = (N + 15) / 16;
    uint16_t *xp = (uint16_t *)malloc((size_t)(M * K2 * 2) * sizeof(uint16_t));
    if (!xp) return -1;
    for (int64_t m = 0; m < M; m++) {
        memcpy(xp + m * K2 * 2, x + m * K, (size_t)K * sizeof(uint16_t));
        if (K % 2) xp[m * K2 * 2 + K] = 0;
    }
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int64_t b = 0; b < nb; b++) {
        const uint16_t *wb = w + b * K2 * 32;
        for (int64_t m = 0; m < M; m++) {
            const int32_t *x2 = (const int32_t *)(xp + m * K2 * 2);
            __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
            int64_t j = 0;
#define BF16_STEP(acc, jj) acc = _mm512_dpbf16_ps(acc, (__m512bh)_mm512_loadu_si512(wb + (jj) * 32), \
                                                  (__m512bh)_mm512_set1_epi32(x2[jj]))
            for (; j + 4 <= K2; j += 4) {
                BF16_STEP(a0, j); BF16_STEP(a1, j + 1); BF16_STEP(a2, j + 2); BF16_STEP(a3, j + 3);
            }
            for (; j < K2; j++) BF16_STEP(a0, j);
#undef BF16_STEP
            __m512 acc = _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3));
            store_rows(y, 1, m * N + b * 16, N - b * 16 < 16 ? N - b * 16 : 16, acc, NULL, bias, b * 16);
        }
    }
    free(xp);
    return 0;
#else
    (void)x; (void)w; (void)bias; (void)y; (void)M; (void)K; (void)N; (void)nt;
    return -2;
#endif
}

/* w: [N/16, Kp/4, 16, 4] int8 with Kp = K rounded up to 32 (zero inputs); x quantized per block of 32 */
int pl_gemv_i8t(const void *x, int x_bf16, const int8_t *w, const float *scales, const float *bias, void *y,
                int64_t M, int64_t K, int64_t N, int nt) {
    int64_t Kp = (K + 63) / 64 * 64, Kq = (K + QBLOCK - 1) / QBLOCK * QBLOCK, nb = (N + 15) / 16;
    float *xf = x_to_f32(x, x_bf16, M, K, Kp);
    int8_t *xq = (int8_t *)aligned_alloc(64, (size_t)(M * Kp));
    float *d = (float *)malloc((size_t)(M * Kp / QBLOCK) * sizeof(float));
    __mmask64 *neg = (__mmask64 *)malloc((size_t)(M * Kp / 4) * sizeof(__mmask64));
    if (!xf || !xq || !d || !neg) {
        free(xf); free(xq); free(d); free(neg);
        return -1;
    }
    for (int64_t m = 0; m < M; m++) {  /* |xq| and, per 4 inputs, their signs repeated for the 16 rows */
        int8_t *q = xq + m * Kp;
        quantize_row(xf + m * Kp, Kp, q, d + m * Kp / QBLOCK);
        for (int64_t c = 0; c < Kp / 4; c++) {
            uint64_t bits = 0;
            for (int j = 0; j < 4; j++) {
                bits |= (uint64_t)(q[4 * c + j] < 0) << j;
                q[4 * c + j] = (int8_t)(q[4 * c + j] < 0 ? -q[4 * c + j] : q[4 * c + j]);
            }
            neg[m * Kp / 4 + c] = (__mmask64)(bits * 0x1111111111111111ull);
        }
    }
    const __m512i zero = _mm512_setzero_si512();
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int64_t b = 0; b < nb; b++) {
        const int8_t *wb = w + b * Kq * 16;
        for (int64_t m = 0; m < M; m++) {
            const int32_t *xa4 = (const int32_t *)(xq + m * Kp);
            const __mmask64 *ng = neg + m * Kp / 4;
            const float *dm = d + m * Kp / QBLOCK;
            __m512 acc = _mm512_setzero_ps();
            for (int64_t qb = 0; qb < Kq / QBLOCK; qb++) {
                __m512i i0 = zero, i1 = zero;
                for (int64_t c = qb * 8; c < qb * 8 + 8; c += 2) {
                    __m512i w0 = _mm512_loadu_si512(wb + c * 64), w1 = _mm512_loadu_si512(wb + (c + 1) * 64);
                    w0 = _mm512_mask_sub_epi8(w0, ng[c], zero, w0);
                    w1 = _mm512_mask_sub_epi8(w1, ng[c + 1], zero, w1);
                    i0 = _mm512_dpbusd_epi32(i0, _mm512_set1_epi32(xa4[c]), w0);
                    i1 = _mm512_dpbusd_epi32(i1, _mm512_set1_epi32(xa4[c + 1]), w1);
                }
                acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(i0, i1)), _mm512_set1_ps(dm[qb]), acc);
            }
            int64_t rows = N - b * 16 < 16 ? N - b * 16 : 16;
            acc = _mm512_mul_ps(acc, _mm512_maskz_loadu_ps(tail16(rows), scales + b * 16));
            store_rows(y, x_bf16, m * N + b * 16, rows, acc, bias, NULL, b * 16);
        }
    }
    free(xf); free(xq); free(d); free(neg);
    return 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* one entry point: a[] = kernel, x, x_bf16, w, s, z, bias, y, M, K, N, gs, threads                */
/* (one ctypes argument instead of thirteen: the call costs about a microsecond less)              */
/* ---------------------------------------------------------------------------------------------- */

enum { K_F32 = 0, K_BF16 = 1, K_I8V = 2, K_I8F = 3, K_I4 = 4, K_F32T = 5, K_BF16T = 6, K_I8T = 7 };

int pl_gemv(const int64_t *a) {
    const void *x = (const void *)a[1], *w = (const void *)a[3], *s = (const void *)a[4], *z = (const void *)a[5];
    const void *bias = (const void *)a[6];
    void *y = (void *)a[7];
    int xb = (int)a[2], nt = (int)a[12];
    switch (a[0]) {
    case K_F32: return pl_gemv_f32(x, w, bias, y, a[8], a[9], a[10], nt);
    case K_BF16: return pl_gemv_bf16(x, w, bias, y, a[8], a[9], a[10], nt);
    case K_I8V: return pl_gemv_i8v(x, xb, w, s, bias, y, a[8], a[9], a[10], nt);
    case K_I8F: return pl_gemv_i8f(x, xb, w, s, bias, y, a[8], a[9], a[10], nt);
    case K_I4: return pl_gemv_i4(x, xb, w, s, z, bias, y, a[8], a[9], a[10], a[11], nt);
    case K_F32T: return pl_gemv_f32t(x, w, bias, y, a[8], a[9], a[10], nt);
    case K_BF16T: return pl_gemv_bf16t(x, w, bias, y, a[8], a[9], a[10], nt);
    case K_I8T: return pl_gemv_i8t(x, xb, w, s, bias, y, a[8], a[9], a[10], nt);
    default: return -4;
    }
}
