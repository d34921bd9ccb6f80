/* etcd_internal.h — what etcd.c, etcd_reg.c, etcd_watch.c and etcd_wire.c
 * share: the td_etcd handle, the private gRPC plumbing (unary calls and the
 * bidirectional streams etcd needs) and the key-value calls in a form that a
 * background thread can interrupt with its stop flag. Not a public header.
 *
 * Promise of the wire layer: every call and stream is bounded — by a
 * deadline, or by a stop flag that is looked at at least every 100 ms — so a
 * background thread always notices it was asked to stop. */
#ifndef TD_ETCD_INTERNAL_H
#define TD_ETCD_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>

#include <grpc/grpc.h>
#include <protobuf-c/protobuf-c.h>

#include "etcd/rpc.pb-c.h"
#include "net/etcd.h"

/* How long a blocked wait may go without looking at a stop flag. */
#define TD_ETCD_POLL_MS 100

struct td_etcd_reg;
struct td_etcd_watch;

struct td_etcd {
    char **eps; /* "host:port", without any "http://" */
    size_t n_eps;
    int32_t call_timeout_ms, backoff_min_ms, backoff_max_ms;
    char *user, *password;              /* NULL: no auth */
    char *ca_pem, *cert_pem, *key_pem;  /* NULL: plaintext (ca_pem) / no client cert */

    pthread_mutex_t mu;  /* guards everything below */
    /* One channel per endpoint, made on first use and kept until close: gRPC
     * channels cannot be reference counted from C, so a channel another
     * thread may be using is never destroyed early. */
    grpc_channel **chans;
    size_t cur;          /* the endpoint calls go to first */
    char *token;         /* auth token, NULL until fetched */
    struct td_etcd_reg *regs;      /* live registrations, to stop on close */
    struct td_etcd_watch *watches; /* live watches, likewise */
};

/* ---- wire: unary calls ----
 * Calls method with req and unpacks the answer into *resp (free it with
 * protobuf_c_message_free_unpacked). Tries each endpoint in turn while the
 * failure is a connection failure and time is left (the whole call gets
 * call_timeout_ms); fetches the auth token first when needed and again once
 * when etcd says it is invalid. stop (may be NULL) cancels the call.
 * Returns 0, or TD_E_IO (etcd unreachable, or stopped), TD_E_ARG (etcd
 * refused the request), TD_E_FORMAT (garbled answer), TD_E_NOMEM; *code
 * (may be NULL) gets the gRPC status code (-1 when none came). */
int td_etcd_wire_unary(td_etcd *e, const atomic_bool *stop, const char *method, const ProtobufCMessage *req,
                       const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **resp, int *code,
                       td_err *err);

/* ---- wire: bidirectional streams (Watch, LeaseKeepAlive) ---- */
typedef struct td_etcd_wire_stream td_etcd_wire_stream;
/* Opens a stream to the current endpoint (fetching the token first when auth
 * is on). NULL on failure. */
td_etcd_wire_stream *td_etcd_wire_stream_open(td_etcd *e, const char *method, td_err *err);
/* Sends one message; waits at most timeout_ms (and stops early on *stop). */
int td_etcd_wire_stream_send(td_etcd_wire_stream *s, const ProtobufCMessage *msg, const atomic_bool *stop,
                             int32_t timeout_ms, td_err *err);
/* Receives one message: 0 and *msg set; 1 when nothing came within
 * timeout_ms (the receive stays posted; call again); negative when the
 * stream ended or failed (*code: its gRPC status) or *stop was set. */
int td_etcd_wire_stream_recv(td_etcd_wire_stream *s, const ProtobufCMessageDescriptor *desc,
                             ProtobufCMessage **msg, const atomic_bool *stop, int32_t timeout_ms, int *code,
                             td_err *err);
/* Cancels the stream and frees it; moves on to the next endpoint if
 * failed is set. Accepts NULL. */
void td_etcd_wire_stream_close(td_etcd_wire_stream *s, bool failed);
/* After UNAUTHENTICATED on a stream: drops the token so the next open
 * fetches a new one. */
void td_etcd_wire_forget_token(td_etcd *e);

/* ---- key-value calls with a stop flag (the public ones pass NULL) ---- */
int td_etcd_put_x(td_etcd *e, const atomic_bool *stop, const char *key, const char *value, size_t len,
                  int64_t lease, int *code, td_err *err);
int td_etcd_get_prefix_x(td_etcd *e, const atomic_bool *stop, const char *prefix, td_etcd_list *out,
                         td_err *err);
int td_etcd_lease_grant_x(td_etcd *e, const atomic_bool *stop, int64_t ttl_sec, int64_t *lease, td_err *err);
int td_etcd_lease_revoke_x(td_etcd *e, const atomic_bool *stop, int64_t lease, td_err *err);
int td_etcd_lease_keepalive_x(td_etcd *e, const atomic_bool *stop, int64_t lease, int64_t *ttl_left,
                              td_err *err);
/* The end of a prefix's range: the prefix with its last byte below 0xff
 * incremented and the rest cut off; "\0" (all keys) when every byte is 0xff
 * or the prefix is empty. Returns a malloc'd buffer of *len bytes. */
uint8_t *td_etcd_prefix_end(const char *prefix, size_t *len);

/* ---- background threads ---- */
/* Next backoff delay in ms: *cur doubles from min to max, +-20% jitter
 * drawn from *rng (a per-thread xorshift state). */
int32_t td_etcd_backoff_next(const td_etcd *e, int32_t *cur, uint64_t *rng);
/* Sleeps ms on cv/mu (mu held by the caller), waking early when *stop or
 * (when non-NULL) *wake is set. */
void td_etcd_wait(pthread_cond_t *cv, pthread_mutex_t *mu, int32_t ms, const atomic_bool *stop,
                  const atomic_bool *wake);
/* Called by td_etcd_close: stop and free what is still open. */
void td_etcd_reg_stop_all(td_etcd *e);
void td_etcd_watch_stop_all(td_etcd *e);

#endif
