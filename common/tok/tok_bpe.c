/* tok_bpe.c — byte-level BPE over one pre-tokenized piece.
 * Each byte starts as one symbol (its mapped code point, interned at load);
 * the adjacent pair with the lowest merge rank is merged, leftmost first on
 * ties, until no adjacent pair is in the merges table. A binary heap of
 * candidate pairs keeps long pieces (whitespace runs, minified code)
 * O(n log n); stale heap entries are detected and skipped on pop.
 * Final symbols that are not tokens fall back to one token per byte.
 */
#include <stdlib.h>
#include <string.h>

#include "tok/tok_internal.h"

typedef struct bsym {
    int32_t id;          /* interned string id (token id when < n_vocab), -1 unknown */
    uint32_t start, len; /* bytes of the piece; len 0 = merged away */
    int32_t prev, next;  /* neighbours, -1 at the ends */
} bsym;

typedef struct bcand {
    int32_t rank;
    int32_t left, right; /* symbol indices; left < right */
    int32_t merged;      /* id of the merged string */
    uint32_t len;        /* left.len + right.len when pushed: detects stale entries */
} bcand;

static bool cand_less(const bcand *a, const bcand *b) {
    return a->rank < b->rank || (a->rank == b->rank && a->left < b->left);
}

static void heap_push(bcand *h, size_t *n, bcand c) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!cand_less(&c, &h[p])) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = c;
}

static bcand heap_pop(bcand *h, size_t *n) {
    bcand top = h[0], last = h[--*n];
    size_t i = 0, m = *n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= m) break;
        if (c + 1 < m && cand_less(&h[c + 1], &h[c])) c++;
        if (!cand_less(&h[c], &last)) break;
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

static void try_pair(const td_tok *t, const bsym *sym, int32_t l, bcand *heap, size_t *nh) {
    if (l < 0) return;
    int32_t r = sym[l].next;
    if (r < 0 || sym[l].id < 0 || sym[r].id < 0) return;
    int32_t rank, merged;
    if (!td_tok_pairmap_get(&t->merges, sym[l].id, sym[r].id, &rank, &merged)) return;
    bcand c = {rank, l, r, merged, sym[l].len + sym[r].len};
    heap_push(heap, nh, c);
}

/* Emits a final symbol: its token, or one token per byte when it has none. */
static int emit(const td_tok *t, const bsym *s, const char *bytes, td_tok_ids *out) {
    if (s->id >= 0 && s->id < t->n_vocab) return td_tok_ids_push(out, s->id);
    for (uint32_t k = 0; k < s->len; k++) {
        int32_t id = t->byte_sym[(uint8_t)bytes[s->start + k]];
        if (id >= 0 && id < t->n_vocab) {
            int rc = td_tok_ids_push(out, id);
            if (rc != TD_OK) return rc;
        }
        /* a vocabulary without this byte's symbol cannot spell it: dropped */
    }
    return TD_OK;
}

int td_tok_bpe_piece(const td_tok *t, const char *s, size_t n, td_tok_scratch *sc,
                     td_tok_ids *out) {
    if (n == 0) return TD_OK;
    if (t->pre.ignore_merges) {
        /* the mapped text is at most 2 bytes per input byte */
        if (grow(&sc->buf, &sc->buf_cap, 2 * n) != TD_OK) return TD_E_NOMEM;
        char *buf = sc->buf;
        size_t m = 0;
        for (size_t i = 0; i < n; i++)
            m += (size_t)td_tok_utf8_enc(td_tok_byte_to_cp((uint8_t)s[i]), buf + m);
        int32_t id = td_tok_strtab_find(&t->str, buf, m);
        if (id >= 0 && id < t->n_vocab) return td_tok_ids_push(out, id);
    }
    if (grow(&sc->sym, &sc->sym_cap, n * sizeof(bsym)) != TD_OK) return TD_E_NOMEM;
    if (grow(&sc->heap, &sc->heap_cap, 3 * n * sizeof(bcand)) != TD_OK) return TD_E_NOMEM;
    bsym *sym = sc->sym;
    bcand *heap = sc->heap;
    size_t nh = 0;
    for (size_t i = 0; i < n; i++) {
        sym[i].id = t->byte_sym[(uint8_t)s[i]];
        sym[i].start = (uint32_t)i;
        sym[i].len = 1;
        sym[i].prev = (int32_t)i - 1;
        sym[i].next = i + 1 < n ? (int32_t)i + 1 : -1;
    }
    for (size_t i = 0; i + 1 < n; i++) try_pair(t, sym, (int32_t)i, heap, &nh);
    while (nh > 0) {
        bcand c = heap_pop(heap, &nh);
        bsym *l = &sym[c.left], *r = &sym[c.right];
        if (l->len == 0 || r->len == 0 || l->next != c.right || l->len + r->len != c.len) continue;
        l->id = c.merged;
        l->len += r->len;
        r->len = 0;
        l->next = r->next;
        if (r->next >= 0) sym[r->next].prev = c.left;
        try_pair(t, sym, l->prev, heap, &nh);
        try_pair(t, sym, c.left, heap, &nh);
    }
    for (int32_t i = 0; i >= 0; i = sym[i].next) {
        int rc = emit(t, &sym[i], s, out);
        if (rc != TD_OK) return rc;
    }
    return TD_OK;
}
