/* draft_tree.c — helpers on proposal trees shared by every drafter and the
 * verifier: node depths, the accepted path given the target's tokens, and the
 * generic drafter destructor.
 * Malformed trees (a parent that does not precede its child) are tolerated:
 * such nodes get depth 0 and are never accepted, so a buggy drafter cannot
 * make the verifier read out of bounds. */
#include "spec/spec.h"

/* Node count clamped to what a td_draft can hold. */
static int32_t draft_count(const td_draft *d) {
    if (d->n < 0) return 0;
    return d->n > TD_DRAFT_MAX ? TD_DRAFT_MAX : d->n;
}

/* True when node i's parent is -1 or an earlier node. */
static bool parent_ok(const td_draft *d, int32_t i) {
    int32_t p = d->parent[i];
    return p >= -1 && p < i;
}

void td_draft_depths(const td_draft *d, int32_t *depth) {
    if (!d || !depth) return;
    int32_t n = draft_count(d);
    for (int32_t i = 0; i < n; i++) {
        if (!parent_ok(d, i)) {
            depth[i] = 0;
        } else if (d->parent[i] < 0) {
            depth[i] = 1;
        } else {
            int32_t pd = depth[d->parent[i]];
            depth[i] = pd > 0 ? pd + 1 : 0; /* below a malformed node: malformed too */
        }
    }
}

/* Accepted depth of each node (0 = not accepted) and, per node, the deepest
 * accepted depth in its subtree. Children follow parents in index order, so
 * one forward pass gives the first and one backward pass the second. Among
 * accepted paths of equal length the walk below takes the one whose nodes
 * come first at the first point they differ, i.e. of two siblings carrying
 * the same token the earlier one, unless only the later leads deeper. */
int32_t td_draft_accept_path(const td_draft *d, const int32_t *target, int32_t *path) {
    if (!d || !target || !path) return 0;
    int32_t n = draft_count(d);
    int32_t acc[TD_DRAFT_MAX], sub[TD_DRAFT_MAX];
    int32_t best = 0;
    for (int32_t i = 0; i < n; i++) {
        acc[i] = 0;
        if (!parent_ok(d, i)) continue;
        int32_t p = d->parent[i];
        if (p < 0) {
            if (d->token[i] == target[0]) acc[i] = 1;
        } else if (acc[p] > 0 && d->token[i] == target[p + 1]) {
            acc[i] = acc[p] + 1;
        }
        if (acc[i] > best) best = acc[i];
    }
    if (best == 0) return 0;
    for (int32_t i = 0; i < n; i++) sub[i] = acc[i];
    for (int32_t i = n - 1; i >= 0; i--) {
        int32_t p = d->parent[i];
        if (acc[i] > 0 && p >= 0 && sub[i] > sub[p]) sub[p] = sub[i];
    }
    int32_t len = 0, cur = -1;
    while (len < best) {
        int32_t next = -1;
        for (int32_t i = cur + 1; i < n; i++) {
            if (acc[i] > 0 && d->parent[i] == cur && sub[i] == best) {
                next = i;
                break;
            }
        }
        if (next < 0) break; /* cannot happen: some child holds the deepest node */
        path[len++] = next;
        cur = next;
    }
    return len;
}

void td_draft_context(const td_draft *d, int32_t i, const int32_t *history, size_t n, int32_t k,
                      int32_t *ctx) {
    int32_t m = 0;
    for (int32_t a = i; a >= 0 && m < k; a = d->parent[a]) ctx[m++] = d->token[a];
    for (size_t h = n; h > 0 && m < k; h--) ctx[m++] = history[h - 1];
    while (m < k) ctx[m++] = -1;
}

void td_drafter_destroy(td_drafter *d) {
    if (d && d->ops && d->ops->destroy) d->ops->destroy(d);
}
