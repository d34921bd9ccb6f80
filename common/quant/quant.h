/* quant.h — tensor element types: the one type table (block layout, scalar
 * reference conversions) and the CPU kernels (dot products, batched matmul).
 *
 * Type ids are GGUF's on-disk ggml_type numbers. Every kernel has a scalar
 * reference (td_quant_traits_ref); td_quant_traits picks the fastest variant
 * the running CPU supports (AVX2+FMA, else scalar). The choice, and the
 * TD_KERNELS cap on it, are settled once, at the first lookup: setting
 * TD_KERNELS later changes nothing. A variant never changes
 * how a single dot product is reduced between calls, so results do not depend
 * on batch size (batch invariance, ARCHITECTURE.md §1.2).
 */
#ifndef TD_QUANT_H
#define TD_QUANT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/util.h"

typedef enum td_type {
    TD_TYPE_F32 = 0,
    TD_TYPE_F16 = 1,
    TD_TYPE_Q4_0 = 2,
    TD_TYPE_Q4_1 = 3,
    TD_TYPE_Q5_0 = 6,
    TD_TYPE_Q5_1 = 7,
    TD_TYPE_Q8_0 = 8,
    TD_TYPE_Q8_1 = 9,
    TD_TYPE_Q2_K = 10,
    TD_TYPE_Q3_K = 11,
    TD_TYPE_Q4_K = 12,
    TD_TYPE_Q5_K = 13,
    TD_TYPE_Q6_K = 14,
    TD_TYPE_Q8_K = 15,
    TD_TYPE_BF16 = 30,
    TD_TYPE_COUNT = 31,
} td_type;

/* x: one weight row (n elements, type t); y: one activation row already
 * converted to traits(t)->vec_dot_type; *s receives the dot product. */
typedef void (*td_vec_dot_fn)(int64_t n, float *s, const void *x, const void *y);
typedef void (*td_to_float_fn)(const void *src, float *dst, int64_t n);
typedef void (*td_from_float_fn)(const float *src, void *dst, int64_t n);

typedef struct td_type_traits {
    const char *name;          /* "Q4_1"; NULL for ids we do not know */
    uint32_t block_elems;      /* elements per block */
    uint32_t block_bytes;      /* bytes per block */
    bool weight_ok;            /* usable as a model weight type */
    td_to_float_fn to_float;   /* n % block_elems == 0 */
    td_from_float_fn from_float; /* quantize (reference rounding rules) */
    td_type vec_dot_type;      /* what activations are converted to */
    td_vec_dot_fn vec_dot;     /* NULL if not a weight type */
} td_type_traits;

/* Table row for a GGUF type id; NULL when the id is unknown or retired. */
const td_type_traits *td_quant_traits(uint32_t type);
/* Same, but always the scalar reference kernels (for tests). */
const td_type_traits *td_quant_traits_ref(uint32_t type);
/* Name of the kernel family td_quant_traits selected: "avx2+avx512vnni",
 * "avx2" or "scalar". */
const char *td_quant_kernel_name(void);
/* True when FAST's tiled kernels take AMX tile products for passes of
 * several rows (quant_tiled_amx.c): same bits as without, so the family
 * name stays; TD_KERNELS=avx512 turns it off. */
bool td_quant_uses_amx(void);

/* Bytes of a row of n elements; 0 if n is not a multiple of the block size or
 * the type is unknown. */
size_t td_quant_row_bytes(uint32_t type, int64_t n);

/* fp16 / bf16 scalar conversions. */
float td_fp16_to_f32(uint16_t h);
uint16_t td_f32_to_fp16(float f);
float td_bf16_to_f32(uint16_t h);
uint16_t td_f32_to_bf16(float f);

/* Summation order of the matmuls (and, for the model, of attention).
 *   REFERENCE: llama.cpp's x86 CPU order, block by block (one convert and
 *     fma per 32 weights): on Q4_1 and Q8_0 weights the logits carry the
 *     reference's bits.
 *   LLAMACPP: the same matmuls; the model also copies llama.cpp's one
 *     batch-dependent step (td_attn_batch.lone), so that token-by-token
 *     decoding carries its bits too, at the price of batch invariance.
 *   FAST: column-wise kernels (one vector lane per output column, blocks
 *     summed first to last in one accumulator), so that work is done once
 *     per block, row and column; passes over several activation rows
 *     (prefill, verification) cost much less, and results differ from the
 *     reference in the last bits. The engine's default (td_ctx).
 *   TP_INVARIANT: FAST's kernels; the model sums the projections whose
 *     inputs a tensor-parallel split cuts (attention output, MLP down) chunk
 *     by fixed chunk, left to right, so a model split across N ranks gives
 *     the unsplit model's bits (forward.c). Matmuls themselves run as FAST.
 * Formats without a reference-order kernel have one kernel, used by all.
 * Every order is fixed per output, so matmul results stay batch invariant. */
typedef enum td_numerics { TD_NUMERICS_REFERENCE, TD_NUMERICS_FAST, TD_NUMERICS_LLAMACPP,
                            TD_NUMERICS_TP_INVARIANT } td_numerics;

/* Batched matrix-vector products, the hot spot of the whole engine.
 *   W:  n_out rows of n_in elements of type wtype, row stride row_bytes(wtype,n_in)
 *   xq: n_rows activation rows, each already converted to vec_dot_type,
 *       row stride td_quant_row_bytes(vec_dot_type, n_in)
 *   y:  n_rows x y_stride floats; y[r*y_stride + o] = dot(W[o], x[r])
 * Only output rows [o_lo, o_hi) are computed, so threads can split the work.
 * Each weight row is read once for all n_rows activation rows. Reference
 * order; td_quant_matmul_in chooses. TD_OK, or TD_E_ARG (nothing computed)
 * for a type that is not a weight type, n_in not a whole number of blocks,
 * a bad [o_lo, o_hi) or row count, or a y_stride shorter than o_hi. */
int td_quant_matmul(uint32_t wtype, const void *W, int64_t n_in,
                    int64_t o_lo, int64_t o_hi,
                    const void *xq, int64_t n_rows,
                    float *y, int64_t y_stride);
int td_quant_matmul_in(td_numerics order, uint32_t wtype, const void *W, int64_t n_in,
                        int64_t o_lo, int64_t o_hi, const void *xq, int64_t n_rows,
                       float *y, int64_t y_stride);
/* Same, over a sub-block of a larger matrix: weight row o starts at
 * W + o*w_stride and activation row r at xq + r*x_stride (strides in bytes,
 * at least the row bytes of n_in elements), so a run of whole blocks of
 * every row (one chunk of the inputs) is a matmul of its own. */
int td_quant_matmul_strided(td_numerics order, uint32_t wtype, const void *W, size_t w_stride, int64_t n_in,
                            int64_t o_lo, int64_t o_hi, const void *xq, size_t x_stride, int64_t n_rows,
                            float *y, int64_t y_stride);
/* FAST's Q4_1 and Q8_0 kernels keep one vector lane per output column. In
 * GGUF's layout a lane's weights are a row, so a pass reads 16 rows side by
 * side; the tiled copy stores each block of 16 rows' codes as the kernel
 * loads them, one linear stream (the decode pass reads GGUF's rows ~10 %
 * slower). Same bits either way.
 * td_quant_tiled_bytes: bytes of the tiled copy of an (n_out, n_in) matrix,
 *   or 0 when wtype has no tiled form with this CPU's kernels (only Q4_1
 *   and Q8_0 with AVX2 or AVX512-VNNI) or the shape is bad.
 * td_quant_tile: writes that copy of W (GGUF rows, n_out x n_in) to dst.
 * td_quant_matmul_tiled: td_quant_matmul_strided(TD_NUMERICS_FAST, ...)
 *   over blocks [b0, b1) of every row (one chunk of the inputs; the whole
 *   row is b0 = 0, b1 = n_in / 32) of the matrix T is a copy of, with row
 *   r's activations for block b0 on at xq + r * x_stride; o_lo a multiple
 *   of TD_QUANT_TILE_COLS. TD_OK, or TD_E_ARG with nothing computed. */
#define TD_QUANT_TILE_COLS 16
size_t td_quant_tiled_bytes(uint32_t wtype, int64_t n_in, int64_t n_out);
int td_quant_tile(uint32_t wtype, const void *W, int64_t n_in, int64_t n_out, void *dst);
int td_quant_matmul_tiled(uint32_t wtype, const void *T, int64_t n_in, int64_t n_out, int64_t b0, int64_t b1,
                          int64_t o_lo, int64_t o_hi, const void *xq, size_t x_stride, int64_t n_rows, float *y,
                          int64_t y_stride);
/* Revision of the orders' bits, raised whenever a mode's results change
 * (2: FAST's column-wise kernels and output head). Workers put it in their
 * fingerprint, so that workers of two revisions never pass a sequence
 * between them. */
#define TD_NUMERICS_REVISION 2

/* "reference" / "fast" / "llamacpp" / "tp-invariant" */
const char *td_numerics_name(td_numerics order);

/* Converts n_rows rows of n_in floats (stride n_in) to vec_dot_type of wtype;
 * dst holds n_rows * row_bytes(vec_dot_type, n_in) bytes. TD_OK, or TD_E_ARG
 * for an unknown weight type, n_in not a whole number of its blocks or
 * n_rows < 0. */
int td_quant_activations(uint32_t wtype, const float *x, int64_t n_in,
                          int64_t n_rows, void *dst);

/* The integer dot instructions of the kernels, for measuring one core's
 * peak: form 0, 1, 2... names one ("vpdpbusd zmm", ...); false when there is
 * no such form or this CPU does not run it. td_quant_peak_run issues iters x
 * macs_per_iter int8 multiply-adds back to back on independent accumulators
 * (time it to get the rate); its value means nothing. */
bool td_quant_peak_form(int form, const char **name, int64_t *macs_per_iter);
int64_t td_quant_peak_run(int form, int64_t iters);

#endif
