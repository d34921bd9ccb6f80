/* tok.c — tokenizer lifecycle and the encode/decode drivers.
 * Loading copies everything it needs out of the GGUF (the td_gguf may be
 * closed afterwards): token texts into one interned table, types, scores,
 * the merges as a pair map, the pre-tokenizer regexes, special-token ids.
 * Encoding validates UTF-8, splits special tokens out, then hands each raw
 * fragment to byte-level BPE (tok_bpe.c after tok_pretok.c) or SentencePiece
 * (tok_spm.c). A td_tok is immutable after load and safe to share.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tok/tok_internal.h"

/* Inputs above this are refused: symbol offsets in the merge loops are 32-bit
 * and SentencePiece triples spaces. */
#define TOK_MAX_INPUT ((size_t)256 << 20)

/* Texts that end a turn in the common chat formats; control tokens with these
 * texts stop generation besides EOS (tokenizer.ggml.eot_token_id names one). */
static const char *const k_eog_texts[] = {
    "<|eot_id|>",    "<|im_end|>",      "<|endoftext|>",
    "<end_of_turn>", "<|eom_id|>",      "<|end|>",
    "<EOT>",         "<|end_of_text|>", "\uFF5Cend\u2581of\u2581sentence\uFF5C",
};

/* ---------------------------------------------------------------- load */

static int32_t tok_find(const td_tok *t, const char *s, size_t n) {
    int32_t id = td_tok_strtab_find(&t->str, s, n);
    return id < t->n_vocab ? id : -1;
}

/* Reads an optional token id key; ids outside the vocabulary are ignored. */
static void opt_id(const td_gguf *g, const char *key, int32_t n_vocab, int32_t *id) {
    uint64_t v;
    if (td_gguf_get_u64(g, key, &v) && v < (uint64_t)n_vocab) *id = (int32_t)v;
}

enum { TOK_BLOCK = 16 };

static int load_tokens(td_tok *t, const td_gguf *g, td_err *err) {
    const td_gguf_kv *kv = td_gguf_find(g, "tokenizer.ggml.tokens");
    if (!kv || td_gguf_arr_type(kv) != TD_GGUF_STRING)
        return td_err_set(err, TD_E_FORMAT, "tokenizer.ggml.tokens: missing or not a string array");
    uint64_t n = td_gguf_arr_len(kv);
    if (n == 0 || n > (uint64_t)INT32_MAX / 2)
        return td_err_set(err, TD_E_FORMAT, "tokenizer.ggml.tokens: bad count %llu",
                          (unsigned long long)n);
    t->n_vocab = (int32_t)n;
    if (td_tok_strtab_init(&t->str, (size_t)n + 1024) != TD_OK) goto nomem;
    t->type = malloc((size_t)n);
    t->flags = calloc((size_t)n, 1);
    if (!t->type || !t->flags) goto nomem;
    /* in blocks: hash and prefetch the table slots, then insert (see load_merges) */
    for (uint64_t i0 = 0; i0 < n; i0 += TOK_BLOCK) {
        size_t nb = n - i0 < TOK_BLOCK ? (size_t)(n - i0) : TOK_BLOCK;
        const char *bs[TOK_BLOCK];
        size_t bl[TOK_BLOCK];
        uint64_t bh[TOK_BLOCK];
        char empty[TOK_BLOCK][32];
        for (size_t k = 0; k < nb; k++) {
            uint64_t i = i0 + k;
            if (!td_gguf_arr_str(kv, i, &bs[k], &bl[k]))
                return td_err_set(err, TD_E_FORMAT, "tokenizer.ggml.tokens[%llu]: unreadable",
                                  (unsigned long long)i);
            if (bl[k] == 0) { /* as llama.cpp: an empty text gets a unique placeholder */
                bl[k] = (size_t)snprintf(empty[k], sizeof empty[k], "[EMPTY_%llu]",
                                         (unsigned long long)i);
                bs[k] = empty[k];
            }
            bh[k] = td_tok_strtab_hash(bs[k], bl[k]);
            td_tok_strtab_prefetch(&t->str, bh[k]);
        }
        for (size_t k = 0; k < nb; k++) {
            uint64_t i = i0 + k;
            bool added;
            int32_t id = td_tok_strtab_intern_h(&t->str, bs[k], bl[k], bh[k], &added);
            if (id == TD_E_NOMEM) goto nomem;
            if (id < 0)
                return td_err_set(err, TD_E_FORMAT, "tokenizer.ggml.tokens[%llu]: too long",
                                  (unsigned long long)i);
            if (!added)
                return td_err_set(err, TD_E_FORMAT,
                                  "tokenizer.ggml.tokens[%llu]: duplicate of token %d \"%.40s\"",
                                  (unsigned long long)i, id, td_tok_strtab_str(&t->str, id));
        }
    }

    kv = td_gguf_find(g, "tokenizer.ggml.token_type");
    if (kv && td_gguf_arr_len(kv) != n)
        return td_err_set(err, TD_E_FORMAT,
                          "tokenizer.ggml.token_type: %llu entries for %llu tokens",
                          (unsigned long long)td_gguf_arr_len(kv), (unsigned long long)n);
    for (uint64_t i = 0; i < n; i++) {
        int64_t ty = TD_TOKT_NORMAL;
        if (kv && !td_gguf_arr_i64(kv, i, &ty))
            return td_err_set(err, TD_E_FORMAT, "tokenizer.ggml.token_type[%llu]: not an integer",
                              (unsigned long long)i);
        t->type[i] = (ty >= TD_TOKT_UNDEF && ty <= TD_TOKT_BYTE) ? (uint8_t)ty : TD_TOKT_NORMAL;
    }

    if (t->model == TD_TOK_SPM) {
        t->score = calloc((size_t)n, sizeof *t->score);
        if (!t->score) goto nomem;
        kv = td_gguf_find(g, "tokenizer.ggml.scores");
        if (kv && td_gguf_arr_len(kv) != n)
            return td_err_set(err, TD_E_FORMAT,
                              "tokenizer.ggml.scores: %llu entries for %llu tokens",
                              (unsigned long long)td_gguf_arr_len(kv), (unsigned long long)n);
        for (uint64_t i = 0; kv && i < n; i++) {
            double v;
            if (!td_gguf_arr_f64(kv, i, &v))
                return td_err_set(err, TD_E_FORMAT, "tokenizer.ggml.scores[%llu]: not a number",
                                  (unsigned long long)i);
            t->score[i] = (float)v;
        }
    }
    return TD_OK;
nomem:
    return td_err_set(err, TD_E_NOMEM, "tokenizer: out of memory loading %d tokens", t->n_vocab);
}

/* Merges "left right" (split at the first space at index >= 1; rank = index).
 * Halves and results that are not tokens are interned as extra strings so a
 * merge chain through a non-token still works. Work goes in blocks: hash and
 * prefetch a block's table slots, then intern them (the lookups are
 * memory-bound and the load is timed in tens of milliseconds). */
enum { MERGE_BLOCK = 16 };

typedef struct merge_ref {
    const char *s;
    size_t ll, rl;       /* left = s[0, ll), right = s[ll + 1, ll + 1 + rl) */
    uint64_t hl, hr, hm; /* hashes of left, right and left+right */
    int32_t l, r, m;     /* their ids once interned */
} merge_ref;

static int load_merges(td_tok *t, const td_gguf *g, td_err *err) {
    const td_gguf_kv *kv = td_gguf_find(g, "tokenizer.ggml.merges");
    if (!kv || td_gguf_arr_type(kv) != TD_GGUF_STRING)
        return td_err_set(err, TD_E_FORMAT, "tokenizer.ggml.merges: missing or not a string array");
    uint64_t n = td_gguf_arr_len(kv);
    if (n > (uint64_t)INT32_MAX / 4)
        return td_err_set(err, TD_E_FORMAT, "tokenizer.ggml.merges: bad count %llu",
                          (unsigned long long)n);
    int rc = TD_OK;
    char *cat = NULL;
    size_t cat_cap = 0;
    merge_ref blk[MERGE_BLOCK];
    if (td_tok_pairmap_init(&t->merges, (size_t)n) != TD_OK) goto nomem;
    for (uint64_t i0 = 0; i0 < n; i0 += MERGE_BLOCK) {
        size_t nb = n - i0 < MERGE_BLOCK ? (size_t)(n - i0) : MERGE_BLOCK;
        for (size_t k = 0; k < nb; k++) {
            const char *s;
            size_t len;
            uint64_t i = i0 + k;
            if (!td_gguf_arr_str(kv, i, &s, &len)) {
                rc = td_err_set(err, TD_E_FORMAT, "tokenizer.ggml.merges[%llu]: unreadable",
                                (unsigned long long)i);
                goto out;
            }
            const char *sp = len > 1 ? memchr(s + 1, ' ', len - 1) : NULL;
            if (!sp) {
                rc =
                    td_err_set(err, TD_E_FORMAT, "tokenizer.ggml.merges[%llu]: no separating space",
                               (unsigned long long)i);
                goto out;
            }
            merge_ref *m = &blk[k];
            m->s = s;
            m->ll = (size_t)(sp - s);
            m->rl = len - m->ll - 1;
            m->hl = td_tok_strtab_hash(s, m->ll);
            m->hr = td_tok_strtab_hash(sp + 1, m->rl);
            m->hm = td_tok_strtab_hash2(s, m->ll, sp + 1, m->rl);
            td_tok_strtab_prefetch(&t->str, m->hl);
            td_tok_strtab_prefetch(&t->str, m->hr);
            td_tok_strtab_prefetch(&t->str, m->hm);
        }
        for (size_t k = 0; k < nb; k++) {
            merge_ref *m = &blk[k];
            const char *right = m->s + m->ll + 1;
            if (cat_cap < m->ll + m->rl) {
                char *c = realloc(cat, m->ll + m->rl + 64);
                if (!c) goto nomem;
                cat = c;
                cat_cap = m->ll + m->rl + 64;
            }
            memcpy(cat, m->s, m->ll);
            memcpy(cat + m->ll, right, m->rl);
            bool added;
            m->l = td_tok_strtab_intern_h(&t->str, m->s, m->ll, m->hl, &added);
            m->r = td_tok_strtab_intern_h(&t->str, right, m->rl, m->hr, &added);
            m->m = td_tok_strtab_intern_h(&t->str, cat, m->ll + m->rl, m->hm, &added);
            if (m->l < 0 || m->r < 0 || m->m < 0) goto nomem;
            td_tok_pairmap_prefetch(&t->merges, m->l, m->r);
        }
        for (size_t k = 0; k < nb; k++) {
            const merge_ref *m = &blk[k];
            if (td_tok_pairmap_put(&t->merges, m->l, m->r, (int32_t)(i0 + k), m->m) != TD_OK)
                goto nomem;
        }
    }
    for (int b = 0; b < 256; b++) {
        char u[4];
        int k = td_tok_utf8_enc(td_tok_byte_to_cp((uint8_t)b), u);
        t->byte_sym[b] = td_tok_strtab_find(&t->str, u, (size_t)k);
    }
out:
    free(cat);
    return rc;
nomem:
    rc = td_err_set(err, TD_E_NOMEM,
                    "tokenizer: out of memory (or over 4 GiB of text) loading merges");
    goto out;
}

static int cmp_u64(const void *pa, const void *pb) {
    uint64_t a = *(const uint64_t *)pa, b = *(const uint64_t *)pb;
    return (a > b) - (a < b);
}

static int load_specials(td_tok *t, const td_gguf *g, td_err *err) {
    int32_t n = t->n_vocab;
    bool spm = t->model == TD_TOK_SPM;
    /* llama.cpp's defaults when keys are missing (gguf-facts §5) */
    t->bos = spm ? 1 : 11;
    t->eos = spm ? 2 : 11;
    t->unk = spm ? 0 : -1;
    t->eot = -1;
    if (t->bos >= n) t->bos = -1;
    if (t->eos >= n) t->eos = -1;
    if (t->unk >= n) t->unk = -1;
    opt_id(g, "tokenizer.ggml.bos_token_id", n, &t->bos);
    opt_id(g, "tokenizer.ggml.eos_token_id", n, &t->eos);
    opt_id(g, "tokenizer.ggml.unknown_token_id", n, &t->unk);
    opt_id(g, "tokenizer.ggml.eot_token_id", n, &t->eot);
    int32_t eom = -1;
    opt_id(g, "tokenizer.ggml.eom_token_id", n, &eom);

    t->add_bos = spm ? true : t->pre.add_bos;
    (void)td_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &t->add_bos);
    if (t->bos < 0) t->add_bos = false;
    t->add_space_prefix = spm;
    (void)td_gguf_get_bool(g, "tokenizer.ggml.add_space_prefix", &t->add_space_prefix);

    for (size_t k = 0; k < sizeof k_eog_texts / sizeof k_eog_texts[0]; k++) {
        int32_t id = tok_find(t, k_eog_texts[k], strlen(k_eog_texts[k]));
        if (id < 0 || t->type[id] != TD_TOKT_CONTROL) continue;
        t->flags[id] |= TD_TOKF_EOG;
    }
    if (t->eos >= 0) t->flags[t->eos] |= TD_TOKF_EOG;
    if (t->eot >= 0) t->flags[t->eot] |= TD_TOKF_EOG;
    if (eom >= 0) t->flags[eom] |= TD_TOKF_EOG;

    size_t ns = 0;
    for (int32_t i = 0; i < n; i++) {
        uint8_t ty = t->type[i];
        if (ty == TD_TOKT_CONTROL || ty == TD_TOKT_USER || ty == TD_TOKT_UNKNOWN) ns++;
    }
    /* sort keys: longest text first, then lowest id */
    uint64_t *key = malloc((ns ? ns : 1) * sizeof *key);
    t->special = malloc((ns ? ns : 1) * sizeof *t->special);
    if (!key || !t->special) {
        free(key);
        return td_err_set(err, TD_E_NOMEM, "tokenizer: out of memory");
    }
    for (int32_t i = 0; i < n; i++) {
        uint8_t ty = t->type[i];
        if (ty != TD_TOKT_CONTROL && ty != TD_TOKT_USER && ty != TD_TOKT_UNKNOWN) continue;
        /* an empty or invalid text can never match valid input: skip it */
        const char *s = td_tok_strtab_str(&t->str, i);
        size_t len = t->str.len[i];
        if (len == 0 || td_tok_utf8_valid(s, len) != len) continue;
        key[t->n_special++] = ((uint64_t)(UINT32_MAX - t->str.len[i]) << 32) | (uint32_t)i;
    }
    qsort(key, t->n_special, sizeof *key, cmp_u64);
    for (size_t k = 0; k < t->n_special; k++) t->special[k] = (int32_t)(uint32_t)key[k];
    free(key);
    return TD_OK;
}

static void compute_hash(td_tok *t) {
    uint64_t h = TD_FNV1A64_INIT;
    for (int32_t i = 0; i < t->n_vocab; i++) {
        uint32_t len = t->str.len[i];
        uint8_t le[4] = {(uint8_t)len, (uint8_t)(len >> 8), (uint8_t)(len >> 16),
                         (uint8_t)(len >> 24)};
        h = td_fnv1a64(h, le, 4);
        h = td_fnv1a64(h, td_tok_strtab_str(&t->str, i), len);
        h = td_fnv1a64(h, &t->type[i], 1);
    }
    t->vocab_hash = h;
}

int td_tok_create(const td_gguf *g, td_tok **out, td_err *err) {
    int rc;
    td_tok *t = NULL;
    if (!out) return td_err_set(err, TD_E_ARG, "td_tok_create: out is NULL");
    *out = NULL;
    if (!g) return td_err_set(err, TD_E_ARG, "td_tok_create: gguf is NULL");
    t = calloc(1, sizeof *t);
    if (!t) return td_err_set(err, TD_E_NOMEM, "tokenizer: out of memory");
    t->chat = TD_CHAT_NONE;
    for (int b = 0; b < 256; b++) t->byte_sym[b] = t->byte_tok[b] = -1;

    const char *s;
    size_t len;
    if (!td_gguf_get_str(g, "tokenizer.ggml.model", &s, &len)) {
        rc = td_err_set(err, TD_E_FORMAT, "tokenizer.ggml.model: missing");
        goto fail;
    }
    if (len == 4 && memcmp(s, "gpt2", 4) == 0) {
        t->model = TD_TOK_BPE;
    } else if (len == 5 && memcmp(s, "llama", 5) == 0) {
        t->model = TD_TOK_SPM;
    } else {
        rc = td_err_set(err, TD_E_UNSUPPORTED,
                        "tokenizer.ggml.model \"%.*s\" is not supported (gpt2, llama)",
                        (int)(len > 64 ? 64 : len), s);
        goto fail;
    }
    if ((rc = load_tokens(t, g, err)) != TD_OK) goto fail;
    if (t->model == TD_TOK_BPE) {
        const char *pre = NULL;
        size_t pre_len = 0;
        if (!td_gguf_get_str(g, "tokenizer.ggml.pre", &pre, &pre_len)) pre = NULL;
        if ((rc = td_tok_pretok_init(&t->pre, pre, pre_len, err)) != TD_OK) goto fail;
        if ((rc = load_merges(t, g, err)) != TD_OK) goto fail;
    } else {
        for (int b = 0; b < 256; b++) {
            char hex[8];
            static const char dig[] = "0123456789ABCDEF";
            memcpy(hex, "<0x", 3);
            hex[3] = dig[b >> 4];
            hex[4] = dig[b & 15];
            hex[5] = '>';
            t->byte_tok[b] = tok_find(t, hex, 6);
        }
    }
    if ((rc = load_specials(t, g, err)) != TD_OK) goto fail;
    compute_hash(t);
    if (td_gguf_get_str(g, "tokenizer.chat_template", &s, &len)) {
        if ((rc = td_tok_chat_init(t, s, len)) != TD_OK) {
            rc = td_err_set(err, rc, "tokenizer.chat_template: out of memory");
            goto fail;
        }
    }
    *out = t;
    return TD_OK;
fail:
    td_tok_destroy(t);
    return rc;
}

void td_tok_destroy(td_tok *t) {
    if (!t) return;
    td_tok_strtab_free(&t->str);
    td_tok_pairmap_free(&t->merges);
    td_tok_pretok_free(&t->pre);
    free(t->type);
    free(t->flags);
    free(t->score);
    free(t->special);
    free(t->chat_system);
    free(t);
}

/* ----------------------------------------------------------- accessors */

int32_t td_tok_vocab_size(const td_tok *t) { return t->n_vocab; }
int32_t td_tok_bos(const td_tok *t) { return t->bos; }
int32_t td_tok_eos(const td_tok *t) { return t->eos; }
bool td_tok_add_bos(const td_tok *t) { return t->add_bos; }
uint64_t td_tok_vocab_hash(const td_tok *t) { return t->vocab_hash; }
td_chat_kind td_tok_chat_kind(const td_tok *t) { return t->chat; }

bool td_tok_is_eog(const td_tok *t, int32_t id) {
    return id >= 0 && id < t->n_vocab && (t->flags[id] & TD_TOKF_EOG);
}

const char *td_tok_text(const td_tok *t, int32_t id, size_t *len) {
    if (id < 0 || id >= t->n_vocab) {
        if (len) *len = 0;
        return NULL;
    }
    if (len) *len = t->str.len[id];
    return td_tok_strtab_str(&t->str, id);
}

int32_t td_tok_find(const td_tok *t, const char *text, size_t len) {
    if (!t || (!text && len)) return -1;
    return tok_find(t, text ? text : "", len);
}

/* -------------------------------------------------------------- encode */

int td_tok_ids_push(td_tok_ids *ids, int32_t id) {
    if (ids->n == ids->cap) {
        size_t cap = ids->cap ? ids->cap * 2 : 64;
        int32_t *v = realloc(ids->v, cap * sizeof *v);
        if (!v) return TD_E_NOMEM;
        ids->v = v;
        ids->cap = cap;
    }
    ids->v[ids->n++] = id;
    return TD_OK;
}

void td_tok_scratch_free(td_tok_scratch *s) {
    free(s->sym);
    free(s->heap);
    free(s->buf);
    free(s->pieces.v);
    free(s->tmp.v);
    memset(s, 0, sizeof *s);
}

/* A fragment of the input: raw text (tok < 0) or one special token. */
typedef struct frag {
    size_t off, len;
    int32_t tok;
} frag;

typedef struct frags {
    frag *v;
    size_t n, cap;
} frags;

static int frags_push(frags *f, size_t off, size_t len, int32_t tok) {
    if (f->n == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 16;
        frag *v = realloc(f->v, cap * sizeof *v);
        if (!v) return TD_E_NOMEM;
        f->v = v;
        f->cap = cap;
    }
    f->v[f->n++] = (frag){off, len, tok};
    return TD_OK;
}

/* Splits raw fragments on each special token's text, longest text first (so
 * a token containing another wins), leftmost occurrence first within a
 * fragment. Control and unknown tokens only when parse_special; user-defined
 * tokens always (they are ordinary vocabulary entries matched verbatim, as
 * llama.cpp and HF tokenizers do). */
static int split_specials(const td_tok *t, const char *text, bool parse_special, frags *a,
                          frags *b) {
    for (size_t k = 0; k < t->n_special; k++) {
        int32_t id = t->special[k];
        if (!parse_special && t->type[id] != TD_TOKT_USER) continue;
        const char *st = td_tok_strtab_str(&t->str, id);
        size_t sl = t->str.len[id];
        b->n = 0;
        bool hit = false;
        for (size_t i = 0; i < a->n; i++) {
            frag f = a->v[i];
            if (f.tok >= 0 || f.len < sl) {
                if (frags_push(b, f.off, f.len, f.tok) != TD_OK) return TD_E_NOMEM;
                continue;
            }
            size_t pos = f.off, end = f.off + f.len;
            const char *m;
            while (end - pos >= sl && (m = memmem(text + pos, end - pos, st, sl)) != NULL) {
                size_t at = (size_t)(m - text);
                if (at > pos && frags_push(b, pos, at - pos, -1) != TD_OK) return TD_E_NOMEM;
                if (frags_push(b, at, sl, id) != TD_OK) return TD_E_NOMEM;
                pos = at + sl;
                hit = true;
            }
            if (end > pos && frags_push(b, pos, end - pos, -1) != TD_OK) return TD_E_NOMEM;
        }
        if (hit) {
            frags sw = *a;
            *a = *b;
            *b = sw;
        }
    }
    return TD_OK;
}

int td_tok_encode(const td_tok *t, const char *text, size_t len, bool add_bos, bool parse_special,
                  int32_t **ids, size_t *n, td_err *err) {
    if (ids) *ids = NULL;
    if (n) *n = 0;
    if (!t || !ids || !n || (!text && len))
        return td_err_set(err, TD_E_ARG, "td_tok_encode: NULL argument");
    if (len > TOK_MAX_INPUT)
        return td_err_set(err, TD_E_RANGE, "td_tok_encode: input of %zu bytes exceeds %zu", len,
                          TOK_MAX_INPUT);
    size_t valid = td_tok_utf8_valid(text, len);
    if (valid != len)
        return td_err_set(err, TD_E_ARG, "invalid UTF-8 at byte offset %zu (byte 0x%02X)", valid,
                          (unsigned)(unsigned char)text[valid]);

    int rc = TD_OK;
    frags fa = {0}, fb = {0};
    td_tok_ids out = {0};
    td_tok_scratch sc = {0};
    if (add_bos && t->bos >= 0 && td_tok_ids_push(&out, t->bos) != TD_OK) goto nomem;
    if (len > 0 && frags_push(&fa, 0, len, -1) != TD_OK) goto nomem;
    if (split_specials(t, text, parse_special, &fa, &fb) != TD_OK) goto nomem;

    bool prev_special = true; /* SPM: a space is prefixed at the start and after specials */
    for (size_t i = 0; i < fa.n; i++) {
        frag f = fa.v[i];
        if (f.tok >= 0) {
            if (td_tok_ids_push(&out, f.tok) != TD_OK) goto nomem;
            prev_special = true;
            continue;
        }
        if (t->model == TD_TOK_SPM) {
            rc = td_tok_spm_fragment(t, text + f.off, f.len, t->add_space_prefix && prev_special,
                                     &sc, &out);
            if (rc != TD_OK) goto nomem;
            prev_special = false;
            continue;
        }
        rc = td_tok_pretok_split(&t->pre, text + f.off, f.len, &sc.pieces, &sc.tmp, err);
        if (rc != TD_OK) goto fail;
        for (size_t k = 0; k < sc.pieces.n; k++) {
            td_tok_span p = sc.pieces.v[k];
            if (td_tok_bpe_piece(t, text + f.off + p.off, p.len, &sc, &out) != TD_OK) goto nomem;
        }
    }
    /* callers get an allocation even for zero tokens */
    if (!out.v && !(out.v = malloc(sizeof *out.v))) goto nomem;
    *ids = out.v;
    *n = out.n;
    out.v = NULL;
    rc = TD_OK;
    goto done;
nomem:
    rc = td_err_set(err, TD_E_NOMEM, "td_tok_encode: out of memory");
fail:
    free(out.v);
done:
    free(fa.v);
    free(fb.v);
    td_tok_scratch_free(&sc);
    return rc;
}

/* -------------------------------------------------------------- decode */

/* Appends n bytes at *pos, writing only what fits in cap. */
static void put(char *buf, size_t cap, size_t *pos, const void *src, size_t n) {
    if (*pos < cap) memcpy(buf + *pos, src, n < cap - *pos ? n : cap - *pos);
    *pos += n;
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

int td_tok_piece(const td_tok *t, int32_t id, bool render_special, char *buf, size_t cap) {
    if (!t || id < 0 || id >= t->n_vocab) return TD_E_ARG;
    if (!buf) cap = 0;
    const char *s = td_tok_strtab_str(&t->str, id);
    size_t len = t->str.len[id], pos = 0;
    if (len > (size_t)INT32_MAX / 4) return TD_E_RANGE;
    switch (t->type[id]) {
    case TD_TOKT_CONTROL:
    case TD_TOKT_UNKNOWN:
        if (render_special) put(buf, cap, &pos, s, len);
        return (int)pos;
    case TD_TOKT_UNUSED:
        return 0;
    case TD_TOKT_USER:
        put(buf, cap, &pos, s, len); /* stored as plain text, not byte-mapped */
        return (int)pos;
    case TD_TOKT_BYTE:
        if (len == 6 && memcmp(s, "<0x", 3) == 0 && s[5] == '>' && hexval(s[3]) >= 0 &&
            hexval(s[4]) >= 0) {
            char b = (char)(hexval(s[3]) * 16 + hexval(s[4]));
            put(buf, cap, &pos, &b, 1);
            return 1;
        }
        put(buf, cap, &pos, s, len);
        return (int)pos;
    default:
        break;
    }
    if (td_tok_utf8_valid(s, len) != len) { /* not byte-mapped text: show as is */
        put(buf, cap, &pos, s, len);
        return (int)pos;
    }
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        int cl = td_tok_utf8_dec((const unsigned char *)s + i, &cp);
        if (t->model == TD_TOK_BPE) {
            int b = td_tok_cp_to_byte(cp);
            if (b >= 0) {
                char c = (char)b;
                put(buf, cap, &pos, &c, 1);
            } else {
                put(buf, cap, &pos, s + i, (size_t)cl);
            }
        } else if (cp == 0x2581) {
            put(buf, cap, &pos, " ", 1);
        } else {
            put(buf, cap, &pos, s + i, (size_t)cl);
        }
        i += (size_t)cl;
    }
    return (int)pos;
}

int td_tok_decode(const td_tok *t, const int32_t *ids, size_t n, bool render_special, char **out,
                  size_t *out_len, td_err *err) {
    if (out) *out = NULL;
    if (out_len) *out_len = 0;
    if (!t || !out || (!ids && n)) return td_err_set(err, TD_E_ARG, "td_tok_decode: NULL argument");
    size_t cap = 64, pos = 0;
    char *buf = malloc(cap);
    if (!buf) return td_err_set(err, TD_E_NOMEM, "td_tok_decode: out of memory");
    bool strip = t->model == TD_TOK_SPM && t->add_space_prefix;
    for (size_t i = 0; i < n; i++) {
        int k = td_tok_piece(t, ids[i], render_special, buf + pos, cap - pos - 1);
        if (k < 0) {
            free(buf);
            return td_err_set(err, TD_E_ARG, "td_tok_decode: bad token id %d at %zu", ids[i], i);
        }
        if ((size_t)k > cap - pos - 1) {
            while ((size_t)k > cap - pos - 1) cap *= 2;
            char *nb = realloc(buf, cap);
            if (!nb) {
                free(buf);
                return td_err_set(err, TD_E_NOMEM, "td_tok_decode: out of memory");
            }
            buf = nb;
            k = td_tok_piece(t, ids[i], render_special, buf + pos, cap - pos - 1);
        }
        /* SentencePiece: the space the encoder prefixed is not part of the text */
        if (strip && k > 0 &&
            (t->type[ids[i]] == TD_TOKT_NORMAL || t->type[ids[i]] == TD_TOKT_BYTE ||
             t->type[ids[i]] == TD_TOKT_UNDEF || t->type[ids[i]] == TD_TOKT_USER)) {
            if (buf[pos] == ' ') memmove(buf + pos, buf + pos + 1, (size_t)--k);
            strip = false;
        }
        pos += (size_t)k;
    }
    buf[pos] = '\0';
    *out = buf;
    if (out_len) *out_len = pos;
    return TD_OK;
}
