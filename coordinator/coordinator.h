/* coordinator.h — inside tandem-coordinator: the live worker set
 * (coord_members.c, fed by an etcd watch), tokenizers fetched from workers
 * (coord_tokenizer.c), the remote target that verifies on a worker and moves
 * to another when one is lost (coord_target.c), drafters on workers
 * (coord_drafter.c), and the public API's handlers (coord_generate.c,
 * coord_score.c, coord_api.c).
 *
 * Data flows one way: a request enters a handler, which picks workers here
 * and calls them; nothing below a handler calls back up.
 */
#ifndef TD_COORDINATOR_H
#define TD_COORDINATOR_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "gguf/gguf.h"
#include "net/etcd.h"
#include "net/net.h"
#include "spec/spec.h"
#include "tok/tok.h"
#include "util/util.h"

/* A remote failure as a td_err code: -(100 + gRPC status). */
#define TD_COORD_E_GRPC(code) (-100 - (code))
/* The gRPC status for any td_err code (remote ones keep theirs). */
int td_coord_grpc_code(int rc);

/* ---- the worker set ---- */

typedef struct td_coord_worker {
    char id[128];
    char address[256];
    char role[16];             /* verifier | drafter */
    char model_id[65];
    char model_name[128];
    char fingerprint[160];
    int32_t load, capacity, ctx;
    /* owned by the member table: */
    td_net_channel *ch;
    int32_t refs;              /* picks not yet put back */
    int32_t inflight;          /* requests this coordinator runs on it */
    bool gone;                 /* left etcd; freed when refs drop to 0 */
    double avoid_until;        /* after a failure: not picked before this time */
} td_coord_worker;

typedef struct td_coord_members td_coord_members;
/* worker_tls: TLS (with a certificate: mutual TLS) on every channel to a
 * worker; NULL = plaintext. Its files are checked now; the struct is copied
 * but its strings must outlive the table. */
td_coord_members *td_coord_members_create(int32_t keepalive_ms, const td_net_tls *worker_tls, td_err *err);
void td_coord_members_destroy(td_coord_members *m);
/* etcd watch callback (etcd.h's td_etcd_watch_fn): key .../workers/<id>. */
void td_coord_members_on_event(void *user, td_etcd_event_kind kind, const char *key, const char *value, size_t len);
/* A worker given on the command line (no etcd). */
int td_coord_members_add_static(td_coord_members *m, const char *role, const char *address, td_err *err);
/* The least-loaded live worker of a role whose fingerprint matches (NULL =
 * any) and whose id differs from avoid (NULL = none); NULL when none.
 * Holds a reference: give it back with put (failed = avoid it a while). */
td_coord_worker *td_coord_members_pick(td_coord_members *m, const char *role, const char *fingerprint,
                                       const char *avoid);
void td_coord_members_put(td_coord_members *m, td_coord_worker *w, bool failed);
/* pick, but the worker with id prefer (may be NULL) wins while it has at
 * most slack more requests in flight than the least-loaded one. */
td_coord_worker *td_coord_members_pick_prefer(td_coord_members *m, const char *role, const char *fingerprint,
                                              const char *avoid, const char *prefer, int32_t slack);

/* ---- prefix affinity: where a token prefix is cached (coord_affinity.c) ---- */

typedef struct td_coord_affinity td_coord_affinity;
td_coord_affinity *td_coord_affinity_create(td_err *err);
void td_coord_affinity_destroy(td_coord_affinity *a);
/* The worker that last held the longest remembered prefix of tokens (its id
 * into worker, "" when none); returns that prefix's length (0: none). */
int32_t td_coord_affinity_lookup(td_coord_affinity *a, const int32_t *tokens, size_t n, char worker[128]);
/* Remembers that worker holds tokens[0..n) in its cache. */
void td_coord_affinity_record(td_coord_affinity *a, const int32_t *tokens, size_t n, const char *worker);
/* Live workers of a role (and fingerprint, NULL = any). */
int32_t td_coord_members_count(td_coord_members *m, const char *role, const char *fingerprint);
/* Copies of up to max live workers (for ListModels and Score's spread). */
int32_t td_coord_members_snapshot(td_coord_members *m, td_coord_worker *out, int32_t max);

/* ---- tokenizers, one per model, fetched from a worker ---- */

typedef struct td_coord_model {
    char model_id[65];
    char model_name[128];
    char fingerprint[160];
    int32_t vocab_size, ctx;
    uint64_t vocab_hash;
    void *gguf_bytes;
    td_gguf *gguf;
    td_tok *tok;
} td_coord_model;

typedef struct td_coord_models td_coord_models;
td_coord_models *td_coord_models_create(td_err *err);
void td_coord_models_destroy(td_coord_models *c);
/* The model the worker serves (Describe on first use, then cached; the
 * result lives as long as the cache). */
const td_coord_model *td_coord_models_get(td_coord_models *c, td_coord_worker *w, int64_t deadline_ms, td_err *err);

/* ---- the coordinator as the handlers see it ---- */

typedef struct td_coord_vllm td_coord_vllm; /* the vLLM engine API's state (coord_vllm.c) */

typedef struct td_coord {
    td_coord_members *members;
    td_coord_models *models;
    int32_t max_tokens_default;
    int32_t step_timeout_min_ms;   /* per-step deadline floor; scaled up from measured step time */
    int32_t write_timeout_ms;      /* a client that does not read for this long is cancelled */
    bool overlap;                  /* remote drafters draft window i+1 while window i is verified */
    td_spec_learned *learned;      /* the planner's statistics, carried from request to request */
    _Atomic uint64_t next_seq;     /* sequence keys on workers */
    td_coord_vllm *vllm;           /* NULL when that API is not served */
    td_coord_affinity *affinity;   /* NULL: the least-loaded verifier, always */
} td_coord;

/* A remote verifier (td_target) for one request: opens on the least-loaded
 * verifier, and when that worker fails (unreachable, hung past the step
 * deadline, lost the sequence) re-opens the sequence on another verifier of
 * the same fingerprint from the tokens already accepted and repeats the
 * step. fingerprint may be NULL (any; then fixed at the first open). */
td_target *td_coord_target_create(td_coord *c, const char *request_id, const char *fingerprint,
                                  int64_t deadline_at_ms, td_err *err);
/* The worker the target is on now ("" before open); how often it moved. */
const char *td_coord_target_worker(const td_target *t);
int32_t td_coord_target_moves(const td_target *t);
/* Prompt tokens its verifier already held in its prefix cache (last open). */
int32_t td_coord_target_reused(const td_target *t);

/* A drafter on workers: the draft model of a drafter worker (role
 * "drafter"), or layer skipping on a verifier (role "verifier"). A worker
 * that fails only costs drafts: propose then returns none. */
td_drafter *td_coord_drafter_create(td_coord *c, const char *role, const char *request_id, td_err *err);

/* Resolved sampling parameters as tandem.v1.Sampling (coord_target.c). */
struct Tandem__V1__Sampling;
void td_coord_sampling_to(const td_sample_params *sp, struct Tandem__V1__Sampling *m);

/* Milliseconds since an arbitrary start (monotonic). */
int64_t td_coord_now_ms(void);

/* Prometheus /metrics on addr (coord_metrics.c); watch may be NULL. Stop
 * before the members table and the watch are destroyed. */
typedef struct td_coord_metrics td_coord_metrics;
td_coord_metrics *td_coord_metrics_start(const char *addr, td_coord *c, td_etcd_watch *watch, td_err *err);
void td_coord_metrics_stop(td_coord_metrics *m); /* accepts NULL */

/* ---- one generation request, whatever API it came in by (coord_run.c) ---- */

/* The model of the least-loaded verifier (Describe on first use), refused
 * with NOT_FOUND when name is given and is neither its id nor its name;
 * fingerprint (may be NULL) receives that verifier's (the request is then
 * served and moved among verifiers of that fingerprint). NULL with *err set
 * on failure (a worker whose Describe failed is avoided a while). */
const td_coord_model *td_coord_model_for(td_coord *c, const char *name, int64_t left_ms, char fingerprint[160],
                                         td_err *err);

#define TD_COORD_GONE 1 /* td_coord_run: the client went away (the sequence is released) */

typedef struct td_coord_job {
    const char *request_id;
    td_spec_request rq;        /* prompt (incl. resumed tokens), gen, emit, on_token, user, n_logprobs;
                                  stats and spec filled */
    td_spec_params spec;
    const char *drafters;      /* "lookup,ngram", "none"...; NULL or "" = "auto" */
    const char *fingerprint;   /* verifiers it may run and move on (td_coord_model_for's); NULL = the model's */
    int64_t deadline_at_ms;    /* INT64_MAX = none */
    /* the API layer's callbacks, all optional, all given user: */
    int (*started)(void *user);               /* after prefill; non-zero = client gone */
    bool (*cancelled)(void *user);            /* polled before each step */
    int (*stepped)(void *user, td_err *err);  /* after each step: > 0 client gone, < 0 error (err set) */
    void *user;
    /* filled: */
    char verifier[128];        /* the worker it ended on */
    int32_t moves;             /* times it moved to another verifier */
    int32_t cached_tokens;     /* prompt tokens the verifier had cached (set before `started`) */
} td_coord_job;

/* Runs the job to its end: TD_OK (finished: rq.stats.stop says why),
 * TD_COORD_GONE, or an error code with *err set. */
int td_coord_run(td_coord *c, const td_coord_model *model, td_coord_job *job, td_err *err);
/* 64 random bits (/dev/urandom; the clock and pid if it cannot be read):
 * sampling seeds and request ids. */
uint64_t td_coord_random_seed(void);
/* Whether a drafter list names only known drafters (for flags). */
int td_coord_drafters_check(const char *list, td_err *err);

/* Handlers (coord_generate.c, coord_score.c, coord_api.c). */
int td_coord_api_register(td_net_server *srv, td_coord *c, td_err *err);
void td_coord_generate(td_net_call *call, const ProtobufCMessage *msg, void *user);
void td_coord_score(td_net_call *call, const ProtobufCMessage *msg, void *user);
/* vllm.grpc.engine.VllmEngine (coord_vllm.c): drafters is the speculation
 * every request of that API gets ("auto", "none", "lookup,ngram"...). */
td_coord_vllm *td_coord_vllm_create(const char *drafters, td_err *err);
void td_coord_vllm_destroy(td_coord_vllm *v);
int td_coord_vllm_register(td_net_server *srv, td_coord *c, td_err *err);
/* A request id: the caller's when given (sanitised), else a fresh one. */
void td_coord_request_id(const char *given, char out[40]);
/* Whether s[0..n) is well-formed UTF-8. */
bool td_coord_utf8_valid(const char *s, size_t n);

#endif
