/* ngram.c — adaptive n-gram drafter (after ADED): per sequence, counts of the
 * tokens that followed each context of 1..order-1 tokens, built from the
 * history on first contact and then only from accepted text, so the
 * drafter's own guesses never count as evidence. Proposes a greedy chain from
 * the longest trustworthy context and stops where the chain's estimated
 * chance of surviving verification gets too small to be worth the work.
 * Contexts are keyed by a 64-bit hash: a collision can only cost acceptance,
 * never correctness, since the verifier checks every token. */
#include <stdlib.h>
#include <string.h>

#include "spec/spec.h"

#define NG_MAX_ORDER 8
#define NG_MAX_SEQS (1 << 20)
#define NG_MAX_TABLE (1u << 28) /* slots per sequence */
/* Continuations kept per context (ADED prunes to its top 12; most contexts
 * here are seen a handful of times). When all are taken a new token replaces
 * the weakest and inherits its count plus one (space-saving), so a token that
 * keeps coming back climbs instead of being evicted forever. */
#define NG_SLOTS 4
/* Adaptation. Every accepted token grades the prediction each of its
 * contexts would have made: a miss adds 1 to the context's `miss`, a hit
 * halves it. A context at NG_MISS_SKIP or more is passed over for a shorter
 * one, and `miss` also discounts the confidence below. */
#define NG_MISS_SKIP 3
#define NG_MISS_MAX 255
/* Confidence of one step: best count / (total + 1 + miss), i.e. the best
 * continuation's share with one pseudo-observation for "something else".
 * The chain stops once the product along it falls below NG_P_STOP: the rest
 * would mostly cost verification work without being accepted. The first
 * node is always proposed when some context predicts at all. */
#define NG_P_STOP 0.15f

typedef struct ng_entry {
    uint64_t key;            /* 0 = empty slot */
    int32_t tok[NG_SLOTS];   /* continuations, by count desc, ties newest first */
    uint32_t cnt[NG_SLOTS];  /* 0 = unused */
    uint32_t total;          /* continuations seen after this context */
    uint32_t miss;           /* decayed count of recent mispredictions */
} ng_entry;

typedef struct ng_seq {
    ng_entry *tab;  /* (cap) open addressing, linear probing */
    uint32_t cap;   /* power of two, or 0 */
    uint32_t used;
    size_t n_seen;  /* history tokens counted */
} ng_seq;

typedef struct ng_drafter {
    td_drafter base;
    int32_t order, max_seqs;
    ng_seq **seqs;  /* (max_seqs) NULL until first used */
} ng_drafter;

static uint64_t ng_fmix(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

/* keys[k] for k = 1..kmax: the context of the kmax tokens ending at `end`
 * (exclusive), newest token folded in first. */
static void ng_keys(const int32_t *end, int32_t kmax, uint64_t *keys) {
    uint64_t h = 0x2545f4914f6cdd1dULL;
    for (int32_t k = 1; k <= kmax; k++) {
        h = ng_fmix(h ^ ((uint64_t)(uint32_t)end[-k] * 0x9e3779b97f4a7c15ULL + (uint64_t)k));
        keys[k] = h ? h : 1;
    }
}

static ng_entry *ng_find(const ng_seq *s, uint64_t key) {
    if (!s->cap) return NULL;
    uint32_t mask = s->cap - 1;
    for (uint32_t i = (uint32_t)key & mask;; i = (i + 1) & mask) {
        if (s->tab[i].key == key) return &s->tab[i];
        if (s->tab[i].key == 0) return NULL;
    }
}

/* Rehashes into a table of at least `want` slots (a power of two). */
static int ng_resize(ng_seq *s, uint64_t want) {
    uint32_t cap = s->cap ? s->cap : 1024;
    if (want > NG_MAX_TABLE) return TD_E_RANGE;
    while (cap < want) cap *= 2;
    if (cap == s->cap) return TD_OK;
    ng_entry *tab = calloc(cap, sizeof *tab);
    if (!tab) return TD_E_NOMEM;
    for (uint32_t j = 0; j < s->cap; j++) {
        if (!s->tab[j].key) continue;
        uint32_t i = (uint32_t)s->tab[j].key & (cap - 1);
        while (tab[i].key) i = (i + 1) & (cap - 1);
        tab[i] = s->tab[j];
    }
    free(s->tab);
    s->tab = tab;
    s->cap = cap;
    return TD_OK;
}

static int ng_insert(ng_seq *s, uint64_t key, ng_entry **out) {
    ng_entry *e = ng_find(s, key);
    if (!e) {
        if ((uint64_t)(s->used + 1) * 2 > s->cap) {
            int rc = ng_resize(s, s->cap ? (uint64_t)s->cap * 2 : 1024);
            if (rc < 0) return rc;
        }
        uint32_t mask = s->cap - 1, i = (uint32_t)key & mask;
        while (s->tab[i].key) i = (i + 1) & mask;
        e = &s->tab[i];
        e->key = key;
        for (int j = 0; j < NG_SLOTS; j++) e->tok[j] = -1;
        s->used++;
    }
    *out = e;
    return TD_OK;
}

/* Grades the entry's current prediction against t, then counts t. */
static void ng_count(ng_entry *e, int32_t t) {
    if (e->total > 0) {
        if (e->tok[0] == t) e->miss >>= 1;
        else if (e->miss < NG_MISS_MAX) e->miss++;
    }
    int i = 0;
    while (i < NG_SLOTS && e->cnt[i] > 0 && e->tok[i] != t) i++;
    if (i == NG_SLOTS) {
        i = NG_SLOTS - 1; /* replace the weakest, space-saving style */
        e->tok[i] = t;
        e->cnt[i]++;
    } else if (e->cnt[i] == 0) {
        e->tok[i] = t;
        e->cnt[i] = 1;
    } else {
        e->cnt[i]++;
    }
    e->total++;
    /* `>=` moves the token just seen ahead of equals: ties go to the newest. */
    for (; i > 0 && e->cnt[i] >= e->cnt[i - 1]; i--) {
        int32_t tt = e->tok[i];
        uint32_t tc = e->cnt[i];
        e->tok[i] = e->tok[i - 1];
        e->cnt[i] = e->cnt[i - 1];
        e->tok[i - 1] = tt;
        e->cnt[i - 1] = tc;
    }
}

/* Counts history[from..to) under each of its contexts. Stops at the first
 * failed allocation, leaving n_seen at the last fully counted token. */
static int ng_learn(const ng_drafter *d, ng_seq *s, const int32_t *h, size_t to) {
    uint64_t keys[NG_MAX_ORDER];
    if (to > s->n_seen + 64) {
        /* Size for a long stretch at once (as if every context were new)
         * rather than rehash repeatedly on the way; capped, since the
         * guess can only be too large. */
        uint64_t add = (uint64_t)(to - s->n_seen) * (uint64_t)(d->order - 1);
        uint64_t want = (s->used + add) * 2;
        int rc = ng_resize(s, want < NG_MAX_TABLE / 16 ? want : NG_MAX_TABLE / 16);
        if (rc < 0) return rc;
    }
    for (size_t p = s->n_seen; p < to; p++) {
        int32_t kmax = d->order - 1;
        if ((size_t)kmax > p) kmax = (int32_t)p;
        ng_keys(h + p, kmax, keys);
        for (int32_t k = 1; k <= kmax; k++) {
            ng_entry *e;
            int rc = ng_insert(s, keys[k], &e);
            if (rc < 0) return rc;
            ng_count(e, h[p]);
        }
        s->n_seen = p + 1;
    }
    return TD_OK;
}

static void ng_seq_free(ng_seq *s) {
    if (!s) return;
    free(s->tab);
    free(s);
}

static ng_seq *ng_get(ng_drafter *d, int32_t seq) {
    if (!d->seqs[seq]) d->seqs[seq] = calloc(1, sizeof(ng_seq));
    return d->seqs[seq];
}

/* The longest usable context among keys[1..kmax] seen at least `need` times. */
static const ng_entry *ng_pick(const ng_seq *s, const uint64_t *keys, int32_t kmax,
                               uint32_t need) {
    for (int32_t k = kmax; k >= 1; k--) {
        const ng_entry *e = ng_find(s, keys[k]);
        if (e && e->total >= need && e->miss < NG_MISS_SKIP) return e;
    }
    return NULL;
}

static int ng_propose(td_drafter *base, int32_t seq, const int32_t *history, size_t n,
                      int32_t max_nodes, td_draft *out) {
    ng_drafter *d = (ng_drafter *)base;
    if (!out) return TD_E_ARG;
    out->n = 0;
    if (!d || seq < 0 || seq >= d->max_seqs || max_nodes < 0 || (n > 0 && !history))
        return TD_E_ARG;
    int32_t cap = max_nodes > TD_DRAFT_MAX ? TD_DRAFT_MAX : max_nodes;
    if (n == 0 || cap == 0) return TD_OK;

    ng_seq *s = ng_get(d, seq);
    if (!s) return TD_E_NOMEM;
    if (s->n_seen == 0) {
        /* First contact: the history so far is committed text. */
        int rc = ng_learn(d, s, history, n);
        if (rc < 0) return rc;
    }

    /* Context window: the history's tail, then the tokens proposed so far. */
    int32_t buf[NG_MAX_ORDER + TD_DRAFT_MAX];
    int32_t len = d->order - 1;
    if ((size_t)len > n) len = (int32_t)n;
    memcpy(buf, history + n - len, (size_t)len * sizeof *buf);
    uint64_t keys[NG_MAX_ORDER];
    float path = 1.0f;
    while (out->n < cap) {
        int32_t kmax = len < d->order - 1 ? len : d->order - 1;
        ng_keys(buf + len, kmax, keys);
        const ng_entry *e = ng_pick(s, keys, kmax, 2);
        if (!e) e = ng_pick(s, keys, kmax, 1);
        if (!e) break;
        float step = (float)e->cnt[0] / (float)(e->total + 1 + e->miss);
        path *= step;
        if (out->n > 0 && path < NG_P_STOP) break;
        out->token[out->n] = e->tok[0];
        out->parent[out->n] = out->n - 1;
        out->prob[out->n] = 0.0f; /* chosen greedily, not sampled: no q to report */
        /* class: how dominant the continuation has been in this context */
        out->conf[out->n] = step >= 0.75f ? 3 : step >= 0.5f ? 2 : step >= 0.25f ? 1 : 0;
        out->n++;
        buf[len++] = e->tok[0];
    }
    return TD_OK;
}

static void ng_accept(td_drafter *base, int32_t seq, const int32_t *history, size_t n,
                      size_t n_new) {
    ng_drafter *d = (ng_drafter *)base;
    (void)n_new; /* n_seen already says where the uncounted text starts */
    if (!d || seq < 0 || seq >= d->max_seqs || (n > 0 && !history)) return;
    ng_seq *s = ng_get(d, seq);
    if (!s) return;
    /* A rollback below what was counted cannot be uncounted; the counts are
     * statistics, so they stay and counting resumes at the new end. */
    if (n < s->n_seen) s->n_seen = n;
    /* On failure n_seen marks where to resume next time. */
    (void)ng_learn(d, s, history, n);
}


static void ng_reset(td_drafter *base, int32_t seq) {
    ng_drafter *d = (ng_drafter *)base;
    if (!d || seq < 0 || seq >= d->max_seqs) return;
    ng_seq_free(d->seqs[seq]);
    d->seqs[seq] = NULL;
}

static void ng_destroy(td_drafter *base) {
    ng_drafter *d = (ng_drafter *)base;
    if (!d) return;
    for (int32_t i = 0; i < d->max_seqs; i++) ng_seq_free(d->seqs[i]);
    free(d->seqs);
    free(d);
}

static const td_drafter_ops ng_ops = {
    .name = "ngram",
    .propose = ng_propose,
    .accept = ng_accept,
    .observe = NULL, /* NULL tells the verifier not to gather observations for us */
    .reset = ng_reset,
    .destroy = ng_destroy,
};

td_drafter *td_spec_ngram_create(int32_t order, int32_t max_seqs, td_err *err) {
    if (order < 2 || order > NG_MAX_ORDER || max_seqs < 1 || max_seqs > NG_MAX_SEQS) {
        td_err_set(err, TD_E_ARG, "n-gram drafter: order %d (2..%d), %d sequences (1..%d)", order, NG_MAX_ORDER,
                   max_seqs, NG_MAX_SEQS);
        return NULL;
    }
    ng_drafter *d = calloc(1, sizeof *d);
    if (!d) goto fail;
    d->base.ops = &ng_ops;
    d->order = order;
    d->max_seqs = max_seqs;
    d->seqs = calloc((size_t)max_seqs, sizeof *d->seqs);
    if (!d->seqs) goto fail;
    return &d->base;
fail:
    free(d);
    td_err_set(err, TD_E_NOMEM, "n-gram drafter: out of memory");
    return NULL;
}
