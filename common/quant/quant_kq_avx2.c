/* quant_kq_avx2.c — AVX2/FMA kernels for the K-quant weights (Q4_K, Q5_K,
 * Q6_K) against Q8_K activations. Built with -mavx2 -mfma -mf16c; reached only
 * through the table td_quant_traits hands out after checking the CPU. Built a
 * second time by quant_kq_avx512.c for AVX512-VNNI (dot4_scaled_add in
 * quant_simd.h), with the same integers and so the same bits.
 *
 * Within a 256-element super-block everything is an exact integer sum (the
 * 6-bit/8-bit sub-scales are integers too); each (weight row, activation row)
 * pair then takes one or two fmas per super-block into its own accumulator, in
 * the same order whatever tile it is computed in (batch invariance).
 */
#include <string.h>

#include "quant/quant_impl.h"
#include "quant/quant_simd.h"

#define TILE_ROWS 4 /* activation rows per pass over a weight row */

enum kkind { K_Q4, K_Q5, K_Q6 };

INLINE size_t kw_bytes(enum kkind k) {
    return k == K_Q4 ? sizeof(td_block_q4_k) : k == K_Q5 ? sizeof(td_block_q5_k) : sizeof(td_block_q6_k);
}

/* Word w of s (both 128-bit lanes hold the same 8 int16 words) in every
 * int32 lane, in the form dot4_scaled_add takes: the per-sub-block scale. */
static inline __m256i bcast_word(__m256i s, int w) {
    return _mm256_shuffle_epi8(s, _mm256_set1_epi32(kq_scale_ctl(w)));
}

/* Q4_K / Q5_K: sub-block j (32 elements) of a super-block, codes 0..15/31. */
INLINE __m256i k45_codes(enum kkind k, const uint8_t *qs, __m256i qh, int j) {
    __m256i v = _mm256_loadu_si256((const __m256i *)(qs + 32 * (j / 2)));
    if (j & 1)
        v = _mm256_srli_epi16(v, 4);
    v = _mm256_and_si256(v, _mm256_set1_epi8(0x0F));
    if (k == K_Q5) { /* bit j of qh[l] -> 0x10 of byte l */
        __m256i h = j < 4 ? _mm256_slli_epi16(qh, 4 - j) : _mm256_srli_epi16(qh, j - 4);
        v = _mm256_or_si256(v, _mm256_and_si256(h, _mm256_set1_epi8(0x10)));
    }
    return v;
}

/* One super-block of a Q4_K/Q5_K weight row against nr activation rows. */
INLINE void k45_block(enum kkind k, int nr, const uint8_t *blk, const td_block_q8_k *const *yb,
                      __m256 *acc) {
    uint16_t d16, dmin16;
    memcpy(&d16, blk, 2);
    memcpy(&dmin16, blk + 2, 2);
    const float d = _cvtsh_ss(d16), dmin = _cvtsh_ss(dmin16);
    /* the 6-bit scales and mins, four bytes at a time (td_quant_kscales) */
    uint32_t w0, w1, w2;
    memcpy(&w0, blk + 4, 4);
    memcpy(&w1, blk + 8, 4);
    memcpy(&w2, blk + 12, 4);
    const uint64_t sc64 = (w0 & 0x3F3F3F3Fu) |
                          (uint64_t)((w2 & 0x0F0F0F0Fu) | ((w0 >> 2) & 0x30303030u)) << 32;
    const uint64_t mn64 = (w1 & 0x3F3F3F3Fu) |
                          (uint64_t)(((w2 >> 4) & 0x0F0F0F0Fu) | ((w1 >> 2) & 0x30303030u)) << 32;
    const __m128i sc16 = _mm_cvtepu8_epi16(_mm_cvtsi64_si128((long long)sc64));
    const __m256i scales = _mm256_broadcastsi128_si256(sc16);
    /* mins repeated per pair of 16-element bsums */
    const __m128i mdup = _mm_shuffle_epi8(_mm_cvtsi64_si128((long long)mn64),
                                          _mm_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7));
    const __m256i mins = _mm256_cvtepu8_epi16(mdup);
    const uint8_t *qs = blk + (k == K_Q4 ? 16 : 48);
    const __m256i qh = k == K_Q5 ? load256(blk + 16) : _mm256_setzero_si256();

    __m256i isum[TILE_ROWS];
    UNROLL
    for (int r = 0; r < nr; r++)
        isum[r] = _mm256_setzero_si256();
    UNROLL
    for (int j = 0; j < 8; j++) {
        __m256i q = k45_codes(k, qs, qh, j), s = bcast_word(scales, j);
        UNROLL
        for (int r = 0; r < nr; r++)
            isum[r] = dot4_scaled_add(isum[r], q, load256(yb[r]->qs + 32 * j), s);
    }
    UNROLL
    for (int r = 0; r < nr; r++) {
        __m256i msum = _mm256_madd_epi16(load256(yb[r]->bsums), mins);
        acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d * yb[r]->d), _mm256_cvtepi32_ps(isum[r]), acc[r]);
        acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(-dmin * yb[r]->d), _mm256_cvtepi32_ps(msum), acc[r]);
    }
}

/* One Q6_K super-block against nr activation rows:
 * sum_e d sc (q_e - 32) y_e = d (sum sc q y - 32 sum_g sc_g bsum_g). */
INLINE void q6_block(int nr, const uint8_t *blk, const td_block_q8_k *const *yb, __m256 *acc) {
    const td_block_q6_k *x = (const td_block_q6_k *)blk;
    uint16_t d16;
    memcpy(&d16, &x->d, 2);
    const float d = _cvtsh_ss(d16);
    const __m256i scales = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)x->scales));
    const __m256i m4 = _mm256_set1_epi8(0x0F);

    __m256i isum[TILE_ROWS];
    UNROLL
    for (int r = 0; r < nr; r++) {
        __m256i corr = _mm256_madd_epi16(load256(yb[r]->bsums), scales); /* sum_g sc_g bsum_g */
        isum[r] = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(corr, 5));
    }
    UNROLL
    for (int h = 0; h < 2; h++) {
        const __m256i A = load256(x->ql + 64 * h), B = load256(x->ql + 64 * h + 32);
        const __m256i H = load256(x->qh + 32 * h), m30 = _mm256_set1_epi8(0x30);
        /* high bits moved to 0x30 of each byte; shifts stay inside bytes
         * because the masks clear whatever crosses */
        __m256i q[4];
        q[0] = _mm256_or_si256(_mm256_and_si256(A, m4), _mm256_and_si256(_mm256_slli_epi16(H, 4), m30));
        q[1] = _mm256_or_si256(_mm256_and_si256(B, m4), _mm256_and_si256(_mm256_slli_epi16(H, 2), m30));
        q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(A, 4), m4), _mm256_and_si256(H, m30));
        q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(B, 4), m4),
                               _mm256_and_si256(_mm256_srli_epi16(H, 2), m30));
        /* groups 8h..8h+7 in both lanes; vector i spans groups 8h+2i (low
         * 16 elements) and 8h+2i+1 (high 16) */
        const __m256i sh = h ? _mm256_permute2x128_si256(scales, scales, 0x11)
                               : _mm256_permute2x128_si256(scales, scales, 0x00);
        UNROLL
        for (int i = 0; i < 4; i++) {
            const __m256i lo = _mm256_set1_epi32(kq_scale_ctl(2 * i));
            const __m256i hi = _mm256_set1_epi32(kq_scale_ctl(2 * i + 1));
            __m256i s = _mm256_shuffle_epi8(sh, _mm256_permute2x128_si256(lo, hi, 0x20));
            UNROLL
            for (int r = 0; r < nr; r++)
                isum[r] = dot4_scaled_add(isum[r], q[i], load256(yb[r]->qs + 128 * h + 32 * i), s);
        }
    }
    UNROLL
    for (int r = 0; r < nr; r++)
        acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d * yb[r]->d), _mm256_cvtepi32_ps(isum[r]), acc[r]);
}

INLINE void kq_row(enum kkind k, int nr, const uint8_t *w, const uint8_t *y, size_t ys,
                   int64_t nsb, float *out) {
    __m256 acc[TILE_ROWS];
    const td_block_q8_k *yb[TILE_ROWS];
    UNROLL
    for (int r = 0; r < nr; r++) {
        acc[r] = _mm256_setzero_ps();
        yb[r] = (const td_block_q8_k *)(y + (size_t)r * ys);
    }
    for (int64_t i = 0; i < nsb; i++) {
        const uint8_t *blk = w + (size_t)i * kw_bytes(k);
        td_quant_prefetch_ahead(blk, kw_bytes(k));
        if (k == K_Q6)
            q6_block(nr, blk, yb, acc);
        else
            k45_block(k, nr, blk, yb, acc);
        UNROLL
        for (int r = 0; r < nr; r++)
            yb[r]++;
    }
    UNROLL
    for (int r = 0; r < nr; r++)
        out[r] = hsum_ps(acc[r]);
}

/* Streams each weight row once, applying TILE_ROWS activation rows at a time
 * (the row stays in L1 between tiles). */
INLINE void kq_matmul(enum kkind k, const void *W, size_t w_stride, int64_t n_in, int64_t o_lo,
                      int64_t o_hi, const void *xq, size_t x_stride, int64_t n_rows, float *y,
                      int64_t y_stride) {
    const int64_t nsb = n_in / TD_QK_K;
    for (int64_t o = o_lo; o < o_hi; o++) {
        const uint8_t *w = (const uint8_t *)W + (size_t)o * w_stride;
        for (int64_t r0 = 0; r0 < n_rows; r0 += TILE_ROWS) {
            const uint8_t *yr = (const uint8_t *)xq + (size_t)r0 * x_stride;
            float out[TILE_ROWS];
            int nr = n_rows - r0 < TILE_ROWS ? (int)(n_rows - r0) : TILE_ROWS;
            switch (nr) {
            case 1: kq_row(k, 1, w, yr, x_stride, nsb, out); break;
            case 2: kq_row(k, 2, w, yr, x_stride, nsb, out); break;
            case 3: kq_row(k, 3, w, yr, x_stride, nsb, out); break;
            default: kq_row(k, 4, w, yr, x_stride, nsb, out); break;
            }
            for (int r = 0; r < nr; r++)
                y[(r0 + r) * y_stride + o] = out[r];
        }
    }
}

#define KQUANT(name, kind)                                                                  \
    void TD_KERNEL(matmul_##name)(const void *W, size_t w_stride, int64_t n_in, int64_t o_lo, \
                                  int64_t o_hi, const void *xq, size_t x_stride,              \
                                  int64_t n_rows, float *y, int64_t y_stride) {               \
        kq_matmul(kind, W, w_stride, n_in, o_lo, o_hi, xq, x_stride, n_rows, y, y_stride);  \
    }                                                                                       \
    void TD_KERNEL(dot_##name)(int64_t n, float *s, const void *x, const void *y) {         \
        kq_matmul(kind, x, 0, n, 0, 1, y, 0, 1, s, 1);                                      \
    }
KQUANT(q4_k, K_Q4)
KQUANT(q5_k, K_Q5)
KQUANT(q6_k, K_Q6)
