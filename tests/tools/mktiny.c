/* mktiny.c — td-mktiny: writes a tiny random-weight llama-family GGUF model
 * (n_embd 256, 4 heads, 2 KV heads, n_ff 512, a 300-token byte-level BPE
 * vocabulary with ChatML specials) that the engine can load and run in tests.
 * By default every supported weight type appears somewhere; --type makes all
 * matrices one type. The same arguments always produce the same file.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "gguf/gguf.h"
#include "quant/quant.h"

enum { N_EMBD = 256, N_HEAD = 4, N_HEAD_KV = 2, N_FF = 512, N_CTX = 256 };
enum { HEAD_DIM = N_EMBD / N_HEAD, KV_DIM = HEAD_DIM * N_HEAD_KV };
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

static const char *const specials[N_SPECIAL] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};

/* The ChatML template SmolLM2-Instruct ships (tokenizer.chat_template). */
static const char chat_template[] =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by "
    "Hugging Face<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}";

typedef struct opts {
    const char *out;
    unsigned long long seed;
    const char *arch; /* "llama" or "qwen2" */
    int one_type;     /* -1: the mixed default */
    int n_layer;
    int tied;
    const char *name; /* general.name */
    uint32_t n_ctx;   /* context_length */
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
    for (size_t i = 0; i < sizeof plan / sizeof plan[0]; i++)
        if (strcmp(plan[i].what, what) == 0) return layer % 2 ? plan[i].odd : plan[i].even;
    return TD_TYPE_F32;
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

static int add_tensors(td_gguf_writer *w, const opts *o) {
    uint64_t rng = o->seed;
    const float s = 0.02f;
    char name[64];
    int rc = add_random(w, &rng, "token_embd.weight", matrix_type(o, "token_embd", 0), N_EMBD,
                        N_VOCAB, 0, s);
    int qwen = strcmp(o->arch, "qwen2") == 0;
    for (int l = 0; l < o->n_layer && !rc; l++) {
        const struct { const char *what; uint64_t ne0, ne1; int norm, bias; } layer[] = {
            {"attn_norm", N_EMBD, 1, 1, 0}, {"attn_q", N_EMBD, N_EMBD, 0, qwen},
            {"attn_k", N_EMBD, KV_DIM, 0, qwen}, {"attn_v", N_EMBD, KV_DIM, 0, qwen},
            {"attn_output", N_EMBD, N_EMBD, 0, 0}, {"ffn_norm", N_EMBD, 1, 1, 0},
            {"ffn_gate", N_EMBD, N_FF, 0, 0}, {"ffn_up", N_EMBD, N_FF, 0, 0},
            {"ffn_down", N_FF, N_EMBD, 0, 0},
        };
        for (size_t i = 0; i < sizeof layer / sizeof layer[0] && !rc; i++) {
            snprintf(name, sizeof name, "blk.%d.%s.weight", l, layer[i].what);
            if (layer[i].norm)
                rc = add_random(w, &rng, name, TD_TYPE_F32, layer[i].ne0, 1, 1.0f, 0.05f);
            else
                rc = add_random(w, &rng, name, matrix_type(o, layer[i].what, l), layer[i].ne0,
                                layer[i].ne1, 0, s);
            if (!rc && layer[i].bias) {
                snprintf(name, sizeof name, "blk.%d.%s.bias", l, layer[i].what);
                rc = add_random(w, &rng, name, TD_TYPE_F32, layer[i].ne1, 1, 0, s);
            }
        }
    }
    if (!rc) rc = add_random(w, &rng, "output_norm.weight", TD_TYPE_F32, N_EMBD, 1, 1.0f, 0.05f);
    if (!rc && !o->tied)
        rc = add_random(w, &rng, "output.weight", matrix_type(o, "output", 0), N_EMBD, N_VOCAB, 0,
                        s);
    return rc;
}

/* ---- metadata ---- */

static int add_metadata(td_gguf_writer *w, const opts *o) {
    char store[N_VOCAB][64];
    const char *tokens[N_VOCAB];
    int32_t types[N_VOCAB];
    char key[96];
    int rc = 0;
    if (build_vocab(store, tokens, types) != 0) {
        fprintf(stderr, "td-mktiny: internal error: inconsistent merge table\n");
        return TD_E_ARG;
    }
#define KEY(suffix) (snprintf(key, sizeof key, "%s.%s", o->arch, suffix), key)
    rc |= td_gguf_writer_add_str(w, "general.architecture", o->arch);
    rc |= td_gguf_writer_add_str(w, "general.name", o->name);
    rc |= td_gguf_writer_add_u32(w, "general.quantization_version", 2);
    rc |= td_gguf_writer_add_u32(w, KEY("context_length"), o->n_ctx);
    rc |= td_gguf_writer_add_u32(w, KEY("embedding_length"), N_EMBD);
    rc |= td_gguf_writer_add_u32(w, KEY("block_count"), (uint32_t)o->n_layer);
    rc |= td_gguf_writer_add_u32(w, KEY("feed_forward_length"), N_FF);
    rc |= td_gguf_writer_add_u32(w, KEY("attention.head_count"), N_HEAD);
    rc |= td_gguf_writer_add_u32(w, KEY("attention.head_count_kv"), N_HEAD_KV);
    rc |= td_gguf_writer_add_f32(w, KEY("rope.freq_base"), 10000.0f);
    rc |= td_gguf_writer_add_f32(w, KEY("attention.layer_norm_rms_epsilon"), 1e-5f);
    rc |= td_gguf_writer_add_u32(w, KEY("rope.dimension_count"), HEAD_DIM);
    rc |= td_gguf_writer_add_u32(w, KEY("vocab_size"), N_VOCAB);
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
            "usage: td-mktiny OUT.gguf [--seed N] [--arch llama|qwen2] [--type TYPE]\n"
            "                 [--layers 2..4] [--tied] [--name TEXT] [--ctx N]\n"
            "  --name, --ctx: general.name and context_length (tests of hostile files)\n"
            "  TYPE: F32 F16 BF16 Q8_0 Q4_0 Q4_1 Q4_K Q5_K Q6_K (default: a mix of all)\n");
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
    *o = (opts){.seed = 1, .arch = "llama", .one_type = -1, .n_layer = 2, .name = "tandem-tiny", .n_ctx = N_CTX};
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
            if ((o->one_type = parse_type(v)) < 0) return -1;
            i++;
        } else if (strcmp(a, "--name") == 0 && v) {
            o->name = v;
            i++;
        } else if (strcmp(a, "--ctx") == 0 && v) {
            long n = strtol(v, &end, 10);
            if (*end || !*v || n < 0 || n > 1 << 20) return -1;
            o->n_ctx = (uint32_t)n;
            i++;
        } else if (strcmp(a, "--layers") == 0 && v) {
            long n = strtol(v, &end, 10);
            if (*end || n < 2 || n > 4) return -1;
            o->n_layer = (int)n;
            i++;
        } else if (a[0] != '-' && !o->out) {
            o->out = a;
        } else {
            return -1;
        }
    }
    return o->out ? 0 : -1;
}

int main(int argc, char **argv) {
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
