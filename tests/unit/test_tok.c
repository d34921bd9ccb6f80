/* test_tok.c — the tokenizer: tiny vocabularies built in memory with the GGUF
 * writer pin down merge order, byte fallback, pre-tokenizer passes, special
 * token splitting, invalid UTF-8, round trips and each chat format; then the
 * real default model (skipped when absent) must reproduce llama.cpp's ids in
 * tests/fixtures/tokenize.json exactly. Timings are printed, not asserted.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gguf/gguf.h"
#include "tok/tok.h"
#include "util/util.h"

/* ------------------------------------------------------------ helpers */

/* GPT-2's byte alphabet, written out independently of the library. */
static uint32_t byte_cp(unsigned b) {
    if ((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE) return b;
    unsigned n = 0;
    for (unsigned c = 0; c < b; c++)
        if (!((c >= 0x21 && c <= 0x7E) || (c >= 0xA1 && c <= 0xAC) || c >= 0xAE)) n++;
    return 0x100 + n;
}

static int put_utf8(uint32_t cp, char *o) {
    if (cp < 0x80) return o[0] = (char)cp, 1;
    if (cp < 0x800) return o[0] = (char)(0xC0 | cp >> 6), o[1] = (char)(0x80 | (cp & 63)), 2;
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | cp >> 12), o[1] = (char)(0x80 | ((cp >> 6) & 63));
        o[2] = (char)(0x80 | (cp & 63));
        return 3;
    }
    o[0] = (char)(0xF0 | cp >> 18), o[1] = (char)(0x80 | ((cp >> 12) & 63));
    o[2] = (char)(0x80 | ((cp >> 6) & 63)), o[3] = (char)(0x80 | (cp & 63));
    return 4;
}

typedef struct spec {
    const char *model;         /* "gpt2" or "llama" (NULL: key absent) */
    const char *pre;           /* NULL: key absent */
    const char *const *tokens; /* all token texts */
    const int32_t *types;      /* NULL: key absent */
    const float *scores;       /* NULL: key absent */
    size_t n_tokens, n_types;
    const char *const *merges; /* NULL: key absent (n_merges 0 with a pointer: empty) */
    size_t n_merges;
    const char *tmpl; /* chat template, NULL: absent */
    int bos, eos;     /* -1: key absent */
} spec;

/* Writes the spec as a GGUF file in memory and loads a tokenizer from it.
 * Returns the status; *buf (the file) must outlive the td_gguf. */
static int build(const spec *s, td_tok **t, td_err *err) {
    td_gguf_writer *w = td_gguf_writer_create();
    assert_non_null(w);
    if (s->model) assert_int_equal(td_gguf_writer_add_str(w, "tokenizer.ggml.model", s->model), 0);
    if (s->pre) assert_int_equal(td_gguf_writer_add_str(w, "tokenizer.ggml.pre", s->pre), 0);
    if (s->tokens)
        assert_int_equal(
            td_gguf_writer_add_str_array(w, "tokenizer.ggml.tokens", s->tokens, s->n_tokens), 0);
    if (s->types)
        assert_int_equal(td_gguf_writer_add_i32_array(w, "tokenizer.ggml.token_type", s->types,
                                                      s->n_types ? s->n_types : s->n_tokens),
                         0);
    if (s->scores)
        assert_int_equal(
            td_gguf_writer_add_f32_array(w, "tokenizer.ggml.scores", s->scores, s->n_tokens), 0);
    if (s->merges)
        assert_int_equal(
            td_gguf_writer_add_str_array(w, "tokenizer.ggml.merges", s->merges, s->n_merges), 0);
    if (s->tmpl) assert_int_equal(td_gguf_writer_add_str(w, "tokenizer.chat_template", s->tmpl), 0);
    if (s->bos >= 0)
        assert_int_equal(td_gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)s->bos),
                         0);
    if (s->eos >= 0)
        assert_int_equal(td_gguf_writer_add_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)s->eos),
                         0);
    void *file;
    size_t size;
    assert_int_equal(td_gguf_writer_to_memory(w, &file, &size, err), 0);
    td_gguf_writer_destroy(w);
    td_gguf *g;
    assert_int_equal(td_gguf_open_memory(file, size, &g, err), 0);
    int rc = td_tok_create(g, t, err);
    td_gguf_close(g); /* the tokenizer keeps copies of everything */
    free(file);
    return rc;
}

/* ---- the tiny byte-level BPE vocabulary ----
 * ids 0..255: the 256 byte symbols (id = byte value), then these: */
enum {
    T_EOT = 256,
    T_IM_START,
    T_IM_END,
    T_AB,
    T_BC,
    T_AA,
    T_XYZ,
    T_12,
    T_SP_A,
    T_S,
    T_SX,
    T_AT,
    BPE_N
};
static const char *const k_bpe_extra[] = {
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "ab", "bc", "aa",
    "xyz",           "12",           "\u0120a", /* "Ġa" = " a" */
    "<s>",           "<s>x",         "@@",
};
static const int32_t k_bpe_extra_type[] = {3, 3, 3, 1, 1, 1, 1, 1, 1, 3, 3, 4};
/* rank order matters: "b c" beats "a b"; "xy" is not a token but "xyz" is */
static const char *const k_bpe_merges[] = {
    "b c", "a b", "a a", "x y", "xy z", "1 2", "\u0120 a",
};

typedef struct bpe_vocab {
    char *text[BPE_N];
    int32_t type[BPE_N];
} bpe_vocab;

static void bpe_vocab_init(bpe_vocab *v) {
    for (unsigned b = 0; b < 256; b++) {
        char u[5] = {0};
        put_utf8(byte_cp(b), u);
        v->text[b] = strdup(u);
        v->type[b] = 1;
    }
    for (int i = 256; i < BPE_N; i++) {
        v->text[i] = strdup(k_bpe_extra[i - 256]);
        v->type[i] = k_bpe_extra_type[i - 256];
    }
}

static void bpe_vocab_free(bpe_vocab *v) {
    for (int i = 0; i < BPE_N; i++) free(v->text[i]);
}

static td_tok *bpe_tok(const char *pre, const char *tmpl) {
    bpe_vocab v;
    bpe_vocab_init(&v);
    spec s = {"gpt2", pre,          (const char *const *)v.text,
              v.type, NULL,         BPE_N,
              0,      k_bpe_merges, sizeof k_bpe_merges / sizeof *k_bpe_merges,
              tmpl,   T_IM_START,   T_EOT};
    td_tok *t = NULL;
    td_err err = {0};
    int rc = build(&s, &t, &err);
    if (rc) print_message("%s\n", err.msg);
    assert_int_equal(rc, TD_OK);
    bpe_vocab_free(&v);
    return t;
}

/* ---- the tiny SentencePiece vocabulary ---- */
enum {
    S_UNK,
    S_BOS,
    S_EOS,
    S_BYTE0,
    S_SP = S_BYTE0 + 256,
    S_A,
    S_B,
    S_C,
    S_SPA,
    S_AB,
    S_BC,
    S_SPAB,
    SPM_N
};

static td_tok *spm_tok(const char *tmpl) {
    char *text[SPM_N];
    int32_t type[SPM_N];
    float score[SPM_N];
    static const char *const fixed[] = {"<unk>", "<s>", "</s>"};
    static const char *const words[] = {"\u2581", "a", "b", "c", "\u2581a", "ab", "bc", "\u2581ab"};
    static const float word_score[] = {-5, -10, -10, -10, -1, -0.5f, -2, -0.1f};
    for (int i = 0; i < 3; i++) text[i] = strdup(fixed[i]), type[i] = i ? 3 : 2, score[i] = 0;
    for (int b = 0; b < 256; b++) {
        char h[8];
        snprintf(h, sizeof h, "<0x%02X>", b);
        text[S_BYTE0 + b] = strdup(h), type[S_BYTE0 + b] = 6, score[S_BYTE0 + b] = 0;
    }
    for (int i = 0; i < 8; i++)
        text[S_SP + i] = strdup(words[i]), type[S_SP + i] = 1, score[S_SP + i] = word_score[i];
    spec s = {"llama", NULL, (const char *const *)text, type, score, SPM_N, 0, NULL, 0, tmpl,
              -1,      -1};
    td_tok *t = NULL;
    td_err err = {0};
    int rc = build(&s, &t, &err);
    if (rc) print_message("%s\n", err.msg);
    assert_int_equal(rc, TD_OK);
    for (int i = 0; i < SPM_N; i++) free(text[i]);
    return t;
}

/* Encodes and compares with the expected ids. */
static void expect_ids(const td_tok *t, const char *text, bool special, const int32_t *want,
                       size_t n_want) {
    int32_t *ids = NULL;
    size_t n = 0;
    td_err err = {0};
    int rc = td_tok_encode(t, text, strlen(text), false, special, &ids, &n, &err);
    if (rc) print_message("%s\n", err.msg);
    assert_int_equal(rc, TD_OK);
    if (n != n_want || memcmp(ids, want, n * sizeof *ids) != 0) {
        print_message("\"%s\": got", text);
        for (size_t i = 0; i < n; i++) print_message(" %d", ids[i]);
        print_message("\n");
    }
    assert_int_equal(n, n_want);
    assert_memory_equal(ids, want, n * sizeof *ids);
    free(ids);
}
#define EXPECT(t, text, special, ...)                                                              \
    do {                                                                                           \
        static const int32_t want_[] = {__VA_ARGS__};                                              \
        expect_ids(t, text, special, want_, sizeof want_ / sizeof want_[0]);                       \
    } while (0)

/* encode then decode (no BOS, no specials) gives the input back */
static void round_trip(const td_tok *t, const char *s, size_t len) {
    int32_t *ids;
    size_t n;
    td_err err = {0};
    assert_int_equal(td_tok_encode(t, s, len, false, false, &ids, &n, &err), TD_OK);
    char *out;
    size_t out_len;
    assert_int_equal(td_tok_decode(t, ids, n, false, &out, &out_len, &err), TD_OK);
    if (out_len != len || memcmp(out, s, len) != 0)
        print_message("round trip failed: \"%.*s\"\n", (int)len, s);
    assert_int_equal(out_len, len);
    assert_memory_equal(out, s, len);
    /* and the plain concatenation of pieces agrees with td_tok_decode for BPE */
    free(out);
    free(ids);
}

/* Deterministic random valid UTF-8 (ASCII-heavy, all lengths, no surrogates). */
static uint64_t rng_next(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* ok_byte (may be NULL): characters with a byte outside it are not emitted. */
static size_t random_utf8(uint64_t *rng, char *out, size_t max_chars, const bool *ok_byte) {
    static const char *const frags[] = {" ",          "  ", "\n", "\t", "'s",
                                        "<|im_end|>", "12", "ab", "@@"};
    size_t n = 0, chars = rng_next(rng) % (max_chars + 1);
    for (size_t i = 0; i < chars; i++) {
        unsigned r = (unsigned)(rng_next(rng) % 100);
        uint32_t cp;
        if (r < 10) {
            const char *f = frags[rng_next(rng) % (sizeof frags / sizeof *frags)];
            memcpy(out + n, f, strlen(f));
            n += strlen(f);
            continue;
        } else if (r < 55) {
            cp = 0x20 + (uint32_t)(rng_next(rng) % 0x5F);
        } else if (r < 60) {
            cp = (uint32_t)(rng_next(rng) % 0x20);
        } else if (r < 75) {
            cp = 0x80 + (uint32_t)(rng_next(rng) % (0x800 - 0x80));
        } else if (r < 92) {
            /* no surrogates; no U+2581 either: SentencePiece reads it as a space */
            do cp = 0x800 + (uint32_t)(rng_next(rng) % (0x10000 - 0x800));
            while ((cp >= 0xD800 && cp <= 0xDFFF) || cp == 0x2581);
        } else {
            cp = 0x10000 + (uint32_t)(rng_next(rng) % (0x110000 - 0x10000));
        }
        int k = put_utf8(cp, out + n);
        bool ok = true;
        for (int b = 0; ok_byte && ok && b < k; b++)
            ok = ok_byte[(unsigned char)out[n + (size_t)b]];
        if (ok) n += (size_t)k;
    }
    return n;
}

static bool model_path(char *path, size_t cap) {
    const char *home = getenv("HOME");
    snprintf(path, cap, "%s/.cache/tandem/models/SmolLM2-135M-Instruct.Q4_1.gguf",
             home ? home : "");
    return access(path, R_OK) == 0;
}

static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)sz + 1);
    assert_non_null(b);
    assert_int_equal(fread(b, 1, (size_t)sz, f), (size_t)sz);
    fclose(f);
    b[sz] = '\0';
    *len = (size_t)sz;
    return b;
}

/* ------------------------------------------------------ BPE behaviour */

static void test_bpe_merge_order(void **state) {
    (void)state;
    td_tok *t = bpe_tok("gpt-2", NULL);
    assert_int_equal(td_tok_vocab_size(t), BPE_N);
    EXPECT(t, "ab", false, T_AB);
    EXPECT(t, "abc", false, 'a', T_BC); /* "b c" (rank 0) before "a b" (rank 1) */
    EXPECT(t, "aaa", false, T_AA, 'a'); /* equal ranks: leftmost first */
    EXPECT(t, "aaaa", false, T_AA, T_AA);
    EXPECT(t, "aaaaa", false, T_AA, T_AA, 'a');
    EXPECT(t, "xyz", false, T_XYZ); /* through the non-token "xy" */
    EXPECT(t, " a", false, T_SP_A);
    td_tok_destroy(t);
}

static void test_bpe_byte_fallback(void **state) {
    (void)state;
    td_tok *t = bpe_tok("gpt-2", NULL);
    EXPECT(t, "xy", false, 'x', 'y');         /* "xy" merged but not a token: bytes */
    EXPECT(t, "\xC3\xA9", false, 0xC3, 0xA9); /* é: one token per byte */
    EXPECT(t, "\n", false, '\n');
    td_tok_destroy(t);
}

static void test_bpe_empty_expectation(void **state) {
    (void)state;
    td_tok *t = bpe_tok("gpt-2", NULL);
    int32_t *ids = (int32_t *)1;
    size_t n = 7;
    assert_int_equal(td_tok_encode(t, "", 0, false, true, &ids, &n, NULL), TD_OK);
    assert_int_equal(n, 0);
    free(ids);
    assert_int_equal(td_tok_encode(t, NULL, 0, true, false, &ids, &n, NULL), TD_OK);
    assert_int_equal(n, 1);
    assert_int_equal(ids[0], T_IM_START); /* BOS only */
    free(ids);
    td_tok_destroy(t);
}

static void test_pretok_passes(void **state) {
    (void)state;
    td_tok *gpt2 = bpe_tok("gpt-2", NULL), *smol = bpe_tok("smollm", NULL);
    td_tok *llama3 = bpe_tok("llama-bpe", NULL), *qwen = bpe_tok("qwen2", NULL),
           *dflt = bpe_tok(NULL, NULL);
    EXPECT(gpt2, "12", false, T_12);
    EXPECT(smol, "12", false, '1', '2'); /* smollm: every digit its own piece */
    EXPECT(llama3, "12", false, T_12);   /* \p{N}{1,3} */
    EXPECT(qwen, "12", false, '1', '2'); /* \p{N} */
    EXPECT(dflt, "12", false, T_12);
    EXPECT(gpt2, "a ab", false, 'a', ' ', T_AB);     /* " ab" is one piece; "a b" outranks "Ġ a" */
    EXPECT(gpt2, "ab  a", false, T_AB, ' ', T_SP_A); /* \s+(?!\S) leaves the last space */
    EXPECT(gpt2, "a's", false, 'a', '\'', 's');
    /* punctuation runs are separate pieces: no merge across "b.c" */
    EXPECT(gpt2, "b.c", false, 'b', '.', 'c');
    EXPECT(gpt2, "bc", false, T_BC);
    td_tok_destroy(gpt2);
    td_tok_destroy(smol);
    td_tok_destroy(llama3);
    td_tok_destroy(qwen);
    td_tok_destroy(dflt);
    smol = bpe_tok("smollm", NULL);
    assert_false(td_tok_add_bos(smol));
    td_tok_destroy(smol);
    llama3 = bpe_tok("llama3", NULL);
    assert_true(td_tok_add_bos(llama3)); /* the llama3 pre type adds BOS */
    td_tok_destroy(llama3);
}

static void test_unknown_pre(void **state) {
    (void)state;
    bpe_vocab v;
    bpe_vocab_init(&v);
    spec s = {"gpt2",
              "no-such-pre",
              (const char *const *)v.text,
              v.type,
              NULL,
              BPE_N,
              0,
              k_bpe_merges,
              2,
              NULL,
              -1,
              -1};
    td_tok *t = (td_tok *)1;
    td_err err = {0};
    assert_int_equal(build(&s, &t, &err), TD_E_UNSUPPORTED);
    assert_null(t);
    assert_non_null(strstr(err.msg, "no-such-pre"));
    bpe_vocab_free(&v);
}

static void test_bad_files(void **state) {
    (void)state;
    bpe_vocab v;
    bpe_vocab_init(&v);
    td_tok *t;
    td_err err = {0};
    static const char *const bad_merge[] = {"a b", "ab"};
    spec s = {
        "gpt2", "gpt-2", (const char *const *)v.text, v.type, NULL, BPE_N, 0, bad_merge, 2, NULL,
        -1,     -1};
    assert_int_equal(build(&s, &t, &err), TD_E_FORMAT); /* merge without a space */
    assert_non_null(strstr(err.msg, "merges[1]"));
    s.merges = NULL;
    assert_int_equal(build(&s, &t, &err), TD_E_FORMAT); /* gpt2 without merges */
    s.merges = k_bpe_merges, s.n_merges = 1, s.model = "bert";
    assert_int_equal(build(&s, &t, &err), TD_E_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "bert"));
    s.model = NULL;
    assert_int_equal(build(&s, &t, &err), TD_E_FORMAT);
    s.model = "gpt2", s.n_types = 10;
    assert_int_equal(build(&s, &t, &err), TD_E_FORMAT); /* token_type of the wrong length */
    s.n_types = 0;
    free(v.text[T_BC]);
    v.text[T_BC] = strdup("ab");
    assert_int_equal(build(&s, &t, &err), TD_E_FORMAT); /* duplicate token text */
    assert_non_null(strstr(err.msg, "duplicate"));
    s.tokens = NULL;
    assert_int_equal(build(&s, &t, &err), TD_E_FORMAT);
    bpe_vocab_free(&v);
}

/* ---------------------------------------------------- special tokens */

static void test_special_split(void **state) {
    (void)state;
    td_tok *t = bpe_tok("gpt-2", NULL);
    EXPECT(t, "b<|im_end|>b", true, 'b', T_IM_END, 'b');
    EXPECT(t, "<|im_start|>ab<|im_end|>", true, T_IM_START, T_AB, T_IM_END);
    EXPECT(t, "<s>x<s>", true, T_SX, T_S); /* longest text first */
    EXPECT(t, "<s><s>", true, T_S, T_S);
    /* without parse_special control texts are plain text ... */
    EXPECT(t, "<|im_end|>", false, '<', '|', 'i', 'm', '_', 'e', 'n', 'd', '|', '>');
    /* ... but user-defined tokens are ordinary vocabulary, matched either way */
    EXPECT(t, "a@@b", false, 'a', T_AT, 'b');
    EXPECT(t, "a@@b", true, 'a', T_AT, 'b');
    /* BOS on request */
    int32_t *ids;
    size_t n;
    assert_int_equal(td_tok_encode(t, "ab", 2, true, false, &ids, &n, NULL), TD_OK);
    assert_int_equal(n, 2);
    assert_int_equal(ids[0], T_IM_START);
    assert_int_equal(ids[1], T_AB);
    free(ids);
    td_tok_destroy(t);
}

static void test_eog_and_ids(void **state) {
    (void)state;
    td_tok *t = bpe_tok("gpt-2", NULL);
    assert_int_equal(td_tok_bos(t), T_IM_START);
    assert_int_equal(td_tok_eos(t), T_EOT);
    assert_true(td_tok_is_eog(t, T_EOT));
    assert_true(td_tok_is_eog(t, T_IM_END));
    assert_false(td_tok_is_eog(t, T_IM_START));
    assert_false(td_tok_is_eog(t, 'a'));
    assert_false(td_tok_is_eog(t, -1));
    assert_false(td_tok_is_eog(t, BPE_N));
    assert_int_equal(td_tok_find(t, "<|im_end|>", 10), T_IM_END);
    assert_int_equal(td_tok_find(t, "xy", 2), -1); /* interned for merges, not a token */
    size_t len;
    assert_string_equal(td_tok_text(t, T_SP_A, &len), "\u0120a");
    assert_int_equal(len, 3);
    assert_null(td_tok_text(t, BPE_N, &len));
    td_tok_destroy(t);
}

/* ----------------------------------------------------- invalid input */

static void test_invalid_utf8(void **state) {
    (void)state;
    td_tok *t = bpe_tok("smollm", NULL);
    static const struct {
        const char *s;
        size_t len, off;
    } bad[] = {
        {"ab\xff", 3, 2},
        {"\xc0\x80", 2, 0}, /* overlong NUL */
        {"a\xed\xa0\x80", 4, 1},
        /* surrogate */ {"abc\xe2\x82", 5, 3}, /* truncated */
        {"\xf4\x90\x80\x80", 4, 0},
        /* > U+10FFFF */ {"\x80", 1, 0},
        {"ok\xf0\x9f\x98", 5, 2},
        {"\xe0\x80\xaf", 3, 0}, /* overlong '/' */
        {"x\xc3", 2, 1},
        {"<|im_end|>\xfe", 11, 10},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        int32_t *ids = (int32_t *)1;
        size_t n = 9;
        td_err err = {0};
        assert_int_equal(td_tok_encode(t, bad[i].s, bad[i].len, true, true, &ids, &n, &err),
                         TD_E_ARG);
        assert_null(ids);
        assert_int_equal(n, 0);
        char want[64];
        snprintf(want, sizeof want, "offset %zu", bad[i].off);
        if (!strstr(err.msg, want)) print_message("case %zu: %s\n", i, err.msg);
        assert_non_null(strstr(err.msg, want));
    }
    /* valid edge cases */
    int32_t *ids;
    size_t n;
    assert_int_equal(
        td_tok_encode(t, "\xf4\x8f\xbf\xbf\xed\x9f\xbf", 7, false, false, &ids, &n, NULL), TD_OK);
    free(ids);
    assert_int_equal(td_tok_encode(t, "a\0b", 3, false, false, &ids, &n, NULL),
                     TD_OK); /* NUL is valid */
    assert_int_equal(n, 3);
    free(ids);
    assert_int_equal(td_tok_encode(t, NULL, 3, false, false, &ids, &n, NULL), TD_E_ARG);
    /* random bytes: either valid and encoded, or refused; never a crash */
    uint64_t rng = 77;
    char buf[64];
    int refused = 0;
    for (int i = 0; i < 2000; i++) {
        size_t len = rng_next(&rng) % sizeof buf;
        for (size_t k = 0; k < len; k++) buf[k] = (char)(rng_next(&rng) >> 24);
        int rc = td_tok_encode(t, buf, len, true, true, &ids, &n, NULL);
        assert_true(rc == TD_OK || rc == TD_E_ARG);
        refused += rc == TD_E_ARG;
        if (rc == TD_OK) free(ids);
    }
    assert_true(refused > 1000);
    td_tok_destroy(t);
}

/* ------------------------------------------------------ decode/pieces */

static void test_pieces(void **state) {
    (void)state;
    td_tok *t = bpe_tok("gpt-2", NULL);
    char buf[32];
    memset(buf, '#', sizeof buf);
    assert_int_equal(td_tok_piece(t, T_SP_A, false, buf, sizeof buf), 2);
    assert_memory_equal(buf, " a", 2);
    memset(buf, '#', sizeof buf);
    assert_int_equal(td_tok_piece(t, T_SP_A, false, buf, 1), 2); /* needs 2, writes 1 */
    assert_int_equal(buf[0], ' ');
    assert_int_equal(buf[1], '#');
    assert_int_equal(td_tok_piece(t, T_SP_A, false, NULL, 0), 2);
    assert_int_equal(td_tok_piece(t, '\n', false, buf, sizeof buf), 1);
    assert_int_equal(buf[0], '\n');
    assert_int_equal(td_tok_piece(t, 0xFF, false, buf, sizeof buf), 1);
    assert_int_equal((unsigned char)buf[0], 0xFF);
    assert_int_equal(td_tok_piece(t, T_IM_END, false, buf, sizeof buf), 0);
    assert_int_equal(td_tok_piece(t, T_IM_END, true, buf, sizeof buf), 10);
    assert_memory_equal(buf, "<|im_end|>", 10);
    assert_int_equal(td_tok_piece(t, T_AT, false, buf, sizeof buf), 2); /* user-defined: as is */
    assert_true(td_tok_piece(t, -1, false, buf, sizeof buf) < 0);
    assert_true(td_tok_piece(t, BPE_N, false, buf, sizeof buf) < 0);
    int32_t bad[] = {T_AB, 99999};
    char *out = (char *)1;
    assert_int_equal(td_tok_decode(t, bad, 2, false, &out, NULL, NULL), TD_E_ARG);
    assert_null(out);
    td_tok_destroy(t);
}

static void test_round_trip_random(void **state) {
    (void)state;
    td_tok *t = bpe_tok("smollm", NULL), *g = bpe_tok("llama3", NULL), *s = spm_tok(NULL);
    uint64_t rng = 0x9E3779B97F4A7C15ULL;
    char buf[64 * 10 + 16];
    for (int i = 0; i < 400; i++) {
        size_t n = random_utf8(&rng, buf, 64, NULL);
        round_trip(t, buf, n);
        round_trip(g, buf, n);
        round_trip(s, buf, n);
    }
    td_tok_destroy(t);
    td_tok_destroy(g);
    td_tok_destroy(s);
}

static void test_long_pieces(void **state) {
    (void)state;
    td_tok *t = bpe_tok("gpt-2", NULL);
    size_t n = 200000;
    char *s = malloc(n);
    assert_non_null(s);
    memset(s, 'a', n);
    int32_t *ids;
    size_t k;
    assert_int_equal(td_tok_encode(t, s, n, false, false, &ids, &k, NULL), TD_OK);
    assert_int_equal(k, n / 2); /* "aa" x 100000 */
    for (size_t i = 0; i < k; i++) assert_int_equal(ids[i], T_AA);
    free(ids);
    td_tok *l3 = bpe_tok("llama3", NULL), *sp = spm_tok(NULL);
    round_trip(sp, s, n);
    memset(s, ' ', n);
    round_trip(t, s, n);
    round_trip(l3, s, n);
    round_trip(sp, s, n);
    for (size_t i = 0; i < n; i++) s[i] = "\n \t"[i % 3];
    round_trip(t, s, n);
    round_trip(l3, s, n);
    free(s);
    td_tok_destroy(t);
    td_tok_destroy(l3);
    td_tok_destroy(sp);
}

/* ----------------------------------------------------- SentencePiece */

static void test_spm(void **state) {
    (void)state;
    td_tok *t = spm_tok(NULL);
    assert_int_equal(td_tok_bos(t), S_BOS); /* llama defaults: BOS 1, EOS 2, add_bos */
    assert_int_equal(td_tok_eos(t), S_EOS);
    assert_true(td_tok_add_bos(t));
    assert_true(td_tok_is_eog(t, S_EOS));
    /* "▁abc": ab (-0.5) beats ▁a (-1) and bc (-2); then ▁ab (-0.1) */
    EXPECT(t, "abc", false, S_SPAB, S_C);
    EXPECT(t, "bc", false, S_SP, S_BC);
    /* é is not a token: byte fallback */
    EXPECT(t, "\xC3\xA9", false, S_SP, S_BYTE0 + 0xC3, S_BYTE0 + 0xA9);
    EXPECT(t, "a a", false, S_SPA, S_SPA);
    /* a space is prefixed again after a special token */
    EXPECT(t, "<s>ab", true, S_BOS, S_SPAB);
    int32_t *ids;
    size_t n;
    assert_int_equal(td_tok_encode(t, "abc", 3, td_tok_add_bos(t), false, &ids, &n, NULL), TD_OK);
    assert_int_equal(n, 3);
    assert_int_equal(ids[0], S_BOS);
    char *out;
    size_t len;
    assert_int_equal(td_tok_decode(t, ids, n, false, &out, &len, NULL), TD_OK);
    assert_string_equal(out, "abc");
    free(out);
    free(ids);
    char buf[8];
    assert_int_equal(td_tok_piece(t, S_SPAB, false, buf, sizeof buf), 3);
    assert_memory_equal(buf, " ab", 3);
    assert_int_equal(td_tok_piece(t, S_BYTE0 + 0x41, false, buf, sizeof buf), 1);
    assert_int_equal(buf[0], 'A');
    round_trip(t, " leading", 8);
    round_trip(t, "  two  spaces  ", 15);
    td_tok_destroy(t);
}

/* ------------------------------------------------------------- hashes */

static void test_vocab_hash(void **state) {
    (void)state;
    td_tok *a = bpe_tok("gpt-2", NULL), *b = bpe_tok("smollm", NULL);
    assert_true(td_tok_vocab_hash(a) == td_tok_vocab_hash(b)); /* same table, other pre */
    td_tok_destroy(b);
    bpe_vocab v;
    bpe_vocab_init(&v);
    v.type[T_AB] = 4;
    spec s = {
        "gpt2", "gpt-2", (const char *const *)v.text, v.type, NULL, BPE_N, 0, k_bpe_merges, 1, NULL,
        -1,     -1};
    td_err err = {0};
    assert_int_equal(build(&s, &b, &err), TD_OK);
    assert_true(td_tok_vocab_hash(a) != td_tok_vocab_hash(b)); /* a type differs */
    td_tok_destroy(b);
    v.type[T_AB] = 1;
    char *tmp = v.text[T_AB];
    v.text[T_AB] = v.text[T_BC];
    v.text[T_BC] = tmp;
    assert_int_equal(build(&s, &b, &err), TD_OK);
    assert_true(td_tok_vocab_hash(a) != td_tok_vocab_hash(b)); /* order differs */
    td_tok_destroy(b);
    bpe_vocab_free(&v);
    td_tok_destroy(a);
}

/* --------------------------------------------------------------- chat */

static const char k_smol_tmpl[] =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}";

static char *render(const td_tok *t, const td_chat_msg *m, size_t n, bool gen) {
    char *out = NULL;
    td_err err = {0};
    int rc = td_tok_chat_format(t, m, n, gen, &out, &err);
    if (rc) print_message("%s\n", err.msg);
    assert_int_equal(rc, TD_OK);
    return out;
}

static void test_chat_chatml(void **state) {
    (void)state;
    td_tok *t = bpe_tok("gpt-2", k_smol_tmpl);
    assert_int_equal(td_tok_chat_kind(t), TD_CHAT_CHATML);
    td_chat_msg m[] = {{"user", "hi"}, {"assistant", "hello"}, {"user", "bye"}};
    char *s = render(t, m, 1, true);
    assert_string_equal(
        s, "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
           "Hugging Face<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
    free(s);
    td_chat_msg sys[] = {{"system", "Be brief."}, {"user", "hi"}};
    s = render(t, sys, 2, false);
    assert_string_equal(
        s, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n");
    free(s);
    s = render(t, m, 3, false);
    assert_non_null(
        strstr(s, "<|im_start|>assistant\nhello<|im_end|>\n<|im_start|>user\nbye<|im_end|>\n"));
    free(s);
    s = render(t, m, 0, true); /* no messages: no default system either (it lives in the loop) */
    assert_string_equal(s, "<|im_start|>assistant\n");
    free(s);
    td_tok_destroy(t);

    /* a ChatML template without a default system message */
    t = bpe_tok("gpt-2", "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
                         "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}");
    s = render(t, m, 1, true);
    assert_string_equal(s, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
    free(s);
    td_tok_destroy(t);

    /* Qwen2.5 style: escaped newlines, the default is the second system literal */
    t = bpe_tok(
        "qwen2",
        "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + "
        "messages[0]['content'] + '<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>system\\nYou "
        "are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
        "{%- endif %}");
    s = render(t, m, 1, false);
    assert_string_equal(
        s, "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
           "assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n");
    free(s);
    td_tok_destroy(t);
}

static void test_chat_llama3_mistral_none(void **state) {
    (void)state;
    td_tok *t = bpe_tok(
        "llama3", "{% set loop_messages = messages %}{% for message in loop_messages %}{% set "
                  "content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ "
                  "message['content'] | trim + '<|eot_id|>' %}{{ content }}{% endfor %}");
    assert_int_equal(td_tok_chat_kind(t), TD_CHAT_LLAMA3);
    td_chat_msg m[] = {{"system", "Be brief."}, {"user", "  hi \n"}};
    char *s = render(t, m, 2, true);
    assert_string_equal(
        s, "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
           "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
           "<|start_header_id|>assistant<|end_header_id|>\n\n");
    free(s);
    td_tok_destroy(t);

    t = spm_tok(
        "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
        "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% else %}{{ message['content'] + "
        "eos_token }}{% endif %}{% endfor %}");
    assert_int_equal(td_tok_chat_kind(t), TD_CHAT_MISTRAL);
    td_chat_msg c[] = {{"system", "S"}, {"user", "U1"}, {"assistant", "A1"}, {"user", "U2"}};
    s = render(t, c, 4, true);
    assert_string_equal(s, "<s>[INST] S\n\nU1 [/INST]A1</s>[INST] U2 [/INST]");
    free(s);
    s = render(t, c + 1, 1, true);
    assert_string_equal(s, "<s>[INST] U1 [/INST]");
    free(s);
    td_chat_msg bad[] = {{"user", "x"}, {"tool", "y"}};
    char *out = NULL;
    td_err err = {0};
    assert_int_equal(td_tok_chat_format(t, bad, 2, true, &out, &err), TD_E_ARG);
    assert_null(out);
    assert_non_null(strstr(err.msg, "tool"));
    /* the rendered text encodes with its specials recognised */
    s = render(t, c + 1, 1, true);
    int32_t *ids;
    size_t n;
    assert_int_equal(td_tok_encode(t, s, strlen(s), false, true, &ids, &n, NULL), TD_OK);
    assert_int_equal(ids[0], S_BOS);
    free(ids);
    free(s);
    td_tok_destroy(t);

    t = bpe_tok("gpt-2", NULL);
    assert_int_equal(td_tok_chat_kind(t), TD_CHAT_NONE);
    s = render(t, m, 2, true);
    assert_string_equal(s, "Be brief.  hi \n");
    free(s);
    td_chat_msg null_content[] = {{"user", NULL}};
    assert_int_equal(td_tok_chat_format(t, null_content, 1, true, &out, &err), TD_E_ARG);
    td_tok_destroy(t);
}

/* ------------------------------------------------- the default model */

/* Just enough JSON for tests/fixtures/tokenize.json. */
typedef struct jp {
    const char *p, *end;
    bool bad;
} jp;

static void jws(jp *j) {
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\n' || *j->p == '\r' || *j->p == '\t'))
        j->p++;
}

static bool jlit(jp *j, const char *lit) {
    jws(j);
    size_t n = strlen(lit);
    if ((size_t)(j->end - j->p) >= n && memcmp(j->p, lit, n) == 0) return j->p += n, true;
    return false;
}

static unsigned jhex4(jp *j) {
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = j->p < j->end ? *j->p++ : 0;
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (d < 0) j->bad = true, d = 0;
        v = v * 16 + (unsigned)d;
    }
    return v;
}

/* A string, unescaped into a malloc'd buffer. */
static char *jstr(jp *j, size_t *len) {
    jws(j);
    if (j->p >= j->end || *j->p != '"') return j->bad = true, NULL;
    j->p++;
    char *o = malloc((size_t)(j->end - j->p) + 1);
    assert_non_null(o);
    size_t n = 0;
    while (j->p < j->end && *j->p != '"') {
        char c = *j->p++;
        if (c != '\\') {
            o[n++] = c;
            continue;
        }
        c = j->p < j->end ? *j->p++ : 0;
        switch (c) {
        case 'n':
            o[n++] = '\n';
            break;
        case 't':
            o[n++] = '\t';
            break;
        case 'r':
            o[n++] = '\r';
            break;
        case 'b':
            o[n++] = '\b';
            break;
        case 'f':
            o[n++] = '\f';
            break;
        case 'u': {
            uint32_t cp = jhex4(j);
            if (cp >= 0xD800 && cp <= 0xDBFF && jlit(j, "\\u"))
                cp = 0x10000 + ((cp - 0xD800) << 10) + (jhex4(j) - 0xDC00);
            n += (size_t)put_utf8(cp, o + n);
            break;
        }
        default:
            o[n++] = c;
            break;
        }
    }
    if (j->p >= j->end)
        j->bad = true;
    else
        j->p++;
    o[n] = '\0';
    *len = n;
    return o;
}

static void jskip(jp *j) {
    jws(j);
    if (j->p >= j->end) {
        j->bad = true;
        return;
    }
    char c = *j->p;
    if (c == '"') {
        size_t l;
        free(jstr(j, &l));
    } else if (c == '{' || c == '[') {
        char close = c == '{' ? '}' : ']';
        j->p++;
        if (jlit(j, close == '}' ? "}" : "]")) return;
        do {
            if (close == '}') {
                size_t l;
                free(jstr(j, &l));
                if (!jlit(j, ":")) {
                    j->bad = true;
                    return;
                }
            }
            jskip(j);
        } while (!j->bad && jlit(j, ","));
        if (!jlit(j, close == '}' ? "}" : "]")) j->bad = true;
    } else {
        while (j->p < j->end && !strchr(",}] \n\t\r", *j->p)) j->p++;
    }
}

/* An integer array. */
static void jints(jp *j, int32_t **v, size_t *n) {
    size_t cap = 16;
    *n = 0;
    *v = malloc(cap * sizeof **v);
    assert_non_null(*v);
    if (!jlit(j, "[")) {
        j->bad = true;
        return;
    }
    if (jlit(j, "]")) return;
    do {
        jws(j);
        char *e;
        long x = strtol(j->p, &e, 10);
        if (e == j->p) j->bad = true;
        j->p = e;
        if (*n == cap) *v = realloc(*v, (cap *= 2) * sizeof **v);
        assert_non_null(*v);
        (*v)[(*n)++] = (int32_t)x;
    } while (!j->bad && jlit(j, ","));
    if (!jlit(j, "]")) j->bad = true;
}

/* Calls fn for each key of an object; fn parses (or jskip's) the value. */
static void jobject(jp *j, void (*fn)(jp *, const char *, void *), void *ctx) {
    if (!jlit(j, "{")) {
        j->bad = true;
        return;
    }
    if (jlit(j, "}")) return;
    do {
        size_t kl;
        char *k = jstr(j, &kl);
        if (!j->bad && jlit(j, ":"))
            fn(j, k, ctx);
        else
            j->bad = true;
        free(k);
    } while (!j->bad && jlit(j, ","));
    if (!jlit(j, "}")) j->bad = true;
}

/* Calls fn for each element of an array. */
static void jarray(jp *j, void (*fn)(jp *, void *), void *ctx) {
    if (!jlit(j, "[")) {
        j->bad = true;
        return;
    }
    if (jlit(j, "]")) return;
    do fn(j, ctx);
    while (!j->bad && jlit(j, ","));
    if (!jlit(j, "]")) j->bad = true;
}

/* One record of a fixture: the fields the tests read, when present. */
typedef struct rec {
    char *text, *prompt, *formatted, *until_eos;
    size_t len, until_eos_len;
    bool special;
    int32_t *ids, *prompt_ids, *gen_ids;
    size_t n, n_prompt, n_gen;
    long first_eos; /* -1: null */
} rec;

typedef struct recs {
    rec *v;
    size_t n, cap;
    const char *list_key; /* top-level key holding the record array */
    int32_t *top_ids;     /* top-level "ids" */
    size_t n_top_ids;
} recs;

static void rec_field(jp *j, const char *k, void *ctx) {
    rec *r = ctx;
    size_t l;
    if (strcmp(k, "text") == 0)
        r->text = jstr(j, &r->len);
    else if (strcmp(k, "prompt") == 0)
        r->prompt = jstr(j, &l);
    else if (strcmp(k, "formatted") == 0)
        r->formatted = jstr(j, &l);
    else if (strcmp(k, "text_until_eos") == 0)
        r->until_eos = jstr(j, &r->until_eos_len);
    else if (strcmp(k, "parse_special") == 0) {
        r->special = jlit(j, "true");
        if (!r->special && !jlit(j, "false")) j->bad = true;
    } else if (strcmp(k, "ids") == 0)
        jints(j, &r->ids, &r->n);
    else if (strcmp(k, "prompt_ids") == 0)
        jints(j, &r->prompt_ids, &r->n_prompt);
    else if (strcmp(k, "generated_ids") == 0)
        jints(j, &r->gen_ids, &r->n_gen);
    else if (strcmp(k, "first_eos") == 0) {
        r->first_eos = -1;
        if (!jlit(j, "null")) {
            jws(j);
            char *e;
            r->first_eos = strtol(j->p, &e, 10);
            if (e == j->p) j->bad = true;
            j->p = e;
        }
    } else
        jskip(j);
}

static void rec_elem(jp *j, void *ctx) {
    recs *rs = ctx;
    if (rs->n == rs->cap)
        rs->v = realloc(rs->v, (rs->cap = rs->cap ? 2 * rs->cap : 64) * sizeof *rs->v);
    assert_non_null(rs->v);
    rec *r = &rs->v[rs->n++];
    memset(r, 0, sizeof *r);
    r->first_eos = -1;
    jobject(j, rec_field, r);
}

static void top_field(jp *j, const char *k, void *ctx) {
    recs *rs = ctx;
    if (strcmp(k, rs->list_key) == 0)
        jarray(j, rec_elem, rs);
    else if (strcmp(k, "ids") == 0)
        jints(j, &rs->top_ids, &rs->n_top_ids);
    else
        jskip(j);
}

/* Loads tests/fixtures/<name>; false when the file is absent. */
static bool load_fixture(const char *name, const char *list_key, recs *rs) {
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/fixtures/%s", TD_SOURCE_DIR, name);
    size_t len;
    char *json = read_file(path, &len);
    memset(rs, 0, sizeof *rs);
    rs->list_key = list_key;
    if (!json) return false;
    jp j = {json, json + len, false};
    jobject(&j, top_field, rs);
    assert_false(j.bad);
    free(json);
    return true;
}

static void free_fixture(recs *rs) {
    for (size_t i = 0; i < rs->n; i++) {
        rec *r = &rs->v[i];
        free(r->text), free(r->prompt), free(r->formatted), free(r->until_eos);
        free(r->ids), free(r->prompt_ids), free(r->gen_ids);
    }
    free(rs->v);
    free(rs->top_ids);
}

static bool same_ids(const int32_t *a, size_t na, const int32_t *b, size_t nb) {
    return na == nb && (na == 0 || memcmp(a, b, na * sizeof *a) == 0);
}

typedef struct model_fx {
    td_gguf *g;
    td_tok *t;
} model_fx;

static int model_setup(void **state) {
    static model_fx fx;
    char path[4096];
    memset(&fx, 0, sizeof fx);
    *state = &fx;
    if (!model_path(path, sizeof path)) return 0;
    td_err err = {0};
    if (td_gguf_open(path, &fx.g, &err) != TD_OK) return print_message("%s\n", err.msg), -1;
    double t0 = td_now_sec();
    if (td_tok_create(fx.g, &fx.t, &err) != TD_OK) return print_message("%s\n", err.msg), -1;
    print_message("SmolLM2 tokenizer load: %.2f ms\n", (td_now_sec() - t0) * 1e3);
    return 0;
}

static int model_teardown(void **state) {
    model_fx *fx = *state;
    td_tok_destroy(fx->t);
    td_gguf_close(fx->g);
    return 0;
}

static const td_tok *need_model(void **state) {
    model_fx *fx = *state;
    if (!fx->t) {
        print_message("skipping: default model not in ~/.cache/tandem/models\n");
        skip();
    }
    return fx->t;
}

static void test_model_basics(void **state) {
    const td_tok *t = need_model(state);
    assert_int_equal(td_tok_vocab_size(t), 49152);
    assert_int_equal(td_tok_bos(t), 1);
    assert_int_equal(td_tok_eos(t), 2);
    assert_false(td_tok_add_bos(t));
    assert_int_equal(td_tok_chat_kind(t), TD_CHAT_CHATML);
    assert_true(td_tok_is_eog(t, 2));  /* <|im_end|> */
    assert_true(td_tok_is_eog(t, 0));  /* <|endoftext|> */
    assert_false(td_tok_is_eog(t, 1)); /* <|im_start|> */
    assert_false(td_tok_is_eog(t, 198));
    /* third-party vectors */
    EXPECT(t, "Hello, we can use", false, 19556, 28, 392, 416, 722);
    EXPECT(t, "\n", false, 198);
}

static void test_model_fixture(void **state) {
    const td_tok *t = need_model(state);
    recs rs;
    if (!load_fixture("tokenize.json", "cases", &rs)) {
        print_message("skipping: tests/fixtures/tokenize.json not present\n");
        skip();
    }
    size_t same = 0;
    assert_true(rs.n >= 40);
    for (size_t i = 0; i < rs.n; i++) {
        const rec *c = &rs.v[i];
        assert_non_null(c->text);
        int32_t *ids;
        size_t n;
        td_err err = {0};
        int rc = td_tok_encode(t, c->text, c->len, false, c->special, &ids, &n, &err);
        if (rc) print_message("case %zu: %s\n", i, err.msg);
        assert_int_equal(rc, TD_OK);
        if (same_ids(ids, n, c->ids, c->n)) {
            same++;
        } else {
            print_message("case %zu differs (special=%d): \"%s\"\n  want", i, c->special, c->text);
            for (size_t k = 0; k < c->n; k++) print_message(" %d", c->ids[k]);
            print_message("\n  got ");
            for (size_t k = 0; k < n; k++) print_message(" %d", ids[k]);
            print_message("\n");
        }
        if (!c->special) round_trip(t, c->text, c->len);
        free(ids);
    }
    print_message("tokenize.json: %zu/%zu strings identical to llama.cpp\n", same, rs.n);
    assert_int_equal(same, rs.n);
    free_fixture(&rs);
}

/* english.txt as llama.cpp tokenized it for the teacher-forcing fixture. */
static void test_model_fixture_english(void **state) {
    const td_tok *t = need_model(state);
    recs rs;
    size_t len;
    char *text = read_file(TD_SOURCE_DIR "/tests/fixtures/english.txt", &len);
    if (!text || !load_fixture("logits_english.json", "-", &rs)) {
        free(text);
        print_message("skipping: english.txt / logits_english.json not present\n");
        skip();
    }
    int32_t *ids;
    size_t n;
    assert_int_equal(td_tok_encode(t, text, len, false, false, &ids, &n, NULL), TD_OK);
    assert_true(rs.n_top_ids > 0 && rs.n_top_ids <= n);
    size_t k = 0;
    while (k < rs.n_top_ids && ids[k] == rs.top_ids[k]) k++;
    print_message("english.txt: first %zu of %zu reference ids identical (%zu tokens in all)\n", k,
                  rs.n_top_ids, n);
    assert_int_equal(k, rs.n_top_ids);
    free(ids);
    free(text);
    free_fixture(&rs);
}

/* The greedy chat fixture: our ChatML rendering and its ids match the
 * prompts llama.cpp ran, and decoding its output gives its text. */
static void test_model_fixture_chat(void **state) {
    const td_tok *t = need_model(state);
    recs rs;
    if (!load_fixture("greedy_chat.json", "runs", &rs)) {
        print_message("skipping: tests/fixtures/greedy_chat.json not present\n");
        skip();
    }
    assert_true(rs.n > 0);
    size_t decoded = 0;
    for (size_t i = 0; i < rs.n; i++) {
        const rec *r = &rs.v[i];
        assert_non_null(r->prompt);
        td_chat_msg m = {"user", r->prompt};
        char *s = render(t, &m, 1, true);
        assert_string_equal(s, r->formatted);
        int32_t *ids;
        size_t n;
        assert_int_equal(td_tok_encode(t, s, strlen(s), false, true, &ids, &n, NULL), TD_OK);
        assert_true(same_ids(ids, n, r->prompt_ids, r->n_prompt));
        free(ids);
        free(s);
        if (r->until_eos && !strstr(r->until_eos, "\xEF\xBF\xBD")) { /* no U+FFFD from a cut */
            size_t upto = r->first_eos >= 0 ? (size_t)r->first_eos : r->n_gen;
            char *text;
            size_t len;
            assert_int_equal(td_tok_decode(t, r->gen_ids, upto, false, &text, &len, NULL), TD_OK);
            assert_string_equal(text, r->until_eos);
            free(text);
            decoded++;
        }
    }
    print_message("greedy_chat.json: %zu prompts rendered and tokenized identically, %zu outputs "
                  "decoded identically\n",
                  rs.n, decoded);
    free_fixture(&rs);
}

static void test_model_chat(void **state) {
    const td_tok *t = need_model(state);
    td_chat_msg m[] = {{"user", "What is 2+2?"}};
    char *s = render(t, m, 1, true);
    static const char want[] = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, "
                               "trained by Hugging Face<|im_end|>\n"
                               "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n";
    assert_string_equal(s, want);
    int32_t *ids;
    size_t n;
    assert_int_equal(td_tok_encode(t, s, strlen(s), false, true, &ids, &n, NULL), TD_OK);
    assert_int_equal(ids[0], 1);
    size_t n_end = 0;
    for (size_t i = 0; i < n; i++) n_end += ids[i] == 2;
    assert_int_equal(n_end, 2);
    char *back;
    size_t len;
    assert_int_equal(td_tok_decode(t, ids, n, true, &back, &len, NULL), TD_OK);
    assert_string_equal(back, want); /* render_special brings the markers back */
    free(back);
    assert_int_equal(td_tok_decode(t, ids, n, false, &back, &len, NULL), TD_OK);
    assert_null(strstr(back, "<|im_start|>")); /* and hides them otherwise */
    free(back);
    free(ids);
    free(s);
}

static void test_model_round_trip_and_speed(void **state) {
    const td_tok *t = need_model(state);
    /* SmolLM2's vocabulary lacks 21 of the 256 byte symbols (0x04, 0xC0, 0xF1,
     * 0xF5..0xFF, ...): text needing them cannot be spelled (those bytes are
     * dropped, as llama.cpp drops them), so the round trip covers the rest. */
    bool ok_byte[256];
    int n_missing = 0;
    for (unsigned b = 0; b < 256; b++) {
        char u[5] = {0};
        int k = put_utf8(byte_cp(b), u);
        ok_byte[b] = td_tok_find(t, u, (size_t)k) >= 0;
        n_missing += !ok_byte[b];
    }
    print_message("byte symbols missing from the vocabulary: %d\n", n_missing);
    int32_t *ids;
    size_t n;
    assert_int_equal(td_tok_encode(t,
                                   "a\x04"
                                   "b",
                                   3, false, false, &ids, &n, NULL),
                     TD_OK);
    free(ids);
    uint64_t rng = 12345;
    char buf[256 * 10 + 16];
    for (int i = 0; i < 300; i++) {
        n = random_utf8(&rng, buf, 256, ok_byte);
        round_trip(t, buf, n);
    }
    size_t len;
    char *text = read_file(TD_SOURCE_DIR "/tests/fixtures/english.txt", &len);
    if (!text) skip();
    double best = 1e9;
    for (int r = 0; r < 5; r++) {
        double t0 = td_now_sec();
        assert_int_equal(td_tok_encode(t, text, len, false, false, &ids, &n, NULL), TD_OK);
        double dt = td_now_sec() - t0;
        if (dt < best) best = dt;
        if (r < 4) free(ids);
    }
    print_message("english.txt: %zu bytes -> %zu tokens, encode %.2f ms (best of 5)\n", len, n,
                  best * 1e3);
    round_trip(t, text, len);
    free(ids);
    free(text);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bpe_merge_order),
        cmocka_unit_test(test_bpe_byte_fallback),
        cmocka_unit_test(test_bpe_empty_expectation),
        cmocka_unit_test(test_pretok_passes),
        cmocka_unit_test(test_unknown_pre),
        cmocka_unit_test(test_bad_files),
        cmocka_unit_test(test_special_split),
        cmocka_unit_test(test_eog_and_ids),
        cmocka_unit_test(test_invalid_utf8),
        cmocka_unit_test(test_pieces),
        cmocka_unit_test(test_round_trip_random),
        cmocka_unit_test(test_long_pieces),
        cmocka_unit_test(test_spm),
        cmocka_unit_test(test_vocab_hash),
        cmocka_unit_test(test_chat_chatml),
        cmocka_unit_test(test_chat_llama3_mistral_none),
    };
    const struct CMUnitTest model_tests[] = {
        cmocka_unit_test(test_model_basics),
        cmocka_unit_test(test_model_fixture),
        cmocka_unit_test(test_model_fixture_english),
        cmocka_unit_test(test_model_fixture_chat),
        cmocka_unit_test(test_model_chat),
        cmocka_unit_test(test_model_round_trip_and_speed),
    };
    int fails = cmocka_run_group_tests_name("tok", tests, NULL, NULL);
    fails +=
        cmocka_run_group_tests_name("tok_default_model", model_tests, model_setup, model_teardown);
    return fails;
}
