/* worker.h — inside tandem-worker: the engine that owns the model and its
 * sequences (worker_engine.c, worker_score.c), the gRPC handlers that
 * translate tandem.v1.Worker messages to it (worker_rpc.c), a tensor-parallel
 * group's forming (worker_group.c), and membership (worker_main.c registers
 * in etcd).
 *
 * Concurrency: gRPC handlers run one thread per call. Everything that runs
 * the model takes the engine's pass token in turn; concurrent Verify calls
 * are combined: whoever finds no pass running takes every waiting
 * verification into one forward pass (batch invariance makes that safe:
 * a row's logits do not depend on its pass-mates), so throughput grows with
 * concurrent streams.
 */
#ifndef TD_WORKER_H
#define TD_WORKER_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "model/model.h"
#include "net/etcd.h"
#include "spec/spec.h"
#include "tok/tok.h"
#include "util/util.h"

/* Worker-level outcomes besides TD_E_* (mapped to gRPC codes by worker_rpc.c). */
enum {
    TD_WORKER_E_NOT_FOUND = -20,  /* no such sequence (released, timed out, or never opened) */
    TD_WORKER_E_FULL = -21,       /* admission refused: sequences or cache tokens exhausted */
    TD_WORKER_E_ROLE = -22,       /* this role does not serve that call */
    TD_WORKER_E_EXISTS = -23,     /* the sequence key is already open */
};

typedef enum td_worker_role { TD_WORKER_VERIFIER = 0, TD_WORKER_DRAFTER = 1 } td_worker_role;

typedef struct td_worker_config {
    td_worker_role role;
    const char *model_path;
    const char *listen;          /* gRPC address, e.g. 127.0.0.1:7100 */
    const char *health_listen;   /* plaintext health-only port, NULL = none */
    const char *advertise;       /* address others dial (default: listen) */
    const char *etcd;            /* endpoints; NULL = no registration (tests, single box) */
    const char *cluster;
    const char *id;              /* worker id (default: role-host-port) */
    int32_t threads;
    bool pin_threads;            /* td_pool_pin the compute threads */
    int32_t max_seqs;            /* open sequences at most */
    int64_t max_tokens;          /* cache tokens reserved by open sequences at most */
    int32_t ctx;                 /* longest sequence */
    int32_t max_rows;            /* rows of one forward pass */
    int32_t prefill_chunk;       /* prompt tokens per pass; verifications run between chunks */
    int32_t lease_ttl;           /* seconds */
    int32_t idle_timeout;        /* seconds a sequence may sit unused before it is reclaimed */
    int32_t max_calls;
    td_numerics numerics;
    /* Where the passes run: the CPU (default) or a CUDA GPU, which computes
     * the reference order only (td_worker_engine_create refuses another). */
    td_device device;
    bool batching;               /* combine concurrent verifications into one pass (default on) */
    bool prefix_cache;           /* a new sequence reuses what a closed one left in the cache (default on) */
    /* A tensor-parallel group (mpirun -np N ... --tp N): the group's
     * communicator (borrowed), or NULL for a worker of its own. Rank 0
     * serves and leads; the others follow (td_worker_engine_follow). */
    td_comm *comm;
} td_worker_config;

/* How a verifier's tensor-parallel group forms (worker_group.c). */
typedef struct td_worker_group_opts {
    int size;            /* ranks (--tp), >= 2 */
    const char *comm;    /* under a launcher: "mpi" or "nccl" */
    /* -1: the launcher's rank. 0..size-1 (--tp-rank): no launcher; NCCL
     * ranks meet through etcd (the fields below), e.g. a StatefulSet's pods */
    int rank;
    const char *etcd, *cluster;   /* endpoints; /tandem/<cluster>/groups/<group>/ */
    const td_etcd_opts *etcd_opts;
    const char *group;            /* the group's name there */
    const char *generation;       /* names this start of the group (NULL = "0") */
    int32_t join_timeout_sec;     /* how long ranks wait for each other, in etcd and in NCCL's join
                                   * (past it the process exits: that join cannot be cancelled) */
    int device;                   /* NCCL's CUDA device; -1 as in td_comm_nccl_opts */
} td_worker_group_opts;

/* The group's communicator (the caller's to close), or NULL with err: a
 * missing launcher, a launcher's world of another size, the rendezvous's
 * or NCCL's failure. Under a launcher a rank waits here until the others
 * come; through etcd, at most join_timeout_sec in NCCL's join, after which
 * the process exits 1 (NCCL's join has no timeout of its own). */
td_comm *td_worker_group_open(const td_worker_group_opts *o, td_err *err);

typedef struct td_worker_engine td_worker_engine;

/* Loads the model, creates the caches. NULL with err on failure. */
td_worker_engine *td_worker_engine_create(const td_worker_config *cfg, td_err *err);
void td_worker_engine_destroy(td_worker_engine *e);
/* A follower rank (1..N-1) of a group: runs rank 0's steps on this rank's
 * shard until rank 0 ends the group (TD_OK) or the group fails. */
int td_worker_engine_follow(td_worker_engine *e, td_err *err);

typedef struct td_worker_info {
    char model_id[65];       /* sha256 hex */
    char model_name[128];
    char fingerprint[160];
    uint64_t vocab_hash;
    int32_t vocab_size, ctx;
    td_worker_role role;
} td_worker_info;
const td_worker_info *td_worker_engine_info(const td_worker_engine *e);
/* A GGUF holding only the tokenizer's metadata (owned by the engine). */
const void *td_worker_engine_tokenizer(const td_worker_engine *e, size_t *size);
const td_tok *td_worker_engine_tok(const td_worker_engine *e);

int td_worker_prefill(td_worker_engine *e, const char *req, uint64_t key, const td_target_seq_params *p,
                      const int32_t *tokens, size_t n, int32_t *cached, int32_t *reused, td_err *err);
/* commit_path (may be NULL: nothing to commit) is the previous step's
 * Commit, applied in the pass that verifies tree. */
int td_worker_verify(td_worker_engine *e, const char *req, uint64_t key, const int32_t *commit_path, int32_t n_commit,
                     const td_draft *tree, td_node_result *nodes, int32_t *path, int32_t *n_path, td_pass_info *pass,
                     td_err *err);
int td_worker_commit(td_worker_engine *e, const char *req, uint64_t key, const int32_t *path, int32_t n_path,
                     int32_t *cached, td_err *err);
/* Draft from the drafter model (drafter role) or layer-skip (verifier). */
int td_worker_draft(td_worker_engine *e, const char *req, uint64_t key, const int32_t *history, size_t n,
                    int32_t max_nodes, const td_sample_params *sp, td_draft *out, td_err *err);
bool td_worker_release(td_worker_engine *e, const char *req, uint64_t key);
/* Frees sequences unused for idle_timeout seconds (a coordinator that died
 * or lost touch); the main loop calls it every second. */
void td_worker_engine_reclaim(td_worker_engine *e);

/* Scoring one item: logprob of each continuation token given what precedes
 * it; greedy[i]: it is the most likely token; top (n_cont x top_k) ids and
 * logprobs of the best alternatives. */
typedef struct td_worker_score_out {
    float *logprob;      /* n_cont */
    bool *greedy;        /* n_cont */
    int32_t *top_id;     /* n_cont * top_k */
    float *top_logprob;  /* n_cont * top_k */
} td_worker_score_out;
int td_worker_score(td_worker_engine *e, const char *req, const int32_t *prompt, size_t n_prompt,
                    const int32_t *cont, size_t n_cont, int32_t top_k, td_worker_score_out *out, td_err *err);

/* For worker_score.c: the pass token, and the cache's scratch sequence that
 * scoring runs in (one scoring job at a time holds score_lock). */
void td_worker_engine_pass_take(td_worker_engine *e);
void td_worker_engine_pass_give(td_worker_engine *e);
typedef struct td_worker_scratch {
    td_ctx *ctx;
    td_kv *kv;
    int32_t seq, max_rows, n_vocab, ctx_len;
    float *logits;
    td_row *rows;
    td_sample_score *scores; /* (max_rows) */
    int32_t *targets;        /* (max_rows) */
    pthread_mutex_t *score_lock;
} td_worker_scratch;
void td_worker_engine_scratch(td_worker_engine *e, td_worker_scratch *out);

typedef struct td_worker_stats {
    int32_t sequences, max_sequences;
    int64_t reserved_tokens, max_tokens;
    int64_t passes, rows;
    double mean_step_sec;
} td_worker_stats;
void td_worker_engine_stats(td_worker_engine *e, td_worker_stats *out);

/* The JSON value registered in etcd (role, model, address, capacity, load,
 * fingerprint); malloc'ed. */
char *td_worker_registration_json(td_worker_engine *e, const td_worker_config *cfg, const char *address);

/* worker_metrics.c: Prometheus /metrics on addr; reg may be NULL (no etcd).
 * Stop before the engine and the registration are destroyed. */
typedef struct td_worker_metrics td_worker_metrics;
typedef struct td_etcd_reg td_etcd_reg;
td_worker_metrics *td_worker_metrics_start(const char *addr, td_worker_engine *e, td_etcd_reg *reg, td_err *err);
void td_worker_metrics_stop(td_worker_metrics *m); /* accepts NULL */

/* worker_rpc.c: registers the tandem.v1.Worker methods on a server. */
typedef struct td_net_server td_net_server;
int td_worker_rpc_register(td_net_server *srv, td_worker_engine *e, td_err *err);

#endif
