/* lookup.c — prompt lookup (input-guided copy): proposes what followed the
 * most recent earlier occurrence of the history's last g tokens, g from
 * max_ngram down to min_ngram, and optionally a few branches from older
 * matches whose continuations differ.
 * Per sequence it keeps a copy of the indexed tokens and, per g, a chained
 * hash index that is extended on append and undone exactly on rollback, so a
 * step costs a memcmp of the history plus work proportional to the draft. */
#include <stdlib.h>
#include <string.h>

#include "spec/spec.h"

#define LK_MAX_NGRAM 16
#define LK_MAX_BRANCHES 4
#define LK_DEFAULT_BRANCHES 3
/* Bucket entries examined per g. Buckets hold at most half as many entries
 * as there are buckets, so other n-grams sharing a bucket are rare and the
 * newest real match is found within the first few steps. */
#define LK_WALK 256
#define LK_WALK_BRANCH 64
#define LK_MAX_CANDIDATES 16
/* A branch looks this far down its own continuation for where it diverges. */
#define LK_BRANCH_DEPTH 8

/* Index for one n-gram length g. An entry is an end position e (g <= e < n):
 * the n-gram tok[e-g..e) followed by tok[e]. Entries are only added when the
 * token after the n-gram exists, so the history's own suffix never matches
 * itself. */
typedef struct lk_index {
    int32_t *head; /* (n_buckets) newest entry in the bucket, -1 if none */
    int32_t *prev; /* (cap) prev[e]: next older entry in e's bucket, -1 if none */
} lk_index;

typedef struct lk_seq {
    int32_t seq;
    int32_t n;          /* tokens indexed */
    int32_t cap;        /* capacity of tok and of every prev */
    int32_t *tok;       /* (cap) copy of history[0..n) */
    uint32_t n_buckets; /* power of two, >= 2 * n */
    uint32_t shift;     /* 64 - log2(n_buckets) */
    lk_index idx[LK_MAX_NGRAM]; /* idx[g - min_ngram] */
} lk_seq;

typedef struct lk_drafter {
    td_drafter base;
    int32_t min_ngram, max_ngram, max_branches;
    int32_t n_index;  /* max_ngram - min_ngram + 1 */
    lk_seq **seqs;    /* (cap_seqs) live sequences, unordered */
    int32_t n_seqs, cap_seqs;
} lk_drafter;

/* A match: the n-gram ending at e equals the history's last g tokens. */
typedef struct lk_match {
    int32_t e, g;
} lk_match;

static uint64_t lk_hash(const int32_t *t, int32_t g) {
    uint64_t h = 0x9e3779b97f4a7c15ULL * (uint64_t)(g + 1);
    for (int32_t i = 0; i < g; i++) {
        h ^= (uint32_t)t[i];
        h *= 0xbf58476d1ce4e5b9ULL;
        h ^= h >> 31;
    }
    return h * 0x94d049bb133111ebULL;
}

static uint32_t lk_bucket(const lk_seq *s, const int32_t *t, int32_t g) {
    return (uint32_t)(lk_hash(t, g) >> s->shift);
}

static void lk_seq_free(lk_seq *s, int32_t n_index) {
    if (!s) return;
    for (int32_t i = 0; i < n_index; i++) {
        free(s->idx[i].head);
        free(s->idx[i].prev);
    }
    free(s->tok);
    free(s);
}

/* Rebuilds every bucket head and chain for n_buckets buckets from tok. */
static void lk_rechain(const lk_drafter *d, lk_seq *s) {
    for (int32_t i = 0; i < d->n_index; i++) {
        int32_t g = d->min_ngram + i;
        lk_index *x = &s->idx[i];
        for (uint32_t b = 0; b < s->n_buckets; b++) x->head[b] = -1;
        for (int32_t e = g; e < s->n; e++) {
            uint32_t b = lk_bucket(s, s->tok + e - g, g);
            x->prev[e] = x->head[b];
            x->head[b] = e;
        }
    }
}

/* Makes room for `want` tokens: token and chain arrays grow geometrically,
 * and the bucket count stays at least twice the token count. On failure the
 * sequence is unchanged. */
static int lk_reserve(const lk_drafter *d, lk_seq *s, int32_t want) {
    int32_t *tok = NULL;
    int32_t *prev[LK_MAX_NGRAM] = {0};
    int32_t *head[LK_MAX_NGRAM] = {0};
    int rc = TD_E_NOMEM;
    if (want <= s->cap && (uint64_t)want * 2 <= s->n_buckets) return TD_OK;
    if (want > INT32_MAX / 4) return TD_E_RANGE;

    int32_t cap = s->cap;
    if (want > cap) {
        cap = cap < 256 ? 256 : cap;
        while (cap < want) cap *= 2;
        tok = malloc((size_t)cap * sizeof *tok);
        if (!tok) goto fail;
        for (int32_t i = 0; i < d->n_index; i++) {
            prev[i] = malloc((size_t)cap * sizeof *prev[i]);
            if (!prev[i]) goto fail;
        }
    }
    uint32_t nb = s->n_buckets, shift = s->shift;
    if ((uint64_t)want * 2 > nb) {
        nb = nb < 512 ? 512 : nb;
        while ((uint64_t)want * 2 > nb) nb *= 2;
        shift = 64;
        for (uint32_t t = nb; t > 1; t >>= 1) shift--;
        for (int32_t i = 0; i < d->n_index; i++) {
            head[i] = malloc((size_t)nb * sizeof *head[i]);
            if (!head[i]) goto fail;
        }
    }
    /* Everything allocated: commit. */
    if (tok) {
        if (s->n) memcpy(tok, s->tok, (size_t)s->n * sizeof *tok);
        free(s->tok);
        s->tok = tok;
        tok = NULL;
        for (int32_t i = 0; i < d->n_index; i++) {
            if (s->n) memcpy(prev[i], s->idx[i].prev, (size_t)s->n * sizeof *prev[i]);
            free(s->idx[i].prev);
            s->idx[i].prev = prev[i];
            prev[i] = NULL;
        }
        s->cap = cap;
    }
    if (head[0]) {
        for (int32_t i = 0; i < d->n_index; i++) {
            free(s->idx[i].head);
            s->idx[i].head = head[i];
            head[i] = NULL;
        }
        s->n_buckets = nb;
        s->shift = shift;
        lk_rechain(d, s);
    }
    return TD_OK;
fail:
    free(tok);
    for (int32_t i = 0; i < d->n_index; i++) {
        free(prev[i]);
        free(head[i]);
    }
    return rc;
}

/* Appends one token; capacity must already be reserved. */
static void lk_push(const lk_drafter *d, lk_seq *s, int32_t t) {
    int32_t e = s->n;
    s->tok[e] = t;
    for (int32_t i = 0; i < d->n_index; i++) {
        int32_t g = d->min_ngram + i;
        if (e < g) break;
        lk_index *x = &s->idx[i];
        uint32_t b = lk_bucket(s, s->tok + e - g, g);
        x->prev[e] = x->head[b];
        x->head[b] = e;
    }
    s->n = e + 1;
}

/* Removes the newest token. Its entries are the newest in their buckets, so
 * restoring each bucket's previous head undoes the push exactly. */
static void lk_pop(const lk_drafter *d, lk_seq *s) {
    int32_t e = s->n - 1;
    for (int32_t i = 0; i < d->n_index; i++) {
        int32_t g = d->min_ngram + i;
        if (e < g) break;
        lk_index *x = &s->idx[i];
        uint32_t b = lk_bucket(s, s->tok + e - g, g);
        x->head[b] = x->prev[e];
    }
    s->n = e;
}

/* Brings the index to exactly history[0..n): keeps the common prefix, undoes
 * the rest (a rejected speculative tail, a rollback) and appends the new
 * tokens. The memcmp is the only whole-history pass per step. */
static int lk_sync(const lk_drafter *d, lk_seq *s, const int32_t *h, size_t n) {
    if (n > (size_t)INT32_MAX / 4) return TD_E_RANGE;
    int32_t nn = (int32_t)n;
    int32_t common = s->n < nn ? s->n : nn;
    int32_t lcp = common;
    if (common > 0 && memcmp(s->tok, h, (size_t)common * sizeof *h) != 0) {
        lcp = 0;
        while (s->tok[lcp] == h[lcp]) lcp++;
    }
    if (lcp == 0 && s->n > 0) {
        s->n = 0;
        for (int32_t i = 0; i < d->n_index; i++)
            for (uint32_t b = 0; b < s->n_buckets; b++) s->idx[i].head[b] = -1;
    }
    while (s->n > lcp) lk_pop(d, s);
    if (nn > s->n) {
        int rc = lk_reserve(d, s, nn);
        if (rc < 0) return rc;
        for (int32_t i = s->n; i < nn; i++) lk_push(d, s, h[i]);
    }
    return TD_OK;
}

static lk_seq *lk_find(lk_drafter *d, int32_t seq, int32_t *slot) {
    for (int32_t i = 0; i < d->n_seqs; i++) {
        if (d->seqs[i]->seq == seq) {
            if (slot) *slot = i;
            return d->seqs[i];
        }
    }
    return NULL;
}

static lk_seq *lk_get(lk_drafter *d, int32_t seq) {
    lk_seq *s = lk_find(d, seq, NULL);
    if (s) return s;
    if (d->n_seqs == d->cap_seqs) {
        int32_t cap = d->cap_seqs ? d->cap_seqs * 2 : 8;
        lk_seq **v = realloc(d->seqs, (size_t)cap * sizeof *v);
        if (!v) return NULL;
        d->seqs = v;
        d->cap_seqs = cap;
    }
    s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->seq = seq;
    d->seqs[d->n_seqs++] = s;
    return s;
}

/* i-th token of the continuation after match end e. Past the end of the
 * history the continuation copies itself (the history is read as periodic
 * with period n - e), which is what a loop in the text will do next. */
static int32_t lk_cont(const lk_seq *s, int32_t e, int32_t i) {
    return s->tok[e + i % (s->n - e)];
}

static bool lk_is_match(const lk_seq *s, int32_t e, int32_t g) {
    return memcmp(s->tok + e - g, s->tok + s->n - g, (size_t)g * sizeof(int32_t)) == 0;
}

/* Newest entry of length g matching the suffix, older than entry `from`
 * (-1: start at the bucket head); spends bucket steps from *walk and gives up
 * with -1 when they run out. */
static int32_t lk_next_match(const lk_drafter *d, const lk_seq *s, int32_t g, int32_t from,
                             int32_t *walk) {
    const lk_index *x = &s->idx[g - d->min_ngram];
    int32_t e = from < 0 ? x->head[lk_bucket(s, s->tok + s->n - g, g)] : x->prev[from];
    for (; e >= 0 && *walk > 0; e = x->prev[e]) {
        --*walk;
        if (lk_is_match(s, e, g)) return e;
    }
    return -1;
}

static int32_t lk_child(const td_draft *out, int32_t parent, int32_t token) {
    for (int32_t i = parent + 1; i < out->n; i++)
        if (out->parent[i] == parent && out->token[i] == token) return i;
    return -1;
}

static void lk_add(td_draft *out, int32_t parent, int32_t token, uint8_t conf) {
    out->token[out->n] = token;
    out->parent[out->n] = parent;
    out->prob[out->n] = 0.0f; /* a copy, not a sample: no probability to report */
    out->conf[out->n] = conf;
    out->n++;
}

/* Confidence class of the i-th token copied after a match of g tokens ending
 * at e: longer matches are surer; a token past the end of the history (the
 * periodic guess) and branch nodes are the least sure. */
static uint8_t lk_conf(const lk_seq *s, int32_t e, int32_t g, int32_t i) {
    if (e + i >= s->n) return 0;
    return g >= 3 ? 3 : (uint8_t)g;
}

/* Collects older matches (the primary's g first, then shorter g) as branch
 * candidates, newest first. */
static int32_t lk_candidates(const lk_drafter *d, const lk_seq *s, lk_match primary,
                             lk_match *cand) {
    int32_t nc = 0;
    for (int32_t g = primary.g; g >= d->min_ngram && nc < LK_MAX_CANDIDATES; g--) {
        if (s->n <= g) continue;
        int32_t e = g == primary.g ? primary.e : -1, walk = LK_WALK_BRANCH;
        while (nc < LK_MAX_CANDIDATES) {
            e = lk_next_match(d, s, g, e, &walk);
            if (e < 0) break;
            bool seen = e == primary.e;
            for (int32_t j = 0; j < nc && !seen; j++) seen = cand[j].e == e;
            if (!seen) cand[nc++] = (lk_match){e, g};
        }
    }
    return nc;
}

static int lk_propose(td_drafter *base, int32_t seq, const int32_t *history, size_t n,
                      int32_t max_nodes, td_draft *out) {
    lk_drafter *d = (lk_drafter *)base;
    if (!out) return TD_E_ARG;
    out->n = 0;
    if (!d || seq < 0 || max_nodes < 0 || (n > 0 && !history)) return TD_E_ARG;
    int32_t cap = max_nodes > TD_DRAFT_MAX ? TD_DRAFT_MAX : max_nodes;
    if (n == 0 || cap == 0) return TD_OK;

    lk_seq *s = lk_get(d, seq);
    if (!s) return TD_E_NOMEM;
    int rc = lk_sync(d, s, history, n);
    if (rc < 0) return rc;

    lk_match primary = {-1, 0};
    for (int32_t g = d->max_ngram; g >= d->min_ngram && primary.e < 0; g--) {
        int32_t walk = LK_WALK;
        if (s->n <= g) continue;
        primary = (lk_match){lk_next_match(d, s, g, -1, &walk), g};
    }
    if (primary.e < 0) return TD_OK;

    /* Branches only pay when the budget is large enough that the main chain
     * keeps most of it. Each branch may add `per` nodes where it diverges. */
    lk_match cand[LK_MAX_CANDIDATES];
    int32_t nc = 0, per = 0;
    if (d->max_branches > 1 && cap >= 8) {
        per = cap / 8 < 4 ? cap / 8 : 4;
        nc = lk_candidates(d, s, primary, cand);
    }
    int32_t reserve = nc > 0 ? (d->max_branches - 1) * per : 0;
    int32_t len = cap - reserve;
    for (int32_t i = 0; i < len; i++)
        lk_add(out, i - 1, lk_cont(s, primary.e, i), lk_conf(s, primary.e, primary.g, i));

    int32_t branches = 0;
    for (int32_t c = 0; c < nc && branches < d->max_branches - 1 && out->n < cap; c++) {
        int32_t cur = -1, added = 0;
        for (int32_t i = 0; i < LK_BRANCH_DEPTH && added < per && out->n < cap; i++) {
            int32_t t = lk_cont(s, cand[c].e, i);
            int32_t next = lk_child(out, cur, t);
            if (next < 0) {
                lk_add(out, cur, t, 0);
                next = out->n - 1;
                added++;
            }
            cur = next;
        }
        if (added > 0) branches++;
    }
    /* Budget the branches did not use goes back to the main chain (which may
     * first run through nodes a branch already placed below its tip). */
    for (int32_t i = len, last = len - 1; out->n < cap; i++) {
        int32_t t = lk_cont(s, primary.e, i);
        int32_t next = lk_child(out, last, t);
        if (next < 0) {
            lk_add(out, last, t, lk_conf(s, primary.e, primary.g, i));
            next = out->n - 1;
        }
        last = next;
    }
    return TD_OK;
}

static void lk_accept(td_drafter *base, int32_t seq, const int32_t *history, size_t n,
                      size_t n_new) {
    lk_drafter *d = (lk_drafter *)base;
    (void)n_new; /* the sync finds the new tokens itself, and any rollback */
    if (!d || seq < 0 || (n > 0 && !history)) return;
    lk_seq *s = lk_get(d, seq);
    /* On failure the index stays at its old state; the next sync retries. */
    if (s) (void)lk_sync(d, s, history, n);
}


static void lk_reset(td_drafter *base, int32_t seq) {
    lk_drafter *d = (lk_drafter *)base;
    int32_t slot;
    if (!d) return;
    lk_seq *s = lk_find(d, seq, &slot);
    if (!s) return;
    lk_seq_free(s, d->n_index);
    d->seqs[slot] = d->seqs[--d->n_seqs];
}

static void lk_destroy(td_drafter *base) {
    lk_drafter *d = (lk_drafter *)base;
    if (!d) return;
    for (int32_t i = 0; i < d->n_seqs; i++) lk_seq_free(d->seqs[i], d->n_index);
    free(d->seqs);
    free(d);
}

static const td_drafter_ops lk_ops = {
    .name = "lookup",
    .propose = lk_propose,
    .accept = lk_accept,
    .observe = NULL, /* NULL tells the verifier not to gather observations for us */
    .reset = lk_reset,
    .destroy = lk_destroy,
};

td_drafter *td_spec_lookup_tree_create(int32_t min_ngram, int32_t max_ngram, int32_t max_branches, td_err *err) {
    if (min_ngram < 1 || max_ngram < min_ngram || max_ngram > LK_MAX_NGRAM) {
        td_err_set(err, TD_E_ARG, "lookup drafter: n-gram lengths %d..%d (need 1 <= min <= max <= %d)", min_ngram,
                   max_ngram, LK_MAX_NGRAM);
        return NULL;
    }
    if (max_branches < 1 || max_branches > LK_MAX_BRANCHES) {
        td_err_set(err, TD_E_ARG, "lookup drafter: %d branches (1..%d)", max_branches, LK_MAX_BRANCHES);
        return NULL;
    }
    lk_drafter *d = calloc(1, sizeof *d);
    if (!d) {
        td_err_set(err, TD_E_NOMEM, "lookup drafter: out of memory");
        return NULL;
    }
    d->base.ops = &lk_ops;
    d->min_ngram = min_ngram;
    d->max_ngram = max_ngram;
    d->max_branches = max_branches;
    d->n_index = max_ngram - min_ngram + 1;
    return &d->base;
}

td_drafter *td_spec_lookup_create(int32_t min_ngram, int32_t max_ngram, td_err *err) {
    return td_spec_lookup_tree_create(min_ngram, max_ngram, LK_DEFAULT_BRANCHES, err);
}
