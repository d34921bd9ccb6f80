/* cuda.h — the CUDA backend of the model module: weights uploaded once, KV
 * caches on the device, and the batched forward pass computed in the CPU's
 * reference summation order (TD_NUMERICS_REFERENCE), operation for
 * operation, so that a pass's logits carry the same bits on either device;
 * or, asked for, in a FAST order of the device's own (td_cuda_ctx_set_fast).
 *
 * The model module is the only caller: it describes the model in the plain
 * structures below, validates rows and assigns cache slots, and hands each
 * pass over as a td_cuda_pass. This module knows nothing of GGUF or td_model.
 *
 * Threads: a td_cuda_model is read-only after upload and may be shared; a
 * td_cuda_ctx and a td_cuda_kv belong to one caller at a time.
 *
 * Built with -DTANDEM_CUDA=ON; otherwise every call that needs a device
 * fails with TD_E_UNSUPPORTED ("built without CUDA"), and the layout helpers
 * still work (they run on the host and are tested everywhere).
 */
#ifndef TD_CUDA_H
#define TD_CUDA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sample/sample.h"
#include "util/util.h"

/* ---- the model, as the model module describes it (host pointers) ---- */
typedef struct td_cuda_weight {
    const void *data; /* (n_out, n_in) of GGUF type `type` */
    uint32_t type;
    int64_t n_in, n_out;
} td_cuda_weight;

typedef struct td_cuda_layer {
    const float *attn_norm, *ffn_norm;       /* (n_embd) */
    td_cuda_weight wq, wk, wv, wo, w_gate, w_up, w_down;
    const float *bq, *bk, *bv;               /* qwen2 biases or NULL */
} td_cuda_layer;

typedef struct td_cuda_model_desc {
    int32_t n_vocab, n_embd, n_layer, n_ff, n_head, n_head_kv, head_dim, n_rot;
    bool rope_neox;
    float rms_eps;
    td_cuda_weight tok_embd, output;
    const float *output_norm;
    const td_cuda_layer *layers; /* (n_layer) */
    /* A tensor-parallel rank's part (see "Tensor-parallel groups" below):
     * n_head, n_head_kv and n_ff above are then the rank's, and tok_embd
     * and output hold its vocabulary rows [vocab0, vocab0 + n_vocab_rows)
     * of the n_vocab tokens. Unsplit: vocab0 0 and n_vocab_rows 0 or
     * n_vocab. */
    int32_t vocab0, n_vocab_rows;
} td_cuda_model_desc;

typedef struct td_cuda_model td_cuda_model;
typedef struct td_cuda_kv td_cuda_kv;
typedef struct td_cuda_ctx td_cuda_ctx;

/* True when this build has the CUDA backend. */
bool td_cuda_compiled(void);
/* Devices visible to the process (0 when none or not compiled); err says why
 * when there are none. */
int td_cuda_device_count(td_err *err);
/* "NVIDIA H200 (sm_90, 132 SMs)" into buf; TD_OK or an error. */
int td_cuda_device_name(int device, char *buf, size_t cap, td_err *err);

/* ---- weight layout on the device (host-side, no device needed) ----
 * Q4_1 and Q8_0 matrices are repacked for wide reads: a row's
 * quant codes as planes of 32-bit words (plane w: word w of every block),
 * the fp16 block scales (and Q4_1 minimums) in arrays of their own, the
 * block count of a row padded to a multiple of four. K-quant super-blocks
 * keep their GGUF bytes, each padded to whole 32-bit words (Q6_K: 210 to
 * 212); Q4_0, Q5_0 and Q5_1 blocks are repacked to whole words, codes
 * first; float matrices (F32, F16, BF16) stay as they are. The values are
 * untouched: a row unpacks to exactly what the GGUF row dequantizes to. */
typedef struct td_cuda_layout {
    size_t qs_bytes;    /* codes: n_out * padded blocks * (16 or 32); else the whole blocks */
    size_t d_bytes;     /* fp16 scales: n_out * padded blocks * 2; 0 but for Q4_1/Q8_0 */
    size_t m_bytes;     /* fp16 minimums (Q4_1) or 0 */
} td_cuda_layout;
/* Blocks of a row of n_in elements, padded to a multiple of four. */
int64_t td_cuda_layout_padded_blocks(int64_t n_in);
/* Weight types the backend runs: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K,
 * Q6_K, F32, F16, BF16. */
bool td_cuda_type_supported(uint32_t type);
/* Checks every matrix type and shape; names the first it cannot run. */
int td_cuda_check_model(const td_cuda_model_desc *d, td_err *err);
int td_cuda_layout_of(uint32_t type, int64_t n_in, int64_t n_out, td_cuda_layout *out, td_err *err);
/* Repacks a GGUF matrix into the three arrays (sizes from td_cuda_layout_of;
 * d and m unused, may be NULL, for K-quants and floats). */
void td_cuda_layout_pack(uint32_t type, const void *src, int64_t n_in, int64_t n_out, void *qs, uint16_t *d,
                         uint16_t *m);
/* Dequantizes row o of a packed matrix (the inverse, for tests). */
void td_cuda_layout_row(uint32_t type, const void *qs, const uint16_t *d, const uint16_t *m, int64_t n_in, int64_t o,
                        float *out);

/* ---- device objects ---- */
int td_cuda_model_upload(const td_cuda_model_desc *d, int device, td_cuda_model **out, td_err *err);
void td_cuda_model_free(td_cuda_model *m); /* accepts NULL */
size_t td_cuda_model_bytes(const td_cuda_model *m);
int td_cuda_model_device(const td_cuda_model *m);

/* The tensor-parallel invariant order's copies of wo and w_down: their
 * inputs cut into chunks (one per KV head's query heads; ff_chunk FFN
 * inputs), each chunk its own matrix, so that a pass computes every
 * chunk's partial sums apart and adds them up in chunk order
 * (td_cuda_ctx_set_invariant). A part holds chunks [attn0, attn0 + n_attn)
 * of the whole model's n_attn_all, and [ff0, ff0 + n_ff) of n_ff_all;
 * layers are the host weights of the upload (wo and w_down are read).
 * Uploaded once, by the caller that owns the model's one-time writes, before
 * any context computes that order; a second call does nothing. TD_E_ARG
 * when the chunks do not cut the part's matrices into whole blocks. */
typedef struct td_cuda_chunks_desc {
    int32_t attn_chunk, ff_chunk;     /* inputs per chunk of wo, of w_down */
    int32_t attn0, n_attn, n_attn_all;
    int32_t ff0, n_ff, n_ff_all;
    const td_cuda_layer *layers;      /* (n_layer) */
} td_cuda_chunks_desc;
int td_cuda_model_upload_chunks(td_cuda_model *m, const td_cuda_chunks_desc *d, td_err *err);
bool td_cuda_model_has_chunks(const td_cuda_model *m);

/* max_seqs sequences of at most max_len positions; a sequence's storage is
 * allocated on its first pass. */
int td_cuda_kv_create(const td_cuda_model *m, int32_t max_seqs, int32_t max_len, td_cuda_kv **out, td_err *err);
void td_cuda_kv_free(td_cuda_kv *kv); /* accepts NULL */
size_t td_cuda_kv_bytes(const td_cuda_kv *kv);
/* Moves cache slots base+keep[j] to base+j (keep ascending, keep[j] >= j). */
int td_cuda_kv_compact(td_cuda_kv *kv, int32_t seq, int32_t base, const int32_t *keep, int32_t n_keep, td_err *err);

int td_cuda_ctx_create(const td_cuda_model *m, int32_t max_rows, td_cuda_ctx **out, td_err *err);
void td_cuda_ctx_free(td_cuda_ctx *c); /* accepts NULL */
/* The summation order of the context's passes: the CPU's reference (the
 * default; every output's eight chains run over the whole row, so logits
 * carry the CPU reference's bits), or FAST: the blocks of a wide row are
 * split between warps and the slices added in a fixed order. FAST is batch
 * invariant too (a row's bits depend on nothing else in its pass) but not
 * the CPU's bits; it exists because long serial chains leave too few loads
 * in flight to use the GPU's memory bandwidth. */
void td_cuda_ctx_set_fast(td_cuda_ctx *c, bool fast);
bool td_cuda_ctx_fast(const td_cuda_ctx *c);
/* The tensor-parallel invariant order: wo's and w_down's products as the
 * partial sums of their chunks (td_cuda_model_upload_chunks), each in the
 * context's order (reference or FAST), gathered from every rank of a group
 * and added left to right in chunk order: the sum does not depend on which
 * rank computed which chunk, so a split into any number of ranks (and
 * none) gives the same bits. Not the CPU's tp-invariant bits (those come
 * from its own FAST kernels). TD_E_ARG when the model has no chunks. */
int td_cuda_ctx_set_invariant(td_cuda_ctx *c, bool on, td_err *err);
bool td_cuda_ctx_invariant(const td_cuda_ctx *c);
/* Decode-step graphs: passes of one shape (rows, rows with logits) replay a
 * captured CUDA graph instead of launching each kernel. On by default. */
void td_cuda_ctx_use_graphs(td_cuda_ctx *c, bool on);
/* With TD_CUDA_PROFILE=1 in the environment when the context was created
 * (a tuning aid: passes then run without graphs, an event after every
 * launch), the mean kernel time per pass by kind, as one line; otherwise
 * how the context launches a pass's kernels. Two more tuning aids, read at
 * creation: TD_CUDA_PDL=1 turns programmatic dependent launch on (each
 * kernel may then start loading weights while the one before finishes; off
 * by default until it has run on a GPU), and
 * TD_CUDA_TILE=A[:B] forces rows per matmul tile (1, 2, 4 or 8; B for the
 * SwiGLU matmul). Neither changes a bit of the results. */
int td_cuda_ctx_profile(const td_cuda_ctx *c, char *buf, size_t cap);
/* TD_CUDA_TILE's value: "A" or "A:B" with A and B in 1, 2, 4, 8 (B for the
 * SwiGLU matmul; "A" sets both). False, outputs untouched, for anything
 * else. Host code, in every build. */
bool td_cuda_tile_parse(const char *s, int *tile, int *tile_swiglu);
/* TD_CUDA_KSPLIT's value: "1", "2" or "4". False, output untouched, for
 * anything else. */
bool td_cuda_ksplit_parse(const char *s, int *ksplit);

/* ---- tensor-parallel groups ----
 * A rank of a model split between ranks (a desc with the rank's part)
 * computes its part of every pass and meets the other ranks at the points
 * where a split cuts a sum, through the caller's collectives:
 *   the embedding rows: each rank writes the rows of the tokens it holds
 *     and -0.0 (the exact identity of float addition) elsewhere; summed;
 *   the outputs of wo and w_down, per layer: each rank's partial sums over
 *     its heads / FFN rows, summed (in rank order: the collective's
 *     promise), then added to the residual stream, which stays whole and
 *     identical on every rank;
 *   the logits: each rank's vocabulary rows, gathered and laid out row by
 *     row, so that picks, summaries and scores run on whole rows.
 * This is the CPU split model's default order step for step, so a rank's
 * passes carry the bits a CPU rank of the same split computes in the same
 * numerics. In the invariant order (td_cuda_ctx_set_invariant) wo's and
 * w_down's chunk partials are gathered instead and added in chunk order.
 * The collectives take HOST buffers (the backend copies through pinned
 * memory around each one: MPI's transport) or, device_buffers set, this
 * device's buffers, which they read and write in place (NCCL's); either
 * way the kernels before a collective have finished when it is called. A
 * grouped context launches kernels one by one (no graph spans a
 * collective). */
typedef struct td_cuda_group {
    void *user;
    int32_t size;          /* ranks; this context's model is one of them */
    bool device_buffers;   /* the collectives take device pointers (NCCL) */
    const int32_t *vocab0; /* (size + 1): rank r's vocabulary rows are [vocab0[r], vocab0[r + 1]) */
    /* (size + 1) each, for the invariant order: rank r's chunks of wo's
     * inputs are [attn0[r], attn0[r + 1]), of w_down's [ff0[r], ff0[r + 1]) */
    const int32_t *attn0, *ff0;
    /* buf[0..n) summed over the ranks, in place */
    int (*allreduce_sum)(void *user, float *buf, int64_t n, td_err *err);
    /* rank r's counts[r] floats into recv, back to back in rank order; this
     * rank's already sit at their place (send == recv + its offset) */
    int (*allgatherv)(void *user, const float *send, int64_t n, float *recv, const int64_t *counts, td_err *err);
} td_cuda_group;
/* Makes c a rank of group g (copied; g->vocab0 must match the model's
 * split). TD_E_ARG when it does not, TD_E_NOMEM. */
int td_cuda_ctx_set_group(td_cuda_ctx *c, const td_cuda_group *g, td_err *err);

/* One pass, already validated by the model module. Row r writes its K/V at
 * cache slot slot[r] of sequence seq[r] and attends to slots [0, base[r])
 * and then to chain[chain_off[r] .. + chain_len[r]) (a tree row's ancestors
 * and itself; empty for linear rows). */
typedef struct td_cuda_pass {
    int32_t n_rows;
    const int32_t *token, *seq, *slot, *base; /* (n_rows) */
    const int32_t *chain_off, *chain_len;     /* (n_rows) */
    const int32_t *chain;                     /* slots, concatenated */
    int32_t chain_total;
    const float *rope_cs;                     /* (n_rows, n_rot): cos, sin per pair */
    const int32_t *out_rows;                  /* rows whose logits come back, ascending */
    int32_t n_out;
    const uint8_t *skip;                      /* (n_layer) layers left out, or NULL */
    int32_t *picks; /* (n_out) host ints, or NULL: each row's greedy pick
                     * (td_sample_argmax of its logits), computed on the
                     * device, so that only ints cross to the host */
    const td_sample_plan *plans;  /* (n_out) or NULL: each row's sampling, */
    td_sample_summary *summaries; /* and its summary (td_sample_summarize),
                                   * computed on the device, both or neither */
    td_sample_score *scores; /* (n_out) or NULL: each row's score
                              * (td_sample_score_row), computed on the device, */
    const int32_t *targets;  /* for its target token (NULL: none), */
    int32_t n_alt;           /* with this many alternatives */
} td_cuda_pass;
/* logits: (n_out, n_vocab) host floats, or NULL when p->picks,
 * p->summaries or p->scores is not (the logits then stay on the device,
 * until the next pass, for td_cuda_logits_row). */
int td_cuda_forward(td_cuda_ctx *c, td_cuda_kv *kv, const td_cuda_pass *p, float *logits, td_err *err);
/* Copies row j (of the last pass's n_out) of the logits on the device to
 * out[n_vocab]: for the rare row whose summary is undecided, or whose score
 * left its alternatives to the row. */
int td_cuda_logits_row(td_cuda_ctx *c, int32_t j, float *out, td_err *err);

#endif
