/* spec_plan.h — inside common/spec only: the planner that decides how much
 * of the drafters' proposals one target pass verifies.
 *
 * A drafted node is worth the chance that it is accepted; it costs one more
 * row in the pass. The planner learns both: acceptance per (drafter, class,
 * depth) from what verification kept, and the cost of a row from the wall
 * time of the passes. Each step it keeps, over all sequences of the pass, the
 * nodes with the best expected gain until one more would lower the expected
 * tokens per second. Pruning never changes a token, only how many are
 * checked at once.
 */
#ifndef TD_SPEC_PLAN_H
#define TD_SPEC_PLAN_H

#include <stdbool.h>
#include <stdint.h>

#include "spec/spec.h"

#define TD_PLAN_DRAFTERS 8
#define TD_PLAN_DEPTHS 8   /* deeper nodes share the last depth's statistics */

typedef struct td_spec_plan {
    /* decayed counts of nodes tested (parent accepted) and accepted */
    float tested[TD_PLAN_DRAFTERS][TD_DRAFT_CONF][TD_PLAN_DEPTHS];
    float accepted[TD_PLAN_DRAFTERS][TD_DRAFT_CONF][TD_PLAN_DEPTHS];
    double base_sec;       /* one-row pass, learned; 0 until the first pass */
    double row_cost;       /* extra row / one-row pass */
    bool learn_cost;
    /* decayed sums of the passes for a least-squares line through
     * (rows - 1, seconds): weight, x, x^2, y, x*y */
    double w, sx, sxx, sy, sxy;
    int32_t starved;       /* passes in a row that pruned every drafted node */
    /* Rows that other sequences, not planned here, add to each pass (a
     * verifier worker batches many coordinators' requests): they make a
     * pass dearer and produce about one token each, so under load only
     * the surest drafts still pay. 0 when this planner sees the whole pass. */
    double shared_rows;
} td_spec_plan;

/* One node of a pass as the planner ranks it. */
typedef struct td_plan_node {
    float gain;            /* probability that the node is accepted */
    int32_t seq_slot;      /* which draft of the pass */
    int32_t node;          /* index in that draft */
} td_plan_node;

void td_spec_plan_init(td_spec_plan *p, float row_cost);
/* Probability that a node of drafter `who`, class `conf`, at depth >= 1 is
 * accepted given that its parent was. */
float td_spec_plan_alpha(const td_spec_plan *p, int who, int conf, int depth);
/* Verification tested one node (its parent was accepted). */
void td_spec_plan_learn(td_spec_plan *p, int who, int conf, int depth, bool accepted);
/* Ages every statistic once per pass so that classes no longer verified
 * drift back to the prior and get tried again. */
void td_spec_plan_age(td_spec_plan *p);
/* A pass of `rows` rows took `sec` seconds. */
void td_spec_plan_time(td_spec_plan *p, int32_t rows, double sec);

/* Prunes the drafts of one pass in place: keeps the nodes (always with their
 * ancestors) that maximise expected tokens per unit of pass time. origin[s]
 * holds the drafter of each node of drafts[s] and is pruned alike. scratch
 * has room for the total node count. Returns the number of nodes kept.
 * After TD_PLAN_PROBE_EVERY passes in a row that kept nothing it keeps the
 * best node anyway: estimates that say "never worth it" could otherwise
 * never be corrected, neither the acceptance nor (with one-row passes only)
 * the row cost. */
#define TD_PLAN_PROBE_EVERY 8
int32_t td_spec_plan_prune(td_spec_plan *p, td_draft *const *drafts, int8_t *const *origin,
                           int32_t n_drafts, td_plan_node *scratch);

#endif
