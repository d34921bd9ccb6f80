/* cuda_fp16.h (the CPU emulator's) — __half as tandem's CUDA files use it:
 * storage, __half_raw, and the two conversions, each correctly rounded as
 * on a device (float to half: nearest, ties to even; a NaN becomes the
 * canonical 0x7fff, as the device's cvt.rn.f16.f32 gives it).
 */
#ifndef TD_CUEMU_FP16_H
#define TD_CUEMU_FP16_H

#include <math.h>
#include <stdint.h>
#include <string.h>

struct __half_raw {
    unsigned short x;
};

struct __half {
    unsigned short bits;
    __half() = default;
    __half(__half_raw r) : bits(r.x) {}
};

static inline float __half2float(__half h) {
    const uint32_t sign = (uint32_t)(h.bits & 0x8000u) << 16, exp = (h.bits >> 10) & 0x1fu, man = h.bits & 0x3ffu;
    uint32_t u;
    if (exp == 0x1fu) {
        u = sign | 0x7f800000u | (man << 13);
    } else if (exp != 0) {
        u = sign | ((exp + 112u) << 23) | (man << 13);
    } else {
        const float f = (float)man * 0x1p-24f; /* exact: man < 2^10 */
        memcpy(&u, &f, sizeof u);
        u |= sign;
    }
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline __half __float2half_rn(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    const uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    const uint32_t a = u & 0x7fffffffu;
    __half_raw r;
    if (a > 0x7f800000u) {
        r.x = 0x7fffu;
    } else if (a >= 0x38800000u) { /* at least 2^-14: a normal half, or too big */
        const uint32_t rebased = a - (112u << 23);
        const uint32_t rounded = (rebased + 0xfffu + ((rebased >> 13) & 1u)) >> 13;
        r.x = (uint16_t)(sign | (rounded >= 0x7c00u ? 0x7c00u : rounded));
    } else { /* subnormal halves: units of 2^-24, rounded by the FPU (the
              * product is exact; 1024 units encode the smallest normal) */
        float tmp;
        memcpy(&tmp, &a, sizeof tmp);
        r.x = (uint16_t)(sign | (uint16_t)rintf(tmp * 0x1p24f));
    }
    return __half(r);
}

#endif
