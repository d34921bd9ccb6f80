/* comm_inputs.h — the inputs the collective checks (comm_mpi_check,
 * comm_nccl_check) sum, where a sum in any other order than rank order gives
 * other bits. Header-only, shared by the two check programs. */
#ifndef TD_COMM_INPUTS_H
#define TD_COMM_INPUTS_H

#include <stdint.h>

static inline uint32_t comm_inputs_mix(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7feb352dU;
    x ^= x >> 15;
    x *= 0x846ca68bU;
    x ^= x >> 16;
    return x;
}

/* Rank (or part) r's input at index i. Every fourth index carries 1e8, 1,
 * -1e8 on ranks 0, 1, 2 (then 3, 4, ...): (1e8 + 1) + -1e8 is 0 in f32 but
 * (1e8 + -1e8) + 1 is 1. The rest are values of mixed sign and magnitude,
 * where rounding differs by order. */
static inline float comm_input(int r, int64_t i) {
    if (i % 4 == 0) {
        static const float tricky[3] = {1e8f, 1.0f, -1e8f};
        return r < 3 ? tricky[r] : (float)r;
    }
    uint32_t h = comm_inputs_mix((uint32_t)i * 2654435761U + (uint32_t)r * 40503U + 1U);
    float m = (float)((int32_t)(h & 0xffffff) - 0x800000) / (float)0x800000;
    int e = (int)((h >> 24) % 24) - 12;
    float s = 1.0f;
    for (int k = 0; k < (e < 0 ? -e : e); k++) s *= 2.0f;
    return e < 0 ? m / s : m * s;
}

#endif
