/* pocketlm's native decode step: one C call per token for a batch-1 pre-norm decoder.
 *
 * Built with cpu_gemv.c into one library (pocketlm/model/cpu_gemv.py builds and caches it; no torch
 * headers). native_decode.py gathers every pointer once per model into the pl_model / pl_layer /
 * pl_linear structs below: the model's own weights (each linear on a cpu_gemv kernel), its RoPE
 * tables (built by the model, so every rope-scaling variant is exact), its preallocated KV cache
 * (written in place) and a preallocated logits tensor. A step is then
 *
 *   x = embed[token]
 *   per layer: h = norm(x); qkv = h Wqkv^T; rotate q, k at `pos`; k, v -> cache[pos];
 *              a = softmax(q K^T * scale over slots 0..pos) V  (fp32 scores); x += a Wo^T
 *              h = norm(x); x += act(h Wg^T) * (h Wu^T) Wd^T   (or act(h Wu^T) Wd^T)
 *   logits = norm(x) Whead^T
 *
 * computed op for op as Transformer.forward computes it: activations live in the model's dtype
 * (fp32 or bf16; bf16 values are rounded wherever the eager model rounds them), RMSNorm and
 * attention scores in fp32. Matmuls split output rows over OpenMP threads (cpu_gemv), attention
 * splits heads. Returns 0, a cpu_gemv error code, or -1 where scratch memory could not be allocated.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pl_bf16.h"

int pl_gemv(const int64_t *a); /* cpu_gemv.c */

typedef struct {
    int64_t kernel, w, s, z, bias, n, k, group; /* a cpu_gemv kernel id and its tensors' addresses */
} pl_linear;

typedef struct {
    int64_t attn_norm, mlp_norm;   /* norm weights (0: no affine gain) */
    int64_t n_qkv, n_up;           /* 1 fused layer or 3 (q, k, v); 1 (fused gate/up, or up) or 2 */
    pl_linear qkv[3], o, up[2], down;
    int64_t k_cache, v_cache;      /* [n_kv, cache_len, dim_head], the model's own cache tensors */
    int64_t n_head, n_kv;
} pl_layer;

typedef struct {
    int64_t n_layers, dim, dim_head, rotary_dim, ffn, cache_len; /* ffn: the widest FFN */
    int64_t bf16, rope, interleaved, unit_offset, gated, activation; /* activation: 0 silu 1 gelu 2 gelu_tanh 3 relu */
    double eps, scale, residual_scale;
    int64_t embed, final_norm, cos, sin, logits; /* cos / sin: [cache_len, rotary_dim]; final_norm 0: none */
    pl_linear head;
    int64_t layers; /* pl_layer[n_layers] */
    int64_t has_final_norm;
    int64_t embed_rs, embed_cs; /* the embedding's strides in elements (a tied transposed head makes it a view) */
} pl_model;

/* ---- activations in the model's dtype ---------------------------------------------------------- */

#define bf bf16_to_f32
#define to_bf f32_to_bf16

/* the value the model's dtype holds for v (bf16: rounded to nearest even) */
static inline float rnd(int b16, float v) { return b16 ? bf(to_bf(v)) : v; }
static inline float ld(int b16, const void *p, int64_t i) { return b16 ? bf(((const uint16_t *)p)[i]) : ((const float *)p)[i]; }
static inline void st(int b16, void *p, int64_t i, float v) {
    if (b16) ((uint16_t *)p)[i] = to_bf(v);
    else ((float *)p)[i] = v;
}

/* y = x Wt (+ bias) with Wt [K, N] held transposed (TransposedLinear), weights and x in the model's dtype:
 * column blocks split over threads, each block's sums in registers while every row's slice streams by */
#define TCOLS 256
static int gemv_transposed(const pl_linear *l, int b16, const void *x, void *y, int nt) {
    int64_t K = l->k, N = l->n, blocks = (N + TCOLS - 1) / TCOLS;
    const char *w = (const char *)l->w;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int64_t c = 0; c < blocks; c++) {
        int64_t n0 = c * TCOLS, cols = N - n0 < TCOLS ? N - n0 : TCOLS;
        float acc[TCOLS];
        for (int64_t j = 0; j < TCOLS; j++) acc[j] = 0.0f;
        for (int64_t k = 0; k < K; k++) {
            float xv = ld(b16, x, k);
            if (b16) {
                const uint16_t *row = (const uint16_t *)w + k * N + n0;
                for (int64_t j = 0; j < cols; j++) acc[j] += xv * bf(row[j]);
            } else {
                const float *row = (const float *)w + k * N + n0;
                for (int64_t j = 0; j < cols; j++) acc[j] += xv * row[j];
            }
        }
        for (int64_t j = 0; j < cols; j++) {
            float v = b16 ? rnd(1, acc[j]) : acc[j];
            st(b16, y, n0 + j, l->bias ? v + ld(b16, (const void *)l->bias, n0 + j) : v);
        }
    }
    return 0;
}

#define K_TRANSPOSED 100 /* not a cpu_gemv kernel: gemv_transposed above */

static int linear(const pl_linear *l, int b16, const void *x, void *y, int nt) {
    if (l->kernel == K_TRANSPOSED) return gemv_transposed(l, b16, x, y, nt);
    int64_t a[13] = {l->kernel, (int64_t)x, b16, l->w, l->s, l->z, l->bias, (int64_t)y, 1, l->k, l->n, l->group, nt};
    return pl_gemv(a);
}

/* Norm.forward for RMSNorm: fp32 x * rsqrt(mean(x^2) + eps), then the gain as the eager model applies it */
static void rms_norm(const pl_model *m, const void *w, const void *x, void *y) {
    int b16 = (int)m->bf16;
    int64_t n = m->dim;
    float ss = 0.0f;
    for (int64_t i = 0; i < n; i++) {
        float v = ld(b16, x, i);
        ss += v * v;
    }
    float inv = 1.0f / sqrtf(ss / (float)n + (float)m->eps);
    for (int64_t i = 0; i < n; i++) {
        float v = ld(b16, x, i) * inv;
        if (!w) st(b16, y, i, v);
        else if (m->unit_offset) st(b16, y, i, v * (1.0f + ld(b16, w, i)));
        else st(b16, y, i, ld(b16, w, i) * rnd(b16, v)); /* w * y.to(dtype) */
    }
}

/* rotate the first rotary_dim dims of `heads` vectors of dim_head (x * cos + rotate(x) * sin) */
static void rotate(const pl_model *m, void *v, int64_t heads, const void *cos, const void *sin) {
    int b16 = (int)m->bf16;
    int64_t D = m->dim_head, rd = m->rotary_dim, half = rd / 2;
    float r[1024];
    for (int64_t h = 0; h < heads; h++) {
        for (int64_t i = 0; i < rd; i++) r[i] = ld(b16, v, h * D + i);
        for (int64_t i = 0; i < rd; i++) {
            float other;
            if (m->interleaved) other = (i % 2) ? r[i - 1] : -r[i + 1];
            else other = i < half ? -r[i + half] : r[i - half];
            float a = rnd(b16, r[i] * ld(b16, cos, i)), b = rnd(b16, other * ld(b16, sin, i));
            st(b16, v, h * D + i, a + b);
        }
    }
}

static inline float activate(int64_t kind, float x) {
    switch (kind) {
    case 0: return x / (1.0f + expf(-x));
    case 1: return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
    case 2: return 0.5f * x * (1.0f + tanhf(0.79788456080286536f * (x + 0.044715f * x * x * x)));
    default: return x > 0.0f ? x : 0.0f;
    }
}

/* one layer's attention: q [H, D], k, v [K, D] (rotated) -> out [H, D]; writes k, v at slot pos */
static void attend(const pl_model *m, const pl_layer *l, void *qkv, int64_t pos, void *out, float *scores, int nt) {
    int b16 = (int)m->bf16;
    int64_t H = l->n_head, K = l->n_kv, D = m->dim_head, L = m->cache_len, G = H / K, es = b16 ? 2 : 4;
    char *kc = (char *)l->k_cache, *vc = (char *)l->v_cache, *base = (char *)qkv;
    for (int64_t g = 0; g < K; g++) {
        memcpy(kc + ((g * L + pos) * D) * es, base + ((H + g) * D) * es, (size_t)(D * es));
        memcpy(vc + ((g * L + pos) * D) * es, base + ((H + K + g) * D) * es, (size_t)(D * es));
    }
    float scale = (float)m->scale;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int64_t h = 0; h < H; h++) {
        int64_t g = h / G;
        float q[1024], acc[1024];
        float *s = scores + h * L;
        for (int64_t d = 0; d < D; d++) q[d] = ld(b16, base, h * D + d);
        float top = -INFINITY;
        for (int64_t t = 0; t <= pos; t++) {
            const char *kt = kc + ((g * L + t) * D) * es;
            float dot = 0.0f;
            for (int64_t d = 0; d < D; d++) dot += q[d] * ld(b16, kt, d);
            s[t] = dot * scale;
            if (s[t] > top) top = s[t];
        }
        float total = 0.0f;
        for (int64_t t = 0; t <= pos; t++) {
            s[t] = expf(s[t] - top);
            total += s[t];
        }
        for (int64_t d = 0; d < D; d++) acc[d] = 0.0f;
        for (int64_t t = 0; t <= pos; t++) {
            const char *vt = vc + ((g * L + t) * D) * es;
            float p = s[t] / total;
            for (int64_t d = 0; d < D; d++) acc[d] += p * ld(b16, vt, d);
        }
        for (int64_t d = 0; d < D; d++) st(b16, out, h * D + d, acc[d]);
    }
}

/* x += s * branch, rounded as the eager model's x + (s * a) */
static void add_residual(const pl_model *m, void *x, const void *branch) {
    int b16 = (int)m->bf16;
    float s = (float)m->residual_scale;
    for (int64_t i = 0; i < m->dim; i++) {
        float a = ld(b16, branch, i);
        if (s != 1.0f) a = rnd(b16, s * a);
        st(b16, x, i, ld(b16, x, i) + a);
    }
}

static int64_t max_i(int64_t a, int64_t b) { return a > b ? a : b; }

int pl_decode_step(const pl_model *m, int64_t token, int64_t pos, int nt) {
    int b16 = (int)m->bf16;
    int64_t es = b16 ? 2 : 4, C = m->dim, D = m->dim_head;
    const pl_layer *layers = (const pl_layer *)m->layers;
    int64_t qkv_n = 0, heads = 0;
    for (int64_t i = 0; i < m->n_layers; i++) {
        qkv_n = max_i(qkv_n, (layers[i].n_head + 2 * layers[i].n_kv) * D);
        heads = max_i(heads, layers[i].n_head);
    }
    if (D > 1024 || m->rotary_dim > 1024 || pos < 0 || pos >= m->cache_len) return -5;
    char *x = malloc((size_t)(C * es)), *h = malloc((size_t)(C * es)), *o = malloc((size_t)(C * es));
    char *qkv = malloc((size_t)(qkv_n * es)), *att = malloc((size_t)(heads * D * es));
    char *up = malloc((size_t)(2 * m->ffn * es)), *act = malloc((size_t)(m->ffn * es));
    float *scores = malloc((size_t)(heads * m->cache_len) * sizeof(float));
    int rc = -1;
    if (!x || !h || !o || !qkv || !att || !up || !act || !scores) goto done;
    if (m->embed_cs == 1) memcpy(x, (const char *)m->embed + token * m->embed_rs * es, (size_t)(C * es));
    else
        for (int64_t i = 0; i < C; i++) memcpy(x + i * es, (const char *)m->embed + (token * m->embed_rs + i * m->embed_cs) * es, (size_t)es);
    const char *cos = (const char *)m->cos + pos * m->rotary_dim * es, *sin = (const char *)m->sin + pos * m->rotary_dim * es;
    for (int64_t i = 0; i < m->n_layers; i++) {
        const pl_layer *l = layers + i;
        rms_norm(m, (const void *)l->attn_norm, x, h);
        char *y = qkv;
        for (int64_t j = 0; j < l->n_qkv; j++) {
            if ((rc = linear(&l->qkv[j], b16, h, y, nt))) goto done;
            y += l->qkv[j].n * es;
        }
        if (m->rope) rotate(m, qkv, l->n_head + l->n_kv, cos, sin);
        attend(m, l, qkv, pos, att, scores, nt);
        if ((rc = linear(&l->o, b16, att, o, nt))) goto done;
        add_residual(m, x, o);
        rms_norm(m, (const void *)l->mlp_norm, x, h);
        y = up;
        for (int64_t j = 0; j < l->n_up; j++) {
            if ((rc = linear(&l->up[j], b16, h, y, nt))) goto done;
            y += l->up[j].n * es;
        }
        int64_t F = l->down.k;
        for (int64_t f = 0; f < F; f++) {
            float a = rnd(b16, activate(m->activation, ld(b16, up, f)));
            st(b16, act, f, m->gated ? a * ld(b16, up, F + f) : a);
        }
        if ((rc = linear(&l->down, b16, act, o, nt))) goto done;
        add_residual(m, x, o);
    }
    if (m->has_final_norm) rms_norm(m, (const void *)m->final_norm, x, h);
    else memcpy(h, x, (size_t)(C * es));
    rc = linear(&m->head, b16, h, (void *)m->logits, nt);
done:
    free(x); free(h); free(o); free(qkv); free(att); free(up); free(act); free(scores);
    return rc;
}
