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
    /* The sampling parameters of the request now on seq (called after
     * reset): drafters that sample (the model drafters) draft with the
     * request's own keyed sampler. May be NULL. */
    void (*set_params)(td_drafter *d, int32_t seq, const td_sample_params *sp);
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

typedef enum td_spec_mode {
    TD_SPEC_EXACT = 0,     /* accept a draft iff it equals the target's keyed sample: tokens identical to plain decoding */
    TD_SPEC_REJECTION = 1, /* classic min(1, p/q) test + residual resampling: same distribution, not same tokens */
} td_spec_mode;

/* ---- the target: where verification happens (spec_target_local.c; the
 * service's remote target lives in the coordinator) ----
 *
 * A target holds sequences. Each has a token history whose last token is
 * "pending": sampled, not yet in the cache; it is the root row of the next
 * verification. verify runs [pending + a draft tree] through the model and
 * walks the tree the way the target would decode: the target's keyed pick
 * after the root, the child carrying that token, the pick after it, ...
 * until a pick no child carries. Sampling thus happens where the logits
 * are; only tokens leave the target. commit keeps the walked path in the
 * cache, and the pick after its last node becomes pending. */

#define TD_TARGET_TOP_MAX 16   /* observation candidates per node */
#define TD_TARGET_ALT_MAX 20   /* logprob alternatives per produced token */

typedef struct td_target_seq_params {
    td_sample_params sample;
    td_spec_mode mode;
    int32_t max_new_tokens;   /* the target reserves room for prompt + this */
    int32_t n_top;            /* candidates per verified node for observe (0..TD_TARGET_TOP_MAX) */
    int32_t n_logprobs;       /* -1: none; else the produced token's logprob and this many alternatives */
    bool test_skip_residual;  /* tests only: rejection mode without its correction */
    bool reuse_prefix;        /* open keeps what the closed sequence's cache shares with
                                 the prompt (ops->reusable); off: it starts empty */
} td_target_seq_params;

/* What verification found at the root (index 0) or tree node i (index i+1). */
typedef struct td_node_result {
    int32_t sample;           /* the target's token after this node; -1 off the walked path */
    float logprob;            /* log-softmax of the raw logits at sample (n_logprobs >= 0) */
    int32_t n_top;
    int32_t top[TD_TARGET_TOP_MAX];            /* most likely next ids, best first (all verified nodes) */
    int32_t n_alt;
    int32_t alt_id[TD_TARGET_ALT_MAX];         /* on the path: best alternatives and their logprobs */
    float alt_logprob[TD_TARGET_ALT_MAX];
} td_node_result;

typedef struct td_verify_item {
    int32_t seq;
    const td_draft *tree;     /* n may be 0: one plain decoding step */
    td_node_result *nodes;    /* out: tree->n + 1 entries */
    int32_t path[TD_DRAFT_MAX]; /* out: walked (accepted) node indices, root to leaf */
    int32_t n_path;           /* out */
} td_verify_item;

/* Wall time and size of the pass a verification shared (the planner learns
 * what a row costs from them). */
typedef struct td_pass_info {
    double sec;
    int32_t rows;
} td_pass_info;

typedef struct td_target td_target;
typedef struct td_target_ops {
    /* Opens seq with tokens[0..n) (n >= 1): caches all but the last, which
     * becomes pending. TD_E_RANGE when prompt + max_new_tokens does not fit. */
    int (*open)(td_target *t, int32_t seq, const td_target_seq_params *p, const int32_t *tokens, size_t n,
                td_err *err);
    /* Verifies several sequences' trees in one pass (one per item). */
    int (*verify)(td_target *t, td_verify_item *items, int32_t n_items, td_pass_info *pass, td_err *err);
    /* Keeps path[0..n_path), a prefix of the last verify's walk of seq. */
    int (*commit)(td_target *t, int32_t seq, const int32_t *path, int32_t n_path, td_err *err);
    /* Appends tokens[0..n) (n >= 1) to an open sequence between steps (not
     * after a verify without commit): the pending token and all but the
     * last are cached, the last becomes pending. Lets a long prompt be
     * prefilled in chunks, with other work between them. May be NULL. */
    int (*extend)(td_target *t, int32_t seq, const int32_t *tokens, size_t n, td_err *err);
    void (*release)(td_target *t, int32_t seq);
    void (*destroy)(td_target *t);
    /* Prefix reuse: how many leading tokens of tokens[0..n) the closed
     * sequence seq still holds in its cache from its last use (at most
     * n - 1); *held (may be NULL) gets how many it holds in all. An open
     * with p->reuse_prefix keeps them and computes only the rest. May be
     * NULL (no reuse). */
    int32_t (*reusable)(const td_target *t, int32_t seq, const int32_t *tokens, size_t n, int32_t *held);
} td_target_ops;

struct td_target {
    const td_target_ops *ops;
};

/* The in-process target over a context and cache (sequence ids are the
 * cache's). ctx and kv stay the caller's; max rows per pass are ctx's. */
td_target *td_spec_target_local_create(const td_model *m, td_ctx *ctx, td_kv *kv, td_err *err);
void td_target_destroy(td_target *t); /* accepts NULL */
/* Sequences open now, and cache tokens they have reserved (local target). */
int32_t td_spec_target_local_open_seqs(const td_target *t);
/* A check aid: on a CPU context, verify passes then ask for what they ask
 * of a GPU (seeded picks from summaries, observations, logprobs from
 * scores: td_model_forward_out), worked out from the logits on the host, so
 * that the path a GPU takes is tested where there is none. Off by default
 * (a CPU has its logits at hand); results are the same either way. */
void td_spec_target_local_device_style(td_target *t, bool on);

/* ---- the speculative generation loop (spec_session.c, spec_run.c) ---- */

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

/* Called once per produced token, in order, before its text is emitted;
 * nr is the target's result at the node that produced it (logprobs when
 * asked). Return non-zero to stop the request (TD_STOP_CALLER). */
typedef int (*td_spec_token_fn)(void *user, int32_t token, const td_node_result *nr);

/* One generation request. */
typedef struct td_spec_request {
    const int32_t *prompt;
    size_t n_prompt;
    td_gen_params gen;       /* sampling, max tokens, stop strings */
    td_gen_emit_fn emit;     /* streamed text, may be NULL */
    td_spec_token_fn on_token; /* produced tokens, may be NULL */
    void *user;
    int32_t *out_tokens;     /* room for gen.max_tokens ids, may be NULL */
    int32_t n_logprobs;      /* on_token receives logprobs: -1 none, else alternatives (0..20) */
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

/* The same loop step by step, over any target: requests join (add) and
 * leave (finish, cancel) a running batch; each step verifies every active
 * request's [pending + draft tree] in one target call. Sequence ids are
 * 0..max_seqs-1, the same for the target and the drafters. The planner's
 * learned acceptance and row cost persist for the session's life. */
typedef struct td_spec_session td_spec_session;
/* max_rows: rows one target pass may hold; max_len: the longest sequence. */
td_spec_session *td_spec_session_create(const td_tok *tok, int32_t n_vocab, td_target *target,
                                        td_drafter *const *drafters, int32_t n_drafters,
                                        const td_spec_params *sp, int32_t max_seqs, int32_t max_rows,
                                        int32_t max_len, td_err *err);
void td_spec_session_destroy(td_spec_session *s); /* releases open sequences; accepts NULL */
/* Validates req and opens it on seq (prefill through the target). req must
 * stay alive until the request finishes or is cancelled. */
int td_spec_session_add(td_spec_session *s, int32_t seq, td_spec_request *req, td_err *err);
/* One pass for every active request. Returns the number still active (>= 0)
 * or a negative TD_E_*; a finished request's stats are final and its
 * sequence is released. */
int td_spec_session_step(td_spec_session *s, td_err *err);
/* Ends a request now (stats as they are, stop = TD_STOP_CALLER). */
void td_spec_session_cancel(td_spec_session *s, int32_t seq);
bool td_spec_session_active(const td_spec_session *s, int32_t seq);

/* What sessions learn (the planner's acceptance per drafter, class and
 * depth, the cost of a row, the drafters' recent scores), kept across
 * sessions: a service running one session per request attaches each to the
 * same store, so request n starts where request n-1 left off. Statistics
 * are per drafter position, so the store keeps one entry per drafter set
 * (`kind`, e.g. "lookup,recycle,ngram"; up to 32 kinds, then the oldest
 * goes). Thread-safe; a session reads its entry when attached and writes
 * it back when destroyed (the last to finish wins). Only speed depends on
 * it. */
typedef struct td_spec_learned td_spec_learned;
td_spec_learned *td_spec_learned_create(td_err *err);
void td_spec_learned_destroy(td_spec_learned *l); /* accepts NULL */
void td_spec_session_attach(td_spec_session *s, td_spec_learned *l, const char *kind);
int32_t td_spec_session_n_active(const td_spec_session *s);

#endif
