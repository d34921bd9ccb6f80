/* tok_pretok.c — byte-level BPE pre-tokenizer: the regex passes named by
 * tokenizer.ggml.pre, run with PCRE2 (UTF + UCP, JIT when available).
 * Pass semantics: each pass re-splits every piece of the previous pass on its
 * own (a piece is the whole subject, so look-aheads stop at its end); the
 * matches become pieces and so does any text between or after them.
 * Input is valid UTF-8 (checked by the caller), so matching skips the check.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdlib.h>
#include <string.h>

#include "tok/tok_internal.h"

/* GPT-2's pattern, as llama.cpp runs it (no trailing `|\s+`: a lone space
 * before a non-space is left between matches and becomes a piece anyway). */
#define RE_GPT2 "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)"
/* Llama-3's pattern with its (?i:...) contraction group spelled out. */
#define RE_LLAMA3_HEAD                                                               \
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|"
#define RE_LLAMA3_TAIL "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"

typedef struct pre_def {
    const char *names; /* NUL-separated aliases, ending with an empty name */
    const char *passes[TD_TOK_MAX_PASSES];
    bool ignore_merges, add_bos;
} pre_def;

static const pre_def k_pre[] = {
    {"default\0",
     {"[\\p{P}\\$\\+<=>\\^~\\|]+", RE_GPT2, "\\p{N}+", "[0-9][0-9][0-9]"}, false, false},
    {"smollm\0starcoder\0refact\0command-r\0codeshell\0exaone\0minerva-7b\0",
     {"\\p{N}", RE_GPT2, NULL, NULL}, false, false},
    {"gpt-2\0phi-2\0mpt\0olmo\0roberta-bpe\0jina-v1-en\0jina-v2-code\0",
     {RE_GPT2, NULL, NULL, NULL}, false, false},
    {"llama3\0llama-v3\0llama-bpe\0falcon3\0",
     {RE_LLAMA3_HEAD "\\p{N}{1,3}" RE_LLAMA3_TAIL, NULL, NULL, NULL}, true, true},
    {"qwen2\0deepseek-r1-qwen\0megrez\0",
     {RE_LLAMA3_HEAD "\\p{N}" RE_LLAMA3_TAIL, NULL, NULL, NULL}, false, false},
};

static const pre_def *pre_lookup(const char *name, size_t len) {
    if (!name) return &k_pre[0]; /* missing key: llama.cpp's "default" */
    for (size_t i = 0; i < sizeof k_pre / sizeof k_pre[0]; i++) {
        for (const char *a = k_pre[i].names; *a; a += strlen(a) + 1) {
            if (strlen(a) == len && memcmp(a, name, len) == 0) return &k_pre[i];
        }
    }
    return NULL;
}

int td_tok_pretok_init(td_tok_pretok *p, const char *name, size_t name_len, td_err *err) {
    memset(p, 0, sizeof *p);
    const pre_def *d = pre_lookup(name, name_len);
    if (!d) {
        return td_err_set(err, TD_E_UNSUPPORTED,
                          "tokenizer.ggml.pre: unknown pre-tokenizer \"%.*s\" (known: default, "
                          "smollm, gpt-2, llama3/llama-bpe, qwen2 and aliases)",
                          (int)(name_len > 64 ? 64 : name_len), name);
    }
    p->ignore_merges = d->ignore_merges;
    p->add_bos = d->add_bos;
    for (int i = 0; i < TD_TOK_MAX_PASSES && d->passes[i]; i++) {
        int ecode;
        PCRE2_SIZE eoff;
        pcre2_code *re = pcre2_compile((PCRE2_SPTR)d->passes[i], PCRE2_ZERO_TERMINATED,
                                       PCRE2_UTF | PCRE2_UCP, &ecode, &eoff, NULL);
        if (!re) {
            PCRE2_UCHAR msg[160];
            pcre2_get_error_message(ecode, msg, sizeof msg);
            td_tok_pretok_free(p);
            return td_err_set(err, TD_E_UNSUPPORTED, "pre-tokenizer regex %d: %s at %zu", i,
                              (const char *)msg, (size_t)eoff);
        }
        (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* falls back to the interpreter */
        p->pattern[p->n_re] = d->passes[i];
        p->re[p->n_re++] = re;
    }
    return TD_OK;
}

void td_tok_pretok_free(td_tok_pretok *p) {
    for (int i = 0; i < p->n_re; i++) pcre2_code_free((pcre2_code *)p->re[i]);
    memset(p, 0, sizeof *p);
}

static int spans_push(td_tok_spans *s, size_t off, size_t len) {
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        td_tok_span *v = realloc(s->v, cap * sizeof *v);
        if (!v) return TD_E_NOMEM;
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n].off = off;
    s->v[s->n].len = len;
    s->n++;
    return TD_OK;
}

/* Splits one piece with one regex, appending to out. */
static int split_piece(const pcre2_code *re, pcre2_match_data *md, const char *text,
                       td_tok_span piece, td_tok_spans *out, td_err *err) {
    PCRE2_SPTR subj = (PCRE2_SPTR)(text + piece.off);
    size_t n = piece.len, pos = 0, last = 0; /* last: end of the previous piece */
    while (pos < n) {
        int rc = pcre2_match(re, subj, n, pos, PCRE2_NO_UTF_CHECK, md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            PCRE2_UCHAR msg[160];
            pcre2_get_error_message(rc, msg, sizeof msg);
            return td_err_set(err, TD_E_RANGE, "pre-tokenizer match failed at byte %zu: %s",
                              piece.off + pos, (const char *)msg);
        }
        const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t ms = ov[0], me = ov[1];
        if (me == ms) { /* empty match: step over one character */
            pos = ms + 1;
            while (pos < n && (subj[pos] & 0xC0) == 0x80) pos++;
            continue;
        }
        if (ms > last && spans_push(out, piece.off + last, ms - last) != TD_OK) goto nomem;
        if (spans_push(out, piece.off + ms, me - ms) != TD_OK) goto nomem;
        last = pos = me;
    }
    if (n > last && spans_push(out, piece.off + last, n - last) != TD_OK) goto nomem;
    return TD_OK;
nomem:
    return td_err_set(err, TD_E_NOMEM, "pre-tokenizer: out of memory");
}

int td_tok_pretok_split(const td_tok_pretok *p, const char *text, size_t len, td_tok_spans *out,
                        td_tok_spans *tmp, td_err *err) {
    out->n = 0;
    if (len == 0) return TD_OK;
    if (spans_push(out, 0, len) != TD_OK)
        return td_err_set(err, TD_E_NOMEM, "pre-tokenizer: out of memory");
    for (int i = 0; i < p->n_re; i++) {
        const pcre2_code *re = (const pcre2_code *)p->re[i];
        pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
        if (!md) return td_err_set(err, TD_E_NOMEM, "pre-tokenizer: out of memory");
        tmp->n = 0;
        int rc = TD_OK;
        for (size_t k = 0; k < out->n && rc == TD_OK; k++) {
            rc = split_piece(re, md, text, out->v[k], tmp, err);
        }
        pcre2_match_data_free(md);
        if (rc != TD_OK) return rc;
        td_tok_spans swap = *out;
        *out = *tmp;
        *tmp = swap;
    }
    return TD_OK;
}
