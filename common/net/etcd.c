/* etcd.c — the td_etcd handle (endpoints, options, TLS material, gRPC's
 * init/shutdown reference) and the one-shot key-value and lease calls, each
 * a single etcd RPC through etcd_wire.c. Also the small helpers the
 * background threads share: prefix ends, backoff with jitter, stoppable
 * waits. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "etcd_internal.h"
#include "net/net.h"

/* ---- open / close ---- */

static char *read_file(const char *path, td_err *err) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        td_err_set(err, TD_E_IO, "etcd: cannot open %s: %s", path, strerror(errno));
        return NULL;
    }
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n + 4096 + 1 > cap) {
            size_t nc = cap ? cap * 2 : 8192;
            char *nb = realloc(buf, nc);
            if (!nb) {
                free(buf);
                fclose(f);
                td_err_set(err, TD_E_NOMEM, "etcd: out of memory reading %s", path);
                return NULL;
            }
            buf = nb;
            cap = nc;
        }
        size_t got = fread(buf + n, 1, 4096, f);
        n += got;
        if (got < 4096) break;
    }
    bool bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        td_err_set(err, TD_E_IO, "etcd: cannot read %s", path);
        return NULL;
    }
    buf[n] = 0;
    return buf;
}

static void etcd_free(td_etcd *e) {
    for (size_t i = 0; i < e->n_eps; i++) {
        if (e->chans && e->chans[i]) grpc_channel_destroy(e->chans[i]);
        free(e->eps[i]);
    }
    free(e->chans);
    free(e->eps);
    free(e->user);
    free(e->password);
    free(e->ca_pem);
    free(e->cert_pem);
    free(e->key_pem);
    free(e->token);
    free(e);
}

/* Splits "a,http://b, c" into "a", "b", "c". */
static int parse_endpoints(td_etcd *e, const char *s, td_err *err) {
    size_t n = 1;
    for (const char *p = s; *p; p++) n += *p == ',';
    e->eps = calloc(n, sizeof *e->eps);
    if (!e->eps) return td_err_set(err, TD_E_NOMEM, "etcd: out of memory");
    const char *p = s;
    for (;;) {
        const char *end = strchr(p, ',');
        if (!end) end = p + strlen(p);
        while (p < end && (*p == ' ' || *p == '\t')) p++;
        const char *q = end;
        while (q > p && (q[-1] == ' ' || q[-1] == '\t' || q[-1] == '/')) q--;
        if ((size_t)(q - p) > 7 && strncmp(p, "http://", 7) == 0) p += 7;
        else if ((size_t)(q - p) > 8 && strncmp(p, "https://", 8) == 0) p += 8;
        if (q > p) {
            e->eps[e->n_eps] = strndup(p, (size_t)(q - p));
            if (!e->eps[e->n_eps]) return td_err_set(err, TD_E_NOMEM, "etcd: out of memory");
            e->n_eps++;
        }
        if (!*end) break;
        p = end + 1;
    }
    if (e->n_eps == 0) return td_err_set(err, TD_E_ARG, "etcd: no endpoint in \"%s\"", s);
    return 0;
}

td_etcd *td_etcd_open(const char *endpoints, const td_etcd_opts *opts, td_err *err) {
    if (!endpoints || !*endpoints) {
        td_err_set(err, TD_E_ARG, "etcd: no endpoints given");
        return NULL;
    }
    td_etcd_opts o = {0};
    if (opts) o = *opts;
    if (o.call_timeout_ms < 0 || o.backoff_min_ms < 0 || o.backoff_max_ms < 0) {
        td_err_set(err, TD_E_ARG, "etcd: negative timeout or backoff");
        return NULL;
    }
    if ((o.cert_file != NULL) != (o.key_file != NULL) || ((o.cert_file || o.key_file) && !o.ca_file)) {
        td_err_set(err, TD_E_ARG, "etcd: a client certificate needs its key and a CA file");
        return NULL;
    }
    td_etcd *e = calloc(1, sizeof *e);
    if (!e) {
        td_err_set(err, TD_E_NOMEM, "etcd: out of memory");
        return NULL;
    }
    e->call_timeout_ms = o.call_timeout_ms ? o.call_timeout_ms : 5000;
    e->backoff_min_ms = o.backoff_min_ms ? o.backoff_min_ms : 200;
    e->backoff_max_ms = o.backoff_max_ms ? o.backoff_max_ms : 5000;
    if (e->backoff_max_ms < e->backoff_min_ms) e->backoff_max_ms = e->backoff_min_ms;
    if (parse_endpoints(e, endpoints, err)) goto fail;
    e->chans = calloc(e->n_eps, sizeof *e->chans);
    if (!e->chans) {
        td_err_set(err, TD_E_NOMEM, "etcd: out of memory");
        goto fail;
    }
    if (o.user && *o.user) {
        e->user = strdup(o.user);
        e->password = strdup(o.password ? o.password : "");
        if (!e->user || !e->password) {
            td_err_set(err, TD_E_NOMEM, "etcd: out of memory");
            goto fail;
        }
    }
    if (o.ca_file && !(e->ca_pem = read_file(o.ca_file, err))) goto fail;
    if (o.cert_file && !(e->cert_pem = read_file(o.cert_file, err))) goto fail;
    if (o.key_file && !(e->key_pem = read_file(o.key_file, err))) goto fail;
    if (pthread_mutex_init(&e->mu, NULL)) {
        td_err_set(err, TD_E_NOMEM, "etcd: cannot make a mutex");
        goto fail;
    }
    /* gRPC counts its users: each handle holds one reference */
    grpc_init();
    return e;
fail:
    etcd_free(e);
    return NULL;
}

void td_etcd_close(td_etcd *e) {
    if (!e) return;
    td_etcd_reg_stop_all(e);
    td_etcd_watch_stop_all(e);
    pthread_mutex_destroy(&e->mu);
    etcd_free(e);
    grpc_shutdown();
}

/* ---- helpers ---- */

uint8_t *td_etcd_prefix_end(const char *prefix, size_t *len) {
    size_t n = strlen(prefix);
    uint8_t *end = malloc(n ? n : 1);
    if (!end) return NULL;
    memcpy(end, prefix, n);
    while (n > 0) {
        if (end[n - 1] < 0xff) {
            end[n - 1]++;
            *len = n;
            return end;
        }
        n--; /* 0xff cannot be incremented: carry into the byte before */
    }
    end[0] = 0; /* "\0" as range_end: every key from key on */
    *len = 1;
    return end;
}

int32_t td_etcd_backoff_next(const td_etcd *e, int32_t *cur, uint64_t *rng) {
    int32_t base = *cur < e->backoff_min_ms ? e->backoff_min_ms : *cur;
    *cur = base > e->backoff_max_ms / 2 ? e->backoff_max_ms : base * 2;
    /* xorshift64: each thread keeps its own state */
    uint64_t x = *rng ? *rng : 0x9e3779b97f4a7c15ULL;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *rng = x;
    double jitter = 0.8 + 0.4 * (double)(x >> 11) / 9007199254740992.0;
    return (int32_t)(base * jitter);
}

void td_etcd_wait(pthread_cond_t *cv, pthread_mutex_t *mu, int32_t ms, const atomic_bool *stop,
                  const atomic_bool *wake) {
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += ms / 1000;
    until.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    while (!atomic_load(stop) && !(wake && atomic_load(wake))) {
        if (pthread_cond_timedwait(cv, mu, &until) == ETIMEDOUT) break;
    }
}

/* ---- key-value calls ---- */

#define CALL(e, stop, method, req, desc, resp, code, err)                                                     \
    td_etcd_wire_unary((e), (stop), (method), &(req).base, &(desc), (ProtobufCMessage **)(resp), (code), (err))

int td_etcd_put_x(td_etcd *e, const atomic_bool *stop, const char *key, const char *value, size_t len,
                  int64_t lease, int *code, td_err *err) {
    if (code) *code = -1;
    if (!e || !key) return td_err_set(err, TD_E_ARG, "etcd put: NULL handle or key");
    if (!value && len) return td_err_set(err, TD_E_ARG, "etcd put: NULL value of length %zu", len);
    Etcdserverpb__PutRequest req = ETCDSERVERPB__PUT_REQUEST__INIT;
    req.key.data = (uint8_t *)key;
    req.key.len = strlen(key);
    req.value.data = (uint8_t *)value;
    req.value.len = len;
    req.lease = lease;
    Etcdserverpb__PutResponse *r;
    int rc = CALL(e, stop, "/etcdserverpb.KV/Put", req, etcdserverpb__put_response__descriptor, &r, code, err);
    if (rc) return rc;
    protobuf_c_message_free_unpacked(&r->base, NULL);
    return 0;
}

int td_etcd_put(td_etcd *e, const char *key, const char *value, size_t len, int64_t lease, td_err *err) {
    return td_etcd_put_x(e, NULL, key, value, len, lease, NULL, err);
}

static int copy_kv(td_etcd_kv *dst, const Etcdserverpb__KeyValue *src) {
    dst->key = malloc(src->key.len + 1);
    dst->value = malloc(src->value.len + 1);
    if (!dst->key || !dst->value) return TD_E_NOMEM;
    if (src->key.len) memcpy(dst->key, src->key.data, src->key.len);
    dst->key[src->key.len] = 0;
    if (src->value.len) memcpy(dst->value, src->value.data, src->value.len);
    dst->value[src->value.len] = 0;
    dst->value_len = src->value.len;
    dst->create_revision = src->create_revision;
    dst->mod_revision = src->mod_revision;
    dst->lease = src->lease;
    return 0;
}

void td_etcd_list_free(td_etcd_list *l) {
    if (!l) return;
    for (size_t i = 0; i < l->n; i++) {
        free(l->kvs[i].key);
        free(l->kvs[i].value);
    }
    free(l->kvs);
    memset(l, 0, sizeof *l);
}

int td_etcd_get_prefix_x(td_etcd *e, const atomic_bool *stop, const char *prefix, td_etcd_list *out,
                         td_err *err) {
    if (out) memset(out, 0, sizeof *out);
    if (!e || !prefix || !out) return td_err_set(err, TD_E_ARG, "etcd get_prefix: NULL argument");
    size_t end_len;
    uint8_t *end = td_etcd_prefix_end(prefix, &end_len);
    if (!end) return td_err_set(err, TD_E_NOMEM, "etcd get_prefix: out of memory");
    Etcdserverpb__RangeRequest req = ETCDSERVERPB__RANGE_REQUEST__INIT;
    size_t plen = strlen(prefix);
    /* an empty prefix means every key: etcd wants key "\0" for that */
    req.key.data = plen ? (uint8_t *)prefix : (uint8_t *)"";
    req.key.len = plen ? plen : 1;
    req.range_end.data = end;
    req.range_end.len = end_len;
    Etcdserverpb__RangeResponse *r;
    int rc =
        CALL(e, stop, "/etcdserverpb.KV/Range", req, etcdserverpb__range_response__descriptor, &r, NULL, err);
    free(end);
    if (rc) return rc;
    out->revision = r->header ? r->header->revision : 0;
    if (r->n_kvs) {
        out->kvs = calloc(r->n_kvs, sizeof *out->kvs);
        if (!out->kvs) rc = TD_E_NOMEM;
        for (size_t i = 0; !rc && i < r->n_kvs; i++) {
            out->n = i + 1; /* so that a failure frees what was copied */
            rc = copy_kv(&out->kvs[i], r->kvs[i]);
        }
    }
    protobuf_c_message_free_unpacked(&r->base, NULL);
    if (rc) {
        td_etcd_list_free(out);
        return td_err_set(err, rc, "etcd get_prefix: out of memory");
    }
    return 0;
}

int td_etcd_get_prefix(td_etcd *e, const char *prefix, td_etcd_list *out, td_err *err) {
    return td_etcd_get_prefix_x(e, NULL, prefix, out, err);
}

int td_etcd_delete(td_etcd *e, const char *key, td_err *err) {
    if (!e || !key) return td_err_set(err, TD_E_ARG, "etcd delete: NULL handle or key");
    Etcdserverpb__DeleteRangeRequest req = ETCDSERVERPB__DELETE_RANGE_REQUEST__INIT;
    req.key.data = (uint8_t *)key;
    req.key.len = strlen(key);
    Etcdserverpb__DeleteRangeResponse *r;
    int rc = CALL(e, NULL, "/etcdserverpb.KV/DeleteRange", req, etcdserverpb__delete_range_response__descriptor,
                  &r, NULL, err);
    if (rc) return rc;
    protobuf_c_message_free_unpacked(&r->base, NULL);
    return 0;
}

int td_etcd_cas(td_etcd *e, const char *key, int64_t expect_mod_revision, const char *value, size_t len,
                int64_t lease, bool *swapped, td_err *err) {
    if (swapped) *swapped = false;
    if (!e || !key || !swapped) return td_err_set(err, TD_E_ARG, "etcd cas: NULL handle, key or result");
    if (!value && len) return td_err_set(err, TD_E_ARG, "etcd cas: NULL value of length %zu", len);
    if (expect_mod_revision < 0) return td_err_set(err, TD_E_ARG, "etcd cas: negative revision");
    Etcdserverpb__Compare cmp = ETCDSERVERPB__COMPARE__INIT;
    cmp.key.data = (uint8_t *)key;
    cmp.key.len = strlen(key);
    cmp.result = ETCDSERVERPB__COMPARE__COMPARE_RESULT__EQUAL;
    if (expect_mod_revision == 0) {
        /* an absent key has create_revision 0 */
        cmp.target = ETCDSERVERPB__COMPARE__COMPARE_TARGET__CREATE;
        cmp.target_union_case = ETCDSERVERPB__COMPARE__TARGET_UNION_CREATE_REVISION;
        cmp.create_revision = 0;
    } else {
        cmp.target = ETCDSERVERPB__COMPARE__COMPARE_TARGET__MOD;
        cmp.target_union_case = ETCDSERVERPB__COMPARE__TARGET_UNION_MOD_REVISION;
        cmp.mod_revision = expect_mod_revision;
    }
    Etcdserverpb__PutRequest put = ETCDSERVERPB__PUT_REQUEST__INIT;
    put.key = cmp.key;
    put.value.data = (uint8_t *)value;
    put.value.len = len;
    put.lease = lease;
    Etcdserverpb__RequestOp op = ETCDSERVERPB__REQUEST_OP__INIT;
    op.request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_PUT;
    op.request_put = &put;
    Etcdserverpb__Compare *cmps[1] = {&cmp};
    Etcdserverpb__RequestOp *ops[1] = {&op};
    Etcdserverpb__TxnRequest req = ETCDSERVERPB__TXN_REQUEST__INIT;
    req.n_compare = 1;
    req.compare = cmps;
    req.n_success = 1;
    req.success = ops;
    Etcdserverpb__TxnResponse *r;
    int rc = CALL(e, NULL, "/etcdserverpb.KV/Txn", req, etcdserverpb__txn_response__descriptor, &r, NULL, err);
    if (rc) return rc;
    *swapped = r->succeeded != 0;
    protobuf_c_message_free_unpacked(&r->base, NULL);
    return 0;
}

int td_etcd_lease_grant_x(td_etcd *e, const atomic_bool *stop, int64_t ttl_sec, int64_t *lease, td_err *err) {
    if (lease) *lease = 0;
    if (!e || !lease || ttl_sec <= 0) return td_err_set(err, TD_E_ARG, "etcd lease grant: bad argument");
    Etcdserverpb__LeaseGrantRequest req = ETCDSERVERPB__LEASE_GRANT_REQUEST__INIT;
    req.ttl = ttl_sec;
    Etcdserverpb__LeaseGrantResponse *r;
    int rc = CALL(e, stop, "/etcdserverpb.Lease/LeaseGrant", req, etcdserverpb__lease_grant_response__descriptor,
                  &r, NULL, err);
    if (rc) return rc;
    if (r->error && *r->error) rc = td_err_set(err, TD_E_IO, "etcd lease grant: %s", r->error);
    else if (r->id == 0) rc = td_err_set(err, TD_E_FORMAT, "etcd lease grant: no lease id in the answer");
    else *lease = r->id;
    protobuf_c_message_free_unpacked(&r->base, NULL);
    return rc;
}

int td_etcd_lease_grant(td_etcd *e, int64_t ttl_sec, int64_t *lease, td_err *err) {
    return td_etcd_lease_grant_x(e, NULL, ttl_sec, lease, err);
}

int td_etcd_lease_revoke_x(td_etcd *e, const atomic_bool *stop, int64_t lease, td_err *err) {
    if (!e) return td_err_set(err, TD_E_ARG, "etcd lease revoke: NULL handle");
    Etcdserverpb__LeaseRevokeRequest req = ETCDSERVERPB__LEASE_REVOKE_REQUEST__INIT;
    req.id = lease;
    Etcdserverpb__LeaseRevokeResponse *r;
    int rc = CALL(e, stop, "/etcdserverpb.Lease/LeaseRevoke", req,
                  etcdserverpb__lease_revoke_response__descriptor, &r, NULL, err);
    if (rc) return rc;
    protobuf_c_message_free_unpacked(&r->base, NULL);
    return 0;
}

int td_etcd_lease_revoke(td_etcd *e, int64_t lease, td_err *err) {
    return td_etcd_lease_revoke_x(e, NULL, lease, err);
}

/* etcd 3.4 renews leases only over the LeaseKeepAlive stream: open one,
 * send the id, read one answer, cancel it. */
int td_etcd_lease_keepalive_x(td_etcd *e, const atomic_bool *stop, int64_t lease, int64_t *ttl_left,
                              td_err *err) {
    if (ttl_left) *ttl_left = 0;
    if (!e || !ttl_left) return td_err_set(err, TD_E_ARG, "etcd keep-alive: NULL argument");
    Etcdserverpb__LeaseKeepAliveRequest req = ETCDSERVERPB__LEASE_KEEP_ALIVE_REQUEST__INIT;
    req.id = lease;
    int rc = TD_E_IO;
    size_t limit = e->n_eps; /* one try per endpoint, one more after a re-authentication */
    bool reauthed = false;
    for (size_t tries = 0; tries < limit; tries++) {
        td_etcd_wire_stream *s = td_etcd_wire_stream_open(e, "/etcdserverpb.Lease/LeaseKeepAlive", err);
        if (!s) return err ? err->code : TD_E_IO;
        rc = td_etcd_wire_stream_send(s, &req.base, stop, e->call_timeout_ms, err);
        Etcdserverpb__LeaseKeepAliveResponse *r = NULL;
        int code = -1;
        if (rc == 0) {
            rc = td_etcd_wire_stream_recv(s, &etcdserverpb__lease_keep_alive_response__descriptor,
                                          (ProtobufCMessage **)&r, stop, e->call_timeout_ms, &code, err);
            if (rc == 1) rc = td_err_set(err, TD_E_IO, "etcd keep-alive: no answer in %d ms", e->call_timeout_ms);
        }
        td_etcd_wire_stream_close(s, rc == TD_E_IO && code != GRPC_STATUS_UNAUTHENTICATED);
        if (rc == 0) {
            *ttl_left = r->ttl > 0 ? r->ttl : 0;
            protobuf_c_message_free_unpacked(&r->base, NULL);
            return 0;
        }
        if (stop && atomic_load(stop)) return rc;
        if (code == GRPC_STATUS_UNAUTHENTICATED && e->user && !reauthed) {
            reauthed = true;
            limit++;
            td_etcd_wire_forget_token(e);
            continue;
        }
        if (code == GRPC_STATUS_NOT_FOUND) {
            *ttl_left = 0; /* the lease is gone: an answer, not a failure */
            return 0;
        }
        if (rc != TD_E_IO) return rc;
    }
    return rc;
}

int td_etcd_lease_keepalive_once(td_etcd *e, int64_t lease, int64_t *ttl_left, td_err *err) {
    return td_etcd_lease_keepalive_x(e, NULL, lease, ttl_left, err);
}
