/* etcd_wire.c — the etcd client's own gRPC plumbing: channels (plaintext or
 * TLS) per endpoint, unary calls on a private pluck queue, protobuf-c over
 * grpc_byte_buffer, the auth token, and the bidirectional streams that Watch
 * and LeaseKeepAlive need. Every wait is sliced to TD_ETCD_POLL_MS so that a
 * stop flag cancels the call promptly; every posted tag is plucked before
 * the call is released. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>

#include "etcd_internal.h"
#include "net/net.h"

static gpr_timespec deadline_in(int64_t ms) {
    return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(ms, GPR_TIMESPAN));
}

static bool stopped(const atomic_bool *stop) { return stop && atomic_load(stop); }

/* A connection-level failure: worth trying another endpoint. */
static bool code_is_io(int code) {
    return code == GRPC_STATUS_UNAVAILABLE || code == GRPC_STATUS_DEADLINE_EXCEEDED ||
           code == GRPC_STATUS_CANCELLED || code == GRPC_STATUS_UNKNOWN || code == GRPC_STATUS_INTERNAL ||
           code < 0;
}

static bool auth_failure(int code, const char *details) {
    return code == GRPC_STATUS_UNAUTHENTICATED || (details && strstr(details, "invalid auth token"));
}

static int code_to_td(int code) {
    if (code == GRPC_STATUS_OK) return 0;
    return code_is_io(code) ? TD_E_IO : TD_E_ARG;
}

/* Channel for endpoint i, made on first use (e->mu held). */
static grpc_channel *channel_locked(td_etcd *e, size_t i) {
    if (e->chans[i]) return e->chans[i];
    grpc_channel_credentials *creds;
    if (e->ca_pem) {
        grpc_ssl_pem_key_cert_pair pair = {e->key_pem, e->cert_pem};
        creds = grpc_ssl_credentials_create(e->ca_pem, e->cert_pem && e->key_pem ? &pair : NULL, NULL, NULL);
    } else {
        creds = grpc_insecure_credentials_create();
    }
    if (!creds) return NULL;
    /* gRPC's own reconnect backoff follows ours: its default grows to two
     * minutes, far past a lease's TTL. */
    grpc_arg args[5];
    args[0].type = GRPC_ARG_INTEGER;
    args[0].key = GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS;
    args[0].value.integer = e->backoff_min_ms;
    /* (not GRPC_ARG_MIN_RECONNECT_BACKOFF_MS: gRPC takes it as the time a
     * connection attempt may take, and a short one cuts handshakes off) */
    args[1].type = GRPC_ARG_INTEGER;
    args[1].key = GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL;
    args[1].value.integer = 1;
    args[2].type = GRPC_ARG_INTEGER;
    args[2].key = GRPC_ARG_MAX_RECONNECT_BACKOFF_MS;
    args[2].value.integer = e->backoff_max_ms;
    /* A watch on a silently dead connection would wait forever: ping it
     * (etcd allows one ping per 5 s by default; stay well above). */
    args[3].type = GRPC_ARG_INTEGER;
    args[3].key = GRPC_ARG_KEEPALIVE_TIME_MS;
    args[3].value.integer = 30000;
    /* after a failure gRPC resolves the name again, by default at most
     * every 30 s: a restarted etcd would wait that long */
    args[4].type = GRPC_ARG_INTEGER;
    args[4].key = GRPC_ARG_DNS_MIN_TIME_BETWEEN_RESOLUTIONS_MS;
    args[4].value.integer = e->backoff_min_ms;
    grpc_channel_args ca = {5, args};
    e->chans[i] = grpc_channel_create(e->eps[i], creds, &ca);
    grpc_channel_credentials_release(creds);
    return e->chans[i];
}

/* The endpoint to use and its channel; copies the token (may be NULL). */
static grpc_channel *pick(td_etcd *e, size_t *idx, char **token, td_err *err) {
    pthread_mutex_lock(&e->mu);
    *idx = e->cur;
    grpc_channel *ch = channel_locked(e, e->cur);
    *token = NULL;
    bool nomem = false;
    if (e->token && !(*token = strdup(e->token))) nomem = true;
    pthread_mutex_unlock(&e->mu);
    if (!ch || nomem) {
        free(*token);
        *token = NULL;
        td_err_set(err, TD_E_NOMEM, "etcd: cannot make a channel to %s", e->eps[*idx]);
        return NULL;
    }
    return ch;
}

static void failover(td_etcd *e, size_t idx) {
    pthread_mutex_lock(&e->mu);
    if (e->cur == idx) e->cur = (idx + 1) % e->n_eps;
    pthread_mutex_unlock(&e->mu);
}

void td_etcd_wire_forget_token(td_etcd *e) {
    pthread_mutex_lock(&e->mu);
    free(e->token);
    e->token = NULL;
    pthread_mutex_unlock(&e->mu);
}

static grpc_byte_buffer *pack(const ProtobufCMessage *msg) {
    size_t n = protobuf_c_message_get_packed_size(msg);
    grpc_slice s = grpc_slice_malloc(n);
    protobuf_c_message_pack(msg, GRPC_SLICE_START_PTR(s));
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    return bb;
}

static ProtobufCMessage *unpack(const ProtobufCMessageDescriptor *desc, grpc_byte_buffer *bb) {
    grpc_byte_buffer_reader r;
    if (!grpc_byte_buffer_reader_init(&r, bb)) return NULL;
    grpc_slice s = grpc_byte_buffer_reader_readall(&r);
    ProtobufCMessage *m = protobuf_c_message_unpack(desc, NULL, GRPC_SLICE_LENGTH(s), GRPC_SLICE_START_PTR(s));
    grpc_slice_unref(s);
    grpc_byte_buffer_reader_destroy(&r);
    return m;
}

static void cq_free(grpc_completion_queue *cq) {
    /* every tag was plucked: a pluck queue shuts down at once */
    grpc_completion_queue_shutdown(cq);
    grpc_completion_queue_destroy(cq);
}

/* Plucks tag, in slices, cancelling the call once the deadline passes or
 * *stop is set (the completion then comes promptly). Returns the event's
 * success. */
static bool pluck_until(grpc_completion_queue *cq, grpc_call *call, void *tag, gpr_timespec deadline,
                        const atomic_bool *stop) {
    bool cancelled = false;
    for (;;) {
        grpc_event ev = grpc_completion_queue_pluck(cq, tag, deadline_in(TD_ETCD_POLL_MS), NULL);
        if (ev.type == GRPC_OP_COMPLETE) return ev.success != 0;
        if (!cancelled && (stopped(stop) || gpr_time_cmp(gpr_now(GPR_CLOCK_MONOTONIC), deadline) >= 0)) {
            grpc_call_cancel(call, NULL);
            cancelled = true;
        }
    }
}

/* One attempt on one channel. *code gets the status (-1: none). */
static int unary_once(grpc_channel *ch, const char *method, grpc_byte_buffer *req, const char *token,
                      gpr_timespec deadline, const atomic_bool *stop, grpc_byte_buffer **resp, int *code,
                      char *details, size_t details_size) {
    *resp = NULL;
    *code = -1;
    details[0] = 0;
    grpc_completion_queue *cq = grpc_completion_queue_create_for_pluck(NULL);
    if (!cq) return TD_E_NOMEM;
    grpc_call *call = grpc_channel_create_call(ch, NULL, GRPC_PROPAGATE_DEFAULTS, cq,
                                               grpc_slice_from_static_string(method), NULL, deadline, NULL);
    if (!call) {
        cq_free(cq);
        return TD_E_NOMEM;
    }
    grpc_metadata md;
    memset(&md, 0, sizeof md);
    if (token) {
        md.key = grpc_slice_from_static_string("token");
        md.value = grpc_slice_from_copied_string(token);
    }
    grpc_metadata_array init_md, trail_md;
    grpc_metadata_array_init(&init_md);
    grpc_metadata_array_init(&trail_md);
    grpc_status_code status = GRPC_STATUS_UNKNOWN;
    grpc_slice det = grpc_empty_slice();
    grpc_op ops[6];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[0].data.send_initial_metadata.count = token ? 1 : 0;
    ops[0].data.send_initial_metadata.metadata = token ? &md : NULL;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = req;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &init_md;
    ops[4].op = GRPC_OP_RECV_MESSAGE;
    ops[4].data.recv_message.recv_message = resp;
    ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[5].data.recv_status_on_client.trailing_metadata = &trail_md;
    ops[5].data.recv_status_on_client.status = &status;
    ops[5].data.recv_status_on_client.status_details = &det;
    int rc = 0;
    if (grpc_call_start_batch(call, ops, 6, ops, NULL) != GRPC_CALL_OK) {
        snprintf(details, details_size, "cannot start the call");
        rc = TD_E_IO;
    } else {
        pluck_until(cq, call, ops, deadline, stop);
        *code = (int)status;
        char *d = grpc_slice_to_c_string(det);
        if (d) {
            snprintf(details, details_size, "%s", d);
            gpr_free(d);
        }
    }
    grpc_slice_unref(det);
    grpc_metadata_array_destroy(&init_md);
    grpc_metadata_array_destroy(&trail_md);
    if (token) grpc_slice_unref(md.value);
    grpc_call_unref(call);
    cq_free(cq);
    if (rc == 0 && *code != GRPC_STATUS_OK && *resp) {
        grpc_byte_buffer_destroy(*resp);
        *resp = NULL;
    }
    return rc;
}

/* Fetches a new token with Authenticate (no token on that call). */
static int authenticate(td_etcd *e, const atomic_bool *stop, gpr_timespec deadline, td_err *err) {
    Etcdserverpb__AuthenticateRequest req = ETCDSERVERPB__AUTHENTICATE_REQUEST__INIT;
    req.name = e->user;
    req.password = e->password ? e->password : "";
    grpc_byte_buffer *bb = pack(&req.base);
    if (!bb) return td_err_set(err, TD_E_NOMEM, "etcd Authenticate: out of memory");
    int rc = TD_E_IO, code = -1;
    char details[256] = "";
    for (size_t tries = 0; tries < e->n_eps; tries++) {
        size_t idx;
        char *tok;
        grpc_channel *ch = pick(e, &idx, &tok, err);
        free(tok);
        if (!ch) {
            grpc_byte_buffer_destroy(bb);
            return TD_E_NOMEM;
        }
        grpc_byte_buffer *resp = NULL;
        rc = unary_once(ch, "/etcdserverpb.Auth/Authenticate", bb, NULL, deadline, stop, &resp, &code, details,
                        sizeof details);
        if (rc == 0 && code == GRPC_STATUS_OK) {
            Etcdserverpb__AuthenticateResponse *r = resp ? (Etcdserverpb__AuthenticateResponse *)unpack(
                                                               &etcdserverpb__authenticate_response__descriptor, resp)
                                                         : NULL;
            if (resp) grpc_byte_buffer_destroy(resp);
            grpc_byte_buffer_destroy(bb);
            if (!r) return td_err_set(err, TD_E_FORMAT, "etcd Authenticate: malformed answer");
            char *t = strdup(r->token ? r->token : "");
            protobuf_c_message_free_unpacked(&r->base, NULL);
            if (!t) return td_err_set(err, TD_E_NOMEM, "etcd Authenticate: out of memory");
            pthread_mutex_lock(&e->mu);
            free(e->token);
            e->token = t;
            pthread_mutex_unlock(&e->mu);
            return 0;
        }
        if (resp) grpc_byte_buffer_destroy(resp);
        if (rc == 0) rc = code_to_td(code);
        if (rc != TD_E_IO || stopped(stop) || gpr_time_cmp(gpr_now(GPR_CLOCK_MONOTONIC), deadline) >= 0) break;
        failover(e, idx);
    }
    grpc_byte_buffer_destroy(bb);
    return td_err_set(err, rc, "etcd Authenticate as %s: %s: %s", e->user,
                      code >= 0 ? td_net_code_name(code) : "no status", details);
}

static bool need_token(td_etcd *e) {
    if (!e->user) return false;
    pthread_mutex_lock(&e->mu);
    bool need = e->token == NULL;
    pthread_mutex_unlock(&e->mu);
    return need;
}

int td_etcd_wire_unary(td_etcd *e, const atomic_bool *stop, const char *method, const ProtobufCMessage *req,
                       const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **resp, int *code_out,
                       td_err *err) {
    *resp = NULL;
    if (code_out) *code_out = -1;
    gpr_timespec deadline = deadline_in(e->call_timeout_ms);
    if (need_token(e)) {
        int rc = authenticate(e, stop, deadline, err);
        if (rc) return rc;
    }
    grpc_byte_buffer *bb = pack(req);
    if (!bb) return td_err_set(err, TD_E_NOMEM, "etcd %s: out of memory", method);
    bool reauthed = false;
    int rc = TD_E_IO, code = -1;
    char details[256] = "";
    for (size_t tries = 0; tries < e->n_eps;) {
        size_t idx;
        char *tok;
        grpc_channel *ch = pick(e, &idx, &tok, err);
        if (!ch) {
            grpc_byte_buffer_destroy(bb);
            return TD_E_NOMEM;
        }
        grpc_byte_buffer *rb = NULL;
        rc = unary_once(ch, method, bb, tok, deadline, stop, &rb, &code, details, sizeof details);
        free(tok);
        if (code_out) *code_out = code;
        if (rc == 0 && code == GRPC_STATUS_OK) {
            grpc_byte_buffer_destroy(bb);
            *resp = rb ? unpack(resp_desc, rb) : NULL;
            if (rb) grpc_byte_buffer_destroy(rb);
            if (!*resp) return td_err_set(err, TD_E_FORMAT, "etcd %s: malformed answer", method);
            return 0;
        }
        if (rb) grpc_byte_buffer_destroy(rb);
        if (rc == 0) rc = code_to_td(code);
        if (stopped(stop)) break;
        if (e->user && !reauthed && auth_failure(code, details)) {
            reauthed = true;
            int arc = authenticate(e, stop, deadline, err);
            if (arc) {
                grpc_byte_buffer_destroy(bb);
                return arc;
            }
            continue; /* same endpoint, new token */
        }
        if (rc != TD_E_IO || gpr_time_cmp(gpr_now(GPR_CLOCK_MONOTONIC), deadline) >= 0) break;
        failover(e, idx);
        tries++;
    }
    grpc_byte_buffer_destroy(bb);
    if (stopped(stop)) return td_err_set(err, TD_E_IO, "etcd %s: stopped", method);
    return td_err_set(err, rc, "etcd %s: %s: %s", method, code >= 0 ? td_net_code_name(code) : "no status",
                      details[0] ? details : "etcd cannot be reached");
}

/* ---- bidirectional streams ---- */

struct td_etcd_wire_stream {
    td_etcd *e;
    size_t idx;
    grpc_completion_queue *cq;
    grpc_call *call;
    char *token;
    grpc_metadata md;
    grpc_metadata_array init_md, trail_md;
    grpc_status_code status;
    grpc_slice details;
    grpc_byte_buffer *recv_bb, *send_bb;
    bool status_pending, recv_pending, send_pending, md_sent, init_md_posted;
    /* the tags: distinct addresses */
    char tag_status, tag_recv, tag_send;
};

td_etcd_wire_stream *td_etcd_wire_stream_open(td_etcd *e, const char *method, td_err *err) {
    if (need_token(e)) {
        if (authenticate(e, NULL, deadline_in(e->call_timeout_ms), err)) return NULL;
    }
    td_etcd_wire_stream *s = calloc(1, sizeof *s);
    if (!s) {
        td_err_set(err, TD_E_NOMEM, "etcd %s: out of memory", method);
        return NULL;
    }
    s->e = e;
    grpc_channel *ch = pick(e, &s->idx, &s->token, err);
    if (!ch) {
        free(s);
        return NULL;
    }
    s->cq = grpc_completion_queue_create_for_pluck(NULL);
    if (!s->cq) goto nomem;
    s->call = grpc_channel_create_call(ch, NULL, GRPC_PROPAGATE_DEFAULTS, s->cq,
                                       grpc_slice_from_static_string(method), NULL,
                                       gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    if (!s->call) goto nomem;
    if (s->token) {
        s->md.key = grpc_slice_from_static_string("token");
        s->md.value = grpc_slice_from_copied_string(s->token);
    }
    grpc_metadata_array_init(&s->init_md);
    grpc_metadata_array_init(&s->trail_md);
    s->details = grpc_empty_slice();
    s->status = GRPC_STATUS_UNKNOWN;
    /* the status first, so that a failure anywhere always reports one */
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    op.data.recv_status_on_client.trailing_metadata = &s->trail_md;
    op.data.recv_status_on_client.status = &s->status;
    op.data.recv_status_on_client.status_details = &s->details;
    if (grpc_call_start_batch(s->call, &op, 1, &s->tag_status, NULL) != GRPC_CALL_OK) {
        td_err_set(err, TD_E_IO, "etcd %s: cannot start the stream", method);
        td_etcd_wire_stream_close(s, true);
        return NULL;
    }
    s->status_pending = true;
    return s;
nomem:
    if (s->cq) cq_free(s->cq);
    free(s->token);
    free(s);
    td_err_set(err, TD_E_NOMEM, "etcd %s: out of memory", method);
    return NULL;
}

int td_etcd_wire_stream_send(td_etcd_wire_stream *s, const ProtobufCMessage *msg, const atomic_bool *stop,
                             int32_t timeout_ms, td_err *err) {
    if (s->send_pending) return td_err_set(err, TD_E_IO, "etcd stream: a send is still pending");
    s->send_bb = pack(msg);
    if (!s->send_bb) return td_err_set(err, TD_E_NOMEM, "etcd stream: out of memory");
    grpc_op ops[2];
    memset(ops, 0, sizeof ops);
    size_t n = 0;
    if (!s->md_sent) {
        ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
        ops[n].data.send_initial_metadata.count = s->token ? 1 : 0;
        ops[n].data.send_initial_metadata.metadata = s->token ? &s->md : NULL;
        n++;
    }
    ops[n].op = GRPC_OP_SEND_MESSAGE;
    ops[n].data.send_message.send_message = s->send_bb;
    n++;
    if (grpc_call_start_batch(s->call, ops, n, &s->tag_send, NULL) != GRPC_CALL_OK) {
        grpc_byte_buffer_destroy(s->send_bb);
        s->send_bb = NULL;
        return td_err_set(err, TD_E_IO, "etcd stream: cannot send");
    }
    s->md_sent = true;
    s->send_pending = true;
    bool ok = pluck_until(s->cq, s->call, &s->tag_send, deadline_in(timeout_ms), stop);
    s->send_pending = false;
    grpc_byte_buffer_destroy(s->send_bb);
    s->send_bb = NULL;
    if (!ok) return td_err_set(err, TD_E_IO, "etcd stream: send failed (connection lost or stopped)");
    return 0;
}

/* The stream's final status, waiting a little for it. */
static int final_status(td_etcd_wire_stream *s, char *buf, size_t size) {
    if (s->status_pending) {
        pluck_until(s->cq, s->call, &s->tag_status, deadline_in(s->e->call_timeout_ms), NULL);
        s->status_pending = false;
    }
    char *d = grpc_slice_to_c_string(s->details);
    snprintf(buf, size, "%s", d ? d : "");
    if (d) gpr_free(d);
    return (int)s->status;
}

int td_etcd_wire_stream_recv(td_etcd_wire_stream *s, const ProtobufCMessageDescriptor *desc,
                             ProtobufCMessage **msg, const atomic_bool *stop, int32_t timeout_ms, int *code,
                             td_err *err) {
    *msg = NULL;
    if (code) *code = -1;
    if (!s->recv_pending) {
        grpc_op ops[2];
        memset(ops, 0, sizeof ops);
        size_t n = 0;
        if (!s->init_md_posted) {
            ops[n].op = GRPC_OP_RECV_INITIAL_METADATA;
            ops[n].data.recv_initial_metadata.recv_initial_metadata = &s->init_md;
            n++;
        }
        ops[n].op = GRPC_OP_RECV_MESSAGE;
        ops[n].data.recv_message.recv_message = &s->recv_bb;
        n++;
        if (grpc_call_start_batch(s->call, ops, n, &s->tag_recv, NULL) != GRPC_CALL_OK)
            return td_err_set(err, TD_E_IO, "etcd stream: cannot receive");
        s->init_md_posted = true;
        s->recv_pending = true;
    }
    gpr_timespec deadline = deadline_in(timeout_ms);
    grpc_event ev;
    for (;;) {
        if (stopped(stop)) return td_err_set(err, TD_E_IO, "etcd stream: stopped");
        gpr_timespec slice = deadline_in(TD_ETCD_POLL_MS);
        if (gpr_time_cmp(slice, deadline) > 0) slice = deadline;
        ev = grpc_completion_queue_pluck(s->cq, &s->tag_recv, slice, NULL);
        if (ev.type == GRPC_OP_COMPLETE) break;
        if (gpr_time_cmp(gpr_now(GPR_CLOCK_MONOTONIC), deadline) >= 0) return 1;
    }
    s->recv_pending = false;
    if (ev.success && s->recv_bb) {
        *msg = unpack(desc, s->recv_bb);
        grpc_byte_buffer_destroy(s->recv_bb);
        s->recv_bb = NULL;
        if (!*msg) return td_err_set(err, TD_E_FORMAT, "etcd stream: malformed message");
        return 0;
    }
    if (s->recv_bb) {
        grpc_byte_buffer_destroy(s->recv_bb);
        s->recv_bb = NULL;
    }
    char details[256];
    int c = final_status(s, details, sizeof details);
    if (code) *code = c;
    return td_err_set(err, code_to_td(c) ? code_to_td(c) : TD_E_IO, "etcd stream ended: %s: %s",
                      td_net_code_name(c), details);
}

void td_etcd_wire_stream_close(td_etcd_wire_stream *s, bool failed) {
    if (!s) return;
    if (s->call) {
        grpc_call_cancel(s->call, NULL);
        gpr_timespec inf = gpr_inf_future(GPR_CLOCK_REALTIME);
        if (s->recv_pending) grpc_completion_queue_pluck(s->cq, &s->tag_recv, inf, NULL);
        if (s->send_pending) grpc_completion_queue_pluck(s->cq, &s->tag_send, inf, NULL);
        if (s->status_pending) grpc_completion_queue_pluck(s->cq, &s->tag_status, inf, NULL);
        if (s->recv_bb) grpc_byte_buffer_destroy(s->recv_bb);
        if (s->send_bb) grpc_byte_buffer_destroy(s->send_bb);
        grpc_slice_unref(s->details);
        grpc_metadata_array_destroy(&s->init_md);
        grpc_metadata_array_destroy(&s->trail_md);
        if (s->token) grpc_slice_unref(s->md.value);
        grpc_call_unref(s->call);
    }
    if (s->cq) cq_free(s->cq);
    if (failed) failover(s->e, s->idx);
    free(s->token);
    free(s);
}
