/* quant_blockwise_avx2.c — Q4_1 and Q8_0 matmuls in the operation order of
 * llama.cpp's x86 CPU build, so that the default model's logits carry the
 * reference's bits. Built with -mavx2 -mfma -mf16c.
 *
 * Per (weight row, activation row) pair and block i, in block order:
 *   lanes = int32 sums of 4 neighbouring code products (maddubs + madd),
 *   acc   = fma(d_w * d_x, float(lanes), acc)            (8 f32 lanes)
 *   Q4_1 also: mins = fma(m_w, s_x, mins)                  (one f32)
 * and the result is hsum(acc) (upper half onto lower, then (0+2)+(1+3))
 * plus mins. The order is fixed per pair, whichever tile or range computes
 * it, so results stay batch invariant. This is slower per block than the
 * interleaved kernels of quant_avx2.c (one madd, convert and fma per block
 * instead of per four), which still serve the other legacy formats.
 */
#include <immintrin.h>

#include "quant/quant_impl.h"
#include "quant/quant_simd.h"


#define TILE_ROWS 8 /* activation rows sharing one unpacked weight block */
#define O_BLOCK 32  /* weight rows kept in cache while all activation rows pass */

enum bkind { B_Q4_1, B_Q8_0 };

INLINE size_t w_bytes(enum bkind k) { return k == B_Q4_1 ? 20 : 34; }
INLINE size_t x_bytes(enum bkind k) { return k == B_Q4_1 ? 36 : 34; }


static inline float half(const uint8_t *p) {
    uint16_t h;
    __builtin_memcpy(&h, p, sizeof h);
    return _cvtsh_ss(h);
}

/* One weight row against nr activation rows (row r at X + r * x_stride). */
INLINE void pair_rows(enum bkind k, int nr, const uint8_t *w, int64_t nb, const uint8_t *X, size_t x_stride,
                      float *y, int64_t y_stride) {
    __m256 acc[TILE_ROWS];
    float mins[TILE_ROWS];
    UNROLL
    for (int r = 0; r < nr; r++) {
        acc[r] = _mm256_setzero_ps();
        mins[r] = 0.0f;
    }
    const __m256i ones = _mm256_set1_epi16(1);
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *wb = w + (size_t)i * w_bytes(k);
        const float dw = half(wb);
        __m256i codes, abs_codes = _mm256_setzero_si256();
        float mw = 0.0f;
        if (k == B_Q4_1) {
            /* elements 0-15 are the low nibbles, 16-31 the high ones */
            __m128i raw = _mm_loadu_si128((const __m128i *)(wb + 4));
            codes = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), _mm256_set1_epi8(0x0F));
            mw = half(wb + 2);
        } else {
            codes = _mm256_loadu_si256((const __m256i *)(wb + 2));
            abs_codes = _mm256_sign_epi8(codes, codes); /* maddubs wants one unsigned side */
        }
        UNROLL
        for (int r = 0; r < nr; r++) {
            const uint8_t *xb = X + (size_t)r * x_stride + (size_t)i * x_bytes(k);
            __m256i xq = _mm256_loadu_si256((const __m256i *)(xb + (k == B_Q4_1 ? 4 : 2)));
            __m256i p16 = k == B_Q4_1 ? _mm256_maddubs_epi16(codes, xq)
                                      : _mm256_maddubs_epi16(abs_codes, _mm256_sign_epi8(xq, codes));
            __m256 lanes = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones));
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(dw * half(xb)), lanes, acc[r]);
            if (k == B_Q4_1)
                mins[r] = __builtin_fmaf(mw, half(xb + 2), mins[r]);
        }
    }
    UNROLL
    for (int r = 0; r < nr; r++)
        y[r * y_stride] = k == B_Q4_1 ? hsum_ps(acc[r]) + mins[r] : hsum_ps(acc[r]);
}

INLINE void pair_rows_nr(enum bkind k, int nr, const uint8_t *w, int64_t nb, const uint8_t *X, size_t x_stride,
                         float *y, int64_t y_stride) {
    switch (nr) { /* a compile-time tile height per case */
#define CASE(n) \
    case n: pair_rows(k, n, w, nb, X, x_stride, y, y_stride); break;
    CASE(1)
    CASE(2)
    CASE(3)
    CASE(4)
    CASE(5)
    CASE(6)
    CASE(7)
#undef CASE
    default: pair_rows(k, TILE_ROWS, w, nb, X, x_stride, y, y_stride); break;
    }
}

INLINE void blockwise_matmul(enum bkind k, const void *W, size_t w_stride, int64_t n_in, int64_t o_lo,
                             int64_t o_hi, const void *xq, size_t x_stride, int64_t n_rows, float *y,
                             int64_t y_stride) {
    const int64_t nb = n_in / TD_QK;
    const uint8_t *Wb = W, *X = xq;
    for (int64_t o0 = o_lo; o0 < o_hi; o0 += O_BLOCK) {
        const int64_t o1 = o0 + O_BLOCK < o_hi ? o0 + O_BLOCK : o_hi;
        for (int64_t r0 = 0; r0 < n_rows; r0 += TILE_ROWS) {
            const int nr = n_rows - r0 < TILE_ROWS ? (int)(n_rows - r0) : TILE_ROWS;
            for (int64_t o = o0; o < o1; o++)
                pair_rows_nr(k, nr, Wb + (size_t)o * w_stride, nb, X + (size_t)r0 * x_stride, x_stride,
                             y + r0 * y_stride + o, y_stride);
        }
    }
}

void td_quant_avx2_matmul_q4_1(const void *W, size_t w_stride, int64_t n_in, int64_t o_lo, int64_t o_hi,
                               const void *xq, size_t x_stride, int64_t n_rows, float *y, int64_t y_stride) {
    blockwise_matmul(B_Q4_1, W, w_stride, n_in, o_lo, o_hi, xq, x_stride, n_rows, y, y_stride);
}

void td_quant_avx2_dot_q4_1(int64_t n, float *s, const void *x, const void *y) {
    blockwise_matmul(B_Q4_1, x, 0, n, 0, 1, y, 0, 1, s, 1);
}

void td_quant_avx2_matmul_q8_0(const void *W, size_t w_stride, int64_t n_in, int64_t o_lo, int64_t o_hi,
                               const void *xq, size_t x_stride, int64_t n_rows, float *y, int64_t y_stride) {
    blockwise_matmul(B_Q8_0, W, w_stride, n_in, o_lo, o_hi, xq, x_stride, n_rows, y, y_stride);
}

void td_quant_avx2_dot_q8_0(int64_t n, float *s, const void *x, const void *y) {
    blockwise_matmul(B_Q8_0, x, 0, n, 0, 1, y, 0, 1, s, 1);
}
