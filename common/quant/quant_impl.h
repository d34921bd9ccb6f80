/* quant_impl.h — private to common/quant: the on-disk block layouts and the
 * kernels each variant file provides to the type table (quant_table.c).
 *
 * Block layouts are GGUF's (see shared notes gguf-facts §2); fields are read
 * in place, so a weight row must be at least 2-byte aligned (Q8_K: 4).
 * Other modules include quant.h only.
 */
#ifndef TD_QUANT_IMPL_H
#define TD_QUANT_IMPL_H

#include "quant/quant.h"

#define TD_QK 32    /* elements per block of the legacy formats */
#define TD_QK_K 256 /* elements per K-quant super-block */

typedef struct { uint16_t d; uint8_t qs[16]; } td_block_q4_0;
typedef struct { uint16_t d, m; uint8_t qs[16]; } td_block_q4_1;
typedef struct { uint16_t d; uint8_t qh[4]; uint8_t qs[16]; } td_block_q5_0;
typedef struct { uint16_t d, m; uint8_t qh[4]; uint8_t qs[16]; } td_block_q5_1;
typedef struct { uint16_t d; int8_t qs[32]; } td_block_q8_0;
typedef struct { uint16_t d, s; int8_t qs[32]; } td_block_q8_1; /* s = fp16(d * sum(qs)) */
typedef struct {
    uint16_t d, dmin;
    uint8_t scales[12]; /* 8 x (6-bit scale, 6-bit min), packed */
    uint8_t qs[128];
} td_block_q4_k;
typedef struct {
    uint16_t d, dmin;
    uint8_t scales[12];
    uint8_t qh[32]; /* 5th bits */
    uint8_t qs[128];
} td_block_q5_k;
typedef struct {
    uint8_t ql[128]; /* low 4 bits */
    uint8_t qh[64];  /* high 2 bits */
    int8_t scales[16];
    uint16_t d;
} td_block_q6_k;
typedef struct {
    float d;
    int8_t qs[256];
    int16_t bsums[16]; /* sum of qs over each group of 16 */
} td_block_q8_k;

_Static_assert(sizeof(td_block_q4_0) == 18, "Q4_0 block");
_Static_assert(sizeof(td_block_q4_1) == 20, "Q4_1 block");
_Static_assert(sizeof(td_block_q5_0) == 22, "Q5_0 block");
_Static_assert(sizeof(td_block_q5_1) == 24, "Q5_1 block");
_Static_assert(sizeof(td_block_q8_0) == 34, "Q8_0 block");
_Static_assert(sizeof(td_block_q8_1) == 36, "Q8_1 block");
_Static_assert(sizeof(td_block_q4_k) == 144, "Q4_K block");
_Static_assert(sizeof(td_block_q5_k) == 176, "Q5_K block");
_Static_assert(sizeof(td_block_q6_k) == 210, "Q6_K block");
_Static_assert(sizeof(td_block_q8_k) == 292, "Q8_K block");

/* Unpacks the 12 scale bytes of a Q4_K/Q5_K block into 8 6-bit scales and
 * 8 6-bit mins. */
static inline void td_quant_kscales(const uint8_t s[12], uint8_t sc[8], uint8_t mn[8]) {
    for (int k = 0; k < 4; k++) {
        sc[k] = s[k] & 63;
        mn[k] = s[k + 4] & 63;
        sc[k + 4] = (uint8_t)((s[k + 8] & 0x0F) | ((s[k] >> 6) << 4));
        mn[k + 4] = (uint8_t)((s[k + 8] >> 4) | ((s[k + 4] >> 6) << 4));
    }
}

/* A batched matmul kernel: same meaning as td_quant_matmul, with the row
 * strides already computed. */
typedef void (*td_matmul_fn)(const void *W, size_t w_stride, int64_t n_in,
                             int64_t o_lo, int64_t o_hi,
                             const void *xq, size_t x_stride, int64_t n_rows,
                             float *y, int64_t y_stride);

/* quant_table.c: the matmul kernel of the selected variant (NULL = generic)
 * for a summation order. */
td_matmul_fn td_quant_matmul_kernel(uint32_t type, td_numerics order);

/* quant_matmul.c: the generic matmul, one vec_dot per pair. */
void td_quant_matmul_pairs(td_vec_dot_fn dot, const void *W, size_t w_stride, int64_t n_in,
                           int64_t o_lo, int64_t o_hi, const void *xq, size_t x_stride,
                           int64_t n_rows, float *y, int64_t y_stride);

/* quant_ref.c: scalar reference conversions and dot products. */
void td_quant_ref_to_f32(const void *src, float *dst, int64_t n);
void td_quant_ref_to_f16(const void *src, float *dst, int64_t n);
void td_quant_ref_to_bf16(const void *src, float *dst, int64_t n);
void td_quant_ref_to_q4_0(const void *src, float *dst, int64_t n);
void td_quant_ref_to_q4_1(const void *src, float *dst, int64_t n);
void td_quant_ref_to_q5_0(const void *src, float *dst, int64_t n);
void td_quant_ref_to_q5_1(const void *src, float *dst, int64_t n);
void td_quant_ref_to_q8_0(const void *src, float *dst, int64_t n);
void td_quant_ref_to_q8_1(const void *src, float *dst, int64_t n);
void td_quant_ref_to_q4_k(const void *src, float *dst, int64_t n);
void td_quant_ref_to_q5_k(const void *src, float *dst, int64_t n);
void td_quant_ref_to_q6_k(const void *src, float *dst, int64_t n);
void td_quant_ref_to_q8_k(const void *src, float *dst, int64_t n);

void td_quant_ref_dot_f32(int64_t n, float *s, const void *x, const void *y);
void td_quant_ref_dot_f16(int64_t n, float *s, const void *x, const void *y);
void td_quant_ref_dot_bf16(int64_t n, float *s, const void *x, const void *y);
void td_quant_ref_dot_q4_0(int64_t n, float *s, const void *x, const void *y);
void td_quant_ref_dot_q4_1(int64_t n, float *s, const void *x, const void *y);
void td_quant_ref_dot_q5_0(int64_t n, float *s, const void *x, const void *y);
void td_quant_ref_dot_q5_1(int64_t n, float *s, const void *x, const void *y);
void td_quant_ref_dot_q8_0(int64_t n, float *s, const void *x, const void *y);
void td_quant_ref_dot_q4_k(int64_t n, float *s, const void *x, const void *y);
void td_quant_ref_dot_q5_k(int64_t n, float *s, const void *x, const void *y);
void td_quant_ref_dot_q6_k(int64_t n, float *s, const void *x, const void *y);

/* quant_ref_quantize.c: scalar reference quantizers. */
void td_quant_ref_from_f32(const float *src, void *dst, int64_t n);
void td_quant_ref_from_f16(const float *src, void *dst, int64_t n);
void td_quant_ref_from_bf16(const float *src, void *dst, int64_t n);
void td_quant_ref_from_q4_0(const float *src, void *dst, int64_t n);
void td_quant_ref_from_q4_1(const float *src, void *dst, int64_t n);
void td_quant_ref_from_q5_0(const float *src, void *dst, int64_t n);
void td_quant_ref_from_q5_1(const float *src, void *dst, int64_t n);
void td_quant_ref_from_q8_0(const float *src, void *dst, int64_t n);
void td_quant_ref_from_q8_1(const float *src, void *dst, int64_t n);
void td_quant_ref_from_q4_k(const float *src, void *dst, int64_t n);
void td_quant_ref_from_q5_k(const float *src, void *dst, int64_t n);
void td_quant_ref_from_q6_k(const float *src, void *dst, int64_t n);
void td_quant_ref_from_q8_k(const float *src, void *dst, int64_t n);

/* quant_avx2.c (legacy blocks, floats, activation quantizers) and
 * quant_kq_avx2.c (K-quants): AVX2+FMA+F16C kernels, referenced only from the
 * table that td_quant_traits hands out after the CPU check. Each matmul
 * reduces every (row, output) pair exactly as its vec_dot does. */
void td_quant_avx2_from_f16(const float *src, void *dst, int64_t n);
void td_quant_avx2_from_q8_0(const float *src, void *dst, int64_t n);
void td_quant_avx2_from_q8_1(const float *src, void *dst, int64_t n);
void td_quant_avx2_from_q8_k(const float *src, void *dst, int64_t n);

void td_quant_avx2_dot_f32(int64_t n, float *s, const void *x, const void *y);
void td_quant_avx2_dot_f16(int64_t n, float *s, const void *x, const void *y);
void td_quant_avx2_dot_bf16(int64_t n, float *s, const void *x, const void *y);
void td_quant_avx2_dot_q4_0(int64_t n, float *s, const void *x, const void *y);
void td_quant_avx2_dot_q4_1(int64_t n, float *s, const void *x, const void *y);
void td_quant_avx2_dot_q5_0(int64_t n, float *s, const void *x, const void *y);
void td_quant_avx2_dot_q5_1(int64_t n, float *s, const void *x, const void *y);
void td_quant_avx2_dot_q8_0(int64_t n, float *s, const void *x, const void *y);
void td_quant_avx2_dot_q4_k(int64_t n, float *s, const void *x, const void *y);
void td_quant_avx2_dot_q5_k(int64_t n, float *s, const void *x, const void *y);
void td_quant_avx2_dot_q6_k(int64_t n, float *s, const void *x, const void *y);

void td_quant_avx2_matmul_q4_0(const void *W, size_t w_stride, int64_t n_in, int64_t o_lo,
                               int64_t o_hi, const void *xq, size_t x_stride, int64_t n_rows,
                               float *y, int64_t y_stride);
/* The column-wise FAST kernels (quant_colwise_avx2.c; the avx512 build in
 * quant_colwise_avx512.c): one lane per output column, on GGUF's rows
 * (_colwise) or on the tiled copy (_tiled, quant_tiled.c), with the same
 * bits. */
typedef void (*td_tiled_fn)(const void *T, int64_t nb_all, int64_t b0, int64_t b1, int64_t o_lo, int64_t o_hi,
                            const void *xq, size_t x_stride, int64_t n_rows, float *y, int64_t y_stride);
/* The tiled kernel of the active table for wtype, or NULL (no tiled form). */
td_tiled_fn td_quant_tiled_kernel(uint32_t wtype);
#define TD_QUANT_DECLARE_COLWISE(isa)                                                                   \
    void td_quant_##isa##_matmul_q4_1_colwise(const void *W, size_t w_stride, int64_t n_in, int64_t o_lo, \
                                              int64_t o_hi, const void *xq, size_t x_stride,            \
                                              int64_t n_rows, float *y, int64_t y_stride);              \
    void td_quant_##isa##_matmul_q8_0_colwise(const void *W, size_t w_stride, int64_t n_in, int64_t o_lo, \
                                              int64_t o_hi, const void *xq, size_t x_stride,            \
                                              int64_t n_rows, float *y, int64_t y_stride);            \
    void td_quant_##isa##_matmul_q4_1_tiled(const void *T, int64_t nb_all, int64_t b0, int64_t b1,        \
                                            int64_t o_lo, int64_t o_hi, const void *xq, size_t x_stride,  \
                                            int64_t n_rows, float *y, int64_t y_stride);                  \
    void td_quant_##isa##_matmul_q8_0_tiled(const void *T, int64_t nb_all, int64_t b0, int64_t b1,        \
                                            int64_t o_lo, int64_t o_hi, const void *xq, size_t x_stride,  \
                                            int64_t n_rows, float *y, int64_t y_stride);
/* The tiled copy's geometry (quant_tiled.c writes it, the _tiled kernels
 * read it): tiles of TD_QUANT_TILE_COLS (quant.h) weight rows; per block of
 * a tile 64 bytes of header dwords, then 64-byte code vectors, 4 for Q4_1
 * and 8 for Q8_0. */
static inline size_t td_quant_tile_code_vectors(bool q4_1) { return q4_1 ? 4 : 8; }
static inline size_t td_quant_tile_block_bytes(bool q4_1) { return 64 + 64 * td_quant_tile_code_vectors(q4_1); }
TD_QUANT_DECLARE_COLWISE(avx2)
TD_QUANT_DECLARE_COLWISE(avx512)
/* The same tiled kernels with AMX tile products for the integer sums
 * (quant_tiled_amx.c), same bits; passes of fewer rows than this take the
 * avx512 ones. Only where td_quant_amx_usable. */
#define TD_QUANT_AMX_MIN_ROWS 6
void td_quant_amx_matmul_q4_1_tiled(const void *T, int64_t nb_all, int64_t b0, int64_t b1, int64_t o_lo,
                                    int64_t o_hi, const void *xq, size_t x_stride, int64_t n_rows, float *y,
                                    int64_t y_stride);
void td_quant_amx_matmul_q8_0_tiled(const void *T, int64_t nb_all, int64_t b0, int64_t b1, int64_t o_lo,
                                    int64_t o_hi, const void *xq, size_t x_stride, int64_t n_rows, float *y,
                                    int64_t y_stride);
void td_quant_avx2_matmul_q4_1(const void *W, size_t w_stride, int64_t n_in, int64_t o_lo,
                               int64_t o_hi, const void *xq, size_t x_stride, int64_t n_rows,
                               float *y, int64_t y_stride);
void td_quant_avx2_matmul_q5_0(const void *W, size_t w_stride, int64_t n_in, int64_t o_lo,
                               int64_t o_hi, const void *xq, size_t x_stride, int64_t n_rows,
                               float *y, int64_t y_stride);
void td_quant_avx2_matmul_q5_1(const void *W, size_t w_stride, int64_t n_in, int64_t o_lo,
                               int64_t o_hi, const void *xq, size_t x_stride, int64_t n_rows,
                               float *y, int64_t y_stride);
void td_quant_avx2_matmul_q8_0(const void *W, size_t w_stride, int64_t n_in, int64_t o_lo,
                               int64_t o_hi, const void *xq, size_t x_stride, int64_t n_rows,
                               float *y, int64_t y_stride);
void td_quant_avx2_matmul_q4_k(const void *W, size_t w_stride, int64_t n_in, int64_t o_lo,
                               int64_t o_hi, const void *xq, size_t x_stride, int64_t n_rows,
                               float *y, int64_t y_stride);
void td_quant_avx2_matmul_q5_k(const void *W, size_t w_stride, int64_t n_in, int64_t o_lo,
                               int64_t o_hi, const void *xq, size_t x_stride, int64_t n_rows,
                               float *y, int64_t y_stride);
void td_quant_avx2_matmul_q6_k(const void *W, size_t w_stride, int64_t n_in, int64_t o_lo,
                               int64_t o_hi, const void *xq, size_t x_stride, int64_t n_rows,
                               float *y, int64_t y_stride);

/* quant_interleaved_avx512.c, quant_blockwise_avx512.c and
 * quant_kq_avx512.c: the integer-dot kernels above (legacy blocks and
 * K-quants) built for AVX512-VNNI + AVX512-VL (quant_simd.h), bitwise the
 * same results; the table uses them where the CPU has both. */
#define TD_QUANT_DECLARE_DOT(isa, name)                                                             \
    void td_quant_##isa##_dot_##name(int64_t n, float *s, const void *x, const void *y);            \
    void td_quant_##isa##_matmul_##name(const void *W, size_t w_stride, int64_t n_in, int64_t o_lo, \
                                        int64_t o_hi, const void *xq, size_t x_stride,              \
                                        int64_t n_rows, float *y, int64_t y_stride);
TD_QUANT_DECLARE_DOT(avx512, q4_0)
TD_QUANT_DECLARE_DOT(avx512, q4_1)
TD_QUANT_DECLARE_DOT(avx512, q5_0)
TD_QUANT_DECLARE_DOT(avx512, q5_1)
TD_QUANT_DECLARE_DOT(avx512, q8_0)
TD_QUANT_DECLARE_DOT(avx512, q4_k)
TD_QUANT_DECLARE_DOT(avx512, q5_k)
TD_QUANT_DECLARE_DOT(avx512, q6_k)

/* Peak-rate loops (quant_peak_*.c): iters x (chains) dot instructions on the
 * 128 bytes at src; the return value only keeps the work alive. */
int64_t td_quant_avx512_peak_dpbusd_zmm(const uint8_t *src, int64_t iters);
int64_t td_quant_avx512_peak_dpbusd_ymm(const uint8_t *src, int64_t iters);
int64_t td_quant_avx2_peak_maddubs_ymm(const uint8_t *src, int64_t iters);

#endif
