/* test_quant.c — the quant module: type table facts, fp16/bf16 conversions,
 * hand-built blocks against formulas written here from the format facts,
 * quantize/dequantize round trips, SIMD kernels against the scalar reference,
 * activation quantizers bit-identical across variants, and td_quant_matmul's
 * batch invariance (bitwise, whatever n_rows or output range).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quant/quant.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>
#define HAVE_X86 1

static bool cpu_f16c(void) {
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
}
#endif

/* ---- helpers ---- */

static uint64_t rng_state = 0x9E3779B97F4A7C15ULL;

static uint32_t rnd_u32(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 16);
}

/* uniform in [-1, 1) */
static float rnd_f(void) {
    return (float)(rnd_u32() & 0xFFFFFF) / 8388608.0f - 1.0f;
}

/* roughly normal, with the occasional outlier as real activations have */
static void fill_random(float *x, int64_t n, float scale) {
    for (int64_t i = 0; i < n; i++) {
        float v = (rnd_f() + rnd_f() + rnd_f()) * scale;
        if (rnd_u32() % 97 == 0)
            v *= 8.0f;
        x[i] = v;
    }
}

static uint16_t f2h(float f) { return td_f32_to_fp16(f); }
static float h2f(uint16_t h) { return td_fp16_to_f32(h); }
static uint32_t fbits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float bitsf(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

static void *quantize(uint32_t type, const float *x, int64_t n) {
    size_t rb = td_quant_row_bytes(type, n);
    assert_true(rb > 0);
    void *q = malloc(rb);
    assert_non_null(q);
    td_quant_traits_ref(type)->from_float(x, q, n);
    return q;
}

static const uint32_t all_types[] = {
    TD_TYPE_F32, TD_TYPE_F16, TD_TYPE_BF16, TD_TYPE_Q4_0, TD_TYPE_Q4_1, TD_TYPE_Q5_0, TD_TYPE_Q5_1,
    TD_TYPE_Q8_0, TD_TYPE_Q8_1, TD_TYPE_Q4_K, TD_TYPE_Q5_K, TD_TYPE_Q6_K, TD_TYPE_Q8_K,
};
static const uint32_t weight_types[] = {
    TD_TYPE_F32, TD_TYPE_F16, TD_TYPE_BF16, TD_TYPE_Q4_0, TD_TYPE_Q4_1, TD_TYPE_Q5_0,
    TD_TYPE_Q5_1, TD_TYPE_Q8_0, TD_TYPE_Q4_K, TD_TYPE_Q5_K, TD_TYPE_Q6_K,
};
#define N_ALL (sizeof all_types / sizeof all_types[0])
#define N_WEIGHT (sizeof weight_types / sizeof weight_types[0])

/* ---- table ---- */

static void table_facts(void **state) {
    (void)state;
    static const struct { uint32_t t; const char *name; uint32_t be, bb; bool w; uint32_t vdt; } want[] = {
        {TD_TYPE_F32, "F32", 1, 4, true, TD_TYPE_F32},
        {TD_TYPE_F16, "F16", 1, 2, true, TD_TYPE_F16},
        {TD_TYPE_BF16, "BF16", 1, 2, true, TD_TYPE_BF16},
        {TD_TYPE_Q4_0, "Q4_0", 32, 18, true, TD_TYPE_Q8_0},
        {TD_TYPE_Q4_1, "Q4_1", 32, 20, true, TD_TYPE_Q8_1},
        {TD_TYPE_Q5_0, "Q5_0", 32, 22, true, TD_TYPE_Q8_0},
        {TD_TYPE_Q5_1, "Q5_1", 32, 24, true, TD_TYPE_Q8_1},
        {TD_TYPE_Q8_0, "Q8_0", 32, 34, true, TD_TYPE_Q8_0},
        {TD_TYPE_Q8_1, "Q8_1", 32, 36, false, TD_TYPE_Q8_1},
        {TD_TYPE_Q4_K, "Q4_K", 256, 144, true, TD_TYPE_Q8_K},
        {TD_TYPE_Q5_K, "Q5_K", 256, 176, true, TD_TYPE_Q8_K},
        {TD_TYPE_Q6_K, "Q6_K", 256, 210, true, TD_TYPE_Q8_K},
        {TD_TYPE_Q8_K, "Q8_K", 256, 292, false, TD_TYPE_Q8_K},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        const td_type_traits *a = td_quant_traits(want[i].t), *r = td_quant_traits_ref(want[i].t);
        assert_non_null(a);
        assert_non_null(r);
        assert_string_equal(a->name, want[i].name);
        assert_string_equal(r->name, want[i].name);
        assert_int_equal(a->block_elems, want[i].be);
        assert_int_equal(a->block_bytes, want[i].bb);
        assert_int_equal(r->block_bytes, want[i].bb);
        assert_int_equal(a->weight_ok, want[i].w);
        assert_int_equal(a->vec_dot_type, want[i].vdt);
        assert_non_null(a->to_float);
        assert_non_null(a->from_float);
        if (want[i].w) {
            assert_non_null(a->vec_dot);
            assert_non_null(r->vec_dot);
        }
    }
    /* retired, unsupported and out-of-range ids */
    static const uint32_t bad[] = {4, 5, TD_TYPE_Q2_K, TD_TYPE_Q3_K, 16, 20, 24, 28, 29, 31, 1000, UINT32_MAX};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_null(td_quant_traits(bad[i]));
        assert_null(td_quant_traits_ref(bad[i]));
        assert_int_equal(td_quant_row_bytes(bad[i], 256), 0);
    }
    const char *k = td_quant_kernel_name();
    assert_true(strcmp(k, "avx2+avx512vnni") == 0 || strcmp(k, "avx2") == 0 || strcmp(k, "scalar") == 0);
#ifdef HAVE_X86
    /* the best set the CPU has, unless TD_KERNELS caps it */
    const char *cap = getenv("TD_KERNELS");
    bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpu_f16c() &&
                !(cap && !strcmp(cap, "scalar"));
    bool vnni = avx2 && __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl") &&
                __builtin_cpu_supports("avx512bw") && !(cap && !strcmp(cap, "avx2"));
    assert_string_equal(k, vnni ? "avx2+avx512vnni" : avx2 ? "avx2" : "scalar");
#endif
}

static void row_bytes(void **state) {
    (void)state;
    assert_int_equal(td_quant_row_bytes(TD_TYPE_Q4_1, 576), 360);
    assert_int_equal(td_quant_row_bytes(TD_TYPE_Q8_0, 576), 612);
    assert_int_equal(td_quant_row_bytes(TD_TYPE_Q8_1, 1536), 1728);
    assert_int_equal(td_quant_row_bytes(TD_TYPE_F32, 7), 28);
    assert_int_equal(td_quant_row_bytes(TD_TYPE_Q6_K, 512), 420);
    assert_int_equal(td_quant_row_bytes(TD_TYPE_Q4_1, 0), 0);
    assert_int_equal(td_quant_row_bytes(TD_TYPE_Q4_1, 33), 0);
    assert_int_equal(td_quant_row_bytes(TD_TYPE_Q4_1, -32), 0);
    assert_int_equal(td_quant_row_bytes(TD_TYPE_Q4_K, 576), 0); /* not a multiple of 256 */
    assert_int_equal(td_quant_row_bytes(TD_TYPE_F16, -1), 0);
}

/* ---- fp16 / bf16 ---- */

/* Independent decoding: sign * 2^(e-15) * (1 + m/1024), subnormals m * 2^-24. */
static float half_formula(uint16_t h) {
    int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    float v = e == 0 ? ldexpf((float)m, -24) : e == 31 ? (m ? NAN : INFINITY)
                                                        : ldexpf(1.0f + (float)m / 1024.0f, e - 15);
    return s ? -v : v;
}

#ifdef HAVE_X86
__attribute__((target("f16c"))) static uint16_t hw_f2h(float f) {
    return (uint16_t)_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
}
#endif

static void fp16_conversions(void **state) {
    (void)state;
    assert_int_equal(f2h(1.0f), 0x3C00);
    assert_int_equal(f2h(-2.0f), 0xC000);
    assert_int_equal(f2h(0.0f), 0x0000);
    assert_int_equal(f2h(-0.0f), 0x8000);
    assert_int_equal(f2h(65504.0f), 0x7BFF);
    assert_int_equal(f2h(65519.0f), 0x7BFF);          /* below the halfway point */
    assert_int_equal(f2h(65520.0f), 0x7C00);          /* halfway, ties to even: inf */
    assert_int_equal(f2h(INFINITY), 0x7C00);
    assert_int_equal(f2h(-INFINITY), 0xFC00);
    assert_int_equal(f2h(1e10f), 0x7C00);
    assert_int_equal(f2h(ldexpf(1, -14)), 0x0400);    /* smallest normal */
    assert_int_equal(f2h(ldexpf(1, -24)), 0x0001);    /* smallest subnormal */
    assert_int_equal(f2h(ldexpf(1, -25)), 0x0000);    /* tie to even */
    assert_int_equal(f2h(ldexpf(3, -26)), 0x0001);    /* 0.75 ulp rounds up */
    assert_int_equal(f2h(ldexpf(3, -25)), 0x0002);    /* 1.5 ulp: tie to even (2) */
    assert_int_equal(f2h(ldexpf(5, -25)), 0x0002);    /* 2.5 ulp: tie to even (2) */
    assert_int_equal(f2h(ldexpf(1023, -24)), 0x03FF); /* largest subnormal */
    assert_int_equal(f2h(1.0f + ldexpf(1, -11)), 0x3C00);     /* tie: even */
    assert_int_equal(f2h(1.0f + ldexpf(3, -11)), 0x3C02);     /* tie: even (up) */
    assert_int_equal(f2h(1.0f + ldexpf(1, -11) + ldexpf(1, -20)), 0x3C01);
    assert_int_equal(f2h(1e-10f), 0);
    uint16_t n = f2h(NAN);
    assert_true((n & 0x7C00) == 0x7C00 && (n & 0x3FF) != 0);
    assert_true(isnan(h2f(n)));
    assert_true(isnan(h2f(0xFE00)));
    assert_true(isinf(h2f(0x7C00)) && h2f(0x7C00) > 0);
    assert_true(isinf(h2f(0xFC00)) && h2f(0xFC00) < 0);
    /* every half: decoding matches the formula; non-NaN halves round-trip */
    for (uint32_t h = 0; h < 65536; h++) {
        float f = h2f((uint16_t)h), g = half_formula((uint16_t)h);
        if (isnan(g)) {
            assert_true(isnan(f));
            continue;
        }
        assert_true(fbits(f) == fbits(g));
        assert_int_equal(f2h(f), h);
    }
#ifdef HAVE_X86
    if (cpu_f16c()) { /* rounding agrees with the F16C unit */
        for (int i = 0; i < 2000000; i++) {
            float f = bitsf(rnd_u32() << 1 ^ rnd_u32());
            if (isnan(f))
                continue;
            assert_int_equal(f2h(f), hw_f2h(f));
        }
        assert_int_equal(f2h(NAN), hw_f2h(NAN));
    }
#endif
}

static void bf16_conversions(void **state) {
    (void)state;
    assert_int_equal(td_f32_to_bf16(1.0f), 0x3F80);
    assert_int_equal(td_f32_to_bf16(-1.0f), 0xBF80);
    assert_int_equal(td_f32_to_bf16(bitsf(0x3F808000)), 0x3F80); /* tie: even */
    assert_int_equal(td_f32_to_bf16(bitsf(0x3F818000)), 0x3F82); /* tie: even (up) */
    assert_int_equal(td_f32_to_bf16(bitsf(0x3F808001)), 0x3F81);
    assert_int_equal(td_f32_to_bf16(INFINITY), 0x7F80);
    assert_int_equal(td_f32_to_bf16(-INFINITY), 0xFF80);
    assert_int_equal(td_f32_to_bf16(bitsf(0x7F7FFFFF)), 0x7F80); /* FLT_MAX rounds to inf */
    assert_int_equal(td_f32_to_bf16(bitsf(0x00010000)), 0x0001); /* subnormal kept */
    assert_true(isnan(td_bf16_to_f32(td_f32_to_bf16(NAN))));
    assert_true(isnan(td_bf16_to_f32(td_f32_to_bf16(bitsf(0x7F800001))))); /* sNaN stays NaN */
    assert_true(td_bf16_to_f32(0x4049) == bitsf(0x40490000));
    for (uint32_t h = 0; h < 65536; h++) {
        float f = td_bf16_to_f32((uint16_t)h);
        assert_true(fbits(f) == h << 16);
        if (!isnan(f))
            assert_int_equal(td_f32_to_bf16(f), h);
    }
}

/* ---- hand-built blocks: expected values from the layouts in the facts ---- */

static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }

static void dequant(uint32_t t, const void *blk, float *out, int64_t n) {
    td_quant_traits(t)->to_float(blk, out, n);
    float ref[256];
    td_quant_traits_ref(t)->to_float(blk, ref, n);
    assert_memory_equal(out, ref, (size_t)n * sizeof(float));
}

static void dequant_legacy_blocks(void **state) {
    (void)state;
    uint8_t b[64];
    float y[32];
    const float d = 0.5f, m = -1.25f, dy = 0.125f;
    /* Q4_0: d, then 16 bytes; low nibbles elements 0-15, high 16-31 */
    put16(b, f2h(d));
    for (int j = 0; j < 16; j++)
        b[2 + j] = (uint8_t)(j | (15 - j) << 4);
    dequant(TD_TYPE_Q4_0, b, y, 32);
    for (int j = 0; j < 16; j++) {
        assert_true(y[j] == (float)(j - 8) * d);
        assert_true(y[j + 16] == (float)(15 - j - 8) * d);
    }
    /* Q4_1: d, m, nibbles: q*d + m */
    put16(b, f2h(d));
    put16(b + 2, f2h(m));
    for (int j = 0; j < 16; j++)
        b[4 + j] = (uint8_t)((3 * j) % 16 | (j / 2) << 4);
    dequant(TD_TYPE_Q4_1, b, y, 32);
    for (int j = 0; j < 16; j++) {
        assert_true(y[j] == (float)((3 * j) % 16) * d + m);
        assert_true(y[j + 16] == (float)(j / 2) * d + m);
    }
    /* Q5_0: d, qh (LE u32, bit j = fifth bit of element j), nibbles */
    const uint32_t qh = 0xA5C3F00Fu;
    put16(b, f2h(d));
    for (int k = 0; k < 4; k++)
        b[2 + k] = (uint8_t)(qh >> (8 * k));
    for (int j = 0; j < 16; j++)
        b[6 + j] = (uint8_t)(j | (j ^ 5) << 4);
    dequant(TD_TYPE_Q5_0, b, y, 32);
    for (int j = 0; j < 16; j++) {
        int lo = j | (int)((qh >> j) & 1) << 4, hi = (j ^ 5) | (int)((qh >> (j + 16)) & 1) << 4;
        assert_true(y[j] == (float)(lo - 16) * d);
        assert_true(y[j + 16] == (float)(hi - 16) * d);
    }
    /* Q5_1: d, m, qh, nibbles */
    put16(b, f2h(d));
    put16(b + 2, f2h(m));
    for (int k = 0; k < 4; k++)
        b[4 + k] = (uint8_t)(qh >> (8 * k));
    for (int j = 0; j < 16; j++)
        b[8 + j] = (uint8_t)((15 - j) | j << 4);
    dequant(TD_TYPE_Q5_1, b, y, 32);
    for (int j = 0; j < 16; j++) {
        int lo = (15 - j) | (int)((qh >> j) & 1) << 4, hi = j | (int)((qh >> (j + 16)) & 1) << 4;
        assert_true(y[j] == (float)lo * d + m);
        assert_true(y[j + 16] == (float)hi * d + m);
    }
    /* Q8_0: d, int8[32] */
    put16(b, f2h(dy));
    for (int j = 0; j < 32; j++)
        b[2 + j] = (uint8_t)(int8_t)(j * 8 - 128);
    dequant(TD_TYPE_Q8_0, b, y, 32);
    for (int j = 0; j < 32; j++)
        assert_true(y[j] == (float)(j * 8 - 128) * dy);
    /* Q8_1: d, s, int8[32] */
    put16(b, f2h(dy));
    put16(b + 2, f2h(3.0f));
    for (int j = 0; j < 32; j++)
        b[4 + j] = (uint8_t)(int8_t)(100 - 7 * j);
    dequant(TD_TYPE_Q8_1, b, y, 32);
    for (int j = 0; j < 32; j++)
        assert_true(y[j] == (float)(100 - 7 * j) * dy);
}

/* 6-bit scale k and min k packed as the facts describe (get_scale_min_k4). */
static void pack_k_scales(const int sc[8], const int mn[8], uint8_t s[12]) {
    memset(s, 0, 12);
    for (int k = 0; k < 4; k++) {
        s[k] |= (uint8_t)sc[k];
        s[k + 4] |= (uint8_t)mn[k];
    }
    for (int k = 4; k < 8; k++) {
        s[k + 4] = (uint8_t)((sc[k] & 0x0F) | (mn[k] & 0x0F) << 4);
        s[k - 4] |= (uint8_t)((sc[k] >> 4) << 6);
        s[k] |= (uint8_t)((mn[k] >> 4) << 6);
    }
}

static void dequant_kquant_blocks(void **state) {
    (void)state;
    static const int sc[8] = {1, 17, 33, 63, 5, 40, 20, 62}, mn[8] = {63, 0, 16, 31, 48, 7, 59, 32};
    const float d = 0.03125f, dmin = 0.0625f;
    uint8_t b[292];
    float y[256];
    /* Q4_K: d, dmin, scales[12], qs[128] */
    put16(b, f2h(d));
    put16(b + 2, f2h(dmin));
    pack_k_scales(sc, mn, b + 4);
    for (int i = 0; i < 128; i++)
        b[16 + i] = (uint8_t)(i * 37 + 11);
    dequant(TD_TYPE_Q4_K, b, y, 256);
    for (int c = 0; c < 4; c++)
        for (int l = 0; l < 32; l++) {
            uint8_t q = b[16 + 32 * c + l];
            assert_true(y[64 * c + l] == d * (float)sc[2 * c] * (float)(q & 15) - dmin * (float)mn[2 * c]);
            assert_true(y[64 * c + 32 + l] ==
                        d * (float)sc[2 * c + 1] * (float)(q >> 4) - dmin * (float)mn[2 * c + 1]);
        }
    /* Q5_K: d, dmin, scales[12], qh[32], qs[128] */
    put16(b, f2h(d));
    put16(b + 2, f2h(dmin));
    pack_k_scales(sc, mn, b + 4);
    for (int l = 0; l < 32; l++)
        b[16 + l] = (uint8_t)(l * 29 + 3);
    for (int i = 0; i < 128; i++)
        b[48 + i] = (uint8_t)(i * 53 + 7);
    dequant(TD_TYPE_Q5_K, b, y, 256);
    for (int c = 0; c < 4; c++)
        for (int l = 0; l < 32; l++) {
            uint8_t q = b[48 + 32 * c + l], h = b[16 + l];
            int lo = (q & 15) + ((h >> (2 * c)) & 1) * 16, hi = (q >> 4) + ((h >> (2 * c + 1)) & 1) * 16;
            assert_true(y[64 * c + l] == d * (float)sc[2 * c] * (float)lo - dmin * (float)mn[2 * c]);
            assert_true(y[64 * c + 32 + l] == d * (float)sc[2 * c + 1] * (float)hi - dmin * (float)mn[2 * c + 1]);
        }
    /* Q6_K: ql[128], qh[64], int8 scales[16], d */
    for (int i = 0; i < 128; i++)
        b[i] = (uint8_t)(i * 71 + 5);
    for (int i = 0; i < 64; i++)
        b[128 + i] = (uint8_t)(i * 151 + 9);
    for (int g = 0; g < 16; g++)
        b[192 + g] = (uint8_t)(int8_t)(g * 17 - 128);
    put16(b + 208, f2h(d));
    dequant(TD_TYPE_Q6_K, b, y, 256);
    for (int h = 0; h < 2; h++)
        for (int l = 0; l < 32; l++) {
            int QH = b[128 + 32 * h + l], A = b[64 * h + l], B = b[64 * h + l + 32];
            int q[4] = {(A & 15) | (QH & 3) << 4, (B & 15) | ((QH >> 2) & 3) << 4,
                        (A >> 4) | ((QH >> 4) & 3) << 4, (B >> 4) | ((QH >> 6) & 3) << 4};
            for (int k = 0; k < 4; k++) {
                int e = 128 * h + l + 32 * k;
                float s = (float)(int8_t)b[192 + e / 16];
                assert_true(y[e] == d * s * (float)(q[k] - 32));
            }
        }
    /* Q8_K: f32 d, int8 qs[256], bsums */
    const float d8 = -0.0123f;
    memcpy(b, &d8, 4);
    for (int i = 0; i < 256; i++)
        b[4 + i] = (uint8_t)(int8_t)(i - 128);
    dequant(TD_TYPE_Q8_K, b, y, 256);
    for (int i = 0; i < 256; i++)
        assert_true(y[i] == d8 * (float)(i - 128));
}

/* ---- quantize -> dequantize round trips ---- */

/* Largest error allowed per element, in units of the block's max |x|,
 * from each format's step: legacy step is amax/8 (Q4_0: the far side may
 * clamp by one step), range/15 or range/31 (Q4_1/Q5_1, half a step <= amax/15
 * resp. amax/31), amax/127 for Q8; K-quants add the 6-/8-bit rounding of
 * their sub-block scales and mins. Plus fp16 rounding of stored scales
 * (relative 2^-11; see rt_abs for subnormal ones). */
static double rt_bound(uint32_t t) {
    switch (t) {
    case TD_TYPE_Q4_0: return 1.0 / 8 + 0.002;
    case TD_TYPE_Q4_1: return 1.0 / 15 + 0.002;
    case TD_TYPE_Q5_0: return 1.0 / 16 + 0.002;
    case TD_TYPE_Q5_1: return 1.0 / 31 + 0.002;
    case TD_TYPE_Q8_0:
    case TD_TYPE_Q8_1: return 0.5 / 127 + 0.0006;
    case TD_TYPE_Q8_K: return 0.5 / 127 + 1e-6;
    case TD_TYPE_Q4_K: return 0.14;
    case TD_TYPE_Q5_K: return 0.08;
    case TD_TYPE_Q6_K: return 0.04;
    default: return 0;
    }
}

/* Absolute slack for tiny blocks whose fp16 scales are subnormal (step
 * 2^-24): largest code times that step, twice for (d, m) pairs. */
static double rt_abs(uint32_t t) {
    switch (t) {
    case TD_TYPE_Q8_K: return 0;
    case TD_TYPE_Q4_K: return 2 * 63 * 15 * 0x1p-24;
    case TD_TYPE_Q5_K: return 2 * 63 * 31 * 0x1p-24;
    case TD_TYPE_Q6_K: return 127 * 32 * 0x1p-24;
    default: return 2 * 127 * 0x1p-24;
    }
}

/* Root-mean-square error relative to rms(x) on fill_random's data: what the
 * quantizers achieve today with ~25% headroom (a regression guard). */
static double rt_rms(uint32_t t) {
    switch (t) {
    case TD_TYPE_F16: return 3e-4;
    case TD_TYPE_BF16: return 2.2e-3;
    case TD_TYPE_Q4_0: return 0.17;
    case TD_TYPE_Q4_1: return 0.115;
    case TD_TYPE_Q5_0: return 0.09;
    case TD_TYPE_Q5_1: return 0.06;
    case TD_TYPE_Q8_0:
    case TD_TYPE_Q8_1: return 0.011;
    case TD_TYPE_Q8_K: return 0.035; /* 256-wide blocks: outliers dominate */
    case TD_TYPE_Q4_K: return 0.12;
    case TD_TYPE_Q5_K: return 0.06;
    case TD_TYPE_Q6_K: return 0.03;
    default: return 0;
    }
}

static void roundtrip(void **state) {
    (void)state;
    enum { N = 2048 };
    float *x = malloc(N * sizeof(float)), *y = malloc(N * sizeof(float));
    for (size_t ti = 0; ti < N_ALL; ti++) {
        uint32_t t = all_types[ti];
        const td_type_traits *tr = td_quant_traits(t);
        for (int rep = 0; rep < 4; rep++) {
            fill_random(x, N, rep == 3 ? 1e-3f : 1.0f);
            if (rep == 2) /* blocks of one sign, and an all-zero block */
                for (int i = 0; i < N; i++)
                    x[i] = i < 256 ? fabsf(x[i]) : i < 512 ? -fabsf(x[i]) : i < 768 ? 0.0f : x[i];
            void *q = quantize(t, x, N);
            tr->to_float(q, y, N);
            const int64_t blk = tr->block_elems == 1 ? 1 : tr->block_elems;
            double err2 = 0, x2 = 0;
            for (int64_t b0 = 0; b0 < N; b0 += blk) {
                float amax = 0;
                for (int64_t i = b0; i < b0 + blk; i++)
                    amax = fmaxf(amax, fabsf(x[i]));
                for (int64_t i = b0; i < b0 + blk; i++) {
                    double e = fabs((double)y[i] - x[i]);
                    err2 += e * e;
                    x2 += (double)x[i] * x[i];
                    if (t == TD_TYPE_F32)
                        assert_true(y[i] == x[i]);
                    else if (t == TD_TYPE_F16)
                        assert_true(e <= fabs(x[i]) * 0x1p-11 + 0x1p-25);
                    else if (t == TD_TYPE_BF16)
                        assert_true(e <= fabs(x[i]) * 0x1p-8);
                    else if (e > rt_bound(t) * amax + rt_abs(t)) {
                        fail_msg("%s: element %lld: x=%g y=%g (block amax %g)", tr->name,
                                 (long long)i, x[i], y[i], amax);
                    }
                }
            }
            /* and on average well inside the worst case */
            if (x2 > 0 && sqrt(err2 / x2) > rt_rms(t))
                fail_msg("%s: relative rms error %g", tr->name, sqrt(err2 / x2));
            free(q);
        }
    }
    free(x);
    free(y);
}

/* ---- activation quantizers: §3 rules, and identical in every variant ---- */

static void activation_quantizers(void **state) {
    (void)state;
    enum { N = 1024 };
    float x[N];
    static uint8_t a[N * 4], r[N * 4];
    const uint32_t types[] = {TD_TYPE_Q8_0, TD_TYPE_Q8_1, TD_TYPE_Q8_K, TD_TYPE_F16, TD_TYPE_BF16, TD_TYPE_F32};
    for (int rep = 0; rep < 50; rep++) {
        fill_random(x, N, rep % 2 ? 3.0f : 0.01f);
        if (rep == 1) /* exact ties: with amax = 127 the scale is 1 */
            for (int i = 0; i < N; i++)
                x[i] = i % 32 == 0 ? 127.0f : (float)(i % 64) - 31.5f;
        if (rep == 2) /* ties in Q8_K's units: max = -127 gives iscale 1 */
            for (int i = 0; i < N; i++)
                x[i] = i % 256 == 5 ? -127.0f : (float)(i % 50) - 24.5f;
        if (rep == 3)
            memset(x, 0, sizeof x);
        if (rep == 4) { /* max magnitude on both signs: the first one wins */
            for (int i = 0; i < N; i++)
                x[i] = (float)(i % 7) - 3.0f;
            x[10] = -4.0f;
            x[11] = 4.0f;
        }
        for (size_t k = 0; k < sizeof types / sizeof types[0]; k++) {
            size_t rb = td_quant_row_bytes(types[k], N);
            assert_true(rb <= sizeof a);
            memset(a, 0xAA, rb);
            memset(r, 0x55, rb);
            td_quant_traits(types[k])->from_float(x, a, N);
            td_quant_traits_ref(types[k])->from_float(x, r, N);
            assert_memory_equal(a, r, rb);
        }
    }
    /* Q8_0 / Q8_1 rules on a known block: d = amax/127, q = nearest-even(x * 127/amax) */
    float b[32];
    for (int j = 0; j < 32; j++)
        b[j] = (float)j - 15.5f; /* halves: every code is a tie */
    b[0] = -127.0f;              /* amax 127: d = 1, codes are round(x) */
    uint8_t q[36];
    td_quant_traits(TD_TYPE_Q8_1)->from_float(b, q, 32);
    assert_int_equal(q[0] | q[1] << 8, f2h(1.0f));
    int sum = 0;
    for (int j = 0; j < 32; j++) {
        int want = j == 0 ? -127 : (int)nearbyintf(b[j]);
        assert_int_equal((int8_t)q[4 + j], want);
        sum += want;
    }
    assert_true(b[1] == -14.5f && (int8_t)q[5] == -14); /* to even */
    assert_true(b[2] == -13.5f && (int8_t)q[6] == -14);
    assert_int_equal(q[2] | q[3] << 8, f2h((float)sum * 1.0f));
    /* Q8_K: signed max maps to -127, d = 1/iscale, bsums are group sums */
    float k[256];
    for (int j = 0; j < 256; j++)
        k[j] = (float)(j % 9) * 0.25f;
    k[77] = 2.5f; /* the max, positive: iscale = -127/2.5 */
    uint8_t kb[292];
    td_quant_traits(TD_TYPE_Q8_K)->from_float(k, kb, 256);
    float dk;
    memcpy(&dk, kb, 4);
    assert_true(dk == 1.0f / (-127.0f / 2.5f));
    assert_int_equal((int8_t)kb[4 + 77], -127);
    for (int g = 0; g < 16; g++) {
        int s = 0;
        for (int j = 0; j < 16; j++)
            s += (int8_t)kb[4 + 16 * g + j];
        int16_t bs;
        memcpy(&bs, kb + 260 + 2 * g, 2);
        assert_int_equal(bs, s);
    }
    for (int j = 0; j < 256; j++)
        assert_int_equal((int8_t)kb[4 + j], (int)nearbyintf(-127.0f / 2.5f * k[j]));
    /* Q8_K rounds ties to even: max -127 gives iscale 1 */
    for (int j = 0; j < 256; j++)
        k[j] = 0.0f;
    k[0] = -127.0f;
    k[1] = -2.5f;
    k[2] = 3.5f;
    k[3] = 0.5f;
    td_quant_traits(TD_TYPE_Q8_K)->from_float(k, kb, 256);
    assert_int_equal((int8_t)kb[4], -127);
    assert_int_equal((int8_t)kb[5], -2);
    assert_int_equal((int8_t)kb[6], 4);
    assert_int_equal((int8_t)kb[7], 0);
}

/* ---- dot products ---- */

/* Activations for weight type t, quantized as the engine does. */
static void *activations(uint32_t t, const float *x, int64_t n) {
    size_t rb = td_quant_row_bytes(td_quant_traits(t)->vec_dot_type, n);
    void *q = malloc(rb);
    td_quant_activations(t, x, n, 1, q);
    return q;
}

static int64_t dot_len(uint32_t t, int i) {
    static const int64_t legacy[] = {32, 64, 96, 256, 288, 544, 576, 1536, 4096, 32 * 601};
    static const int64_t kq[] = {256, 512, 768, 1536, 4096, 256 * 21};
    static const int64_t fl[] = {1, 7, 8, 31, 33, 576, 1000, 4099};
    int bl = td_quant_traits(t)->block_elems;
    const int64_t *v = bl == 256 ? kq : bl == 32 ? legacy : fl;
    int cnt = bl == 256 ? 6 : bl == 32 ? 10 : 8;
    return i < cnt ? v[i] : 0;
}

static void vec_dot_simd_vs_ref(void **state) {
    (void)state;
    double worst = 0;
    for (size_t ti = 0; ti < N_WEIGHT; ti++) {
        uint32_t t = weight_types[ti];
        for (int li = 0; dot_len(t, li); li++) {
            int64_t n = dot_len(t, li);
            float *w = malloc((size_t)n * sizeof(float)), *x = malloc((size_t)n * sizeof(float));
            float *wd = malloc((size_t)n * sizeof(float)), *xd = malloc((size_t)n * sizeof(float));
            for (int rep = 0; rep < 3; rep++) {
                fill_random(w, n, 0.05f);
                fill_random(x, n, rep == 2 ? 100.0f : 1.0f);
                void *wq = quantize(t, w, n), *xq = activations(t, x, n);
                float s_fast, s_ref;
                td_quant_traits(t)->vec_dot(n, &s_fast, wq, xq);
                td_quant_traits_ref(t)->vec_dot(n, &s_ref, wq, xq);
                /* scale of the sum: sum |w_i x_i| of the dequantized rows */
                td_quant_traits(t)->to_float(wq, wd, n);
                td_quant_traits(td_quant_traits(t)->vec_dot_type)->to_float(xq, xd, n);
                double mag = 0, exact = 0;
                for (int64_t i = 0; i < n; i++) {
                    mag += fabs((double)wd[i] * xd[i]);
                    exact += (double)wd[i] * xd[i];
                }
                /* SIMD vs scalar: both sum exact block integers in float, in
                 * different orders: a few float roundings of the magnitude. */
                double tol = 2e-6 * mag + 1e-30;
                double e = fabs((double)s_fast - s_ref);
                if (e > tol)
                    fail_msg("%s n=%lld: simd %.9g ref %.9g (mag %g)", td_quant_traits(t)->name,
                             (long long)n, s_fast, s_ref, mag);
                if (mag > 0 && e / mag > worst)
                    worst = e / mag;
                /* vs the dequantize-then-dot definition: the same plus, for
                 * Q4_1/Q5_1, Q8_1's s = fp16(d * sum(q)) is made from the
                 * f32 d (not the stored fp16 one) and then rounded: two fp16
                 * roundings of m_x * s_y per block. */
                double tol2 = 1e-5 * mag + 1e-30;
                if (td_quant_traits(t)->vec_dot_type == TD_TYPE_Q8_1) {
                    const uint8_t *wb = wq, *xb = xq;
                    size_t wbb = td_quant_traits(t)->block_bytes;
                    for (int64_t b = 0; b < n / 32; b++)
                        tol2 += fabs(h2f((uint16_t)(wb[b * wbb + 2] | wb[b * wbb + 3] << 8)) *
                                     h2f((uint16_t)(xb[b * 36 + 2] | xb[b * 36 + 3] << 8))) * 0x1p-10;
                }
                if (fabs((double)s_ref - exact) > tol2 || fabs((double)s_fast - exact) > tol2)
                    fail_msg("%s n=%lld: ref %.9g simd %.9g exact %.9g", td_quant_traits(t)->name,
                             (long long)n, s_ref, s_fast, exact);
                free(wq);
                free(xq);
            }
            free(w);
            free(x);
            free(wd);
            free(xd);
        }
    }
    print_message("worst |simd - ref| / sum|w x| = %.3g\n", worst);
}

/* ---- matmul batch invariance ---- */

static void check_invariance_in(td_numerics order, uint32_t t, int64_t n_in, int64_t n_out, int max_rows) {
    const td_type_traits *tr = td_quant_traits(t);
    const int64_t rows = 16;
    float *w = malloc((size_t)(n_in * n_out) * sizeof(float));
    float *x = malloc((size_t)(n_in * rows) * sizeof(float));
    fill_random(w, n_in * n_out, 0.05f);
    fill_random(x, n_in * rows, 1.0f);
    size_t wrb = td_quant_row_bytes(t, n_in), xrb = td_quant_row_bytes(tr->vec_dot_type, n_in);
    uint8_t *W = malloc(wrb * (size_t)n_out), *X = malloc(xrb * (size_t)rows);
    for (int64_t o = 0; o < n_out; o++)
        td_quant_traits_ref(t)->from_float(w + o * n_in, W + (size_t)o * wrb, n_in);
    td_quant_activations(t, x, n_in, rows, X);

    /* reference: each row alone over the full range; vec_dot (which has the
     * reference order) must agree */
    float *ref = malloc((size_t)(rows * n_out) * sizeof(float));
    for (int64_t r = 0; r < rows; r++) {
        td_quant_matmul_in(order, t, W, n_in, 0, n_out, X + (size_t)r * xrb, 1, ref + r * n_out, n_out);
        for (int64_t o = 0; o < n_out && order == TD_NUMERICS_REFERENCE; o++) {
            float s;
            tr->vec_dot(n_in, &s, W + (size_t)o * wrb, X + (size_t)r * xrb);
            if (memcmp(&s, &ref[r * n_out + o], sizeof s) != 0)
                fail_msg("%s n_in=%lld: vec_dot %.9g != matmul %.9g", tr->name, (long long)n_in, s,
                         ref[r * n_out + o]);
        }
    }
    static const int nrs[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 16};
    const int64_t ranges[][2] = {{0, n_out}, {0, 1}, {n_out - 1, n_out}, {n_out / 4, n_out / 2}, {n_out / 2, n_out}};
    const int64_t y_stride = n_out + 3;
    float *y = malloc((size_t)(rows * y_stride) * sizeof(float));
    for (size_t ni = 0; ni < sizeof nrs / sizeof nrs[0]; ni++) {
        int nr = nrs[ni];
        if (nr > max_rows)
            continue;
        for (int64_t r0 = 0; r0 + nr <= rows; r0 += nr) {
            for (size_t ri = 0; ri < sizeof ranges / sizeof ranges[0]; ri++) {
                int64_t lo = ranges[ri][0], hi = ranges[ri][1];
                for (int64_t i = 0; i < rows * y_stride; i++)
                    y[i] = NAN;
                td_quant_matmul_in(order, t, W, n_in, lo, hi, X + (size_t)r0 * xrb, nr, y, y_stride);
                for (int r = 0; r < nr; r++) {
                    for (int64_t o = 0; o < n_out; o++) {
                        const float *got = &y[r * y_stride + o], *want = &ref[(r0 + r) * n_out + o];
                        if (o < lo || o >= hi) {
                            assert_true(isnan(*got)); /* outside the range: untouched */
                            continue;
                        }
                        if (memcmp(got, want, sizeof *got) != 0)
                            fail_msg("%s n_in=%lld rows=%d range [%lld,%lld): y[%d][%lld] %.9g != %.9g",
                                     tr->name, (long long)n_in, nr, (long long)lo, (long long)hi,
                                     r, (long long)o, *got, *want);
                    }
                }
            }
        }
    }
    free(w);
    free(x);
    free(W);
    free(X);
    free(ref);
    free(y);
}

/* Both summation orders: each must be batch invariant on its own. */
static void check_invariance(uint32_t t, int64_t n_in, int64_t n_out, int max_rows) {
    check_invariance_in(TD_NUMERICS_REFERENCE, t, n_in, n_out, max_rows);
    check_invariance_in(TD_NUMERICS_FAST, t, n_in, n_out, max_rows);
}

static void matmul_batch_invariance(void **state) {
    (void)state;
    for (size_t ti = 0; ti < N_WEIGHT; ti++) {
        uint32_t t = weight_types[ti];
        int64_t n_in = td_quant_traits(t)->block_elems == 256 ? 768 : 576;
        check_invariance(t, n_in, 37, 16);
    }
    /* odd block counts (group tails); rows whose 16 rows do not all fit the
     * AVX2 kernels' scratch at once, but a tile of them does; rows too long
     * for even a tile of whole rows */
    check_invariance(TD_TYPE_Q4_1, 32 * 5, 9, 16);
    check_invariance(TD_TYPE_Q8_0, 32 * 13, 9, 16);
    check_invariance(TD_TYPE_Q5_1, 4096, 5, 16);
    check_invariance(TD_TYPE_Q8_0, 4096, 5, 16);
    check_invariance(TD_TYPE_Q4_1, 32 * 300, 6, 16);
    check_invariance(TD_TYPE_Q4_0, 32 * 300, 6, 16);
    check_invariance(TD_TYPE_Q4_1, 32 * 601, 4, 8);
    check_invariance(TD_TYPE_Q8_0, 32 * 601, 4, 8);
}

/* matmul agrees with the reference kernels within the vec_dot tolerance */
static void matmul_vs_ref(void **state) {
    (void)state;
    for (size_t ti = 0; ti < N_WEIGHT; ti++) {
        uint32_t t = weight_types[ti];
        const td_type_traits *tr = td_quant_traits(t), *rf = td_quant_traits_ref(t);
        const int64_t n_in = tr->block_elems == 256 ? 512 : 576, n_out = 11, rows = 5;
        float *w = malloc((size_t)(n_in * n_out) * sizeof(float)), *x = malloc((size_t)(n_in * rows) * sizeof(float));
        fill_random(w, n_in * n_out, 0.05f);
        fill_random(x, n_in * rows, 1.0f);
        size_t wrb = td_quant_row_bytes(t, n_in), xrb = td_quant_row_bytes(tr->vec_dot_type, n_in);
        uint8_t *W = malloc(wrb * (size_t)n_out), *X = malloc(xrb * (size_t)rows);
        for (int64_t o = 0; o < n_out; o++)
            rf->from_float(w + o * n_in, W + (size_t)o * wrb, n_in);
        td_quant_activations(t, x, n_in, rows, X);
        float y[5 * 11];
        td_quant_matmul(t, W, n_in, 0, n_out, X, rows, y, n_out);
        for (int64_t r = 0; r < rows; r++)
            for (int64_t o = 0; o < n_out; o++) {
                float s;
                rf->vec_dot(n_in, &s, W + (size_t)o * wrb, X + (size_t)r * xrb);
                double mag = 0;
                for (int64_t i = 0; i < n_in; i++)
                    mag += fabs((double)w[o * n_in + i] * x[r * n_in + i]);
                assert_true(fabs((double)s - y[r * n_out + o]) <= 1e-5 * mag);
            }
        free(w);
        free(x);
        free(W);
        free(X);
    }
}

/* The default kernels (TD_NUMERICS_FAST: the interleaved Q4_1/Q8_0 kernels,
 * the tiled AVX2/VNNI ones elsewhere) against an independent reference, the
 * scalar vec_dot of quant_ref.c on the same quantized bytes, for every weight
 * format and every batch height 1..17 (every tile height, one tile and two),
 * short rows and rows long enough to go in chunks. Stated tolerance: both sum
 * the same exact per-block products in float, in different orders, so they
 * differ by a few roundings of the magnitude: |fast - ref| <= 4e-6 * sum|w x|
 * over the dequantized rows (measured worst: printed; ~1e-7). */
static void fast_matmul_vs_scalar_reference(void **state) {
    (void)state;
    const double tol_rel = 4e-6;
    double worst = 0;
    for (size_t ti = 0; ti < N_WEIGHT; ti++) {
        uint32_t t = weight_types[ti];
        const td_type_traits *tr = td_quant_traits(t), *rf = td_quant_traits_ref(t);
        const td_type_traits *at = td_quant_traits(tr->vec_dot_type);
        const int64_t ins[2] = {tr->block_elems == 256 ? 768 : 576, tr->block_elems == 256 ? 256 * 41 : 32 * 301};
        for (int ii = 0; ii < 2; ii++) {
            const int64_t n_in = ins[ii], n_out = 13, max_rows = 17;
            float *w = malloc((size_t)(n_in * n_out) * sizeof(float)), *x = malloc((size_t)(n_in * max_rows) * sizeof(float));
            float *wd = malloc((size_t)n_in * sizeof(float)), *xd = malloc((size_t)n_in * sizeof(float));
            size_t wrb = td_quant_row_bytes(t, n_in), xrb = td_quant_row_bytes(tr->vec_dot_type, n_in);
            uint8_t *W = malloc(wrb * (size_t)n_out), *X = malloc(xrb * (size_t)max_rows);
            float *y = malloc((size_t)(max_rows * n_out) * sizeof(float));
            double *mag = malloc((size_t)(max_rows * n_out) * sizeof(double));
            float *ref = malloc((size_t)(max_rows * n_out) * sizeof(float));
            assert_true(w && x && wd && xd && W && X && y && mag && ref);
            fill_random(w, n_in * n_out, 0.05f);
            fill_random(x, n_in * max_rows, 1.0f);
            for (int64_t o = 0; o < n_out; o++) rf->from_float(w + o * n_in, W + (size_t)o * wrb, n_in);
            assert_int_equal(td_quant_activations(t, x, n_in, max_rows, X), TD_OK);
            for (int64_t o = 0; o < n_out; o++) {
                rf->to_float(W + (size_t)o * wrb, wd, n_in);
                for (int64_t r = 0; r < max_rows; r++) {
                    rf->vec_dot(n_in, &ref[r * n_out + o], W + (size_t)o * wrb, X + (size_t)r * xrb);
                    at->to_float(X + (size_t)r * xrb, xd, n_in);
                    double m = 0;
                    for (int64_t i = 0; i < n_in; i++) m += fabs((double)wd[i] * xd[i]);
                    mag[r * n_out + o] = m;
                }
            }
            for (int64_t nr = 1; nr <= max_rows; nr++) {
                assert_int_equal(td_quant_matmul_in(TD_NUMERICS_FAST, t, W, n_in, 0, n_out, X, nr, y, n_out), TD_OK);
                for (int64_t r = 0; r < nr; r++)
                    for (int64_t o = 0; o < n_out; o++) {
                        double e = fabs((double)y[r * n_out + o] - ref[r * n_out + o]), m = mag[r * n_out + o];
                        if (e > tol_rel * m + 1e-30)
                            fail_msg("%s n_in=%lld rows=%lld y[%lld][%lld]: fast %.9g, scalar reference %.9g (mag %g)",
                                     tr->name, (long long)n_in, (long long)nr, (long long)r, (long long)o,
                                     y[r * n_out + o], ref[r * n_out + o], m);
                        if (m > 0 && e / m > worst) worst = e / m;
                    }
            }
            free(w); free(x); free(wd); free(xd); free(W); free(X); free(y); free(mag); free(ref);
        }
    }
    print_message("fast kernels (%s) vs scalar reference: worst |fast - ref| / sum|w x| = %.3g (tolerance %.0e)\n",
                  td_quant_kernel_name(), worst, tol_rel);
}

/* The AVX2 Q4_1 / Q8_0 matmuls give the bits of the scalar reference dot,
 * which spells out llama.cpp's per-block order: short rows and rows long
 * enough to go in chunks, one tile and two. */
static void matmul_reference_order(void **state) {
    (void)state;
    const uint32_t types[] = {TD_TYPE_Q4_1, TD_TYPE_Q8_0};
    const int64_t ins[] = {576, 32 * 601};
    for (int ti = 0; ti < 2; ti++) {
        for (int ii = 0; ii < 2; ii++) {
            uint32_t t = types[ti];
            const td_type_traits *rf = td_quant_traits_ref(t);
            const int64_t n_in = ins[ii], n_out = 7, rows = 9;
            float *w = malloc((size_t)(n_in * n_out) * sizeof(float)), *x = malloc((size_t)(n_in * rows) * sizeof(float));
            assert_true(w && x);
            fill_random(w, n_in * n_out, 0.05f);
            fill_random(x, n_in * rows, 1.0f);
            size_t wrb = td_quant_row_bytes(t, n_in), xrb = td_quant_row_bytes(rf->vec_dot_type, n_in);
            uint8_t *W = malloc(wrb * (size_t)n_out), *X = malloc(xrb * (size_t)rows);
            float *y = malloc((size_t)(rows * n_out) * sizeof(float));
            assert_true(W && X && y);
            for (int64_t o = 0; o < n_out; o++)
                rf->from_float(w + o * n_in, W + (size_t)o * wrb, n_in);
            td_quant_activations(t, x, n_in, rows, X);
            td_quant_matmul_in(TD_NUMERICS_REFERENCE, t, W, n_in, 0, n_out, X, rows, y, n_out);
            for (int64_t r = 0; r < rows; r++)
                for (int64_t o = 0; o < n_out; o++) {
                    float s;
                    rf->vec_dot(n_in, &s, W + (size_t)o * wrb, X + (size_t)r * xrb);
                    if (memcmp(&s, &y[r * n_out + o], sizeof s) != 0)
                        fail_msg("%s n_in=%lld y[%lld][%lld]: kernel %.9g, reference order %.9g", rf->name,
                                 (long long)n_in, (long long)r, (long long)o, y[r * n_out + o], s);
                }
            free(w); free(x); free(W); free(X); free(y);
        }
    }
}

/* Settings are read once: TD_KERNELS set after the first lookup changes
 * nothing (it was once read by getenv on every traits lookup). */
static void kernel_set_read_once(void **state) {
    (void)state;
    const char *before = td_quant_kernel_name();
    const td_type_traits *t = td_quant_traits(TD_TYPE_Q4_1);
    const char *old = getenv("TD_KERNELS");
    char *saved = old ? strdup(old) : NULL;
    setenv("TD_KERNELS", strcmp(before, "scalar") ? "scalar" : "avx2", 1);
    assert_string_equal(td_quant_kernel_name(), before);
    assert_ptr_equal(td_quant_traits(TD_TYPE_Q4_1), t);
    if (saved) setenv("TD_KERNELS", saved, 1);
    else unsetenv("TD_KERNELS");
    free(saved);
}

/* A caller's mistake is an error, never an abort (assert policy). */
static void bad_arguments_are_errors(void **state) {
    (void)state;
    float x[64] = {0}, y[4] = {0};
    uint8_t w[4 * 34] = {0}, xq[2 * 34] = {0};
    /* unknown and non-weight types */
    assert_int_equal(td_quant_matmul(5, w, 32, 0, 1, xq, 1, y, 4), TD_E_ARG);
    assert_int_equal(td_quant_matmul(TD_TYPE_Q8_1, w, 32, 0, 1, xq, 1, y, 4), TD_E_ARG);
    /* n_in not a whole number of blocks, a reversed range, too short a stride */
    assert_int_equal(td_quant_matmul(TD_TYPE_Q8_0, w, 33, 0, 1, xq, 1, y, 4), TD_E_ARG);
    assert_int_equal(td_quant_matmul(TD_TYPE_Q8_0, w, 32, 2, 1, xq, 1, y, 4), TD_E_ARG);
    assert_int_equal(td_quant_matmul(TD_TYPE_Q8_0, w, 32, 0, 4, xq, 2, y, 2), TD_E_ARG);
    assert_int_equal(td_quant_matmul_in(TD_NUMERICS_FAST, TD_TYPE_Q8_0, NULL, 32, 0, 4, xq, 1, y, 4), TD_E_ARG);
    assert_int_equal(td_quant_matmul_in(TD_NUMERICS_FAST, TD_TYPE_Q8_0, w, 32, 0, 4, xq, 1, y, 4), TD_OK);
    assert_int_equal(td_quant_activations(5, x, 32, 1, xq), TD_E_ARG);
    assert_int_equal(td_quant_activations(TD_TYPE_Q8_0, x, 33, 1, xq), TD_E_ARG);
    assert_int_equal(td_quant_activations(TD_TYPE_Q8_0, x, 32, -1, xq), TD_E_ARG);
    assert_int_equal(td_quant_activations(TD_TYPE_Q8_0, x, 32, 2, xq), TD_OK);
}

/* The peak loops of `tandem bench kernels` do what their names say: the
 * value each returns is the sum of its accumulators, which a scalar model of
 * the instruction predicts exactly (iters x chains x the per-lane products,
 * with vpmaddubsw's int16 saturation), so a loop that skipped work, or ran
 * another instruction, would show. Forms this CPU lacks are skipped. */
static int32_t sat16(int32_t v) { return v > 32767 ? 32767 : v < -32768 ? -32768 : v; }

static void peak_loops_compute_what_they_claim(void **state) {
    (void)state;
    uint8_t src[128];
    for (int i = 0; i < 128; i++) src[i] = (uint8_t)(i * 37 + 11); /* as td_quant_peak_run fills it */
    const int64_t iters = 1000;
    int forms = 0;
    for (int f = 0; f < 8; f++) {
        const char *name;
        int64_t per_iter;
        if (!td_quant_peak_form(f, &name, &per_iter)) continue;
        forms++;
        bool zmm = strstr(name, "zmm") != NULL, dpbusd = strstr(name, "vpdpbusd") != NULL;
        int width = zmm ? 64 : 32, lanes = width / 4, chains = (int)(per_iter / width);
        const uint8_t *a = src, *b = src + width;
        int64_t per_lane_sum = 0; /* one step of one chain, all lanes */
        for (int l = 0; l < lanes; l++) {
            int32_t d = 0;
            if (dpbusd) {
                for (int j = 0; j < 4; j++) d += (int32_t)a[4 * l + j] * (int8_t)b[4 * l + j];
            } else {
                for (int h = 0; h < 2; h++) {
                    int k = 4 * l + 2 * h;
                    d += sat16((int32_t)a[k] * (int8_t)b[k] + (int32_t)a[k + 1] * (int8_t)b[k + 1]);
                }
            }
            per_lane_sum += d;
        }
        int64_t start = 0; /* chain c starts at c in every lane */
        for (int c = 0; c < chains; c++) start += (int64_t)c * lanes;
        int64_t want = start + iters * chains * per_lane_sum;
        int64_t got = td_quant_peak_run(f, iters);
        if (zmm) want = (int32_t)(uint32_t)want; /* its reduction is 32-bit */
        assert_int_equal(got, want);
    }
    if (strcmp(td_quant_kernel_name(), "scalar") != 0) assert_true(forms > 0);
    assert_false(td_quant_peak_form(-1, NULL, NULL));
    assert_false(td_quant_peak_form(1000, NULL, NULL));
    assert_int_equal(td_quant_peak_run(1000, 10), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(table_facts),
        cmocka_unit_test(peak_loops_compute_what_they_claim),
        cmocka_unit_test(bad_arguments_are_errors),
        cmocka_unit_test(kernel_set_read_once),
        cmocka_unit_test(fast_matmul_vs_scalar_reference),
        cmocka_unit_test(row_bytes),
        cmocka_unit_test(fp16_conversions),
        cmocka_unit_test(bf16_conversions),
        cmocka_unit_test(dequant_legacy_blocks),
        cmocka_unit_test(dequant_kquant_blocks),
        cmocka_unit_test(roundtrip),
        cmocka_unit_test(activation_quantizers),
        cmocka_unit_test(vec_dot_simd_vs_ref),
        cmocka_unit_test(matmul_batch_invariance),
        cmocka_unit_test(matmul_vs_ref),
        cmocka_unit_test(matmul_reference_order),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
