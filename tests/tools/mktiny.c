/* mktiny.c — td-mktiny: writes a random-weight llama-family GGUF model that
 * the engine can load and run, with a 300-token byte-level BPE vocabulary with
 * ChatML specials. The same arguments always produce the same file.
 *
 * --shape picks the dimensions:
 *   tiny (default): n_embd 256, 4 heads, 2 KV heads, n_ff 512, 2..4 layers,
 *     as many embedding rows as tokens; every supported weight type appears
 *     somewhere unless --type makes all matrices one type. Weights are normal
 *     samples quantized by the reference quantizers, for the unit tests.
 *   micro: the same with n_embd 64, 2 heads, 1 KV head, n_ff 128, 1..2
 *     layers, context 64 (K types fall back as below: rows of 64), for
 *     fuzz targets that run passes on every input.
 *   llama7b, smol135m: the matrix shapes of Llama-2-7B and SmolLM2-135M, for
 *     speed and memory work on realistic sizes (1..64 layers). Their token
 *     embedding/output matrices keep the real row counts (32000, 49152): the
 *     engine accepts a tokenizer smaller than the model's rows. Matrices
 *     default to Q4_1 (--type mixed: the tiny plan); they are written as
 *     random blocks straight in the on-disk layout, since quantizing 7e9
 *     floats one by one would take minutes (see fill_random_blocks).
 * Norms (and qwen2's q/k/v biases) are always F32 normal samples.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "gguf/gguf.h"
#include "quant/quant.h"

enum { N_SPECIAL = 3, N_BYTES = 256 };

/* Merge rules in rank order; each side is a byte token or an earlier result. */
#define G "\xc4\xa0"  /* 'Ġ', the byte-level stand-in for a space */
#define NL "\xc4\x8a" /* 'Ċ', for a newline */
static const char *const merges[] = {
    G " t", G " a", "i n", "h e", "r e", "o n", G "t he", "e r", G " s", "a t", G " w", G " o",
    "e n", G " c", "i s", "i t", "o u", "o r", "e s", "a n", G " b", "e d", G " f", "in g",
    G " p", "l l", "a r", G " m", G " d", G " h", G " l", G " i", G " n", "l e", G " y",
    G " g", G "a n", G "an d", G "o f", G " " G, NL " " NL,
};
#undef G
#undef NL
enum { N_MERGES = sizeof merges / sizeof merges[0] };
enum { N_VOCAB = N_SPECIAL + N_BYTES + N_MERGES };

/* Model dimensions per --shape. vocab_rows 0: one row per token. */
typedef struct shape {
    const char *name;
    int n_embd, n_head, n_head_kv, n_ff, vocab_rows, n_ctx, n_layer;
    int min_layers, max_layers;
    float rope_base;
    int tied;   /* the real model shares token_embd as its output matrix */
    int blocks; /* write matrices with fill_random_blocks (fast, big shapes) */
} shape;

static const shape shapes[] = {
    {"tiny", 256, 4, 2, 512, 0, 256, 2, 2, 4, 10000.0f, 0, 0},
    /* micro: the tiny plan on a quarter of the width and one layer, for the
     * worker fuzz target, whose every input may run several passes under
     * the sanitizers. */
    {"micro", 64, 2, 1, 128, 0, 64, 1, 1, 2, 10000.0f, 0, 0},
    /* Llama-2-7B: head dim 128, no GQA, untied output. */
    {"llama7b", 4096, 32, 32, 11008, 32000, 4096, 32, 1, 64, 10000.0f, 0, 1},
    /* SmolLM2-135M: head dim 64, GQA 3:1, tied embeddings. */
    {"smol135m", 576, 9, 3, 1536, 49152, 8192, 30, 1, 64, 100000.0f, 1, 1},
};
enum { N_SHAPES = sizeof shapes / sizeof shapes[0] };

static const char *const specials[N_SPECIAL] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};

/* The ChatML template SmolLM2-Instruct ships (tokenizer.chat_template). */
static const char chat_template[] =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by "
    "Hugging Face<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}";

/* one_type when --type was not given; resolved per shape in parse_args. */
enum { TYPE_MIXED = -1, TYPE_UNSET = -2, TYPE_Q4_K_M = -3 };

typedef struct opts {
    const char *out;
    unsigned long long seed;
    const char *arch; /* "llama" or "qwen2" */
    int one_type;     /* TYPE_MIXED: the plan in matrix_type */
    int n_layer;
    int tied;
    const shape *sh;
    const char *name; /* general.name; NULL: "tandem-<shape>" */
    long n_ctx;       /* context_length; -1: the shape's */
} opts;

/* ---- deterministic randomness: splitmix64 + Box-Muller ---- */

static uint64_t next_u64(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static double next_unit(uint64_t *s) { /* (0, 1] */
    return ((double)(next_u64(s) >> 11) + 1.0) * (1.0 / 9007199254740992.0);
}
static float next_normal(uint64_t *s, float stddev) {
    double u1 = next_unit(s), u2 = next_unit(s);
    return (float)(stddev * sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

/* ---- vocabulary ---- */

/* GPT-2 byte-level mapping: printable bytes keep their code point, the other
 * 68 bytes take U+0100.. in ascending order. Writes UTF-8 (1-2 bytes). */
static void byte_token(unsigned b, char out[3]) {
    unsigned cp = b;
    if (!((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE))) {
        unsigned k = 0;
        for (unsigned x = 0; x < b; x++)
            if (!((x >= 0x21 && x <= 0x7E) || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE))) k++;
        cp = 256 + k;
    }
    if (cp < 0x80) {
        out[0] = (char)cp;
        out[1] = 0;
    } else {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        out[2] = 0;
    }
}

/* tokens[] points into store (N_VOCAB entries of up to 64 bytes); returns 0,
 * or -1 when a merge rule refers to a token that does not exist. */
static int build_vocab(char store[][64], const char *tokens[], int32_t types[]) {
    for (int i = 0; i < N_SPECIAL; i++) {
        snprintf(store[i], 64, "%s", specials[i]);
        types[i] = 3; /* control */
    }
    for (int b = 0; b < N_BYTES; b++) {
        byte_token((unsigned)b, store[N_SPECIAL + b]);
        types[N_SPECIAL + b] = 1;
    }
    for (int m = 0; m < N_MERGES; m++) {
        const char *sp = strchr(merges[m] + 1, ' ');
        char left[32], right[32];
        snprintf(left, sizeof left, "%.*s", (int)(sp - merges[m]), merges[m]);
        snprintf(right, sizeof right, "%s", sp + 1);
        int have_l = 0, have_r = 0, id = N_SPECIAL + N_BYTES + m;
        for (int t = N_SPECIAL; t < id; t++) {
            have_l |= strcmp(store[t], left) == 0;
            have_r |= strcmp(store[t], right) == 0;
        }
        if (!have_l || !have_r) return -1;
        snprintf(store[id], 64, "%s%s", left, right);
        types[id] = 1;
    }
    for (int i = 0; i < N_VOCAB; i++) tokens[i] = store[i];
    return 0;
}

/* ---- tensors ---- */

/* The mixed default spreads the nine weight types over the layers. */
static uint32_t matrix_type(const opts *o, const char *what, int layer) {
    static const struct { const char *what; uint32_t even, odd; } plan[] = {
        {"attn_q", TD_TYPE_Q4_0, TD_TYPE_Q4_K},      {"attn_k", TD_TYPE_Q4_1, TD_TYPE_Q5_K},
        {"attn_v", TD_TYPE_Q8_0, TD_TYPE_Q6_K},      {"attn_output", TD_TYPE_F16, TD_TYPE_Q4_K},
        {"ffn_gate", TD_TYPE_BF16, TD_TYPE_Q5_K},    {"ffn_up", TD_TYPE_F32, TD_TYPE_Q6_K},
        {"ffn_down", TD_TYPE_Q8_0, TD_TYPE_F16},     {"token_embd", TD_TYPE_Q8_0, TD_TYPE_Q8_0},
        {"output", TD_TYPE_Q6_K, TD_TYPE_Q6_K},
    };
    if (o->one_type >= 0) return (uint32_t)o->one_type;
    if (o->one_type == TYPE_Q4_K_M) /* the matrices llama.cpp's Q4_K_M keeps wider */
        return strcmp(what, "attn_v") == 0 || strcmp(what, "ffn_down") == 0 || strcmp(what, "output") == 0
                   ? TD_TYPE_Q6_K
                   : TD_TYPE_Q4_K;
    for (size_t i = 0; i < sizeof plan / sizeof plan[0]; i++)
        if (strcmp(plan[i].what, what) == 0) return layer % 2 ? plan[i].odd : plan[i].even;
    return TD_TYPE_F32;
}

/* K-quant blocks span 256 elements, and smol135m's rows of 576 do not split
 * into them; like llama.cpp's quantizer, such rows take a 32-element type of
 * about the same size instead of failing. Never triggers for tiny. */
static uint32_t fit_type(uint32_t type, uint64_t ne0) {
    const td_type_traits *tr = td_quant_traits(type);
    if (!tr || !tr->block_elems || ne0 % tr->block_elems == 0) return type;
    switch (type) {
    case TD_TYPE_Q4_K: return TD_TYPE_Q5_0;
    case TD_TYPE_Q5_K: return TD_TYPE_Q5_1;
    default: return TD_TYPE_Q8_0;
    }
}

/* Fills an ne0 x ne1 tensor from the PRNG, converts it to type and adds it. */
static int add_random(td_gguf_writer *w, uint64_t *rng, const char *name, uint32_t type,
                      uint64_t ne0, uint64_t ne1, float mean, float stddev) {
    int rc = TD_E_NOMEM;
    size_t n = (size_t)(ne0 * ne1);
    size_t row = td_quant_row_bytes(type, (int64_t)ne0);
    const td_type_traits *tr = td_quant_traits(type);
    float *x = malloc(n * sizeof *x);
    void *q = malloc(row * ne1);
    if (!x || !q) goto fail;
    for (size_t i = 0; i < n; i++) x[i] = mean + next_normal(rng, stddev);
    if (type == TD_TYPE_F32) {
        memcpy(q, x, n * sizeof *x);
    } else if (tr && tr->from_float && row) {
        tr->from_float(x, q, (int64_t)n);
    } else {
        fprintf(stderr, "td-mktiny: no quantizer for type %u (%s)\n", type, tr ? tr->name : "?");
        rc = TD_E_UNSUPPORTED;
        goto fail;
    }
    const uint64_t ne[2] = {ne0, ne1};
    rc = td_gguf_writer_add_tensor(w, name, type, ne1 > 1 ? 2 : 1, ne, q);
    if (rc) fprintf(stderr, "td-mktiny: cannot add tensor %s: %s\n", name, td_err_name(rc));
fail:
    free(x);
    free(q);
    return rc;
}

/* ---- random blocks for the big shapes ----
 * The big shapes hold up to 7e9 weights: drawing normal floats and running
 * the reference quantizer on each takes minutes, so their matrices are drawn
 * straight in the on-disk block layout instead: random code bytes, and block
 * scales drawn from a small table. Every block is valid, and the scales aim
 * at a weight spread of about 0.02 (what the tiny shape draws, and the order
 * of real checkpoints), so that activations stay finite through 32 layers.
 * The codes are uniform rather than bell-shaped; no test reads them. */

static void fill_bytes(uint64_t *rng, uint8_t *p, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t r = next_u64(rng);
        memcpy(p + i, &r, 8); /* byte order only changes which random bytes */
    }
    if (i < n) {
        uint64_t r = next_u64(rng);
        memcpy(p + i, &r, n - i);
    }
}

static void put_le16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}
static uint16_t get_le16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }

/* K-quant sub-block scales and minimums, 6 bits each, in the 12-byte packing
 * of llama.cpp's get_scale_min_k4 (the engine's dequantizers read it so). */
static void pack_k_scales(uint8_t out[12], const uint8_t sc[8], const uint8_t mn[8]) {
    for (int j = 0; j < 4; j++) {
        out[j] = (uint8_t)(sc[j] | (sc[j + 4] >> 4) << 6);
        out[j + 4] = (uint8_t)(mn[j] | (mn[j + 4] >> 4) << 6);
        out[j + 8] = (uint8_t)((sc[j + 4] & 15) | (mn[j + 4] & 15) << 4);
    }
}

/* Per-type block parameters. Weight spread = d * code spread * sub-scale:
 * 4-bit codes spread 4.6, 5-bit 9.2, 6-bit 18.5, int8 73.6; d is drawn from
 * [d_lo, 2 d_lo). Types with a minimum get one that centres the block on 0. */
typedef struct block_plan {
    uint32_t type;
    float d_lo;
    int d_at, m_at;   /* byte offsets of the fp16 scale and minimum; m_at -1: none */
    float m_mid;      /* minimum = -d * (m_mid +- 1): the mean code */
    int k_scales_at;  /* Q4_K/Q5_K: offset of the packed sub-scales; -1: none */
} block_plan;

static const block_plan block_plans[] = {
    {TD_TYPE_Q4_0, 0.0029f, 0, -1, 0, -1},     {TD_TYPE_Q4_1, 0.0029f, 0, 2, 7.5f, -1},
    {TD_TYPE_Q5_0, 0.00145f, 0, -1, 0, -1},    {TD_TYPE_Q5_1, 0.00145f, 0, 2, 15.5f, -1},
    {TD_TYPE_Q8_0, 0.00018f, 0, -1, 0, -1},
    /* K types: sub-scales 16..31 (mean 23.5) times d; dmin set in the loop. */
    {TD_TYPE_Q4_K, 0.00012f, 0, -1, 0, 4},    {TD_TYPE_Q5_K, 0.000065f, 0, -1, 0, 4},
    /* Q6_K: int8 sub-scales 8..15 (mean 11.5), d after 208 bytes of codes. */
    {TD_TYPE_Q6_K, 0.000065f, 208, -1, 0, -1},
};

/* Fills n elements of type at dst with random values; returns -1 for a type
 * without a plan here (the caller then quantizes floats the slow way). */
static int fill_random_blocks(uint32_t type, uint8_t *dst, uint64_t n, uint64_t *rng) {
    const td_type_traits *tr = td_quant_traits(type);
    if (!tr || !tr->block_elems) return -1;
    const size_t bb = tr->block_bytes, nblk = (size_t)(n / tr->block_elems);
    fill_bytes(rng, dst, nblk * bb);

    if (type == TD_TYPE_F32 || type == TD_TYPE_F16 || type == TD_TYPE_BF16) {
        /* Uniform on [-a, a) with a = 0.02 * sqrt(3) (spread 0.02), from a
         * 4096-entry table indexed by the random bits already in place. */
        float f32[4096];
        uint16_t half[4096];
        for (int i = 0; i < 4096; i++) {
            f32[i] = 0.0346f * ((float)(i + 0.5) / 2048.0f - 1.0f);
            half[i] = type == TD_TYPE_F16 ? td_f32_to_fp16(f32[i]) : td_f32_to_bf16(f32[i]);
        }
        for (size_t i = 0; i < nblk; i++) {
            uint8_t *p = dst + i * bb;
            if (type == TD_TYPE_F32) {
                uint32_t r;
                memcpy(&r, p, 4);
                memcpy(p, &f32[r & 4095], 4);
            } else {
                put_le16(p, half[get_le16(p) & 4095]);
            }
        }
        return 0;
    }

    const block_plan *bp = NULL;
    for (size_t i = 0; i < sizeof block_plans / sizeof block_plans[0]; i++)
        if (block_plans[i].type == type) bp = &block_plans[i];
    if (!bp) return -1;
    /* Tables: d for each value of the scale field's random first byte, and
     * the minimum for each (d, 4 random bits) pair; 4,352 fp16 conversions
     * instead of one or two per block. */
    uint16_t dtab[256], mtab[256][16], dmin8[256], dmin16[256];
    for (int i = 0; i < 256; i++) {
        float d = bp->d_lo * (1.0f + (float)i / 256.0f);
        dtab[i] = td_f32_to_fp16(d);
        dmin8[i] = td_f32_to_fp16(8.0f * d);
        dmin16[i] = td_f32_to_fp16(16.0f * d);
        for (int k = 0; k < 16; k++)
            mtab[i][k] = td_f32_to_fp16(-d * (bp->m_mid - 1.0f + 2.0f * (float)k / 15.0f));
    }
    for (size_t i = 0; i < nblk; i++) {
        uint8_t *p = dst + i * bb;
        unsigned di = p[bp->d_at];
        if (bp->m_at >= 0) put_le16(p + bp->m_at, mtab[di][p[bp->m_at] & 15]);
        put_le16(p + bp->d_at, dtab[di]);
        if (bp->k_scales_at >= 0) {
            /* Sub-block j spans d*sc_j*code - dmin*mn_j; mn_j = sc_j * (mean
             * code) / (dmin/d) centres it on 0: dmin = 8d for 4-bit codes
             * (mean 7.5), 16d for 5-bit ones (mean 15.5). */
            int five = type == TD_TYPE_Q5_K;
            uint8_t sc[8], mn[8];
            for (int j = 0; j < 8; j++) {
                sc[j] = (uint8_t)(16 + (p[bp->k_scales_at + j] & 15));
                mn[j] = (uint8_t)(five ? (sc[j] * 31 + 16) / 32 : (sc[j] * 15 + 8) / 16);
            }
            put_le16(p + 2, five ? dmin16[di] : dmin8[di]);
            pack_k_scales(p + bp->k_scales_at, sc, mn);
        }
        if (type == TD_TYPE_Q6_K)
            for (int j = 0; j < 16; j++) p[192 + j] = (uint8_t)(8 + (p[192 + j] & 7));
        if (type == TD_TYPE_Q8_0)
            /* -128 is outside what the quantizer emits (-127..127); keep to
             * that range so that no kernel meets a code it never sees. */
            for (int j = 2; j < 34; j++)
                if (p[j] == 0x80) p[j] = 0x81;
    }
    return 0;
}

/* A random ne0 x ne1 matrix of type (big shapes); falls back to add_random
 * for a type without a block plan. */
static int add_blocks(td_gguf_writer *w, uint64_t *rng, const char *name, uint32_t type,
                      uint64_t ne0, uint64_t ne1) {
    size_t bytes = td_quant_row_bytes(type, (int64_t)ne0);
    if (!bytes || ne1 > SIZE_MAX / bytes) return TD_E_ARG;
    bytes *= (size_t)ne1;
    uint8_t *q = malloc(bytes);
    if (!q) {
        fprintf(stderr, "td-mktiny: out of memory for %s (%zu bytes)\n", name, bytes);
        return TD_E_NOMEM;
    }
    int rc;
    if (fill_random_blocks(type, q, ne0 * ne1, rng) != 0) {
        free(q);
        return add_random(w, rng, name, type, ne0, ne1, 0, 0.02f);
    }
    const uint64_t ne[2] = {ne0, ne1};
    rc = td_gguf_writer_add_tensor(w, name, type, 2, ne, q);
    if (rc) fprintf(stderr, "td-mktiny: cannot add tensor %s: %s\n", name, td_err_name(rc));
    free(q);
    return rc;
}

/* One weight matrix: tiny draws normals and quantizes them (its files must
 * not change), the big shapes write random blocks. */
static int add_matrix(td_gguf_writer *w, const opts *o, uint64_t *rng, const char *name,
                      const char *what, int layer, uint64_t ne0, uint64_t ne1) {
    uint32_t type = fit_type(matrix_type(o, what, layer), ne0);
    if (o->sh->blocks) return add_blocks(w, rng, name, type, ne0, ne1);
    return add_random(w, rng, name, type, ne0, ne1, 0, 0.02f);
}

static uint64_t vocab_rows(const opts *o) {
    return o->sh->vocab_rows ? (uint64_t)o->sh->vocab_rows : N_VOCAB;
}

static int add_tensors(td_gguf_writer *w, const opts *o) {
    uint64_t rng = o->seed;
    char name[64];
    const uint64_t n_embd = (uint64_t)o->sh->n_embd, n_ff = (uint64_t)o->sh->n_ff;
    const uint64_t head_dim = n_embd / (uint64_t)o->sh->n_head;
    const uint64_t kv_dim = head_dim * (uint64_t)o->sh->n_head_kv;
    int rc = add_matrix(w, o, &rng, "token_embd.weight", "token_embd", 0, n_embd, vocab_rows(o));
    int qwen = strcmp(o->arch, "qwen2") == 0;
    for (int l = 0; l < o->n_layer && !rc; l++) {
        const struct { const char *what; uint64_t ne0, ne1; int norm, bias; } layer[] = {
            {"attn_norm", n_embd, 1, 1, 0}, {"attn_q", n_embd, n_embd, 0, qwen},
            {"attn_k", n_embd, kv_dim, 0, qwen}, {"attn_v", n_embd, kv_dim, 0, qwen},
            {"attn_output", n_embd, n_embd, 0, 0}, {"ffn_norm", n_embd, 1, 1, 0},
            {"ffn_gate", n_embd, n_ff, 0, 0}, {"ffn_up", n_embd, n_ff, 0, 0},
            {"ffn_down", n_ff, n_embd, 0, 0},
        };
        for (size_t i = 0; i < sizeof layer / sizeof layer[0] && !rc; i++) {
            snprintf(name, sizeof name, "blk.%d.%s.weight", l, layer[i].what);
            if (layer[i].norm)
                rc = add_random(w, &rng, name, TD_TYPE_F32, layer[i].ne0, 1, 1.0f, 0.05f);
            else
                rc = add_matrix(w, o, &rng, name, layer[i].what, l, layer[i].ne0, layer[i].ne1);
            if (!rc && layer[i].bias) {
                snprintf(name, sizeof name, "blk.%d.%s.bias", l, layer[i].what);
                rc = add_random(w, &rng, name, TD_TYPE_F32, layer[i].ne1, 1, 0, 0.02f);
            }
        }
    }
    if (!rc) rc = add_random(w, &rng, "output_norm.weight", TD_TYPE_F32, n_embd, 1, 1.0f, 0.05f);
    if (!rc && !o->tied)
        rc = add_matrix(w, o, &rng, "output.weight", "output", 0, n_embd, vocab_rows(o));
    return rc;
}

/* ---- metadata ---- */

static int add_metadata(td_gguf_writer *w, const opts *o) {
    char store[N_VOCAB][64];
    const char *tokens[N_VOCAB];
    int32_t types[N_VOCAB];
    char key[96], model_name[64];
    int rc = 0;
    const shape *sh = o->sh;
    if (build_vocab(store, tokens, types) != 0) {
        fprintf(stderr, "td-mktiny: internal error: inconsistent merge table\n");
        return TD_E_ARG;
    }
#define KEY(suffix) (snprintf(key, sizeof key, "%s.%s", o->arch, suffix), key)
    rc |= td_gguf_writer_add_str(w, "general.architecture", o->arch);
    snprintf(model_name, sizeof model_name, "tandem-%s", sh->name);
    rc |= td_gguf_writer_add_str(w, "general.name", o->name ? o->name : model_name);
    rc |= td_gguf_writer_add_u32(w, "general.quantization_version", 2);
    rc |= td_gguf_writer_add_u32(w, KEY("context_length"), (uint32_t)(o->n_ctx >= 0 ? o->n_ctx : sh->n_ctx));
    rc |= td_gguf_writer_add_u32(w, KEY("embedding_length"), (uint32_t)sh->n_embd);
    rc |= td_gguf_writer_add_u32(w, KEY("block_count"), (uint32_t)o->n_layer);
    rc |= td_gguf_writer_add_u32(w, KEY("feed_forward_length"), (uint32_t)sh->n_ff);
    rc |= td_gguf_writer_add_u32(w, KEY("attention.head_count"), (uint32_t)sh->n_head);
    rc |= td_gguf_writer_add_u32(w, KEY("attention.head_count_kv"), (uint32_t)sh->n_head_kv);
    rc |= td_gguf_writer_add_f32(w, KEY("rope.freq_base"), sh->rope_base);
    rc |= td_gguf_writer_add_f32(w, KEY("attention.layer_norm_rms_epsilon"), 1e-5f);
    rc |= td_gguf_writer_add_u32(w, KEY("rope.dimension_count"), (uint32_t)(sh->n_embd / sh->n_head));
    /* The model's row count, as real checkpoints record it; the tokenizer
     * below may be smaller. */
    rc |= td_gguf_writer_add_u32(w, KEY("vocab_size"), (uint32_t)vocab_rows(o));
#undef KEY
    rc |= td_gguf_writer_add_str(w, "tokenizer.ggml.model", "gpt2");
    rc |= td_gguf_writer_add_str(w, "tokenizer.ggml.pre", "smollm");
    rc |= td_gguf_writer_add_str_array(w, "tokenizer.ggml.tokens", tokens, N_VOCAB);
    rc |= td_gguf_writer_add_i32_array(w, "tokenizer.ggml.token_type", types, N_VOCAB);
    rc |= td_gguf_writer_add_str_array(w, "tokenizer.ggml.merges", merges, N_MERGES);
    rc |= td_gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id", 1);
    rc |= td_gguf_writer_add_u32(w, "tokenizer.ggml.eos_token_id", 2);
    rc |= td_gguf_writer_add_u32(w, "tokenizer.ggml.unknown_token_id", 0);
    rc |= td_gguf_writer_add_u32(w, "tokenizer.ggml.padding_token_id", 2);
    rc |= td_gguf_writer_add_bool(w, "tokenizer.ggml.add_bos_token", false);
    rc |= td_gguf_writer_add_bool(w, "tokenizer.ggml.add_space_prefix", false);
    rc |= td_gguf_writer_add_str(w, "tokenizer.chat_template", chat_template);
    if (rc) fprintf(stderr, "td-mktiny: cannot add metadata (out of memory)\n");
    return rc ? TD_E_NOMEM : TD_OK;
}

/* ---- command line ---- */

static int usage(void) {
    fprintf(stderr,
            "usage: td-mktiny OUT.gguf [--shape NAME] [--seed N] [--arch llama|qwen2]\n"
            "                 [--type TYPE] [--layers N] [--tied]\n"
            "                 [--name TEXT] [--ctx N]\n"
            "  NAME: tiny      n_embd 256, 4/2 heads, n_ff 512, 300 rows, 2 layers (default)\n"
            "        micro     n_embd 64, 2/1 heads, n_ff 128, 300 rows, 1 layer, ctx 64\n"
            "        llama7b   Llama-2-7B shapes: 4096, 32/32 heads, n_ff 11008, 32000 rows,\n"
            "                  32 layers, ctx 4096, untied (Q4_1: 3.9 GiB)\n"
            "        smol135m  SmolLM2-135M shapes: 576, 9/3 heads, n_ff 1536, 49152 rows,\n"
            "                  30 layers, ctx 8192, rope base 1e5, tied\n"
            "  TYPE: F32 F16 BF16 Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 Q4_K Q5_K Q6_K, mixed, or\n"
            "        Q4_K_M (Q6_K for attn_v, ffn_down and output, Q4_K elsewhere)\n"
            "        (default: mixed for tiny, Q4_1 for the others; K types fall back\n"
            "        to Q5_0/Q5_1/Q8_0 on rows that are not a multiple of 256)\n"
            "  --layers: 2..4 for tiny, 1..2 for micro, 1..64 for the others (default: the shape's)\n"
            "  --name, --ctx: general.name and context_length (tests of hostile files)\n"
            "  The whole file is built in memory before it is written.\n");
    return 2;
}

static int parse_type(const char *s) {
    for (uint32_t t = 0; t < TD_TYPE_COUNT; t++) {
        const td_type_traits *tr = td_quant_traits(t);
        if (tr && tr->name && (tr->weight_ok || t == TD_TYPE_F32) && strcasecmp(tr->name, s) == 0)
            return (int)t;
    }
    return -1;
}

static int parse_args(int argc, char **argv, opts *o) {
    long layers = 0; /* 0: the shape's own count */
    *o = (opts){.seed = 1, .arch = "llama", .one_type = TYPE_UNSET, .sh = &shapes[0], .name = NULL, .n_ctx = -1};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        char *end;
        if (strcmp(a, "--tied") == 0) {
            o->tied = 1;
        } else if (strcmp(a, "--seed") == 0 && v) {
            o->seed = strtoull(v, &end, 0);
            if (*end || !*v) return -1;
            i++;
        } else if (strcmp(a, "--arch") == 0 && v) {
            if (strcmp(v, "llama") != 0 && strcmp(v, "qwen2") != 0) return -1;
            o->arch = v;
            i++;
        } else if (strcmp(a, "--type") == 0 && v) {
            if (strcasecmp(v, "mixed") == 0) o->one_type = TYPE_MIXED;
            else if (strcasecmp(v, "Q4_K_M") == 0) o->one_type = TYPE_Q4_K_M;
            else if ((o->one_type = parse_type(v)) < 0) return -1;
            i++;
        } else if (strcmp(a, "--shape") == 0 && v) {
            o->sh = NULL;
            for (int s = 0; s < N_SHAPES; s++)
                if (strcmp(v, shapes[s].name) == 0) o->sh = &shapes[s];
            if (!o->sh) return -1;
            i++;
        } else if (strcmp(a, "--name") == 0 && v) {
            o->name = v;
            i++;
        } else if (strcmp(a, "--ctx") == 0 && v) {
            long n = strtol(v, &end, 10);
            if (*end || !*v || n < 0 || n > 1 << 20) return -1;
            o->n_ctx = n;
            i++;
        } else if (strcmp(a, "--layers") == 0 && v) {
            /* checked against the shape below: the options come in any order */
            layers = strtol(v, &end, 10);
            if (*end || !*v || layers < 1) return -1;
            i++;
        } else if (a[0] != '-' && !o->out) {
            o->out = a;
        } else {
            return -1;
        }
    }
    if (!o->out) return -1;
    if (layers && (layers < o->sh->min_layers || layers > o->sh->max_layers)) return -1;
    o->n_layer = layers ? (int)layers : o->sh->n_layer;
    if (o->one_type == TYPE_UNSET) o->one_type = o->sh->blocks ? TD_TYPE_Q4_1 : TYPE_MIXED;
    o->tied |= o->sh->tied;
    return 0;
}

/* The whole tool, argv as for main. A program that wants the same model
 * files without running the tool compiles this file with TD_MKTINY_NO_MAIN
 * and calls this (the worker fuzz target makes its model so). */
int td_mktiny_run(int argc, char **argv);
int td_mktiny_run(int argc, char **argv) {
    opts o;
    td_err err = {0};
    int rc = 1;
    if (parse_args(argc, argv, &o) != 0) return usage();
    td_gguf_writer *w = td_gguf_writer_create();
    if (!w) {
        fprintf(stderr, "td-mktiny: out of memory\n");
        return 1;
    }
    if (add_metadata(w, &o) || add_tensors(w, &o)) goto done;
    if (td_gguf_writer_save(w, o.out, &err) != TD_OK) {
        fprintf(stderr, "td-mktiny: %s\n", err.msg);
        goto done;
    }
    rc = 0;
done:
    td_gguf_writer_destroy(w);
    return rc;
}

#ifndef TD_MKTINY_NO_MAIN
int main(int argc, char **argv) { return td_mktiny_run(argc, argv); }
#endif
