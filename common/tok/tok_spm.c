/* tok_spm.c — SentencePiece BPE ("llama" tokenizer model) over one raw-text
 * fragment: spaces become "▁" (with one prepended when asked), symbols start
 * as UTF-8 characters, and the adjacent pair whose concatenation is a token
 * with the highest score is merged (leftmost on ties) until none is left.
 * Symbols that are not tokens become byte tokens <0xXX>, else UNK.
 * Control and unknown tokens are never produced from text: only the special
 * token splitter emits them.
 */
#include <stdlib.h>
#include <string.h>

#include "tok/tok_internal.h"

typedef struct ssym {
    int32_t id;          /* token id of the symbol text, -1 when not a usable token */
    uint32_t start, len; /* bytes of the escaped text; len 0 = merged away */
    int32_t prev, next;
} ssym;

typedef struct scand {
    float score;
    int32_t left, right, id;
    uint32_t len;
} scand;

/* Heap order: highest score first, then leftmost. */
static bool cand_before(const scand *a, const scand *b) {
    return a->score > b->score || (a->score == b->score && a->left < b->left);
}

static void heap_push(scand *h, size_t *n, scand c) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!cand_before(&c, &h[p])) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = c;
}

static scand heap_pop(scand *h, size_t *n) {
    scand top = h[0], last = h[--*n];
    size_t i = 0, m = *n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= m) break;
        if (c + 1 < m && cand_before(&h[c + 1], &h[c])) c++;
        if (!cand_before(&h[c], &last)) break;
        h[i] = h[c];
        i = c;
    }
    if (m > 0) h[i] = last;
    return top;
}

/* Grows scratch buffer *p to at least need bytes (capacities are in bytes,
 * so BPE and SentencePiece may share a td_tok_scratch). */
static int grow(void **p, size_t *cap, size_t need) {
    if (*cap >= need) return TD_OK;
    size_t c = *cap ? *cap : 256;
    while (c < need) c *= 2;
    void *q = realloc(*p, c);
    if (!q) return TD_E_NOMEM;
    *p = q;
    *cap = c;
    return TD_OK;
}

/* Token id for text, or -1 when absent or of a type text must not produce. */
static int32_t usable_token(const td_tok *t, const char *s, size_t n) {
    int32_t id = td_tok_strtab_find(&t->str, s, n);
    if (id < 0 || id >= t->n_vocab) return -1;
    if (t->type[id] == TD_TOKT_CONTROL || t->type[id] == TD_TOKT_UNKNOWN) return -1;
    return id;
}

static void try_pair(const td_tok *t, const char *buf, const ssym *sym, int32_t l, scand *heap,
                     size_t *nh) {
    if (l < 0) return;
    int32_t r = sym[l].next;
    if (r < 0) return;
    uint32_t len = sym[l].len + sym[r].len;
    int32_t id = usable_token(t, buf + sym[l].start, len);
    if (id < 0) return;
    scand c = {t->score[id], l, r, id, len};
    heap_push(heap, nh, c);
}

static int emit(const td_tok *t, const ssym *s, const char *buf, td_tok_ids *out) {
    if (s->id >= 0) return td_tok_ids_push(out, s->id);
    for (uint32_t k = 0; k < s->len; k++) {
        int32_t id = t->byte_tok[(uint8_t)buf[s->start + k]];
        if (id < 0) id = t->unk;
        if (id >= 0) {
            int rc = td_tok_ids_push(out, id);
            if (rc != TD_OK) return rc;
        }
    }
    return TD_OK;
}

int td_tok_spm_fragment(const td_tok *t, const char *s, size_t n, bool space_prefix,
                        td_tok_scratch *sc, td_tok_ids *out) {
    static const char k_space[3] = {'\xE2', '\x96', '\x81'}; /* U+2581 */
    if (grow(&sc->buf, &sc->buf_cap, 3 * n + 3) != TD_OK) return TD_E_NOMEM;
    char *buf = sc->buf;
    size_t m = 0;
    if (space_prefix) memcpy(buf, k_space, 3), m = 3;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == ' ') {
            memcpy(buf + m, k_space, 3);
            m += 3;
        } else {
            buf[m++] = s[i];
        }
    }
    if (m == 0) return TD_OK;
    if (grow(&sc->sym, &sc->sym_cap, m * sizeof(ssym)) != TD_OK) return TD_E_NOMEM;
    if (grow(&sc->heap, &sc->heap_cap, 3 * m * sizeof(scand)) != TD_OK) return TD_E_NOMEM;
    ssym *sym = sc->sym;
    scand *heap = sc->heap;
    size_t ns = 0, nh = 0;
    for (size_t i = 0; i < m;) {
        uint32_t cp;
        int cl = td_tok_utf8_dec((const unsigned char *)buf + i, &cp);
        sym[ns].id = usable_token(t, buf + i, (size_t)cl);
        sym[ns].start = (uint32_t)i;
        sym[ns].len = (uint32_t)cl;
        sym[ns].prev = (int32_t)ns - 1;
        sym[ns].next = (int32_t)ns + 1;
        ns++;
        i += (size_t)cl;
    }
    sym[ns - 1].next = -1;
    for (size_t i = 0; i + 1 < ns; i++) try_pair(t, buf, sym, (int32_t)i, heap, &nh);
    while (nh > 0) {
        scand c = heap_pop(heap, &nh);
        ssym *l = &sym[c.left], *r = &sym[c.right];
        if (l->len == 0 || r->len == 0 || l->next != c.right || l->len + r->len != c.len) continue;
        l->id = c.id;
        l->len += r->len;
        r->len = 0;
        l->next = r->next;
        if (r->next >= 0) sym[r->next].prev = c.left;
        try_pair(t, buf, sym, l->prev, heap, &nh);
        try_pair(t, buf, sym, c.left, heap, &nh);
    }
    for (int32_t i = 0; i >= 0; i = sym[i].next) {
        int rc = emit(t, &sym[i], buf, out);
        if (rc != TD_OK) return rc;
    }
    return TD_OK;
}
