/* net_client.c — the gRPC client of net.h: a channel with message limits,
 * keepalive and reconnect backoff, unary calls and server-streaming calls.
 * Each call has a pluck queue of its own, so calls on one channel from many
 * threads never wait for each other's events.
 *
 * Promises: every batch a call posts is plucked before the call is released
 * (gRPC's rule); a call that ends in any way reports a gRPC status; a reply
 * that does not unpack is reported as INTERNAL. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>

#include "net/net_internal.h"

#define TD_NET_DEFAULT_MAX_MESSAGE (16 * 1024 * 1024)
#define TD_NET_DEFAULT_KEEPALIVE_TIMEOUT_MS 20000
/* The shortest connection attempt allowed on a TLS channel (see below). */
#define TD_NET_MIN_TLS_CONNECT_MS 2000

struct td_net_channel {
    grpc_channel *ch;
    char *target;
};

td_net_channel *td_net_channel_open(const char *target, const td_net_channel_opts *opts, td_err *err) {
    if (!target) {
        td_err_set(err, TD_E_ARG, "net channel: no target");
        return NULL;
    }
    td_net_channel *c = calloc(1, sizeof *c);
    if (!c || !(c->target = strdup(target))) {
        free(c);
        td_err_set(err, TD_E_NOMEM, "net channel %s: out of memory", target);
        return NULL;
    }
    td_net_channel_opts o = opts ? *opts : (td_net_channel_opts){0};
    int32_t max_msg = o.max_message_bytes > 0 ? o.max_message_bytes : TD_NET_DEFAULT_MAX_MESSAGE;
    grpc_arg args[12];
    size_t n = 0;
#define TD_ARG_INT(k, v) args[n++] = (grpc_arg){.type = GRPC_ARG_INTEGER, .key = (k), .value.integer = (v)}
    TD_ARG_INT(GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH, max_msg);
    TD_ARG_INT(GRPC_ARG_MAX_SEND_MESSAGE_LENGTH, max_msg);
    if (o.keepalive_ms > 0) {
        TD_ARG_INT(GRPC_ARG_KEEPALIVE_TIME_MS, o.keepalive_ms);
        TD_ARG_INT(GRPC_ARG_KEEPALIVE_TIMEOUT_MS,
                   o.keepalive_timeout_ms > 0 ? o.keepalive_timeout_ms : TD_NET_DEFAULT_KEEPALIVE_TIMEOUT_MS);
        /* pings also when idle (a hung peer is noticed before the next
         * call), and without limit while no data flows */
        TD_ARG_INT(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
        TD_ARG_INT(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
    }
    if (o.min_reconnect_ms > 0) {
        /* gRPC also takes the minimum backoff as the time one connection
         * attempt may take: a TLS handshake on a busy host needs more than
         * a plaintext connect */
        int32_t min_connect = o.tls && o.min_reconnect_ms < TD_NET_MIN_TLS_CONNECT_MS ? TD_NET_MIN_TLS_CONNECT_MS
                                                                                      : o.min_reconnect_ms;
        TD_ARG_INT(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, min_connect);
        TD_ARG_INT(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, o.min_reconnect_ms);
    }
    if (o.max_reconnect_ms > 0) TD_ARG_INT(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, o.max_reconnect_ms);
#undef TD_ARG_INT
    if (o.tls && o.tls->server_name)
        args[n++] = (grpc_arg){.type = GRPC_ARG_STRING, .key = GRPC_SSL_TARGET_NAME_OVERRIDE_ARG,
                               .value.string = (char *)o.tls->server_name};
    grpc_channel_args ch_args = {.num_args = n, .args = args};
    td_net_init();
    td_err cerr = {0};
    grpc_channel_credentials *creds = o.tls ? td_net_tls_channel_creds(o.tls, &cerr) : grpc_insecure_credentials_create();
    if (creds) c->ch = grpc_channel_create(target, creds, &ch_args);
    if (creds) grpc_channel_credentials_release(creds);
    if (!c->ch) {
        td_net_shutdown();
        if (!creds && o.tls) td_err_set(err, cerr.code, "net channel %s: %s", target, cerr.msg);
        else td_err_set(err, TD_E_NOMEM, "net channel %s: gRPC could not create the channel", target);
        free(c->target);
        free(c);
        return NULL;
    }
    return c;
}

void td_net_channel_close(td_net_channel *ch) {
    if (!ch) return;
    grpc_channel_destroy(ch->ch);
    free(ch->target);
    free(ch);
    td_net_shutdown();
}

const char *td_net_channel_target(const td_net_channel *ch) { return ch ? ch->target : ""; }

/* ---- shared by unary and streaming calls ---- */

/* The metadata of a call as gRPC wants it; the slices are the call's until
 * md_free. */
static grpc_metadata *md_make(const td_net_metadata *md, size_t n) {
    if (!md || n == 0) return NULL;
    grpc_metadata *out = calloc(n, sizeof *out);
    if (!out) return NULL;
    for (size_t i = 0; i < n; i++) {
        out[i].key = grpc_slice_from_copied_string(md[i].key ? md[i].key : "");
        out[i].value = grpc_slice_from_copied_string(md[i].value ? md[i].value : "");
    }
    return out;
}

static void md_free(grpc_metadata *md, size_t n) {
    if (!md) return;
    for (size_t i = 0; i < n; i++) {
        grpc_slice_unref(md[i].key);
        grpc_slice_unref(md[i].value);
    }
    free(md);
}

static void status_local(td_net_status *st, int code, const char *msg) {
    if (!st) return;
    st->code = code;
    size_t n = strlen(msg);
    if (n >= sizeof st->msg) n = sizeof st->msg - 1;
    memcpy(st->msg, msg, n);
    st->msg[n] = '\0';
}

/* ---- unary ---- */

static int unary_bb(td_net_channel *ch, const char *path, grpc_byte_buffer *req,
                    const ProtobufCMessageDescriptor *response_type, ProtobufCMessage **response,
                    int64_t deadline_ms, const td_net_metadata *md, size_t n_md, td_net_status *st) {
    td_net_status local;
    if (!st) st = &local;
    if (response) *response = NULL;
    grpc_metadata *gmd = md_make(md, n_md);
    grpc_completion_queue *cq = grpc_completion_queue_create_for_pluck(NULL);
    if (!cq || (n_md && md && !gmd)) {
        if (cq) grpc_completion_queue_destroy(cq);
        md_free(gmd, n_md);
        status_local(st, TD_NET_RESOURCE_EXHAUSTED, "client out of memory");
        return st->code;
    }
    grpc_call *call = grpc_channel_create_call(ch->ch, NULL, GRPC_PROPAGATE_DEFAULTS, cq,
                                               grpc_slice_from_static_string(path), NULL,
                                               td_net_deadline_after(deadline_ms), NULL);
    if (!call) {
        grpc_completion_queue_destroy(cq);
        md_free(gmd, n_md);
        status_local(st, TD_NET_INTERNAL, "gRPC could not create the call");
        return st->code;
    }
    grpc_metadata_array init_md, trail_md;
    grpc_metadata_array_init(&init_md);
    grpc_metadata_array_init(&trail_md);
    grpc_byte_buffer *resp = NULL;
    grpc_status_code code = GRPC_STATUS_UNKNOWN;
    grpc_slice details = grpc_empty_slice();
    grpc_op ops[6];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[0].data.send_initial_metadata.count = gmd ? n_md : 0;
    ops[0].data.send_initial_metadata.metadata = gmd;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = req;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &init_md;
    ops[4].op = GRPC_OP_RECV_MESSAGE;
    ops[4].data.recv_message.recv_message = &resp;
    ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[5].data.recv_status_on_client.trailing_metadata = &trail_md;
    ops[5].data.recv_status_on_client.status = &code;
    ops[5].data.recv_status_on_client.status_details = &details;
    if (grpc_call_start_batch(call, ops, 6, cq, NULL) == GRPC_CALL_OK) {
        /* the deadline is gRPC's to enforce: the batch always completes */
        grpc_completion_queue_pluck(cq, cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        td_net_status_set(st, code, details);
    } else {
        status_local(st, TD_NET_INTERNAL, "gRPC refused the call's batch");
    }
    if (st->code == TD_NET_OK) {
        ProtobufCMessage *m = resp && response_type ? td_net_unpack(response_type, resp) : NULL;
        if (!m) {
            snprintf(st->msg, sizeof st->msg, "reply is not a %s", response_type ? response_type->name : "message");
            st->code = TD_NET_INTERNAL;
        } else if (response) {
            *response = m;
        } else {
            protobuf_c_message_free_unpacked(m, NULL);
        }
    }
    if (resp) grpc_byte_buffer_destroy(resp);
    grpc_slice_unref(details);
    grpc_metadata_array_destroy(&init_md);
    grpc_metadata_array_destroy(&trail_md);
    grpc_call_unref(call);
    grpc_completion_queue_shutdown(cq);
    grpc_completion_queue_destroy(cq);
    md_free(gmd, n_md);
    return st->code;
}

int td_net_unary(td_net_channel *ch, const char *path, const ProtobufCMessage *request,
                 const ProtobufCMessageDescriptor *response_type, ProtobufCMessage **response,
                 int64_t deadline_ms, const td_net_metadata *md, size_t n_md, td_net_status *st) {
    if (response) *response = NULL;
    if (!ch || !path || !request) {
        status_local(st, TD_NET_INVALID_ARGUMENT, "td_net_unary: channel, path and request needed");
        return TD_NET_INVALID_ARGUMENT;
    }
    grpc_byte_buffer *bb = td_net_pack(request);
    if (!bb) {
        status_local(st, TD_NET_RESOURCE_EXHAUSTED, "client out of memory packing the request");
        return TD_NET_RESOURCE_EXHAUSTED;
    }
    int rc = unary_bb(ch, path, bb, response_type, response, deadline_ms, md, n_md, st);
    grpc_byte_buffer_destroy(bb);
    return rc;
}

int td_net_unary_raw(td_net_channel *ch, const char *path, const void *bytes, size_t len,
                     const ProtobufCMessageDescriptor *response_type, ProtobufCMessage **response,
                     int64_t deadline_ms, td_net_status *st) {
    if (response) *response = NULL;
    if (!ch || !path || (!bytes && len)) {
        status_local(st, TD_NET_INVALID_ARGUMENT, "td_net_unary_raw: channel, path and bytes needed");
        return TD_NET_INVALID_ARGUMENT;
    }
    grpc_byte_buffer *bb = td_net_pack_bytes(bytes, len);
    if (!bb) {
        status_local(st, TD_NET_RESOURCE_EXHAUSTED, "client out of memory");
        return TD_NET_RESOURCE_EXHAUSTED;
    }
    int rc = unary_bb(ch, path, bb, response_type, response, deadline_ms, NULL, 0, st);
    grpc_byte_buffer_destroy(bb);
    return rc;
}

/* ---- server streaming ---- */

struct td_net_stream {
    grpc_completion_queue *cq;
    grpc_call *call;
    grpc_metadata *md;
    size_t n_md;
    grpc_byte_buffer *req;
    grpc_metadata_array init_md, trail_md;
    grpc_status_code code;
    grpc_slice details;
    /* tags (addresses) and whether each posted batch was plucked */
    char tag_send, tag_status, tag_recv;
    bool send_pending, status_pending;
    bool send_ok;
    bool ended; /* the final status was reported */
    td_net_status local; /* a status of our own (a reply that did not unpack) */
    bool has_local;
};

td_net_stream *td_net_stream_open(td_net_channel *ch, const char *path, const ProtobufCMessage *request,
                                  int64_t deadline_ms, const td_net_metadata *md, size_t n_md, td_err *err) {
    if (!ch || !path || !request) {
        td_err_set(err, TD_E_ARG, "net stream: channel, path and request needed");
        return NULL;
    }
    td_net_stream *s = calloc(1, sizeof *s);
    if (!s) goto nomem;
    s->details = grpc_empty_slice();
    grpc_metadata_array_init(&s->init_md);
    grpc_metadata_array_init(&s->trail_md);
    s->n_md = md ? n_md : 0;
    s->md = md_make(md, s->n_md);
    s->req = td_net_pack(request);
    s->cq = grpc_completion_queue_create_for_pluck(NULL);
    if ((s->n_md && !s->md) || !s->req || !s->cq) goto nomem_free;
    s->call = grpc_channel_create_call(ch->ch, NULL, GRPC_PROPAGATE_DEFAULTS, s->cq,
                                       grpc_slice_from_static_string(path), NULL,
                                       td_net_deadline_after(deadline_ms), NULL);
    if (!s->call) goto nomem_free;
    grpc_op ops[4];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[0].data.send_initial_metadata.count = s->n_md;
    ops[0].data.send_initial_metadata.metadata = s->md;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = s->req;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &s->init_md;
    s->send_pending = grpc_call_start_batch(s->call, ops, 4, &s->tag_send, NULL) == GRPC_CALL_OK;
    grpc_op st_op = {.op = GRPC_OP_RECV_STATUS_ON_CLIENT};
    st_op.data.recv_status_on_client.trailing_metadata = &s->trail_md;
    st_op.data.recv_status_on_client.status = &s->code;
    st_op.data.recv_status_on_client.status_details = &s->details;
    s->status_pending = grpc_call_start_batch(s->call, &st_op, 1, &s->tag_status, NULL) == GRPC_CALL_OK;
    if (!s->send_pending || !s->status_pending) {
        /* gRPC refused a fresh call's batch: report it from next */
        s->has_local = true;
        status_local(&s->local, TD_NET_INTERNAL, "gRPC refused the stream's batch");
        grpc_call_cancel(s->call, NULL);
    }
    return s;
nomem_free:
    td_net_stream_close(s);
nomem:
    td_err_set(err, TD_E_NOMEM, "net stream %s: out of memory", path);
    return NULL;
}

static void pluck(td_net_stream *s, void *tag, bool *pending, bool *ok) {
    if (!*pending) return;
    grpc_event ev = grpc_completion_queue_pluck(s->cq, tag, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    *pending = false;
    if (ok) *ok = ev.type == GRPC_OP_COMPLETE && ev.success;
}

/* Waits for the final status and reports it (our own, when we set one). */
static int stream_end(td_net_stream *s, td_net_status *st) {
    pluck(s, &s->tag_send, &s->send_pending, &s->send_ok);
    pluck(s, &s->tag_status, &s->status_pending, NULL);
    s->ended = true;
    if (s->has_local) {
        if (st) *st = s->local;
    } else {
        td_net_status_set(st, s->code, s->details);
    }
    return 0;
}

int td_net_stream_next(td_net_stream *s, const ProtobufCMessageDescriptor *type, ProtobufCMessage **msg,
                       td_net_status *st) {
    if (msg) *msg = NULL;
    if (!s || !type || !msg) {
        status_local(st, TD_NET_INVALID_ARGUMENT, "td_net_stream_next: stream, type and msg needed");
        return 0;
    }
    if (s->ended || s->has_local) return stream_end(s, st);
    pluck(s, &s->tag_send, &s->send_pending, &s->send_ok);
    grpc_byte_buffer *bb = NULL;
    grpc_op op = {.op = GRPC_OP_RECV_MESSAGE};
    op.data.recv_message.recv_message = &bb;
    bool ok = false;
    if (grpc_call_start_batch(s->call, &op, 1, &s->tag_recv, NULL) == GRPC_CALL_OK) {
        bool pending = true;
        pluck(s, &s->tag_recv, &pending, &ok);
    }
    if (!ok || !bb) { /* end of stream, or the call failed: the status says which */
        if (bb) grpc_byte_buffer_destroy(bb);
        return stream_end(s, st);
    }
    *msg = td_net_unpack(type, bb);
    grpc_byte_buffer_destroy(bb);
    if (!*msg) {
        s->has_local = true;
        s->local.code = TD_NET_INTERNAL;
        snprintf(s->local.msg, sizeof s->local.msg, "reply is not a %s", type->name);
        grpc_call_cancel(s->call, NULL);
        return stream_end(s, st);
    }
    if (st) *st = (td_net_status){.code = TD_NET_OK};
    return 1;
}

void td_net_stream_cancel(td_net_stream *s) {
    if (s && s->call) grpc_call_cancel(s->call, NULL);
}

void td_net_stream_close(td_net_stream *s) {
    if (!s) return;
    if (s->call) {
        if (!s->ended) grpc_call_cancel(s->call, NULL);
        pluck(s, &s->tag_send, &s->send_pending, NULL);
        pluck(s, &s->tag_status, &s->status_pending, NULL);
        grpc_call_unref(s->call);
    }
    if (s->cq) {
        grpc_completion_queue_shutdown(s->cq);
        grpc_completion_queue_destroy(s->cq);
    }
    if (s->req) grpc_byte_buffer_destroy(s->req);
    md_free(s->md, s->n_md);
    grpc_metadata_array_destroy(&s->init_md);
    grpc_metadata_array_destroy(&s->trail_md);
    grpc_slice_unref(s->details);
    free(s);
}
