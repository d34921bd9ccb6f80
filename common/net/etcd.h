/* etcd.h — an etcd v3 client over gRPC: key-value calls, leases kept alive
 * in the background, a registration that survives etcd going away, and a
 * prefix watch that survives reconnects, compaction and a restored (older)
 * etcd. Messages are etcd's own (proto/etcd/rpc.proto, same field numbers).
 *
 * Membership rule (ARCHITECTURE.md §2): a process whose lease is lost
 * registers again with a new lease; it never exits because etcd was away.
 *
 * Threads: a td_etcd may be used from any thread; registrations and watches
 * each run one background thread; watch callbacks run on that thread.
 */
#ifndef TD_ETCD_H
#define TD_ETCD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/util.h"

typedef struct td_etcd td_etcd;

typedef struct td_etcd_opts {
    int32_t call_timeout_ms;      /* per call (0 = 5000) */
    /* TLS (all NULL = plaintext): PEM file paths. */
    const char *ca_file, *cert_file, *key_file;
    /* etcd auth (NULL = none): the token is fetched with Authenticate and
     * fetched again when etcd says it is invalid or expired. */
    const char *user, *password;
    /* reconnect backoff: starts at min, doubles to max, with +-20% jitter
     * (0 = 200 ms and 5000 ms) */
    int32_t backoff_min_ms, backoff_max_ms;
} td_etcd_opts;

/* endpoints: "127.0.0.1:2379" or "http://127.0.0.1:2379", comma separated
 * (the client uses the first that answers and moves on when one fails).
 * Does not contact etcd yet. NULL on bad arguments or out of memory. */
td_etcd *td_etcd_open(const char *endpoints, const td_etcd_opts *opts, td_err *err);
/* Stops (and frees) the registrations and watches still open on e first —
 * their handles are gone afterwards — then the handle. Accepts NULL. */
void td_etcd_close(td_etcd *e);

/* Key-value calls: 0, or a negative TD_E_* with err naming the gRPC status
 * (TD_E_IO when etcd cannot be reached). */
typedef struct td_etcd_kv {
    char *key;            /* NUL-terminated copies */
    char *value;
    size_t value_len;
    int64_t create_revision, mod_revision, lease;
} td_etcd_kv;

typedef struct td_etcd_list {
    td_etcd_kv *kvs;
    size_t n;
    int64_t revision;     /* the store's revision the list was read at */
} td_etcd_list;
void td_etcd_list_free(td_etcd_list *l);

int td_etcd_put(td_etcd *e, const char *key, const char *value, size_t len, int64_t lease, td_err *err);
/* Every key starting with prefix. */
int td_etcd_get_prefix(td_etcd *e, const char *prefix, td_etcd_list *out, td_err *err);
int td_etcd_delete(td_etcd *e, const char *key, td_err *err);
/* Compare-and-set: writes value only if the key's mod_revision equals
 * expect_mod_revision (0 = the key must not exist). *swapped tells. */
int td_etcd_cas(td_etcd *e, const char *key, int64_t expect_mod_revision, const char *value, size_t len,
                int64_t lease, bool *swapped, td_err *err);

int td_etcd_lease_grant(td_etcd *e, int64_t ttl_sec, int64_t *lease, td_err *err);
int td_etcd_lease_revoke(td_etcd *e, int64_t lease, td_err *err);
/* One keep-alive round trip; *ttl_left 0 means the lease is gone. */
int td_etcd_lease_keepalive_once(td_etcd *e, int64_t lease, int64_t *ttl_left, td_err *err);

/* ---- registration: a key kept alive under a lease ----
 * Grants a lease of ttl_sec, puts key=value under it and keeps it alive
 * (every ttl/3). When the lease is lost (etcd away longer than the TTL,
 * etcd restored or wiped) it grants a new one and puts the value again, with
 * backoff while etcd is unreachable. td_etcd_register returns at once; the
 * first registration happens in the background (see td_etcd_reg_state). */
typedef struct td_etcd_reg td_etcd_reg;
td_etcd_reg *td_etcd_register(td_etcd *e, const char *key, const char *value, size_t len, int64_t ttl_sec,
                              td_err *err);
/* Replaces the value (load reports); the registration's thread writes it at
 * once when registered (asynchronously: this call does not wait for etcd),
 * else with the next registration. 0, TD_E_ARG or TD_E_NOMEM. */
int td_etcd_reg_update(td_etcd_reg *r, const char *value, size_t len);
/* Whether the key is currently registered (last put/keep-alive succeeded and
 * the lease was alive), and how many times it registered with a new lease:
 * 0 before the first registration, 1 after it, +1 each time it registered
 * anew. */
bool td_etcd_reg_alive(const td_etcd_reg *r);
int32_t td_etcd_reg_generation(const td_etcd_reg *r);
/* Stops keeping alive, revokes the lease (the key disappears at once; when
 * etcd cannot be reached the revoke gives up after call_timeout_ms and the
 * lease runs out by itself). */
void td_etcd_unregister(td_etcd_reg *r); /* accepts NULL */

/* ---- watch: follow every key under a prefix ----
 * The callback first sees a TD_ETCD_RESET followed by one PUT per existing
 * key (a full list), then changes as they happen. After a reconnect it
 * resumes from the last revision seen; when that revision was compacted
 * away, or the server's revision went backwards (etcd restored or wiped),
 * it lists everything again (RESET + PUTs). So a consumer that clears its
 * table on RESET always mirrors etcd. RESET comes with key and value NULL;
 * PUT and DELETE with NUL-terminated copies (value NULL for DELETE), valid
 * only during the call. */
typedef enum td_etcd_event_kind { TD_ETCD_RESET = 0, TD_ETCD_PUT = 1, TD_ETCD_DELETE = 2 } td_etcd_event_kind;
typedef void (*td_etcd_watch_fn)(void *user, td_etcd_event_kind kind, const char *key, const char *value,
                                 size_t value_len);
typedef struct td_etcd_watch td_etcd_watch;
td_etcd_watch *td_etcd_watch_prefix(td_etcd *e, const char *prefix, td_etcd_watch_fn fn, void *user, td_err *err);
/* Whether the watch is connected and current. */
bool td_etcd_watch_alive(const td_etcd_watch *w);
void td_etcd_watch_stop(td_etcd_watch *w); /* accepts NULL */

/* ---- rendezvous: a group's bootstrap bytes (an ncclUniqueId) ----
 * Where no MPI launcher exists (Kubernetes), the ranks of a tensor-parallel
 * group meet at /tandem/<cluster>/groups/<group>/nccl-id. Rank 0 publishes
 * opaque bytes there; every other rank waits for them. It lives here, not in
 * common/comm, because libtandem (comm) does not link gRPC: the worker takes
 * the bytes from here and hands them to td_comm_open_nccl (TD_COMM_NCCL_BOOT_ID).
 *
 * The value is text: "tandem-rdv/1 <generation> <base64 of the bytes>".
 * The generation names one start of the group (e.g. the StatefulSet's
 * controller-revision hash or a rollout counter; the same on every rank), so
 * a key left by an earlier start is told from the current one:
 *   publish — creates the key by compare-and-set (create only if absent)
 *     under a lease of ttl_sec, so a dead group's id disappears by itself. A
 *     key of ANOTHER generation (or one that does not parse) is stale and is
 *     replaced by compare-and-set on its mod revision. A key of the SAME
 *     generation means another rank 0 of this start is (or just was) alive:
 *     publish waits for its lease to run out, up to timeout_ms, then fails
 *     naming the key — it never overwrites a live peer's id.
 *   wait — polls (every poll_ms) until the key holds this generation, then
 *     decodes it; a key of another generation is ignored (stale), one of this
 *     generation that is not valid base64 or not `len` bytes is an error
 *     (TD_E_FORMAT) at once, and nothing by timeout_ms is TD_E_IO naming the
 *     key and what was found there.
 * The lease is not kept alive: rank 0 revokes it (td_etcd_lease_revoke) once
 * the group has formed (ncclCommInitRank returned), and ttl_sec must cover
 * the time the other ranks take to start. */
typedef struct td_etcd_rdv_opts {
    const char *cluster, *group; /* key path parts: 1-128 chars, no '/' */
    const char *generation;      /* 1-64 of [A-Za-z0-9._-]; NULL = "0" */
    int64_t ttl_sec;             /* publish's lease (0 = 60) */
    int32_t timeout_ms;          /* how long to wait (0 = 120000) */
    int32_t poll_ms;             /* between reads (0 = 100) */
} td_etcd_rdv_opts;

#define TD_ETCD_RDV_MAX_BYTES 4096

/* Rank 0: publishes bytes[0..len) (1 <= len <= TD_ETCD_RDV_MAX_BYTES); *lease
 * receives the lease the key lives under. 0, or TD_E_ARG, TD_E_NOMEM, TD_E_IO
 * (etcd unreachable, or a live key of this generation until the timeout). */
int td_etcd_rdv_publish(td_etcd *e, const td_etcd_rdv_opts *o, const void *bytes, size_t len, int64_t *lease,
                        td_err *err);
/* Ranks 1..N-1: waits for this generation's bytes, exactly len of them, into
 * out. 0, or TD_E_ARG, TD_E_NOMEM, TD_E_FORMAT, TD_E_IO (timeout, etcd). */
int td_etcd_rdv_wait(td_etcd *e, const td_etcd_rdv_opts *o, void *out, size_t len, td_err *err);

#endif
