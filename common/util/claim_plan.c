/* claim_plan.c — how big a chunk threads should claim at a time, decided by
 * playing the claims out. A phase of a pass is a few spans of columns (the
 * matrices of one step) that the pool's threads take chunk by chunk from a
 * shared counter. With one chunk per thread and chunks rounded up to the
 * kernels' alignment, a narrow matrix on many threads leaves threads idle:
 * 576 columns in chunks of 64 are 9 claims for 16 threads, so the step takes
 * 64 columns' time where an even share is 36. The plan tries every aligned
 * chunk, simulates equally fast threads each taking the next chunk as soon as
 * it is free (what td_claim does), charges each claim a fixed cost, and keeps
 * the chunk whose busiest thread finishes first. It depends only on shapes,
 * so a context computes it once.
 */
#include <stdlib.h>

#include "util/util.h"

/* Claims per thread beyond which a finer chunk is not tried: each claim costs
 * its fixed price, so past a few the plan cannot win, and the cap bounds the
 * work of planning. */
#define MAX_CLAIMS_PER_THREAD 8

/* Sifts the smallest finish time of free[0..nth) to the root after the root
 * grew (a binary min-heap). */
static void sift_down(double *free_at, int nth) {
    int i = 0;
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        if (l < nth && free_at[l] < free_at[m]) m = l;
        if (r < nth && free_at[r] < free_at[m]) m = r;
        if (m == i) return;
        double t = free_at[i];
        free_at[i] = free_at[m];
        free_at[m] = t;
        i = m;
    }
}

static int64_t claims_of(const td_claim_span *spans, int n_spans, int64_t chunk) {
    int64_t n = 0;
    for (int i = 0; i < n_spans; i++) n += (spans[i].n + chunk - 1) / chunk;
    return n;
}

/* The busiest thread's cost when nth threads claim the spans in chunks of
 * `chunk`; free_at is nth doubles of scratch. */
static double busiest_cost(const td_claim_span *spans, int n_spans, int nth, int64_t chunk, double per_claim,
                           double *free_at) {
    for (int t = 0; t < nth; t++) free_at[t] = 0;
    for (int i = 0; i < n_spans; i++) {
        for (int64_t lo = 0; lo < spans[i].n; lo += chunk) {
            int64_t items = spans[i].n - lo < chunk ? spans[i].n - lo : chunk;
            free_at[0] += per_claim + (double)items * spans[i].cost; /* the thread free first claims it */
            sift_down(free_at, nth);
        }
    }
    double most = 0;
    for (int t = 0; t < nth; t++)
        if (free_at[t] > most) most = free_at[t];
    return most;
}

int64_t td_claim_plan(const td_claim_span *spans, int n_spans, int nth, int64_t align, double per_claim) {
    if (align < 1) align = 1;
    int64_t widest = 0;
    for (int i = 0; i < n_spans; i++)
        if (spans[i].n > widest) widest = spans[i].n;
    int64_t top = widest > 0 ? (widest + align - 1) / align * align : align; /* one claim per span */
    if (nth <= 1) return top;
    double *free_at = malloc((size_t)nth * sizeof *free_at);
    if (!free_at) /* planning is an optimization: without memory, the old rule */
        return td_claim_chunk(widest, nth, 1, align);
    int64_t best = top;
    double best_cost = busiest_cost(spans, n_spans, nth, top, per_claim, free_at);
    for (int64_t chunk = top - align; chunk >= align; chunk -= align) {
        if (claims_of(spans, n_spans, chunk) > (int64_t)MAX_CLAIMS_PER_THREAD * nth) break;
        double cost = busiest_cost(spans, n_spans, nth, chunk, per_claim, free_at);
        if (cost < best_cost) { /* strictly: ties keep the larger chunk, fewer claims */
            best_cost = cost;
            best = chunk;
        }
    }
    free(free_at);
    return best;
}

double td_claim_busiest(const td_claim_span *spans, int n_spans, int nth, int64_t chunk, double per_claim) {
    double total = 0;
    for (int i = 0; i < n_spans; i++) total += (double)spans[i].n * spans[i].cost;
    if (nth < 1 || chunk < 1 || total <= 0) return 1.0;
    double *free_at = malloc((size_t)nth * sizeof *free_at);
    if (!free_at) return -1.0;
    double cost = busiest_cost(spans, n_spans, nth, chunk, per_claim, free_at);
    free(free_at);
    return cost / (total / nth);
}
