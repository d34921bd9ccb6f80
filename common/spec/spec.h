/* spec.h — speculative decoding: drafters behind one interface, and the
 * verification loop that keeps only tokens the target itself would produce.
 *
 * A drafter proposes a tree of tokens continuing a sequence (a chain is a tree
 * whose nodes each have the previous one as parent). Drafters see the
 * sequence only through the token history passed to them and the
 * observations the verifier reports; they keep per-sequence state and must
 * never depend on being in the same process as the target model.
 *
 * Threads: a drafter is used by one thread at a time (td_spec_run of one
 * batch); the model drafters share the target's read-only td_model and may
 * share its pool. A td_spec_run call owns its ctx, kv and drafters.
 */
#ifndef TD_SPEC_H
#define TD_SPEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gen/gen.h"
#include "model/model.h"
#include "sample/sample.h"
#include "tok/tok.h"
#include "util/util.h"

/* Largest number of nodes one proposal may hold. */
#define TD_DRAFT_MAX 64
/* Confidence classes a drafter may sort its nodes into (0 = least sure). */
#define TD_DRAFT_CONF 4

/* A proposal: nodes in topological order (a parent precedes its children).
 * parent[i] == -1: node i directly follows the last token of the history. */
typedef struct td_draft {
    int32_t n;
    int32_t token[TD_DRAFT_MAX];
    int32_t parent[TD_DRAFT_MAX];
    float prob[TD_DRAFT_MAX];  /* drafter's probability of the node given its parent path; 0 if unknown */
    /* The drafter's own class of the node, 0..TD_DRAFT_CONF-1 (e.g. how long
     * a match it copies). The verifier learns acceptance per drafter, class
     * and depth, and verifies only nodes whose expected gain pays for their
     * rows; a drafter that has no such notion leaves 0. */
    uint8_t conf[TD_DRAFT_MAX];
} td_draft;

/* What verification learned at one node: the token there and the target's
 * most likely next tokens after it (best first). Token Recycling feeds on
 * these; other drafters may ignore them. */
typedef struct td_observation {
    int32_t token;
    const int32_t *top;  /* n_top ids */
    int32_t n_top;
    int32_t prev[2];     /* the two tokens before `token`, nearest first; -1 unknown */
} td_observation;

typedef struct td_drafter td_drafter;

/* accept and observe may be NULL where a drafter has no use for them;
 * callers check (a NULL observe spares the verifier gathering top-k lists). */
typedef struct td_drafter_ops {
    const char *name;
    /* Proposes up to max_nodes nodes continuing history[0..n) of seq;
     * out->n = 0 when there is nothing worth proposing. */
    int (*propose)(td_drafter *d, int32_t seq, const int32_t *history, size_t n, int32_t max_nodes,
                   td_draft *out);
    /* The target accepted `n_new` tokens (accepted drafts + its own bonus
     * token), which now end history[0..n). */
    void (*accept)(td_drafter *d, int32_t seq, const int32_t *history, size_t n, size_t n_new);
    /* Verification observations (may be called before accept each step). */
    void (*observe)(td_drafter *d, int32_t seq, const td_observation *obs, int32_t n_obs);
    /* Forget everything about seq. */
    void (*reset)(td_drafter *d, int32_t seq);
    void (*destroy)(td_drafter *d);
} td_drafter_ops;

struct td_drafter {
    const td_drafter_ops *ops;
    /* Why the last failing operation failed (a propose that returned a
     * negative status writes it here); td_spec_run reports it with the
     * drafter's name. Zero it when creating a drafter (calloc does). */
    td_err err;
};

/* ---- model-free drafters (drafters.c and friends) ----
 * Every constructor returns NULL on failure with the reason in err
 * (TD_E_ARG for parameters out of range, TD_E_NOMEM). */

/* Prompt lookup / input copy: match the last n tokens (n from max_ngram down
 * to min_ngram) against the history and propose what followed the most
 * recent match. */
td_drafter *td_spec_lookup_create(int32_t min_ngram, int32_t max_ngram, td_err *err);
/* The same with a chosen number of branches (1..4; 1 = always a chain, the
 * plain constructor uses 3): older matches whose continuations differ from
 * the newest one's add a few nodes where they diverge, once max_nodes >= 8. */
td_drafter *td_spec_lookup_tree_create(int32_t min_ngram, int32_t max_ngram,
                                       int32_t max_branches, td_err *err);

/* Adaptive n-gram table (ADED-style): counts of continuations of the last
 * 1..order-1 tokens, built from the history and updated from accepted text;
 * proposes the most frequent chain, backing off to shorter contexts. */
td_drafter *td_spec_ngram_create(int32_t order, int32_t max_seqs, td_err *err);

/* What a drafter's learnt state may cross. A drafter that learns from the
 * texts it sees (Token Recycling's table, keyed partly on 2-3-token
 * contexts) lets one request's text shape another's drafts, and their
 * timing, when its state outlives the request. The caller chooses:
 *   PER_REQUEST (the default, and what a service hosting many users must
 *     use): state is per sequence and forgotten when a request starts
 *     (reset), so nothing crosses requests;
 *   PER_TENANT: state kept across requests and sequences; the caller holds
 *     one drafter per tenant, so it crosses only that tenant's requests;
 *   SHARED: one drafter for every request (a single user, benchmarks).
 * lookup, ngram and the model drafters keep only per-sequence state rebuilt
 * from each request's own history: per request by construction. */
typedef enum td_drafter_scope {
    TD_DRAFTER_PER_REQUEST = 0,
    TD_DRAFTER_PER_TENANT = 1,
    TD_DRAFTER_SHARED = 2,
} td_drafter_scope;

/* Token Recycling: an adjacency table token -> the target's top-k next
 * tokens from earlier verification steps; proposes a tree (breadth per depth
 * given by the static shape) by walking the table from the last token.
 * td_spec_recycle_create is per request scope. */
td_drafter *td_spec_recycle_create(int32_t n_vocab, int32_t top_k, td_err *err);
td_drafter *td_spec_recycle_create_scoped(int32_t n_vocab, int32_t top_k, td_drafter_scope scope, td_err *err);

void td_drafter_destroy(td_drafter *d); /* accepts NULL */

/* ---- tree helpers ---- */

/* Depth of each node (root children have depth 1). */
void td_draft_depths(const td_draft *d, int32_t *depth);
/* Longest accepted path: node i is accepted iff its parent is accepted (or
 * it is a root) and token[i] == target[parent slot], where target[-1+1] is
 * the target's token after the history and target[i+1] the target's token
 * after node i. Writes accepted node indices in path order to path and
 * returns their count. */
int32_t td_draft_accept_path(const td_draft *d, const int32_t *target, int32_t *path);
/* The last k tokens of the text that ends at node i (i = -1: at the end of
 * the history), newest first: node i and its ancestors, then the history.
 * -1 where the text is shorter than k. */
void td_draft_context(const td_draft *d, int32_t i, const int32_t *history, size_t n, int32_t k,
                      int32_t *ctx);

/* ---- drafters that run a model (model_drafter.c) ----
 * Both keep their own KV cache and re-sync it to the history on each
 * propose (common prefix kept, the rest fed), so rejected drafts cost only a
 * truncation. They draft with the same keyed sampling as the target
 * (greedy, or Gumbel noise keyed by seed and position), so they agree with
 * the target whenever their distributions are close. */
/* A separate, smaller model with the same vocabulary (the caller checks the
 * vocabulary hash). */
td_drafter *td_spec_model_drafter_create(const td_model *draft, td_pool *pool,
                                         const td_sample_params *sp, int32_t max_seqs,
                                         int32_t max_len, td_err *err);

/* The target itself with some layers skipped. skip[l] != 0 skips layer l;
 * NULL lets the drafter choose: it measures candidate skip sets against the
 * full model on the context so far and re-chooses when acceptance drops. */
td_drafter *td_spec_layerskip_create(const td_model *target, td_pool *pool,
                                     const td_sample_params *sp, int32_t max_seqs, int32_t max_len,
                                     const uint8_t *skip, td_err *err);

/* ---- the speculative generation loop (spec_run.c) ---- */

typedef enum td_spec_mode {
    TD_SPEC_EXACT = 0,     /* accept a draft iff it equals the target's keyed sample: tokens identical to plain decoding */
    TD_SPEC_REJECTION = 1, /* classic min(1, p/q) test + residual resampling: same distribution, not same tokens */
} td_spec_mode;

typedef struct td_spec_params {
    int32_t draft_max;     /* nodes per step at most (<= TD_DRAFT_MAX) */
    int32_t draft_min;     /* adaptive lower bound */
    bool adaptive;         /* grow on full acceptance, shrink on early rejection, and
                            * verify only the nodes that pay for their rows */
    /* Cost of one more row in a target pass as a fraction of a one-row pass;
     * 0 = learn it from the passes' wall time (the draft tree is then sized
     * by this machine's speed; the tokens never depend on it). */
    float row_cost;
    td_spec_mode mode;
    bool test_skip_residual; /* tests only: drop the rejection-sampling correction */
} td_spec_params;

td_spec_params td_spec_defaults(void);

typedef struct td_spec_stats {
    int64_t n_steps;       /* target passes after prefill */
    int64_t n_drafted;     /* draft nodes sent to verification */
    int64_t n_accepted;    /* draft tokens accepted */
    int64_t n_tokens;      /* tokens produced by those passes */
} td_spec_stats;

/* One generation request of a batch; sequence id = its index. */
typedef struct td_spec_request {
    const int32_t *prompt;
    size_t n_prompt;
    td_gen_params gen;       /* sampling, max tokens, stop strings */
    td_gen_emit_fn emit;     /* streamed text, may be NULL */
    void *user;
    int32_t *out_tokens;     /* room for gen.max_tokens ids, may be NULL */
    td_gen_stats stats;      /* filled: like td_gen_run's */
    td_spec_stats spec;      /* filled */
} td_spec_request;

/* Generates all requests together: each step, every unfinished request's
 * [last token + draft tree] goes into one target pass. With
 * TD_SPEC_EXACT the tokens equal td_gen_run's for the same request, whatever
 * the drafters. Several drafters are combined: their proposals are merged
 * into one tree (shared prefixes once), the drafter that recently paid best
 * first, and the longest accepted path wins. kv must hold n_reqs empty
 * sequences; ctx must hold at least n_reqs * (1 + draft_max) rows (draft
 * sizes are clamped to what fits). */
int td_spec_run(const td_model *m, const td_tok *tok, td_ctx *ctx, td_kv *kv, td_spec_request *reqs,
                int32_t n_reqs, td_drafter *const *drafters, int32_t n_drafters, const td_spec_params *sp,
                td_err *err);

#endif
