/* model_internal.h — structures shared by the files of the model module
 * (loading, KV cache, forward pass). Not part of the module's contract:
 * other modules include model.h only.
 */
#ifndef TD_MODEL_INTERNAL_H
#define TD_MODEL_INTERNAL_H

#include <pthread.h>

#include "cuda/cuda.h"
#include "model/model.h"
#include "quant/quant.h"

/* A matrix of n_out rows of n_in elements, borrowed from the GGUF mapping,
 * or (a tensor-parallel rank's slice: some rows, or some columns of every
 * row) an owned copy of its part, own != NULL. The kernels do not care. */
typedef struct td_weight {
    const void *data; /* (n_out, n_in) of type */
    uint32_t type;
    int64_t n_in, n_out;
    void *own;        /* == data when the slice is a copy; freed with the model */
    /* FAST's tiled copy (td_quant_tile), made by td_model_tile; NULL before,
     * or for a type without one. Read only by contexts that have been
     * through td_model_tile (its lock orders the write before them). */
    const void *tiled;
} td_weight;

/* What a tensor-parallel rank holds (model_load.c); an unsplit model is rank
 * 0 of 1 holding everything. Every split is contiguous and in rank order:
 * KV heads (each with its GQA group of query heads), FFN rows in whole
 * chunks of ff_chunk, vocabulary rows in units of TD_SHARD_VOCAB_UNIT. */
typedef struct td_shard {
    int32_t rank, size;
    int32_t kv_head0, n_head_kv;  /* KV heads [kv_head0, kv_head0 + n_head_kv) */
    int32_t head0, n_head;        /* their query heads */
    int32_t ff0, n_ff;            /* FFN rows (w_gate, w_up) = w_down's inputs */
    int32_t vocab0, n_vocab;      /* output (and embedding) rows */
    int32_t ff_chunk;             /* FFN inputs per chunk of the invariant order */
    /* every layer's wo and w_down cut into whole blocks at the invariant
     * order's chunks (not so for K-quants on narrow heads): else that
     * order is unavailable */
    bool chunks_ok;
} td_shard;

#define TD_SHARD_VOCAB_UNIT 32 /* the kernels' block of weight rows */

/* The part [lo, hi) of n units that rank of size ranks holds: contiguous,
 * in rank order, the first n % size ranks one unit more (3 KV heads on 2
 * ranks: 2 + 1). */
static inline void td_shard_split(int64_t n, int32_t rank, int32_t size, int64_t *lo, int64_t *hi) {
    *lo = (n * rank + size - 1) / size;
    *hi = (n * (rank + 1) + size - 1) / size;
}

/* The vocabulary rows [lo, hi) a rank holds: TD_SHARD_VOCAB_UNIT rows at a
 * time, the last unit possibly short. */
static inline void td_shard_vocab(int64_t n_vocab, int32_t rank, int32_t size, int64_t *lo, int64_t *hi) {
    td_shard_split((n_vocab + TD_SHARD_VOCAB_UNIT - 1) / TD_SHARD_VOCAB_UNIT, rank, size, lo, hi);
    *lo *= TD_SHARD_VOCAB_UNIT;
    *hi = *hi * TD_SHARD_VOCAB_UNIT < n_vocab ? *hi * TD_SHARD_VOCAB_UNIT : n_vocab;
}

typedef struct td_layer {
    float *attn_norm;              /* (n_embd) owned f32 copy */
    float *ffn_norm;               /* (n_embd) */
    td_weight wq, wk, wv, wo;      /* q: (n_head*head_dim, n_embd) k,v: (kv_dim, n_embd) o: (n_embd, n_head*head_dim) */
    td_weight w_gate, w_up, w_down; /* gate, up: (n_ff, n_embd) down: (n_embd, n_ff) */
    float *bq, *bk, *bv;           /* qwen2 biases, NULL otherwise */
} td_layer;

struct td_model {
    td_hparams hp;
    td_weight tok_embd;   /* (n_vocab, n_embd) */
    td_weight output;     /* (n_vocab, n_embd); == tok_embd when tied */
    float *output_norm;   /* (n_embd) */
    float *rope_factors;  /* (n_rot/2) or NULL: per-frequency divisors */
    td_layer *layers;     /* (n_layer) */
    td_shard shard;       /* this rank's part (all of it unless split) */
    uint64_t weight_bytes; /* of this rank's part */
    /* The weights on a CUDA device, uploaded by the first context there
     * (model_device.c); the lock makes that one-time write safe while the
     * model is otherwise shared read-only. */
    pthread_mutex_t device_lock;
    td_cuda_model *cuda;
    /* td_model_tile ran (under device_lock too), and the bytes it took */
    bool tiles_done;
    uint64_t tiled_bytes;
};

/* Makes the tiled copies of the weights FAST's kernels can read tiled
 * (model_tiles.c), once per model, on the first pass of a CPU context
 * computing FAST or TP_INVARIANT: same bits, one linear stream per column
 * tile. True
 * when the copies exist; false when the CPU has no tiled kernels or memory
 * ran out (the kernels then read GGUF's rows: slower, same bits). */
bool td_model_tile(const td_model *m);

/* The model's CUDA copy on device `index`, uploading it on first use. */
int td_model_cuda(const td_model *m, int32_t index, td_cuda_model **out, td_err *err);
/* Its copy's chunks for the invariant order (cuda.h), uploaded on first
 * use; TD_E_UNSUPPORTED where the chunks are not whole blocks. */
int td_model_cuda_chunks(const td_model *m, td_err *err);

/* KV pages hold KV_PAGE positions of every layer for one sequence:
 * layout (n_layer, 2 [k,v], KV_PAGE, kv_dim) fp16 values. fp16 halves the
 * cache and matches the reference implementation's rounding. */
#define TD_KV_PAGE 64

/* The leader side of a tensor-parallel group in a server (group.c): every
 * pass and cache operation on the led context and cache is broadcast to
 * the other ranks before it runs, one at a time (mu). */
typedef struct td_lead {
    td_comm *comm;
    pthread_mutex_t mu;
    int32_t n_layer;
} td_lead;

/* What the leader broadcasts before each step. */
enum { TD_STEP_FORWARD = 1, TD_STEP_TRUNCATE = 2, TD_STEP_COMPACT = 3, TD_STEP_STOP = 4 };
typedef struct td_step {
    int32_t op, seq, a, n; /* forward: a = skip given, n rows; truncate: a = len; compact: a = base, n keep */
} td_step;
/* Broadcasts a step and its payloads (NULL/0 for none); TD_OK or the comm's error. */
int td_lead_send(td_lead *l, const td_step *s, const void *p1, size_t b1, const void *p2, size_t b2, td_err *err);
/* forward.c: the context's leader, set by td_model_group_lead */
void td_ctx_set_lead(td_ctx *c, td_lead *l);
const td_model *td_ctx_model(const td_ctx *c);

struct td_kv {
    struct td_lead *lead; /* a group leader's cache: operations are broadcast first */
    int32_t n_layer, kv_dim, max_seqs, max_len, pages_per_seq;
    int32_t *len;      /* (max_seqs) cached positions per sequence */
    uint16_t **pages;  /* (max_seqs * pages_per_seq), NULL until first used */
    size_t bytes;
    /* A cache first used by a CUDA context lives on that device instead of
     * in pages (lengths stay here); it never moves back. */
    td_cuda_kv *cuda;
};

/* Pointer to the K (which = 0) or V (which = 1) vector of a position. */
static inline uint16_t *td_kv_at(const struct td_kv *kv, int32_t seq, int32_t layer,
                                 int which, int32_t pos) {
    uint16_t *page = kv->pages[(size_t)seq * kv->pages_per_seq + pos / TD_KV_PAGE];
    size_t slot = ((size_t)(layer * 2 + which) * TD_KV_PAGE + (size_t)(pos % TD_KV_PAGE));
    return page + slot * (size_t)kv->kv_dim;
}

/* Makes sure pages exist for positions [0, len) of seq. */
int td_kv_reserve(struct td_kv *kv, int32_t seq, int32_t len);

/* ---- elementwise operators (ops.c); fixed reduction order per call ---- */
void td_op_rmsnorm(float *out, const float *x, const float *w, int64_t n, float eps);
/* td_op_rmsnorm of rows rows (row r at x + r * stride, out + r * stride),
 * four at a time with their sums of squares interleaved: each row's chain
 * of double adds is the one td_op_rmsnorm runs, so the same bits, but four
 * chains hide each other's add latency. */
void td_op_rmsnorm_rows(float *out, const float *x, const float *w, int64_t n, float eps, int64_t rows,
                        int64_t stride);
/* gate = silu(gate) * up, with td_op_exp; the AVX2 form gives the same bits */
typedef void (*td_silu_mul_fn)(float *gate, const float *up, int64_t n);
void td_op_silu_mul_scalar(float *gate, const float *up, int64_t n);
void td_op_silu_mul_avx2(float *gate, const float *up, int64_t n);
/* e^x as the reference computes it in vectors (a few ulp; 0 for -inf) */
float td_op_exp(float x);
/* Sum of eight lanes in the reference's fixed order */
float td_op_hsum8(const float l[8]);
/* Narrows K/V rows into the fp16 cache (round to nearest even). */
typedef void (*td_to_f16_fn)(const float *x, uint16_t *y, int64_t n);

/* Attention of several query heads that read one KV head of one sequence
 * (a row's GQA group, several rows of a verification tree or a prefill
 * chunk). Query i sees the cache [0, base), then the cache slots
 * chain[0..n_chain) (a tree row's ancestors and itself). The query and the
 * softmax weights are rounded to fp16, as the reference does to meet the
 * fp16 cache; sums stay f32. Each query's result is the same bitwise
 * whichever other queries share the call. */
typedef struct td_attn_query {
    const float *q;              /* head_dim */
    float *out;                  /* head_dim */
    float *scores;               /* room for base + n_chain + 8 floats */
    float *lanes;                /* TD_ATTN_LANE_SETS * head_dim floats of scratch */
    int32_t base;
    const int32_t *chain;
    int32_t n_chain;
} td_attn_query;

#define TD_ATTN_MAX_QUERIES 16
#define TD_ATTN_LANE_SETS 32     /* positions mod 32: the lone-row V sum's accumulators */
#define TD_ATTN_TILE 64          /* cache positions widened to f32 at a time */

typedef struct td_attn_batch {
    const struct td_kv *kv;
    int32_t seq, layer;
    int32_t head_off;            /* element offset of the KV head in a cache row */
    int32_t head_dim;
    float scale;
    const td_attn_query *qs;
    int32_t n_q;                 /* 1 .. TD_ATTN_MAX_QUERIES */
    float *tile;                 /* TD_ATTN_TILE * head_dim floats of scratch */
    bool lone;                   /* the pass's only row: llama.cpp's one-token order */
} td_attn_batch;
typedef void (*td_attend_fn)(const td_attn_batch *a);
#define TD_ATTN_MAX_HEAD_DIM 256

typedef void (*td_rope_fn)(float *head, const float *cs, int32_t n_rot, td_rope_kind kind);
typedef struct td_op_kernels {
    td_to_f16_fn to_f16;
    td_attend_fn attend;
    td_attend_fn attend_lone; /* td_attn_batch.lone passes */
    td_silu_mul_fn silu_mul;
    td_rope_fn rope;
} td_op_kernels;
/* The fastest variant this CPU runs (AVX2+F16C, else scalar). */
td_op_kernels td_op_select(int32_t head_dim);
void td_op_to_f16_avx2(const float *x, uint16_t *y, int64_t n);
/* Scalar form of both kinds of pass (batched, and a.lone below). */
void td_op_attend_scalar(const td_attn_batch *a);
void td_op_attend_avx2(const td_attn_batch *a); /* head_dim % 8 == 0 */
/* A pass of one row in TD_NUMERICS_LLAMACPP (a.lone): llama.cpp computes a
 * one-token batch's attention products with its f16 vector dot (four
 * accumulators of eight lanes, 32 elements a step) instead of the batched
 * kernel's single accumulator. Same softmax as the batched forms. */
void td_op_attend_lone_avx2(const td_attn_batch *a); /* head_dim % 8 == 0 */
/* Rounds a float to fp16 precision (what the reference does to attention
 * weights before they meet the fp16 V cache). */
float td_op_round_f16(float x);
/* Rotates pairs of a head vector in place; cs holds (n_rot/2) x {cos, sin}. */
void td_op_rope(float *head, const float *cs, int32_t n_rot, td_rope_kind kind);
/* td_op_rope eight pairs at a time, the same two operations per element, so
 * the same bits; n_rot % 16 == 0 (td_op_select checks). */
void td_op_rope_avx2(float *head, const float *cs, int32_t n_rot, td_rope_kind kind);

#endif
