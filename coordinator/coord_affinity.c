/* coord_affinity.c — which verifier last held a token prefix, so that a
 * request whose prompt continues an earlier one (a chat's next turn, sent
 * whole) goes where that prefix is still cached (the worker's prefix
 * cache, docs/service.md) instead of prefilling it again elsewhere.
 *
 * Prefixes are remembered at block boundaries (every AFF_BLOCK tokens, up
 * to AFF_MAX_BLOCKS blocks) by a running hash, in a direct-mapped table: a
 * newer prefix overwrites whatever hashed to the same slot. A wrong or lost
 * entry only costs a cache miss — routing never changes a token.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator.h"

#define AFF_SLOTS 4096      /* power of two */
#define AFF_BLOCK 32        /* tokens per remembered boundary */
#define AFF_MAX_BLOCKS 256  /* prefixes up to 8192 tokens */

typedef struct aff_entry {
    uint64_t hash;          /* 0 = empty */
    uint32_t tokens;        /* the prefix's length */
    char worker[128];
} aff_entry;

struct td_coord_affinity {
    pthread_mutex_t mu;
    aff_entry slot[AFF_SLOTS];
};

td_coord_affinity *td_coord_affinity_create(td_err *err) {
    td_coord_affinity *a = calloc(1, sizeof *a);
    if (!a) {
        td_err_set(err, TD_E_NOMEM, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&a->mu, NULL);
    return a;
}

void td_coord_affinity_destroy(td_coord_affinity *a) {
    if (!a) return;
    pthread_mutex_destroy(&a->mu);
    free(a);
}

/* The running hash after each full block: h[k] covers tokens[0, (k+1)*AFF_BLOCK).
 * Never 0 (0 marks an empty slot). Returns the number of blocks. */
static int32_t block_hashes(const int32_t *tokens, size_t n, uint64_t *h) {
    int32_t blocks = (int32_t)(n / AFF_BLOCK);
    if (blocks > AFF_MAX_BLOCKS) blocks = AFF_MAX_BLOCKS;
    uint64_t x = TD_FNV1A64_INIT;
    for (int32_t b = 0; b < blocks; b++) {
        x = td_fnv1a64(x, tokens + (size_t)b * AFF_BLOCK, AFF_BLOCK * sizeof *tokens);
        h[b] = x ? x : 1;
    }
    return blocks;
}

int32_t td_coord_affinity_lookup(td_coord_affinity *a, const int32_t *tokens, size_t n, char worker[128]) {
    uint64_t h[AFF_MAX_BLOCKS];
    int32_t blocks = block_hashes(tokens, n, h);
    worker[0] = 0;
    pthread_mutex_lock(&a->mu);
    int32_t found = 0;
    for (int32_t b = blocks - 1; b >= 0 && !found; b--) {
        const aff_entry *e = &a->slot[h[b] & (AFF_SLOTS - 1)];
        if (e->hash == h[b] && e->tokens == (uint32_t)(b + 1) * AFF_BLOCK) {
            snprintf(worker, 128, "%s", e->worker);
            found = (int32_t)e->tokens;
        }
    }
    pthread_mutex_unlock(&a->mu);
    return found;
}

void td_coord_affinity_record(td_coord_affinity *a, const int32_t *tokens, size_t n, const char *worker) {
    if (!worker || !worker[0]) return;
    uint64_t h[AFF_MAX_BLOCKS];
    int32_t blocks = block_hashes(tokens, n, h);
    pthread_mutex_lock(&a->mu);
    for (int32_t b = 0; b < blocks; b++) {
        aff_entry *e = &a->slot[h[b] & (AFF_SLOTS - 1)];
        e->hash = h[b];
        e->tokens = (uint32_t)(b + 1) * AFF_BLOCK;
        snprintf(e->worker, sizeof e->worker, "%s", worker);
    }
    pthread_mutex_unlock(&a->mu);
}
