/* tok_map.c — the two hash tables behind the tokenizer: a string interner
 * (token text <-> dense id) and a pair map ((left id, right id) -> merge rank
 * and result id). Both use open addressing with linear probing and stay at
 * most half full, so a lookup is one or two probes; nothing is ever removed.
 */
#include <stdlib.h>
#include <string.h>

#include "tok/tok_internal.h"

static size_t pow2_at_least(size_t n) {
    size_t p = 16;
    while (p < n) p <<= 1;
    return p;
}

/* FNV-1a's low bits only mix with low bits; a finaliser spreads the high
 * ones down so that the power-of-two table index is well distributed. */
static uint64_t hash_fin(uint64_t h) {
    h ^= h >> 29;
    h *= 0xbf58476d1ce4e5b9ULL;
    h ^= h >> 32;
    return h;
}

static uint64_t str_hash(const char *s, size_t n) {
    return hash_fin(td_fnv1a64(TD_FNV1A64_INIT, s, n));
}

uint64_t td_tok_strtab_hash(const char *s, size_t n) { return str_hash(s, n); }

uint64_t td_tok_strtab_hash2(const char *a, size_t na, const char *b, size_t nb) {
    return hash_fin(td_fnv1a64(td_fnv1a64(TD_FNV1A64_INIT, a, na), b, nb));
}

void td_tok_strtab_prefetch(const td_tok_strtab *st, uint64_t hv) {
    __builtin_prefetch(&st->slots[(size_t)hv & (st->nslots - 1)]);
}

/* ---- string interner ---- */

static int strtab_rehash(td_tok_strtab *st, size_t nslots) {
    struct td_tok_slot *slots = malloc(nslots * sizeof *slots);
    if (!slots) return TD_E_NOMEM;
    for (size_t i = 0; i < nslots; i++) slots[i].id = -1;
    for (size_t id = 0; id < st->n; id++) {
        uint64_t hv = str_hash(st->arena + st->off[id], st->len[id]);
        size_t h = (size_t)hv & (nslots - 1);
        while (slots[h].id >= 0) h = (h + 1) & (nslots - 1);
        slots[h].hash = (uint32_t)(hv >> 32);
        slots[h].id = (int32_t)id;
        slots[h].len = st->len[id];
        slots[h].off = st->off[id];
    }
    free(st->slots);
    st->slots = slots;
    st->nslots = nslots;
    return TD_OK;
}

int td_tok_strtab_init(td_tok_strtab *st, size_t expect) {
    memset(st, 0, sizeof *st);
    st->cap = expect < 16 ? 16 : expect;
    st->arena_cap = st->cap * 8;
    st->off = malloc(st->cap * sizeof *st->off);
    st->len = malloc(st->cap * sizeof *st->len);
    st->arena = malloc(st->arena_cap);
    if (!st->off || !st->len || !st->arena) goto fail;
    if (strtab_rehash(st, pow2_at_least(2 * st->cap)) != TD_OK) goto fail;
    return TD_OK;
fail:
    td_tok_strtab_free(st);
    return TD_E_NOMEM;
}

void td_tok_strtab_free(td_tok_strtab *st) {
    free(st->arena);
    free(st->off);
    free(st->len);
    free(st->slots);
    memset(st, 0, sizeof *st);
}

/* Slot index holding s, or of the empty slot where it would go. */
static size_t strtab_probe(const td_tok_strtab *st, const char *s, size_t n, uint64_t hv) {
    size_t mask = st->nslots - 1;
    size_t h = (size_t)hv & mask;
    uint32_t tag = (uint32_t)(hv >> 32);
    for (;;) {
        const struct td_tok_slot *sl = &st->slots[h];
        if (sl->id < 0) return h;
        if (sl->hash == tag && sl->len == n && memcmp(st->arena + sl->off, s, n) == 0) return h;
        h = (h + 1) & mask;
    }
}

int32_t td_tok_strtab_find(const td_tok_strtab *st, const char *s, size_t n) {
    return st->slots[strtab_probe(st, s, n, str_hash(s, n))].id;
}

int32_t td_tok_strtab_intern_h(td_tok_strtab *st, const char *s, size_t n, uint64_t hv,
                               bool *added) {
    *added = false;
    size_t h = strtab_probe(st, s, n, hv);
    if (st->slots[h].id >= 0) return st->slots[h].id;
    if (n >= UINT32_MAX - st->arena_len || st->n >= (size_t)INT32_MAX) return TD_E_RANGE;
    if (2 * (st->n + 1) > st->nslots) {
        int rc = strtab_rehash(st, st->nslots * 2);
        if (rc != TD_OK) return rc;
        h = strtab_probe(st, s, n, hv);
    }
    if (st->n == st->cap) {
        size_t cap = st->cap * 2;
        uint32_t *off = realloc(st->off, cap * sizeof *off);
        if (!off) return TD_E_NOMEM;
        st->off = off;
        uint32_t *len = realloc(st->len, cap * sizeof *len);
        if (!len) return TD_E_NOMEM;
        st->len = len;
        st->cap = cap;
    }
    if (st->arena_cap - st->arena_len < n + 1) {
        size_t cap = st->arena_cap * 2;
        while (cap - st->arena_len < n + 1) cap *= 2;
        char *a = realloc(st->arena, cap);
        if (!a) return TD_E_NOMEM;
        st->arena = a;
        st->arena_cap = cap;
    }
    int32_t id = (int32_t)st->n;
    memcpy(st->arena + st->arena_len, s, n);
    st->arena[st->arena_len + n] = '\0';
    st->off[id] = (uint32_t)st->arena_len;
    st->len[id] = (uint32_t)n;
    st->arena_len += n + 1;
    st->n++;
    st->slots[h].hash = (uint32_t)(hv >> 32);
    st->slots[h].id = id;
    st->slots[h].len = (uint32_t)n;
    st->slots[h].off = (uint32_t)(st->arena_len - n - 1);
    *added = true;
    return id;
}

/* ---- pair map ---- */

static uint64_t pair_key(int32_t l, int32_t r) {
    return ((uint64_t)(uint32_t)l << 32) | (uint32_t)r;
}

static size_t pair_hash(uint64_t k) { /* splitmix64 finaliser */
    k ^= k >> 30;
    k *= 0xbf58476d1ce4e5b9ULL;
    k ^= k >> 27;
    k *= 0x94d049bb133111ebULL;
    k ^= k >> 31;
    return (size_t)k;
}

int td_tok_pairmap_init(td_tok_pairmap *pm, size_t expect) {
    memset(pm, 0, sizeof *pm);
    pm->nslots = pow2_at_least(2 * expect + 1);
    pm->slots = malloc(pm->nslots * sizeof *pm->slots);
    if (!pm->slots) {
        pm->nslots = 0;
        return TD_E_NOMEM;
    }
    for (size_t i = 0; i < pm->nslots; i++) pm->slots[i].key = UINT64_MAX;
    return TD_OK;
}

void td_tok_pairmap_free(td_tok_pairmap *pm) {
    free(pm->slots);
    memset(pm, 0, sizeof *pm);
}

int td_tok_pairmap_put(td_tok_pairmap *pm, int32_t l, int32_t r, int32_t rank, int32_t merged) {
    /* The table is sized for the whole merges array at init; growing is only
     * for callers that under-estimated. */
    if (2 * (pm->n + 1) > pm->nslots) {
        td_tok_pairmap big;
        int rc = td_tok_pairmap_init(&big, pm->nslots);
        if (rc != TD_OK) return rc;
        for (size_t i = 0; i < pm->nslots; i++) {
            if (pm->slots[i].key == UINT64_MAX) continue;
            size_t h = pair_hash(pm->slots[i].key) & (big.nslots - 1);
            while (big.slots[h].key != UINT64_MAX) h = (h + 1) & (big.nslots - 1);
            big.slots[h] = pm->slots[i];
        }
        big.n = pm->n;
        td_tok_pairmap_free(pm);
        *pm = big;
    }
    uint64_t k = pair_key(l, r);
    size_t mask = pm->nslots - 1;
    size_t h = pair_hash(k) & mask;
    while (pm->slots[h].key != UINT64_MAX) {
        if (pm->slots[h].key == k) return TD_OK; /* first (highest priority) wins */
        h = (h + 1) & mask;
    }
    pm->slots[h].key = k;
    pm->slots[h].rank = rank;
    pm->slots[h].merged = merged;
    pm->n++;
    return TD_OK;
}

void td_tok_pairmap_prefetch(const td_tok_pairmap *pm, int32_t l, int32_t r) {
    __builtin_prefetch(&pm->slots[pair_hash(pair_key(l, r)) & (pm->nslots - 1)], 1);
}

bool td_tok_pairmap_get(const td_tok_pairmap *pm, int32_t l, int32_t r, int32_t *rank,
                        int32_t *merged) {
    if (pm->n == 0) return false;
    uint64_t k = pair_key(l, r);
    size_t mask = pm->nslots - 1;
    for (size_t h = pair_hash(k) & mask;; h = (h + 1) & mask) {
        const struct td_tok_pair *p = &pm->slots[h];
        if (p->key == k) {
            *rank = p->rank;
            *merged = p->merged;
            return true;
        }
        if (p->key == UINT64_MAX) return false;
    }
}
