/* net_server.c — the gRPC server of net.h: one acceptor thread takes new
 * calls off a completion queue registered with the server, and each call
 * runs on a thread of its own with a pluck queue of its own (bound to the
 * call by grpc_server_request_call), so a handler may block on its call
 * without holding up the acceptor or any other call.
 *
 * Promises: every call gets exactly one status (the handler's, or INTERNAL
 * when it returned without one, or the layer's INVALID_ARGUMENT /
 * UNIMPLEMENTED / RESOURCE_EXHAUSTED); at most max_calls handler threads
 * exist at once; shutdown returns only after every handler returned and
 * every gRPC object of the server was released.
 *
 * Life of a call record: allocated by the acceptor before it asks gRPC for
 * the next call; handed to a new thread when a call arrives; the thread
 * releases the gRPC objects and marks the record finished; the acceptor (or
 * shutdown) joins the thread and frees the record.
 *
 * Fake calls (net.h, "handlers without gRPC"): a record with a td_net_fake
 * and no gRPC object, run by td_net_server_dispatch on the caller's thread
 * through the same steps as call_thread (token, cap, unpack, handler, the
 * layer's fallback status). Every accessor checks for one first, so the
 * live path only gains that test; net_fake.c keeps the fake's books. */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>

#include "metrics/metrics.h"
#include "net/net_internal.h"

#define TD_NET_DEFAULT_MAX_CALLS 64
#define TD_NET_DEFAULT_MAX_MESSAGE (16 * 1024 * 1024)
/* How long a rejected call (busy, unknown method) may keep the acceptor
 * waiting for gRPC to confirm it closed before the acceptor cancels it. */
#define TD_NET_REJECT_WAIT_MS 2000

typedef struct td_net_method {
    char *path;
    const ProtobufCMessageDescriptor *type;
    bool streaming;
    td_net_handler fn;
    void *user;
} td_net_method;

struct td_net_call {
    td_net_server *srv;
    const td_net_method *m; /* NULL until routed */
    grpc_completion_queue *cq; /* pluck queue, this call's alone */
    grpc_call *call;
    grpc_call_details details;
    grpc_metadata_array md;
    char *peer; /* gpr_malloc'd by gRPC */
    int close_cancelled; /* RECV_CLOSE_ON_SERVER's answer */
    bool close_posted, close_done;
    bool status_sent; /* a status batch was started (one per call) */
    bool gone;        /* a batch failed: the call is over for the server */
    int code;         /* the status sent (metrics) */
    double t_start;   /* when the handler thread began (metrics) */
    /* tags: the addresses of these, so that each batch is plucked by its own */
    char tag_op, tag_close;
    pthread_t thread;
    bool finished; /* under srv->mu: the thread is done with everything but its record */
    int32_t token;   /* index of the bearer token it carried, -1: none or exempt */
    struct td_net_call *next; /* srv->calls */
    /* A fake call (net.h: handlers without gRPC) has this record and no
     * gRPC objects at all; every accessor below checks it first. */
    td_net_fake *fake;
    bool dispatched; /* fake calls: one dispatch each */
};

struct td_net_server {
    grpc_server *srv;
    grpc_completion_queue *notify_cq; /* next queue: new calls, shutdown */
    td_net_method *methods;
    size_t n_methods, cap_methods;
    int32_t max_calls, max_msg;
    char name[64];
    /* bearer tokens (copies; none: no authentication) and the method prefix
     * that needs none */
    char **tokens;
    size_t n_tokens;
    char *auth_exempt;
    int32_t max_per_token;   /* 0: no cap */
    int32_t *token_active;   /* (n_tokens) calls in flight per token (under mu) */
    bool listening, started, shut_down;
    pthread_t acceptor;
    bool acceptor_running;
    char tag_shutdown;
    td_net_call *pending; /* the call record gRPC will fill next (acceptor's) */

    pthread_mutex_t mu;
    pthread_cond_t cv; /* signalled when a handler finishes */
    int32_t active;    /* handler threads not yet finished (under mu) */
    td_net_call *calls; /* records with a thread, finished or not (under mu) */

    atomic_bool stopping;   /* shutdown began: post no new request */
    atomic_bool cancelling; /* grace is over: handlers see cancelled */
};

/* ---- creation ---- */

/* The token copies (wiped) and the exempt prefix. */
static void auth_free(td_net_server *s) {
    free(s->token_active);
    s->token_active = NULL;
    td_net_tokens_free(s->tokens, s->n_tokens);
    s->tokens = NULL;
    s->n_tokens = 0;
    free(s->auth_exempt);
    s->auth_exempt = NULL;
}

td_net_server *td_net_server_create(const td_net_server_opts *opts, td_err *err) {
    td_net_server *s = calloc(1, sizeof *s);
    if (!s) {
        td_err_set(err, TD_E_NOMEM, "net server: out of memory");
        return NULL;
    }
    s->max_calls = opts && opts->max_calls > 0 ? opts->max_calls : TD_NET_DEFAULT_MAX_CALLS;
    s->max_msg = opts && opts->max_message_bytes > 0 ? opts->max_message_bytes : TD_NET_DEFAULT_MAX_MESSAGE;
    snprintf(s->name, sizeof s->name, "%s", opts && opts->name ? opts->name : "server");
    if (opts && opts->tokens && opts->n_tokens > 0) {
        const char *ex = opts->auth_exempt_prefix && *opts->auth_exempt_prefix ? opts->auth_exempt_prefix
                                                                                 : "/grpc.health.v1.";
        s->tokens = calloc(opts->n_tokens, sizeof *s->tokens);
        s->auth_exempt = strdup(ex);
        s->token_active = calloc(opts->n_tokens, sizeof *s->token_active);
        s->max_per_token = opts->max_calls_per_token > 0 ? opts->max_calls_per_token : 0;
        bool ok = s->tokens && s->auth_exempt && s->token_active;
        for (size_t i = 0; ok && i < opts->n_tokens; i++) {
            /* an empty token would accept "Bearer " with nothing after it */
            if (!opts->tokens[i] || !*opts->tokens[i]) {
                s->n_tokens = opts->n_tokens; /* the array's size: unset entries are NULL */
                auth_free(s);
                free(s);
                td_err_set(err, TD_E_ARG, "net server: empty bearer token");
                return NULL;
            }
            ok = (s->tokens[i] = strdup(opts->tokens[i])) != NULL;
        }
        s->n_tokens = opts->n_tokens;
        if (!ok) {
            auth_free(s);
            free(s);
            td_err_set(err, TD_E_NOMEM, "net server: out of memory");
            return NULL;
        }
    }
    atomic_init(&s->stopping, false);
    atomic_init(&s->cancelling, false);
    pthread_condattr_t ca;
    if (pthread_condattr_init(&ca) != 0) {
        auth_free(s);
        free(s);
        td_err_set(err, TD_E_NOMEM, "net server: condattr");
        return NULL;
    }
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* grace is a duration */
    int rc = pthread_cond_init(&s->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (rc != 0) {
        auth_free(s);
        free(s);
        td_err_set(err, TD_E_NOMEM, "net server: cond");
        return NULL;
    }
    if (pthread_mutex_init(&s->mu, NULL) != 0) {
        pthread_cond_destroy(&s->cv);
        auth_free(s);
        free(s);
        td_err_set(err, TD_E_NOMEM, "net server: mutex");
        return NULL;
    }
    td_net_init();
    /* Message limits both ways; client keepalive pings allowed every 500 ms
     * even with no call in flight, so that a client pinging every second is
     * not sent away with "too_many_pings". */
    int32_t max_age = opts && opts->max_connection_age_ms > 0 ? opts->max_connection_age_ms : 0;
    grpc_arg args[6] = {
        {.type = GRPC_ARG_INTEGER, .key = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH, .value.integer = s->max_msg},
        {.type = GRPC_ARG_INTEGER, .key = GRPC_ARG_MAX_SEND_MESSAGE_LENGTH, .value.integer = s->max_msg},
        {.type = GRPC_ARG_INTEGER, .key = GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, .value.integer = 500},
        {.type = GRPC_ARG_INTEGER, .key = GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, .value.integer = 1},
        /* optional: a maximum connection age, the grace equal to it */
        {.type = GRPC_ARG_INTEGER, .key = GRPC_ARG_MAX_CONNECTION_AGE_MS, .value.integer = max_age},
        {.type = GRPC_ARG_INTEGER, .key = GRPC_ARG_MAX_CONNECTION_AGE_GRACE_MS, .value.integer = max_age},
    };
    grpc_channel_args ch_args = {.num_args = max_age > 0 ? 6 : 4, .args = args};
    s->srv = grpc_server_create(&ch_args, NULL);
    s->notify_cq = grpc_completion_queue_create_for_next(NULL);
    if (!s->srv || !s->notify_cq) {
        if (s->srv) grpc_server_destroy(s->srv);
        if (s->notify_cq) grpc_completion_queue_destroy(s->notify_cq);
        td_net_shutdown();
        pthread_mutex_destroy(&s->mu);
        pthread_cond_destroy(&s->cv);
        auth_free(s);
        free(s);
        td_err_set(err, TD_E_NOMEM, "net server: gRPC could not create the server");
        return NULL;
    }
    grpc_server_register_completion_queue(s->srv, s->notify_cq, NULL);
    return s;
}

int td_net_server_add(td_net_server *s, const char *path, const ProtobufCMessageDescriptor *request_type,
                      bool server_streaming, td_net_handler handler, void *user, td_err *err) {
    if (!s || !path || path[0] != '/' || !request_type || !handler)
        return td_err_set(err, TD_E_ARG, "net server add: path (\"/pkg.Service/Method\"), type and handler needed");
    if (s->started) return td_err_set(err, TD_E_ARG, "net server add %s: server already started", path);
    for (size_t i = 0; i < s->n_methods; i++)
        if (strcmp(s->methods[i].path, path) == 0)
            return td_err_set(err, TD_E_ARG, "net server add: %s registered twice", path);
    if (s->n_methods == s->cap_methods) {
        size_t cap = s->cap_methods ? s->cap_methods * 2 : 8;
        td_net_method *m = realloc(s->methods, cap * sizeof *m);
        if (!m) return td_err_set(err, TD_E_NOMEM, "net server add: out of memory");
        s->methods = m;
        s->cap_methods = cap;
    }
    char *p = strdup(path);
    if (!p) return td_err_set(err, TD_E_NOMEM, "net server add: out of memory");
    s->methods[s->n_methods++] =
        (td_net_method){.path = p, .type = request_type, .streaming = server_streaming, .fn = handler, .user = user};
    return 0;
}

int td_net_server_listen(td_net_server *s, const char *addr, td_err *err) {
    if (!s || !addr) return td_err_set(err, TD_E_ARG, "net server listen: address needed");
    if (s->started) return td_err_set(err, TD_E_ARG, "net server listen %s: server already started", addr);
    grpc_server_credentials *creds = grpc_insecure_server_credentials_create();
    if (!creds) return td_err_set(err, TD_E_NOMEM, "net server listen: no credentials");
    int port = grpc_server_add_http2_port(s->srv, addr, creds);
    grpc_server_credentials_release(creds);
    if (port <= 0) return td_err_set(err, TD_E_IO, "net server %s: cannot listen on %s", s->name, addr);
    s->listening = true;
    return port;
}

int td_net_server_listen_tls(td_net_server *s, const char *addr, const td_net_tls *tls, td_err *err) {
    if (!s || !addr || !tls) return td_err_set(err, TD_E_ARG, "net server listen: address and TLS settings needed");
    if (s->started) return td_err_set(err, TD_E_ARG, "net server listen %s: server already started", addr);
    grpc_server_credentials *creds = td_net_tls_server_creds(tls, err);
    if (!creds) return err ? err->code : TD_E_IO;
    int port = grpc_server_add_http2_port(s->srv, addr, creds);
    grpc_server_credentials_release(creds);
    if (port <= 0) return td_err_set(err, TD_E_IO, "net server %s: cannot listen (TLS) on %s", s->name, addr);
    s->listening = true;
    return port;
}

/* ---- call records ---- */

static td_net_call *call_new(td_net_server *s) {
    td_net_call *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->cq = grpc_completion_queue_create_for_pluck(NULL);
    if (!c->cq) {
        free(c);
        return NULL;
    }
    c->srv = s;
    grpc_call_details_init(&c->details);
    grpc_metadata_array_init(&c->md);
    return c;
}

/* Everything gRPC gave the record; every posted tag has been plucked. */
static void call_release(td_net_call *c) {
    if (c->call) grpc_call_unref(c->call);
    c->call = NULL;
    grpc_call_details_destroy(&c->details);
    grpc_metadata_array_destroy(&c->md);
    if (c->peer) gpr_free(c->peer);
    c->peer = NULL;
    /* all tags plucked: the queue shuts down at once */
    grpc_completion_queue_shutdown(c->cq);
    grpc_completion_queue_destroy(c->cq);
    c->cq = NULL;
}

/* Starts a batch on the call and waits for it on the call's queue until
 * deadline; on a timeout the call is cancelled (which completes the batch)
 * and *timed_out set. Returns the batch's success. */
static bool call_batch(td_net_call *c, const grpc_op *ops, size_t n, gpr_timespec deadline, bool *timed_out) {
    if (timed_out) *timed_out = false;
    if (grpc_call_start_batch(c->call, ops, n, &c->tag_op, NULL) != GRPC_CALL_OK) return false;
    grpc_event ev = grpc_completion_queue_pluck(c->cq, &c->tag_op, deadline, NULL);
    if (ev.type == GRPC_QUEUE_TIMEOUT) {
        if (timed_out) *timed_out = true;
        grpc_call_cancel(c->call, NULL);
        ev = grpc_completion_queue_pluck(c->cq, &c->tag_op, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        return false;
    }
    return ev.type == GRPC_OP_COMPLETE && ev.success;
}

static void close_post(td_net_call *c) {
    grpc_op op = {.op = GRPC_OP_RECV_CLOSE_ON_SERVER};
    op.data.recv_close_on_server.cancelled = &c->close_cancelled;
    c->close_posted = grpc_call_start_batch(c->call, &op, 1, &c->tag_close, NULL) == GRPC_CALL_OK;
}

/* Non-blocking (deadline in the past) or blocking wait for the close tag. */
static void close_check(td_net_call *c, bool block) {
    if (!c->close_posted || c->close_done) return;
    gpr_timespec dl = block ? gpr_inf_future(GPR_CLOCK_REALTIME) : gpr_inf_past(GPR_CLOCK_MONOTONIC);
    grpc_event ev = grpc_completion_queue_pluck(c->cq, &c->tag_close, dl, NULL);
    if (ev.type == GRPC_OP_COMPLETE) c->close_done = true;
}

static int send_status(td_net_call *c, grpc_status_code code, const char *msg, grpc_byte_buffer *bb) {
    if (c->status_sent) { /* one status per call */
        if (c->fake) td_net_fake_misuse(c->fake, "answered twice");
        return TD_E_ARG;
    }
    c->status_sent = true;
    c->code = code;
    if (c->fake) { /* recorded even for a gone client: the harness checks what the handler chose */
        td_net_fake_set_status(c->fake, (int)code, msg);
        return c->gone || td_net_fake_gone(c->fake) ? TD_E_IO : 0;
    }
    if (c->gone) return TD_E_IO;
    grpc_slice details = grpc_slice_from_copied_string(msg ? msg : "");
    grpc_op ops[3];
    size_t n = 0;
    memset(ops, 0, sizeof ops);
    if (bb) {
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n].data.send_message.send_message = bb;
        n++;
    }
    ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[n].data.send_status_from_server.status = code;
    ops[n].data.send_status_from_server.status_details = &details;
    n++;
    bool ok = call_batch(c, ops, n, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    grpc_slice_unref(details);
    if (!ok) {
        c->gone = true;
        return TD_E_IO;
    }
    return 0;
}

/* ---- the handler thread ---- */

/* Whether the call may run: no tokens configured, an exempt method, or an
 * "authorization: Bearer <token>" entry with one of the tokens (then
 * c->token is its index). */
static bool call_authorized(td_net_call *c) {
    const td_net_server *s = c->srv;
    c->token = -1;
    if (s->n_tokens == 0) return true;
    if (strncmp(c->m->path, s->auth_exempt, strlen(s->auth_exempt)) == 0) return true;
    if (c->fake) {
        const td_net_metadata *md;
        size_t n = td_net_fake_md(c->fake, &md);
        for (size_t i = 0; i < n; i++) {
            if (strcmp(md[i].key, "authorization") != 0) continue;
            int32_t k = td_net_bearer_match(s->tokens, s->n_tokens, md[i].value, strlen(md[i].value));
            if (k >= 0) c->token = k;
        }
        return c->token >= 0;
    }
    for (size_t i = 0; i < c->md.count; i++) {
        const grpc_metadata *e = &c->md.metadata[i];
        if (grpc_slice_str_cmp(e->key, "authorization") != 0) continue;
        int32_t k = td_net_bearer_match(s->tokens, s->n_tokens, (const char *)GRPC_SLICE_START_PTR(e->value),
                                        GRPC_SLICE_LENGTH(e->value));
        if (k >= 0) c->token = k;
    }
    return c->token >= 0;
}

/* Counts the call against its token's cap; false when the token has
 * max_calls_per_token calls in flight already. */
static bool token_admit(td_net_call *c, int32_t *in_flight) {
    td_net_server *s = c->srv;
    if (c->token < 0 || s->max_per_token == 0) {
        c->token = -1; /* not counted */
        return true;
    }
    pthread_mutex_lock(&s->mu);
    *in_flight = s->token_active[c->token];
    bool ok = *in_flight < s->max_per_token;
    if (ok) s->token_active[c->token]++;
    pthread_mutex_unlock(&s->mu);
    if (!ok) c->token = -1;
    return ok;
}

/* The method's handler on the unpacked request (freed here), then the
 * layer's answer for a handler that returned without one. */
static void run_handler(td_net_call *c, ProtobufCMessage *req) {
    c->m->fn(c, req, c->m->user);
    protobuf_c_message_free_unpacked(req, NULL);
    if (!c->status_sent && c->fake && !td_net_call_cancelled(c))
        td_net_fake_misuse(c->fake, "returned without answering a client that was still there");
    /* a handler that gave up because the deadline passed may beat
     * gRPC's own timer: the client still hears DEADLINE_EXCEEDED */
    if (!c->status_sent && td_net_call_deadline_ms(c) <= 0)
        send_status(c, GRPC_STATUS_DEADLINE_EXCEEDED, "deadline exceeded", NULL);
    if (!c->status_sent) send_status(c, GRPC_STATUS_INTERNAL, "handler returned without answering", NULL);
}

static void *call_thread(void *arg) {
    td_net_call *c = arg;
    td_net_server *s = c->srv;
    const td_net_method *m = c->m;
    c->t_start = td_now_sec();
    td_metrics_call_begin(s->name);
    close_post(c);
    grpc_byte_buffer *bb = NULL;
    if (!call_authorized(c)) {
        /* before the request is read: an unauthenticated client costs no
         * unpacking and reaches no handler. The value is not logged. */
        td_log(TD_LOG_DEBUG, NULL, "%s: %s from %s: no valid bearer token", s->name, m->path,
               c->peer ? c->peer : "?");
        grpc_op hop = {.op = GRPC_OP_SEND_INITIAL_METADATA};
        if (!call_batch(c, &hop, 1, gpr_inf_future(GPR_CLOCK_REALTIME), NULL)) c->gone = true;
        send_status(c, GRPC_STATUS_UNAUTHENTICATED, "missing or invalid bearer token", NULL);
        goto done;
    }
    int32_t in_flight = 0;
    if (!token_admit(c, &in_flight)) {
        char msg[160];
        snprintf(msg, sizeof msg, "too many calls in flight for this token (%" PRId32 "), retry later", in_flight);
        td_log(TD_LOG_INFO, NULL, "%s: %s from %s: %s", s->name, m->path, c->peer ? c->peer : "?", msg);
        grpc_op hop = {.op = GRPC_OP_SEND_INITIAL_METADATA};
        if (!call_batch(c, &hop, 1, gpr_inf_future(GPR_CLOCK_REALTIME), NULL)) c->gone = true;
        td_metrics_rejected("max_calls_per_token");
        send_status(c, GRPC_STATUS_RESOURCE_EXHAUSTED, msg, NULL);
        goto done;
    }
    grpc_op ops[2];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[1].op = GRPC_OP_RECV_MESSAGE;
    ops[1].data.recv_message.recv_message = &bb;
    if (!call_batch(c, ops, 2, gpr_inf_future(GPR_CLOCK_REALTIME), NULL)) {
        c->gone = true; /* client gone before its request arrived, or too big */
    } else if (!bb) {
        send_status(c, GRPC_STATUS_INVALID_ARGUMENT, "malformed request: no message", NULL);
    } else {
        ProtobufCMessage *req = td_net_unpack(m->type, bb);
        if (!req) {
            char msg[256];
            snprintf(msg, sizeof msg, "malformed request: not a %s", m->type->name);
            send_status(c, GRPC_STATUS_INVALID_ARGUMENT, msg, NULL);
        } else {
            run_handler(c, req);
        }
    }
done:
    td_metrics_call_end(s->name, m->path, td_net_code_name(c->gone ? TD_NET_CANCELLED : c->code),
                        td_now_sec() - c->t_start);
    if (bb) grpc_byte_buffer_destroy(bb);
    /* a call without a status (gone, or its status batch failed) is
     * cancelled, so that the close tag is sure to come */
    if (c->gone) grpc_call_cancel(c->call, NULL);
    close_check(c, true);
    call_release(c);
    pthread_mutex_lock(&s->mu);
    if (c->token >= 0) s->token_active[c->token]--;
    c->finished = true;
    s->active--;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* Joins and frees the records of finished threads (all of them when all). */
static void reap(td_net_server *s, bool all) {
    for (;;) {
        td_net_call *done = NULL;
        pthread_mutex_lock(&s->mu);
        for (td_net_call **pp = &s->calls; *pp; pp = &(*pp)->next) {
            if ((*pp)->finished || all) {
                done = *pp;
                *pp = done->next;
                break;
            }
        }
        pthread_mutex_unlock(&s->mu);
        if (!done) return;
        pthread_join(done->thread, NULL);
        free(done);
    }
}

/* Answers a call on the acceptor's thread without a handler. */
static void reject(td_net_call *c, grpc_status_code code, const char *msg) {
    grpc_slice details = grpc_slice_from_copied_string(msg);
    grpc_op ops[3];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[1].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[1].data.send_status_from_server.status = code;
    ops[1].data.send_status_from_server.status_details = &details;
    ops[2].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    ops[2].data.recv_close_on_server.cancelled = &c->close_cancelled;
    call_batch(c, ops, 3, td_net_deadline_after(TD_NET_REJECT_WAIT_MS), NULL);
    grpc_slice_unref(details);
    call_release(c);
    free(c);
}

static const td_net_method *route(const td_net_server *s, grpc_slice method) {
    for (size_t i = 0; i < s->n_methods; i++)
        if (grpc_slice_str_cmp(method, s->methods[i].path) == 0) return &s->methods[i];
    return NULL;
}

/* Asks gRPC for the next call into a fresh record. */
static void post_request(td_net_server *s) {
    s->pending = NULL;
    if (atomic_load(&s->stopping)) return;
    td_net_call *c = call_new(s);
    if (!c) return; /* out of memory: this server takes no more calls */
    if (grpc_server_request_call(s->srv, &c->call, &c->details, &c->md, c->cq, s->notify_cq, c) != GRPC_CALL_OK) {
        call_release(c);
        free(c);
        return;
    }
    s->pending = c;
}

static void dispatch(td_net_server *s, td_net_call *c) {
    c->peer = grpc_call_get_peer(c->call);
    c->m = route(s, c->details.method);
    if (!c->m) {
        char msg[256];
        char *path = grpc_slice_to_c_string(c->details.method);
        snprintf(msg, sizeof msg, "unknown method %s", path ? path : "?");
        gpr_free(path);
        reject(c, GRPC_STATUS_UNIMPLEMENTED, msg);
        return;
    }
    reap(s, false);
    pthread_mutex_lock(&s->mu);
    int32_t active = s->active;
    bool busy = active >= s->max_calls;
    if (!busy) s->active++;
    pthread_mutex_unlock(&s->mu);
    if (busy) {
        char msg[256];
        snprintf(msg, sizeof msg, "server busy: %" PRId32 " calls in flight, retry later", active);
        td_metrics_call_refused(s->name, c->m->path, "RESOURCE_EXHAUSTED", "max_calls");
        reject(c, GRPC_STATUS_RESOURCE_EXHAUSTED, msg);
        return;
    }
    pthread_mutex_lock(&s->mu);
    int rc = pthread_create(&c->thread, NULL, call_thread, c);
    if (rc == 0) {
        c->next = s->calls;
        s->calls = c;
    } else {
        s->active--;
    }
    pthread_mutex_unlock(&s->mu);
    if (rc != 0) reject(c, GRPC_STATUS_RESOURCE_EXHAUSTED, "server cannot start a thread for the call, retry later");
}

static void *acceptor_thread(void *arg) {
    td_net_server *s = arg;
    for (;;) {
        grpc_event ev = grpc_completion_queue_next(s->notify_cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        if (ev.type != GRPC_OP_COMPLETE) break; /* queue shut down: not before destroy */
        if (ev.tag == &s->tag_shutdown) break;  /* every call is over */
        td_net_call *c = ev.tag;
        if (c == s->pending) s->pending = NULL;
        if (!ev.success) { /* the request was cancelled by shutdown */
            call_release(c);
            free(c);
            continue;
        }
        post_request(s); /* first, so that the next call is not kept waiting */
        dispatch(s, c);
    }
    return NULL;
}

int td_net_server_start(td_net_server *s, td_err *err) {
    if (!s) return td_err_set(err, TD_E_ARG, "net server start: no server");
    if (s->started) return td_err_set(err, TD_E_ARG, "net server %s: started twice", s->name);
    if (!s->listening) return td_err_set(err, TD_E_ARG, "net server %s: start before listen", s->name);
    grpc_server_start(s->srv);
    s->started = true;
    post_request(s);
    if (!s->pending) return td_err_set(err, TD_E_NOMEM, "net server %s: cannot ask gRPC for calls", s->name);
    if (pthread_create(&s->acceptor, NULL, acceptor_thread, s) != 0)
        return td_err_set(err, TD_E_NOMEM, "net server %s: cannot start the acceptor thread", s->name);
    s->acceptor_running = true;
    return 0;
}

/* ---- shutdown ---- */

void td_net_server_shutdown(td_net_server *s, int32_t grace_ms) {
    if (!s || s->shut_down) return;
    s->shut_down = true;
    atomic_store(&s->stopping, true);
    grpc_server_shutdown_and_notify(s->srv, s->notify_cq, &s->tag_shutdown);
    if (grace_ms > 0) {
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_sec += grace_ms / 1000;
        until.tv_nsec += (long)(grace_ms % 1000) * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        pthread_mutex_lock(&s->mu);
        while (s->active > 0)
            if (pthread_cond_timedwait(&s->cv, &s->mu, &until) == ETIMEDOUT) break;
        pthread_mutex_unlock(&s->mu);
    }
    atomic_store(&s->cancelling, true);
    grpc_server_cancel_all_calls(s->srv);
    if (s->acceptor_running) {
        pthread_join(s->acceptor, NULL); /* it ends on the shutdown tag */
        s->acceptor_running = false;
    } else {
        /* never started (or its acceptor could not start): wait for the
         * tag here, freeing the request that shutdown failed */
        for (;;) {
            grpc_event ev = grpc_completion_queue_next(s->notify_cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
            if (ev.type != GRPC_OP_COMPLETE || ev.tag == &s->tag_shutdown) break;
            td_net_call *c = ev.tag;
            call_release(c);
            free(c);
        }
    }
    reap(s, true);
    grpc_server_destroy(s->srv);
    s->srv = NULL;
    grpc_completion_queue_shutdown(s->notify_cq);
    for (;;) { /* a request that failed after the shutdown tag */
        grpc_event ev = grpc_completion_queue_next(s->notify_cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN) break;
        if (ev.type == GRPC_OP_COMPLETE && ev.tag != &s->tag_shutdown) {
            td_net_call *c = ev.tag;
            call_release(c);
            free(c);
        }
    }
    grpc_completion_queue_destroy(s->notify_cq);
    s->notify_cq = NULL;
}

void td_net_server_destroy(td_net_server *s) {
    if (!s) return;
    td_net_server_shutdown(s, 0);
    for (size_t i = 0; i < s->n_methods; i++) free(s->methods[i].path);
    free(s->methods);
    auth_free(s);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s);
    td_net_shutdown();
}

int32_t td_net_server_active(const td_net_server *s) {
    if (!s) return 0;
    pthread_mutex_t *mu = (pthread_mutex_t *)&s->mu; /* reading under the lock mutates only the lock */
    pthread_mutex_lock(mu);
    int32_t n = s->active;
    pthread_mutex_unlock(mu);
    return n;
}

/* ---- fake calls (net.h: handlers without gRPC) ---- */

td_net_call *td_net_fake_call_create(const td_net_fake_opts *opts, td_err *err) {
    td_net_call *c = calloc(1, sizeof *c);
    if (!c) {
        td_err_set(err, TD_E_NOMEM, "fake call: out of memory");
        return NULL;
    }
    if (!(c->fake = td_net_fake_new(opts, err))) {
        free(c);
        return NULL;
    }
    c->token = -1;
    return c;
}

void td_net_fake_call_destroy(td_net_call *c) {
    if (!c) return;
    td_net_fake_free(c->fake);
    free(c);
}

size_t td_net_server_methods(const td_net_server *s, td_net_method_info *out, size_t max) {
    if (!s) return 0;
    for (size_t i = 0; i < s->n_methods && i < max; i++)
        out[i] = (td_net_method_info){s->methods[i].path, s->methods[i].type, s->methods[i].streaming};
    return s->n_methods;
}

/* A unary reply on a fake call: the message, then status OK. */
static int fake_reply(td_net_call *c, const ProtobufCMessage *response) {
    if (c->status_sent) {
        td_net_fake_misuse(c->fake, "answered twice");
        return TD_E_ARG;
    }
    size_t max = c->srv ? (size_t)c->srv->max_msg : SIZE_MAX;
    int rc = td_net_call_cancelled(c) ? TD_E_IO : td_net_fake_record(c->fake, response, max);
    if (rc == TD_E_IO) c->gone = true;
    if (rc == TD_E_NOMEM) {
        send_status(c, GRPC_STATUS_INTERNAL, "server out of memory packing the reply", NULL);
        return rc;
    }
    int st = send_status(c, GRPC_STATUS_OK, "", NULL);
    return rc ? rc : st;
}

int td_net_server_dispatch(td_net_server *s, const char *path, const uint8_t *bytes, size_t len, td_net_call *c) {
    if (!s || !path || !c || !c->fake || c->dispatched || (len && !bytes)) return TD_E_ARG;
    c->dispatched = true;
    c->srv = s;
    const td_net_method *m = NULL;
    for (size_t i = 0; i < s->n_methods && !m; i++)
        if (strcmp(s->methods[i].path, path) == 0) m = &s->methods[i];
    if (!m) { /* as reject(): no handler, the path named */
        char msg[256];
        snprintf(msg, sizeof msg, "unknown method %s", path);
        send_status(c, GRPC_STATUS_UNIMPLEMENTED, msg, NULL);
        return c->code;
    }
    c->m = m;
    /* the order of call_thread: token, per-token cap, size, unpack, handler */
    if (!call_authorized(c)) {
        send_status(c, GRPC_STATUS_UNAUTHENTICATED, "missing or invalid bearer token", NULL);
        return c->code;
    }
    int32_t in_flight = 0;
    if (!token_admit(c, &in_flight)) {
        char msg[160];
        snprintf(msg, sizeof msg, "too many calls in flight for this token (%" PRId32 "), retry later", in_flight);
        send_status(c, GRPC_STATUS_RESOURCE_EXHAUSTED, msg, NULL);
        return c->code;
    }
    if (len > (size_t)s->max_msg) { /* gRPC refuses it before the server sees it */
        char msg[128];
        snprintf(msg, sizeof msg, "received message larger than max (%zu vs. %" PRId32 ")", len, s->max_msg);
        send_status(c, GRPC_STATUS_RESOURCE_EXHAUSTED, msg, NULL);
    } else {
        ProtobufCMessage *req = td_net_unpack_bytes(m->type, bytes, len);
        if (!req) {
            char msg[256];
            snprintf(msg, sizeof msg, "malformed request: not a %s", m->type->name);
            send_status(c, GRPC_STATUS_INVALID_ARGUMENT, msg, NULL);
        } else {
            run_handler(c, req);
        }
    }
    if (c->token >= 0) {
        pthread_mutex_lock(&s->mu);
        s->token_active[c->token]--;
        pthread_mutex_unlock(&s->mu);
        c->token = -1;
    }
    if (!m->streaming && c->code == GRPC_STATUS_OK && !td_net_call_cancelled(c) && td_net_fake_count(c->fake) != 1)
        td_net_fake_misuse(c->fake, "a unary call ended OK without exactly one message");
    return c->code;
}

bool td_net_fake_call_status(const td_net_call *c, td_net_status *st) {
    if (!c || !c->fake) {
        if (st) *st = (td_net_status){.code = TD_NET_UNKNOWN, .msg = "not a fake call"};
        return false;
    }
    return td_net_fake_get_status(c->fake, st);
}

size_t td_net_fake_call_messages(const td_net_call *c) { return c && c->fake ? td_net_fake_count(c->fake) : 0; }

const uint8_t *td_net_fake_call_message(const td_net_call *c, size_t i, size_t *len) {
    if (!c || !c->fake) {
        if (len) *len = 0;
        return NULL;
    }
    return td_net_fake_msg(c->fake, i, len);
}

const char *td_net_fake_call_misuse(const td_net_call *c) { return c && c->fake ? td_net_fake_first_misuse(c->fake) : NULL; }

/* ---- inside a handler ---- */

const char *td_net_call_method(const td_net_call *c) { return c && c->m ? c->m->path : ""; }

const char *td_net_call_peer(const td_net_call *c) {
    if (c && c->fake) return td_net_fake_peer(c->fake);
    return c && c->peer ? c->peer : "";
}

int64_t td_net_call_deadline_ms(const td_net_call *c) {
    if (!c) return INT64_MAX;
    if (c->fake) return td_net_fake_deadline_ms(c->fake);
    gpr_timespec dl = c->details.deadline;
    if (gpr_time_cmp(dl, gpr_inf_future(dl.clock_type)) == 0) return INT64_MAX;
    gpr_timespec now = gpr_now(dl.clock_type);
    return gpr_time_to_millis(gpr_time_sub(dl, now));
}

bool td_net_call_cancelled(td_net_call *c) {
    if (!c) return true;
    if (c->fake) return c->gone || td_net_fake_gone(c->fake) || (c->srv && atomic_load(&c->srv->cancelling));
    if (c->gone || atomic_load(&c->srv->cancelling)) return true;
    if (td_net_call_deadline_ms(c) <= 0) return true;
    close_check(c, false);
    return c->close_done && c->close_cancelled;
}

int td_net_call_reply(td_net_call *c, const ProtobufCMessage *response) {
    if (!c || !response) return TD_E_ARG;
    if (c->fake) return fake_reply(c, response);
    grpc_byte_buffer *bb = td_net_pack(response);
    if (!bb) {
        send_status(c, GRPC_STATUS_INTERNAL, "server out of memory packing the reply", NULL);
        return TD_E_NOMEM;
    }
    int rc = send_status(c, GRPC_STATUS_OK, "", bb);
    grpc_byte_buffer_destroy(bb);
    return rc;
}

int td_net_call_send(td_net_call *c, const ProtobufCMessage *msg, int32_t write_timeout_ms) {
    if (!c || !msg) return TD_E_ARG;
    if (c->status_sent) {
        if (c->fake) td_net_fake_misuse(c->fake, "sent a message after its status");
        return TD_E_ARG;
    }
    if (td_net_call_cancelled(c)) return TD_E_IO;
    if (c->fake) {
        int rc = td_net_fake_record(c->fake, msg, c->srv ? (size_t)c->srv->max_msg : SIZE_MAX);
        if (rc == TD_E_IO) c->gone = true;
        return rc;
    }
    grpc_byte_buffer *bb = td_net_pack(msg);
    if (!bb) return TD_E_NOMEM;
    grpc_op op = {.op = GRPC_OP_SEND_MESSAGE};
    op.data.send_message.send_message = bb;
    bool timed_out = false;
    bool ok = call_batch(c, &op, 1, td_net_deadline_after(write_timeout_ms), &timed_out);
    grpc_byte_buffer_destroy(bb);
    if (!ok) {
        c->gone = true;
        return timed_out ? TD_E_RANGE : TD_E_IO;
    }
    return 0;
}

int td_net_call_finish(td_net_call *c) {
    if (!c) return TD_E_ARG;
    return send_status(c, GRPC_STATUS_OK, "", NULL);
}

int td_net_call_fail(td_net_call *c, int code, const char *fmt, ...) {
    if (!c) return TD_E_ARG;
    if (code <= 0 || code > TD_NET_UNAUTHENTICATED) code = TD_NET_UNKNOWN; /* OK is not a failure */
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return send_status(c, (grpc_status_code)code, msg, NULL);
}
