/* recycle.c — Token Recycling (Luo et al., arXiv 2408.08696): an adjacency
 * table token -> the target's top-k next tokens seen at the last verification
 * that passed through that token, walked as a static tree from the last
 * history token. It holds -1 where nothing has been observed. Not
 * thread-safe: observe() and propose() must not overlap.
 *
 * Scope (spec.h): the table is filled from the target's view of the texts
 * it verified, and the two- and three-token rows are keyed on those texts,
 * so a table shared across requests lets one user's text shape another's
 * drafts (and their timing). TD_DRAFTER_PER_REQUEST, the default, keeps one
 * table per sequence, dropped by reset() when a request starts; per tenant
 * and shared keep one table for every sequence and across requests, for a
 * caller that holds one drafter per tenant, or one for a single user.
 *
 * Beside the paper's one-token table, a hashed one (one slot per key, newest
 * wins) holds rows keyed by the last two and the last three tokens: after
 * "of the" the model says something narrower than after any "the". A node's
 * candidates take the rows' entries in turn, rank by rank, the longest
 * context's first. */
#include <stdlib.h>
#include <string.h>

#include "spec/spec.h"

#define RC_MAX_TOP_K 64
#define RC_MAX_TABLE_BYTES ((uint64_t)1 << 30) /* far above any real vocabulary */
/* Template nodes: twice the largest proposal, so that when table entries are
 * missing (-1) or repeat a sibling, later template nodes fill the budget. */
#define RC_TEMPLATE 128
#define RC_MAX_DEPTH 16
#define RC_CTX_SLOTS (1u << 19) /* two- and three-token rows: 20 MiB at top-k 8 */
/* A request's own table sees only its own verifications: a few thousand
 * tokens, tens of thousands of observations at most. */
#define RC_CTX_SLOTS_REQUEST (1u << 15)

/* The static tree. Assume a candidate of rank r is right with probability
 * prior(r), independently along a path; the template takes nodes best-first
 * by the product of priors along their rank path (ties to the earlier
 * candidate), so its first m nodes are the best m-node tree under that
 * assumption and every prefix is itself a tree in topological order. With
 * the priors below the first 80 nodes have 8/25/25/15/6/1 nodes at depths
 * 1..6, close to the paper's hand-tuned 8/21/25/15/8/3; 64 nodes give
 * 8/21/19/9/6/1, 16 give 6/5/4/1 and 8 give 4/3/1. Ranks past the table are
 * extrapolated, decreasing. */
static const float rc_prior[8] = {0.50f, 0.20f, 0.12f, 0.08f, 0.06f, 0.05f, 0.04f, 0.03f};

static float rc_rank_prior(int32_t r) {
    return r < 8 ? rc_prior[r] : rc_prior[7] * 8.0f / (float)(r + 1);
}

typedef struct rc_table {
    int32_t *table;              /* (n_vocab, top_k) next-token candidates, best first; -1 none */
    uint64_t *ctx_key;           /* (ctx_slots) 0 = empty */
    int32_t *ctx_table;          /* (ctx_slots, top_k) like table, for longer contexts */
    uint32_t ctx_slots;          /* a power of two */
} rc_table;

typedef struct rc_drafter {
    td_drafter base;
    int32_t n_vocab, top_k;
    td_drafter_scope scope;
    rc_table shared;             /* per tenant and shared scope */
    rc_table **per_seq;          /* per request scope: (n_seq) tables, NULL until observed */
    int32_t n_seq;
    int32_t n_tmpl;
    int16_t tparent[RC_TEMPLATE]; /* template parent, -1 = after the last history token */
    int16_t trank[RC_TEMPLATE];   /* rank within the parent's table row */
} rc_drafter;

/* Fills the template best-first. Each placed node offers its next unused
 * rank as a candidate; O(RC_TEMPLATE^2) once, at creation. */
static void rc_build_template(rc_drafter *d) {
    float score[RC_TEMPLATE + 1];
    int32_t next[RC_TEMPLATE + 1], depth[RC_TEMPLATE + 1];
    /* Slot 0 is the root; template node t lives in slot t + 1. */
    score[0] = 1.0f;
    next[0] = 0;
    depth[0] = 0;
    d->n_tmpl = 0;
    while (d->n_tmpl < RC_TEMPLATE) {
        int32_t best = -1;
        float best_score = 0.0f;
        for (int32_t j = 0; j <= d->n_tmpl; j++) {
            if (next[j] >= d->top_k || depth[j] >= RC_MAX_DEPTH) continue;
            float sc = score[j] * rc_rank_prior(next[j]);
            if (sc > best_score) {
                best = j;
                best_score = sc;
            }
        }
        if (best < 0) break;
        int32_t t = d->n_tmpl++;
        d->tparent[t] = (int16_t)(best - 1);
        d->trank[t] = (int16_t)next[best]++;
        score[t + 1] = best_score;
        next[t + 1] = 0;
        depth[t + 1] = depth[best] + 1;
    }
}

/* Key of the context ending in tok: tok and the n - 1 tokens before it
 * (before[0] nearest); 0 if one of them is unknown. */
static uint64_t rc_ctx_hash(const int32_t *before, int32_t n, int32_t tok) {
    uint64_t x = 0x243f6a8885a308d3ULL ^ (uint64_t)n;
    for (int32_t i = -1; i < n - 1; i++) {
        int32_t t = i < 0 ? tok : before[i];
        if (t < 0) return 0;
        x = (x ^ (uint32_t)t) * 0x9e3779b97f4a7c15ULL;
        x ^= x >> 29;
    }
    return x ? x : 1;
}

static const int32_t *rc_ctx_row(const rc_drafter *d, const rc_table *tb, uint64_t h) {
    size_t slot = (size_t)(h & (tb->ctx_slots - 1));
    return h && tb->ctx_key[slot] == h ? tb->ctx_table + slot * (size_t)d->top_k : NULL;
}

static void rc_table_free(rc_table *tb) {
    if (!tb) return;
    free(tb->table);
    free(tb->ctx_key);
    free(tb->ctx_table);
    tb->table = NULL;
    tb->ctx_key = NULL;
    tb->ctx_table = NULL;
}

static int rc_table_init(const rc_drafter *d, rc_table *tb, uint32_t ctx_slots) {
    size_t cells = (size_t)d->n_vocab * (size_t)d->top_k;
    tb->ctx_slots = ctx_slots;
    tb->table = malloc(cells * sizeof *tb->table);
    tb->ctx_key = calloc(ctx_slots, sizeof *tb->ctx_key);
    tb->ctx_table = malloc((size_t)ctx_slots * (size_t)d->top_k * sizeof *tb->ctx_table);
    if (!tb->table || !tb->ctx_key || !tb->ctx_table) {
        rc_table_free(tb);
        return TD_E_NOMEM;
    }
    memset(tb->table, 0xff, cells * sizeof *tb->table); /* all -1 */
    return TD_OK;
}

/* The table seq reads and writes; NULL when it has none (per request scope:
 * nothing observed yet, or no memory when create asked for one). */
static rc_table *rc_table_of(rc_drafter *d, int32_t seq, bool create) {
    if (d->scope != TD_DRAFTER_PER_REQUEST) return &d->shared;
    if (seq < 0) return NULL;
    if (seq >= d->n_seq) {
        if (!create) return NULL;
        int32_t n = seq + 1 > 2 * d->n_seq ? seq + 1 : 2 * d->n_seq;
        rc_table **v = realloc(d->per_seq, (size_t)n * sizeof *v);
        if (!v) return NULL;
        for (int32_t i = d->n_seq; i < n; i++) v[i] = NULL;
        d->per_seq = v;
        d->n_seq = n;
    }
    if (!d->per_seq[seq] && create) {
        rc_table *tb = calloc(1, sizeof *tb);
        if (!tb) return NULL;
        if (rc_table_init(d, tb, RC_CTX_SLOTS_REQUEST)) {
            free(tb);
            return NULL;
        }
        d->per_seq[seq] = tb;
    }
    return d->per_seq[seq];
}

/* The candidates after tok (before[] = the two tokens before it, nearest
 * first, -1 unknown), best first, into row (top_k ids, -1 padded): the
 * three-, two- and one-token rows' entries in turn, rank by rank, without
 * repeats or holes. */
static void rc_candidates(const rc_drafter *d, const rc_table *tb, const int32_t before[2], int32_t tok,
                          int32_t *row) {
    const int32_t *src[3] = {rc_ctx_row(d, tb, rc_ctx_hash(before, 3, tok)),
                             rc_ctx_row(d, tb, rc_ctx_hash(before, 2, tok)),
                             tb->table + (size_t)tok * (size_t)d->top_k};
    int32_t n = 0;
    for (int32_t j = 0; j < d->top_k && n < d->top_k; j++) {
        for (int c = 0; c < 3 && n < d->top_k; c++) {
            int32_t cand = src[c] ? src[c][j] : -1;
            if (cand < 0) continue;
            bool seen = false;
            for (int32_t i = 0; i < n && !seen; i++) seen = row[i] == cand;
            if (!seen) row[n++] = cand;
        }
    }
    for (; n < d->top_k; n++) row[n] = -1;
}

static int rc_propose(td_drafter *base, int32_t seq, const int32_t *history, size_t n,
                      int32_t max_nodes, td_draft *out) {
    rc_drafter *d = (rc_drafter *)base;
    if (!out) return TD_E_ARG;
    out->n = 0;
    if (!d || seq < 0 || max_nodes < 0 || (n > 0 && !history)) return TD_E_ARG;
    int32_t cap = max_nodes > TD_DRAFT_MAX ? TD_DRAFT_MAX : max_nodes;
    if (n == 0 || cap == 0) return TD_OK;
    int32_t last = history[n - 1];
    if (last < 0 || last >= d->n_vocab) return TD_OK; /* nothing known about it */
    const rc_table *tb = rc_table_of(d, seq, false);
    if (!tb) return TD_OK; /* this request has taught us nothing yet */

    int32_t node_of[RC_TEMPLATE]; /* template node -> proposal node, -1 if skipped */
    /* candidate rows, filled when a node first needs its children: the
     * root's in slot 0, proposal node i's in slot i + 1 */
    int32_t rows[TD_DRAFT_MAX + 1][RC_MAX_TOP_K];
    bool have_row[TD_DRAFT_MAX + 1] = {false};
    for (int32_t t = 0; t < d->n_tmpl && out->n < cap; t++) {
        node_of[t] = -1;
        int32_t tp = d->tparent[t];
        int32_t parent = tp < 0 ? -1 : node_of[tp];
        if (tp >= 0 && parent < 0) continue; /* its parent was skipped */
        if (!have_row[parent + 1]) {
            int32_t ctx[3]; /* the parent's token and the two before it */
            td_draft_context(out, parent, history, n, 3, ctx);
            rc_candidates(d, tb, ctx + 1, ctx[0], rows[parent + 1]);
            have_row[parent + 1] = true;
        }
        int32_t tok = rows[parent + 1][d->trank[t]];
        if (tok < 0) continue;
        bool dup = false;
        for (int32_t i = parent + 1; i < out->n && !dup; i++)
            dup = out->parent[i] == parent && out->token[i] == tok;
        if (dup) continue;
        node_of[t] = out->n;
        out->token[out->n] = tok;
        out->parent[out->n] = parent;
        out->prob[out->n] = 0.0f; /* ranks, not probabilities, are recorded */
        out->conf[out->n] = d->trank[t] >= 3 ? 0 : (uint8_t)(3 - d->trank[t]); /* best rank: surest */
        out->n++;
    }
    return TD_OK;
}

/* Overwrites whole rows, as the paper does: the newest view of what follows
 * a token wins, and of repeated tokens in one batch the last write wins. */
static void rc_observe(td_drafter *base, int32_t seq, const td_observation *obs, int32_t n_obs) {
    rc_drafter *d = (rc_drafter *)base;
    if (!d || !obs || n_obs <= 0) return;
    rc_table *tb = rc_table_of(d, seq, true);
    if (!tb) { /* observe returns nothing: the reason is kept, we learn nothing */
        td_err_set(&d->base.err, TD_E_NOMEM, "recycle drafter: no table for sequence %d (out of memory)", seq);
        return;
    }
    for (int32_t i = 0; i < n_obs; i++) {
        const td_observation *o = &obs[i];
        if (o->token < 0 || o->token >= d->n_vocab || !o->top || o->n_top <= 0) continue;
        int32_t *row = tb->table + (size_t)o->token * (size_t)d->top_k;
        int32_t m = o->n_top < d->top_k ? o->n_top : d->top_k;
        for (int32_t j = 0; j < d->top_k; j++) {
            int32_t t = j < m ? o->top[j] : -1;
            row[j] = t >= 0 && t < d->n_vocab ? t : -1;
        }
        for (int32_t len = 2; len <= 3; len++) {
            if (o->prev[len - 2] < 0 || o->prev[len - 2] >= d->n_vocab) break;
            uint64_t h = rc_ctx_hash(o->prev, len, o->token);
            size_t slot = (size_t)(h & (tb->ctx_slots - 1));
            tb->ctx_key[slot] = h;
            memcpy(tb->ctx_table + slot * (size_t)d->top_k, row, (size_t)d->top_k * sizeof *row);
        }
    }
}

/* A new request on seq: per request scope forgets everything seq learnt;
 * the other scopes keep their table (it is meant to outlive requests). */
static void rc_reset(td_drafter *base, int32_t seq) {
    rc_drafter *d = (rc_drafter *)base;
    if (!d || d->scope != TD_DRAFTER_PER_REQUEST || seq < 0 || seq >= d->n_seq || !d->per_seq[seq]) return;
    rc_table_free(d->per_seq[seq]);
    free(d->per_seq[seq]);
    d->per_seq[seq] = NULL;
}

static void rc_destroy(td_drafter *base) {
    rc_drafter *d = (rc_drafter *)base;
    if (!d) return;
    rc_table_free(&d->shared);
    for (int32_t i = 0; i < d->n_seq; i++) {
        rc_table_free(d->per_seq[i]);
        free(d->per_seq[i]);
    }
    free(d->per_seq);
    free(d);
}

static const td_drafter_ops rc_ops = {
    .name = "recycle",
    .propose = rc_propose,
    .accept = NULL, /* learns from observe() only */
    .observe = rc_observe,
    .reset = rc_reset,
    .destroy = rc_destroy,
};

td_drafter *td_spec_recycle_create(int32_t n_vocab, int32_t top_k, td_err *err) {
    return td_spec_recycle_create_scoped(n_vocab, top_k, TD_DRAFTER_PER_REQUEST, err);
}

td_drafter *td_spec_recycle_create_scoped(int32_t n_vocab, int32_t top_k, td_drafter_scope scope, td_err *err) {
    if (scope != TD_DRAFTER_PER_REQUEST && scope != TD_DRAFTER_PER_TENANT && scope != TD_DRAFTER_SHARED) {
        td_err_set(err, TD_E_ARG, "recycle drafter: unknown scope %d", (int)scope);
        return NULL;
    }
    if (n_vocab < 1 || top_k < 1 || top_k > RC_MAX_TOP_K) {
        td_err_set(err, TD_E_ARG, "recycle drafter: vocabulary %d, top-k %d (1..%d)", n_vocab, top_k, RC_MAX_TOP_K);
        return NULL;
    }
    uint64_t cells;
    if (!td_mul_u64((uint64_t)n_vocab, (uint64_t)top_k, &cells) ||
        cells > RC_MAX_TABLE_BYTES / sizeof(int32_t)) {
        td_err_set(err, TD_E_ARG, "recycle drafter: a %d x %d table is too large", n_vocab, top_k);
        return NULL;
    }
    rc_drafter *d = calloc(1, sizeof *d);
    if (!d) goto fail;
    d->base.ops = &rc_ops;
    d->n_vocab = n_vocab;
    d->top_k = top_k;
    d->scope = scope;
    /* per request scope makes a sequence's table when it first learns */
    if (scope != TD_DRAFTER_PER_REQUEST && rc_table_init(d, &d->shared, RC_CTX_SLOTS)) goto fail;
    rc_build_template(d);
    return &d->base;
fail:
    rc_destroy(d ? &d->base : NULL);
    td_err_set(err, TD_E_NOMEM, "recycle drafter: out of memory");
    return NULL;
}
