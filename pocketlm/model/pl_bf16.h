/* bf16 <-> fp32 for pocketlm's C sources (cpu_gemv.c, native_decode.c): bf16 is the upper half of an
 * fp32; rounding to bf16 is to nearest even, NaN stays NaN. */
#ifndef POCKETLM_BF16_H
#define POCKETLM_BF16_H
#include <stdint.h>
#include <string.h>

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* NaN stays NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
#endif
