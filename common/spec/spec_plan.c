/* spec_plan.c — the goodput planner: learned acceptance per (drafter,
 * class, depth), a learned cost per row, and the pruning of each pass's
 * draft trees to the nodes that pay (see spec_plan.h).
 *
 * Expected tokens of a pass = one per sequence (the target's own token) plus,
 * per node, the probability that it and all its ancestors are accepted: the
 * product of the learned acceptance along its path. Pass time is modelled as
 * base * (1 + row_cost * (rows - 1)), which is what the engine's verification
 * cost curve looks like once a few rows are in (bench engine).
 */
#include <math.h>
#include <stdlib.h>

#include "spec/spec_plan.h"

#define PRIOR_ACCEPT 1.0f  /* a new class starts at 1 / 2.5 = 0.4 ... */
#define PRIOR_TESTED 2.5f  /* ... worth 2.5 observations */
#define AGE 0.98f          /* per pass: unused classes return to the prior in ~100 passes */
#define COST_PRIOR 0.2     /* this engine on a 2-core AVX2 machine: 8 rows ~ 2.4x one */
#define COST_MIN 0.01
#define COST_MAX 2.0
#define TIME_DECAY 0.97   /* per pass: the fit follows a growing context */
#define MIN_SPREAD 0.5    /* variance of rows - 1 needed to fit a slope */

void td_spec_plan_init(td_spec_plan *p, float row_cost) {
    *p = (td_spec_plan){0};
    p->learn_cost = !(row_cost > 0);
    p->row_cost = p->learn_cost ? COST_PRIOR : (double)row_cost;
}

static int clamp_depth(int depth) {
    return depth < 1 ? 0 : depth > TD_PLAN_DEPTHS ? TD_PLAN_DEPTHS - 1 : depth - 1;
}

static bool valid_cell(int who, int conf) {
    return who >= 0 && who < TD_PLAN_DRAFTERS && conf >= 0 && conf < TD_DRAFT_CONF;
}

/* A depth seldom reached borrows the estimate of the depth above it as its
 * prior (pseudo-count PRIOR_TESTED): a drafter that is right at depths 1 and
 * 2 gets its depth 3 tried, where a flat prior would keep it pruned forever. */
float td_spec_plan_alpha(const td_spec_plan *p, int who, int conf, int depth) {
    float prior = PRIOR_ACCEPT / PRIOR_TESTED;
    if (!valid_cell(who, conf)) return prior;
    int last = clamp_depth(depth);
    for (int d = 0; d <= last; d++)
        prior = (p->accepted[who][conf][d] + PRIOR_TESTED * prior) / (p->tested[who][conf][d] + PRIOR_TESTED);
    return prior;
}

void td_spec_plan_learn(td_spec_plan *p, int who, int conf, int depth, bool accepted) {
    if (!valid_cell(who, conf)) return;
    int d = clamp_depth(depth);
    p->tested[who][conf][d] += 1.0f;
    p->accepted[who][conf][d] += accepted ? 1.0f : 0.0f;
}

void td_spec_plan_age(td_spec_plan *p) {
    float *t = &p->tested[0][0][0], *a = &p->accepted[0][0][0];
    for (size_t i = 0; i < sizeof p->tested / sizeof *t; i++) {
        t[i] *= AGE;
        a[i] *= AGE;
    }
}

void td_spec_plan_time(td_spec_plan *p, int32_t rows, double sec) {
    if (rows < 1 || !(sec > 0) || !isfinite(sec)) return;
    double x = rows - 1;
    p->w = TIME_DECAY * p->w + 1;
    p->sx = TIME_DECAY * p->sx + x;
    p->sxx = TIME_DECAY * p->sxx + x * x;
    p->sy = TIME_DECAY * p->sy + sec;
    p->sxy = TIME_DECAY * p->sxy + x * sec;
    double mx = p->sx / p->w, my = p->sy / p->w, var = p->sxx / p->w - mx * mx;
    if (p->learn_cost && var > MIN_SPREAD) {
        /* the passes differ enough in size to tell base from slope */
        double slope = (p->sxy / p->w - mx * my) / var;
        double base = my - slope * mx;
        if (base > 0) {
            double c = slope / base;
            p->row_cost = c < COST_MIN ? COST_MIN : c > COST_MAX ? COST_MAX : c;
            p->base_sec = base;
            return;
        }
    }
    /* all passes about one size: keep the cost, fit the base to it */
    p->base_sec = my / (1.0 + p->row_cost * mx);
}

static int by_gain_desc(const void *a, const void *b) {
    const td_plan_node *x = a, *y = b;
    if (x->gain != y->gain) return x->gain < y->gain ? 1 : -1;
    if (x->seq_slot != y->seq_slot) return x->seq_slot - y->seq_slot;
    return x->node - y->node; /* equal gain: a parent before its child */
}

/* Removes the nodes of d not flagged in keep; parents are re-indexed. */
static void compact(td_draft *d, int8_t *origin, const bool *keep) {
    int32_t map[TD_DRAFT_MAX], n = 0;
    for (int32_t i = 0; i < d->n; i++) {
        map[i] = -1;
        if (!keep[i]) continue;
        map[i] = n;
        d->token[n] = d->token[i];
        d->parent[n] = d->parent[i] < 0 ? -1 : map[d->parent[i]];
        d->prob[n] = d->prob[i];
        d->conf[n] = d->conf[i];
        origin[n] = origin[i];
        n++;
    }
    d->n = n;
}

int32_t td_spec_plan_prune(td_spec_plan *p, td_draft *const *drafts, int8_t *const *origin,
                           int32_t n_drafts, td_plan_node *scratch) {
    int32_t n = 0;
    for (int32_t s = 0; s < n_drafts; s++) {
        const td_draft *d = drafts[s];
        float path[TD_DRAFT_MAX];
        int32_t depth[TD_DRAFT_MAX];
        td_draft_depths(d, depth);
        for (int32_t i = 0; i < d->n; i++) {
            float up = d->parent[i] < 0 ? 1.0f : path[d->parent[i]];
            path[i] = up * td_spec_plan_alpha(p, origin[s][i], d->conf[i], depth[i]);
            scratch[n++] = (td_plan_node){path[i], s, i};
        }
    }
    qsort(scratch, (size_t)n, sizeof *scratch, by_gain_desc);

    /* Best prefix of the ranking by expected tokens per unit of time; ties
     * go to fewer rows. Gains fall along every path, so any prefix holds
     * each kept node's ancestors. */
    double others = p->shared_rows > 0 ? p->shared_rows : 0;
    double tokens = n_drafts + others, best_rate = 0;
    int32_t best_k = 0;
    for (int32_t k = 0; k <= n; k++) {
        if (k > 0) tokens += scratch[k - 1].gain;
        double rate = tokens / (1.0 + p->row_cost * ((double)(n_drafts - 1 + k) + others));
        if (k == 0 || rate > best_rate) {
            best_rate = rate;
            best_k = k;
        }
    }
    if (best_k > 0 || n == 0) {
        p->starved = 0;
    } else if (++p->starved >= TD_PLAN_PROBE_EVERY) {
        best_k = 1; /* the likeliest node: a root child, so its path is closed */
        p->starved = 0;
    }
    bool keep[TD_DRAFT_MAX];
    for (int32_t s = 0; s < n_drafts; s++) {
        for (int32_t i = 0; i < drafts[s]->n; i++) keep[i] = false;
        for (int32_t k = 0; k < best_k; k++)
            if (scratch[k].seq_slot == s) keep[scratch[k].node] = true;
        compact(drafts[s], origin[s], keep);
    }
    return best_k;
}
