/* test_net.c — common/net/ over loopback with the real generated types of
 * grpc.health.v1 (Check unary, Watch streaming): the OK paths, every status
 * the layer itself produces (UNIMPLEMENTED, INVALID_ARGUMENT for bytes that
 * do not unpack, RESOURCE_EXHAUSTED for oversized messages and a full
 * server, INTERNAL for a handler that does not answer), a handler's own
 * error reaching the client intact, deadlines and cancellation as a handler
 * sees them, a send to a client that never reads timing out, and shutdown
 * with a call in flight. Pass/fail never depends on
 * timing beyond generous waits (a handler that blocks until cancelled).
 *
 * Transport security: a throwaway CA made by `openssl` at test time signs a
 * server certificate (IP:127.0.0.1, DNS:localhost) and a client one: a call
 * over TLS works, a plaintext client to the TLS port fails, mutual TLS
 * refuses a client without a certificate, unreadable files are errors that
 * name them; bearer tokens: none or a wrong one is UNAUTHENTICATED, a right
 * one passes, health stays open.
 *
 * Fake calls: the same handlers on a server that never starts, through
 * td_net_server_dispatch: the layer's statuses, the answers recorded, the
 * rules a handler breaks, deadlines, a client that leaves, tokens. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "grpc/health/v1/health.pb-c.h"
#include "net/net.h"
#include "net/net_internal.h"

#define CHECK "/grpc.health.v1.Health/Check"
#define WATCH "/grpc.health.v1.Health/Watch"
#define WATCH_N 5
#define WAIT_MS 20000 /* the most any test waits for something that must happen */

typedef struct fixture {
    td_net_server *srv;
    td_net_channel *ch;
    char target[64];
    atomic_bool release;      /* lets a blocking handler return */
    atomic_int saw_cancel;    /* a blocking handler saw td_net_call_cancelled */
    atomic_int send_failed;   /* a streaming handler's send failed */
    atomic_int handler_done;  /* blocking/forever handlers that returned */
    atomic_int blocking;      /* blocking handlers that began (past admission) */
    char peer[128], method[128];
    int64_t deadline_ms;
    int flood_rc; /* the failed send of the "flood" stream */
    /* Handlers run on server threads, where a cmocka assertion cannot unwind
     * the test (it ends the process without a word); they count what went
     * wrong here instead and the tests check it from the main thread. */
    atomic_int handler_wrong;
} fixture;

/* A handler's expectation: counted, and said on stderr, when it fails. */
#define HANDLER_EXPECT(f, cond)                                                         \
    do {                                                                                \
        if (!(cond)) {                                                                  \
            fprintf(stderr, "%s:%d: handler expected %s\n", __FILE__, __LINE__, #cond); \
            atomic_fetch_add(&(f)->handler_wrong, 1);                                   \
        }                                                                               \
    } while (0)

static void sleep_ms(int ms) {
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Polls cond(f) every 5 ms for up to WAIT_MS. */
static bool wait_for(bool (*cond)(fixture *), fixture *f) {
    for (int i = 0; i < WAIT_MS / 5; i++) {
        if (cond(f)) return true;
        sleep_ms(5);
    }
    return cond(f);
}
static bool one_active(fixture *f) { return td_net_server_active(f->srv) == 1; }
static bool none_active(fixture *f) { return td_net_server_active(f->srv) == 0; }
static bool one_blocking(fixture *f) { return atomic_load(&f->blocking) == 1; }
static bool handler_returned(fixture *f) { return atomic_load(&f->handler_done) > 0; }

/* ---- handlers ---- */

static void check_handler(td_net_call *call, const ProtobufCMessage *request, void *user) {
    fixture *f = user;
    const Grpc__Health__V1__HealthCheckRequest *req = (const Grpc__Health__V1__HealthCheckRequest *)request;
    Grpc__Health__V1__HealthCheckResponse resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    resp.status = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
    if (strcmp(req->service, "bad") == 0) {
        td_net_call_fail(call, TD_NET_INVALID_ARGUMENT, "no such service: %s (%d)", req->service, 42);
        return;
    }
    if (strcmp(req->service, "silent") == 0) return; /* the layer answers INTERNAL */
    if (strcmp(req->service, "info") == 0) {
        snprintf(f->peer, sizeof f->peer, "%s", td_net_call_peer(call));
        snprintf(f->method, sizeof f->method, "%s", td_net_call_method(call));
        f->deadline_ms = td_net_call_deadline_ms(call);
    }
    if (strcmp(req->service, "block") == 0) {
        atomic_fetch_add(&f->blocking, 1);
        while (!atomic_load(&f->release) && !td_net_call_cancelled(call)) sleep_ms(2);
        if (td_net_call_cancelled(call)) {
            atomic_fetch_add(&f->saw_cancel, 1); /* gives up without an answer, as a handler should */
        } else if (td_net_call_reply(call, &resp.base) != 0) {
            atomic_fetch_add(&f->send_failed, 1);
        }
        atomic_fetch_add(&f->handler_done, 1);
        return;
    }
    /* the client may already be gone (a test that closes early): then the
     * reply fails and the call reads as cancelled */
    HANDLER_EXPECT(f, td_net_call_reply(call, &resp.base) == 0 || td_net_call_cancelled(call));
    HANDLER_EXPECT(f, td_net_call_reply(call, &resp.base) != 0); /* one answer per call */
}

static void watch_handler(td_net_call *call, const ProtobufCMessage *request, void *user) {
    fixture *f = user;
    const Grpc__Health__V1__HealthCheckRequest *req = (const Grpc__Health__V1__HealthCheckRequest *)request;
    Grpc__Health__V1__HealthCheckResponse resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    if (strcmp(req->service, "forever") == 0) {
        /* until the client goes away: the send must fail, cancelled turn true */
        for (int i = 0;; i++) {
            resp.status = i % 2 ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING
                                : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
            if (td_net_call_send(call, &resp.base, 10000) != 0) {
                atomic_fetch_add(&f->send_failed, 1);
                break;
            }
            if (td_net_call_cancelled(call)) break;
            sleep_ms(1);
        }
        if (td_net_call_cancelled(call)) atomic_fetch_add(&f->saw_cancel, 1);
        atomic_fetch_add(&f->handler_done, 1);
        return;
    }
    if (strcmp(req->service, "flood") == 0) {
        /* a client that never reads: once flow control stops the writes, a
         * send times out (TD_E_RANGE) and cancels the call */
        Grpc__Health__V1__HealthCheckRequest big = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
        size_t n = 60 * 1024;
        char *text = malloc(n + 1);
        HANDLER_EXPECT(f, text != NULL);
        if (!text) return;
        memset(text, 'x', n);
        text[n] = '\0';
        big.service = text;
        int rc = 0;
        for (int i = 0; i < 4096 && rc == 0; i++) rc = td_net_call_send(call, &big.base, 200); /* <= 240 MiB */
        free(text);
        f->flood_rc = rc;
        if (td_net_call_cancelled(call)) atomic_fetch_add(&f->saw_cancel, 1);
        atomic_fetch_add(&f->handler_done, 1);
        return;
    }
    if (strcmp(req->service, "fail") == 0) {
        resp.status = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN;
        HANDLER_EXPECT(f, td_net_call_send(call, &resp.base, 0) == 0 || td_net_call_cancelled(call));
        td_net_call_fail(call, TD_NET_NOT_FOUND, "service %s went away", req->service);
        return;
    }
    /* a client that closes before reading makes a send fail; that is the
     * only way one may */
    for (int i = 0; i < WATCH_N; i++) {
        resp.status = (Grpc__Health__V1__HealthCheckResponse__ServingStatus)(i % 3);
        if (td_net_call_send(call, &resp.base, 0) != 0) {
            HANDLER_EXPECT(f, td_net_call_cancelled(call));
            return;
        }
    }
    HANDLER_EXPECT(f, td_net_call_finish(call) == 0 || td_net_call_cancelled(call));
}

/* ---- fixtures ---- */

static fixture *fixture_new(int32_t max_calls, int32_t max_message_bytes) {
    fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    td_err err = {0};
    td_net_server_opts o = {.max_calls = max_calls, .max_message_bytes = max_message_bytes, .name = "test"};
    f->srv = td_net_server_create(&o, &err);
    assert_non_null(f->srv);
    assert_int_equal(td_net_server_add(f->srv, CHECK, &grpc__health__v1__health_check_request__descriptor, false,
                                       check_handler, f, &err), 0);
    assert_int_equal(td_net_server_add(f->srv, WATCH, &grpc__health__v1__health_check_request__descriptor, true,
                                       watch_handler, f, &err), 0);
    /* the same path twice is the caller's mistake */
    assert_true(td_net_server_add(f->srv, CHECK, &grpc__health__v1__health_check_request__descriptor, false,
                                  check_handler, f, &err) < 0);
    int port = td_net_server_listen(f->srv, "127.0.0.1:0", &err);
    assert_true(port > 0);
    assert_int_equal(td_net_server_start(f->srv, &err), 0);
    snprintf(f->target, sizeof f->target, "127.0.0.1:%d", port);
    f->ch = td_net_channel_open(f->target, NULL, &err);
    assert_non_null(f->ch);
    return f;
}

/* 0, or the number of handler expectations that failed (each said on stderr). */
static int fixture_free(fixture *f) {
    td_net_channel_close(f->ch);
    td_net_server_destroy(f->srv); /* waits for every handler */
    int wrong = atomic_load(&f->handler_wrong);
    free(f);
    return wrong;
}

static int setup(void **state) {
    *state = fixture_new(0, 64 * 1024);
    return 0;
}
static int teardown(void **state) {
    return fixture_free(*state) == 0 ? 0 : -1;
}

static int check(fixture *f, const char *service, int64_t deadline_ms, td_net_status *st,
                 Grpc__Health__V1__HealthCheckResponse **out) {
    Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    req.service = (char *)service;
    ProtobufCMessage *resp = NULL;
    td_net_metadata md[2] = {{"x-tandem-test", "yes"}, {"authorization", "token"}};
    int code = td_net_unary(f->ch, CHECK, &req.base, &grpc__health__v1__health_check_response__descriptor, &resp,
                            deadline_ms, md, 2, st);
    if (out) {
        *out = (Grpc__Health__V1__HealthCheckResponse *)resp;
    } else if (resp) {
        protobuf_c_message_free_unpacked(resp, NULL);
    }
    return code;
}

/* ---- tests ---- */

static void unary_ok(void **state) {
    fixture *f = *state;
    td_net_status st;
    Grpc__Health__V1__HealthCheckResponse *resp = NULL;
    assert_int_equal(check(f, "", 10000, &st, &resp), TD_NET_OK);
    assert_int_equal(st.code, TD_NET_OK);
    assert_string_equal(st.msg, "");
    assert_non_null(resp);
    assert_int_equal(resp->status, GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING);
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    /* what the handler saw of its call */
    assert_int_equal(check(f, "info", 10000, &st, NULL), TD_NET_OK);
    assert_string_equal(f->method, CHECK);
    assert_non_null(strstr(f->peer, "127.0.0.1"));
    /* gRPC rounds a deadline up when it encodes it: allow a second */
    assert_true(f->deadline_ms > 0 && f->deadline_ms <= 11000);
    assert_int_equal(check(f, "info", 0, &st, NULL), TD_NET_OK);
    assert_true(f->deadline_ms == INT64_MAX);
    assert_string_equal(td_net_channel_target(f->ch), f->target);
    assert_string_equal(td_net_code_name(TD_NET_RESOURCE_EXHAUSTED), "RESOURCE_EXHAUSTED");
}

static void stream_ok(void **state) {
    fixture *f = *state;
    Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    td_err err = {0};
    td_net_metadata md = {"x-tandem-test", "stream"};
    td_net_stream *s = td_net_stream_open(f->ch, WATCH, &req.base, 10000, &md, 1, &err);
    assert_non_null(s);
    td_net_status st;
    ProtobufCMessage *m = NULL;
    for (int i = 0; i < WATCH_N; i++) {
        assert_int_equal(td_net_stream_next(s, &grpc__health__v1__health_check_response__descriptor, &m, &st), 1);
        assert_int_equal(((Grpc__Health__V1__HealthCheckResponse *)m)->status, i % 3);
        protobuf_c_message_free_unpacked(m, NULL);
    }
    assert_int_equal(td_net_stream_next(s, &grpc__health__v1__health_check_response__descriptor, &m, &st), 0);
    assert_null(m);
    assert_int_equal(st.code, TD_NET_OK);
    /* after the end, next keeps saying so */
    assert_int_equal(td_net_stream_next(s, &grpc__health__v1__health_check_response__descriptor, &m, &st), 0);
    assert_int_equal(st.code, TD_NET_OK);
    td_net_stream_close(s);
    td_net_stream_close(NULL);

    /* a stream ending with an error after a message */
    req.service = "fail";
    s = td_net_stream_open(f->ch, WATCH, &req.base, 10000, NULL, 0, &err);
    assert_non_null(s);
    assert_int_equal(td_net_stream_next(s, &grpc__health__v1__health_check_response__descriptor, &m, &st), 1);
    protobuf_c_message_free_unpacked(m, NULL);
    assert_int_equal(td_net_stream_next(s, &grpc__health__v1__health_check_response__descriptor, &m, &st), 0);
    assert_int_equal(st.code, TD_NET_NOT_FOUND);
    assert_string_equal(st.msg, "service fail went away");
    td_net_stream_close(s);

    /* closing a stream before reading it */
    req.service = "";
    s = td_net_stream_open(f->ch, WATCH, &req.base, 10000, NULL, 0, &err);
    assert_non_null(s);
    td_net_stream_close(s);
}

static void unknown_method(void **state) {
    fixture *f = *state;
    Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    td_net_status st;
    ProtobufCMessage *resp = (ProtobufCMessage *)1;
    assert_int_equal(td_net_unary(f->ch, "/grpc.health.v1.Health/Nope", &req.base,
                                  &grpc__health__v1__health_check_response__descriptor, &resp, 10000, NULL, 0, &st),
                     TD_NET_UNIMPLEMENTED);
    assert_null(resp);
    assert_non_null(strstr(st.msg, "/grpc.health.v1.Health/Nope"));
}

static void handler_errors(void **state) {
    fixture *f = *state;
    td_net_status st;
    Grpc__Health__V1__HealthCheckResponse *resp = NULL;
    assert_int_equal(check(f, "bad", 10000, &st, &resp), TD_NET_INVALID_ARGUMENT);
    assert_null(resp);
    assert_string_equal(st.msg, "no such service: bad (42)");
    assert_int_equal(check(f, "silent", 10000, &st, NULL), TD_NET_INTERNAL);
    assert_non_null(strstr(st.msg, "without answering"));
}

static void malformed_request(void **state) {
    fixture *f = *state;
    td_net_status st;
    /* field 1 as a length-delimited string claiming far more bytes than follow */
    static const uint8_t garbage[] = {0xff, 0xff, 0xff};
    static const uint8_t truncated[] = {0x0a, 0x7f, 'a'};
    assert_int_equal(td_net_unary_raw(f->ch, CHECK, garbage, sizeof garbage,
                                      &grpc__health__v1__health_check_response__descriptor, NULL, 10000, &st),
                     TD_NET_INVALID_ARGUMENT);
    assert_string_equal(st.msg, "malformed request: not a grpc.health.v1.HealthCheckRequest");
    assert_int_equal(td_net_unary_raw(f->ch, WATCH, truncated, sizeof truncated,
                                      &grpc__health__v1__health_check_response__descriptor, NULL, 10000, &st),
                     TD_NET_INVALID_ARGUMENT);
    /* an empty message is a valid proto3 message (all defaults) */
    assert_int_equal(td_net_unary_raw(f->ch, CHECK, NULL, 0, &grpc__health__v1__health_check_response__descriptor,
                                      NULL, 10000, &st),
                     TD_NET_OK);
    /* the reverse: a reply that is not the expected type is INTERNAL */
    assert_int_equal(td_net_unary_raw(f->ch, CHECK, NULL, 0, &grpc__health__v1__health_check_request__descriptor,
                                      NULL, 10000, &st),
                     TD_NET_INTERNAL); /* SERVING as a varint in field 1, which is a string there */
    assert_non_null(strstr(st.msg, "reply is not a grpc.health.v1.HealthCheckRequest"));
}

static void oversized(void **state) {
    fixture *f = *state; /* the server takes at most 64 KiB */
    size_t n = 100 * 1024;
    char *big = malloc(n + 1);
    assert_non_null(big);
    memset(big, 'x', n);
    big[n] = '\0';
    td_net_status st;
    assert_int_equal(check(f, big, 10000, &st, NULL), TD_NET_RESOURCE_EXHAUSTED);
    free(big);
    /* the server still serves */
    assert_int_equal(check(f, "", 10000, &st, NULL), TD_NET_OK);
}

static void deadline_exceeded(void **state) {
    fixture *f = *state;
    atomic_store(&f->release, false);
    atomic_store(&f->saw_cancel, 0);
    atomic_store(&f->handler_done, 0);
    td_net_status st;
    assert_int_equal(check(f, "block", 200, &st, NULL), TD_NET_DEADLINE_EXCEEDED);
    assert_true(wait_for(handler_returned, f));
    assert_int_equal(atomic_load(&f->saw_cancel), 1);
    assert_true(wait_for(none_active, f));
}

static void stream_cancel(void **state) {
    fixture *f = *state;
    atomic_store(&f->saw_cancel, 0);
    atomic_store(&f->send_failed, 0);
    atomic_store(&f->handler_done, 0);
    Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    req.service = "forever";
    td_err err = {0};
    td_net_stream *s = td_net_stream_open(f->ch, WATCH, &req.base, 0, NULL, 0, &err);
    assert_non_null(s);
    td_net_status st;
    ProtobufCMessage *m = NULL;
    for (int i = 0; i < 3; i++) {
        assert_int_equal(td_net_stream_next(s, &grpc__health__v1__health_check_response__descriptor, &m, &st), 1);
        protobuf_c_message_free_unpacked(m, NULL);
    }
    td_net_stream_cancel(s);
    /* messages already buffered may still come; then the end, CANCELLED */
    int guard = 0;
    while (td_net_stream_next(s, &grpc__health__v1__health_check_response__descriptor, &m, &st) == 1) {
        protobuf_c_message_free_unpacked(m, NULL);
        assert_true(++guard < 1000000);
    }
    assert_int_equal(st.code, TD_NET_CANCELLED);
    td_net_stream_close(s);
    assert_true(wait_for(handler_returned, f));
    assert_true(atomic_load(&f->send_failed) + atomic_load(&f->saw_cancel) >= 1);
    assert_int_equal(atomic_load(&f->saw_cancel), 1);
    assert_true(wait_for(none_active, f));
}

static void slow_reader(void **state) {
    fixture *f = *state;
    atomic_store(&f->saw_cancel, 0);
    atomic_store(&f->handler_done, 0);
    Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    req.service = "flood";
    td_err err = {0};
    td_net_stream *s = td_net_stream_open(f->ch, WATCH, &req.base, 0, NULL, 0, &err);
    assert_non_null(s);
    assert_true(wait_for(handler_returned, f)); /* never reading */
    assert_int_equal(f->flood_rc, TD_E_RANGE);
    assert_int_equal(atomic_load(&f->saw_cancel), 1);
    /* the stream holds what came before the cancel, then CANCELLED; the
     * replies are HealthCheckRequests (the handler's "big" message) */
    td_net_status st;
    ProtobufCMessage *m = NULL;
    while (td_net_stream_next(s, &grpc__health__v1__health_check_request__descriptor, &m, &st) == 1)
        protobuf_c_message_free_unpacked(m, NULL);
    assert_int_equal(st.code, TD_NET_CANCELLED);
    td_net_stream_close(s);
    assert_true(wait_for(none_active, f));
}

typedef struct bg_call {
    fixture *f;
    const char *service;
    td_net_status st;
    pthread_t thread;
} bg_call;

static void *bg_check(void *arg) {
    bg_call *b = arg;
    check(b->f, b->service, 0, &b->st, NULL);
    return NULL;
}

/* Last in the shared group: every handler that ran met its expectations. */
static void handlers_behaved(void **state) {
    fixture *f = *state;
    assert_true(wait_for(none_active, f));
    assert_int_equal(atomic_load(&f->handler_wrong), 0);
}

static void max_calls(void **state) {
    (void)state;
    fixture *f = fixture_new(1, 0);
    bg_call b = {.f = f, .service = "block"};
    assert_int_equal(pthread_create(&b.thread, NULL, bg_check, &b), 0);
    assert_true(wait_for(one_active, f));
    td_net_status st;
    assert_int_equal(check(f, "", 10000, &st, NULL), TD_NET_RESOURCE_EXHAUSTED);
    assert_non_null(strstr(st.msg, "busy: 1 calls in flight, retry later"));
    atomic_store(&f->release, true);
    pthread_join(b.thread, NULL);
    assert_int_equal(b.st.code, TD_NET_OK);
    assert_true(wait_for(none_active, f));
    assert_int_equal(check(f, "", 10000, &st, NULL), TD_NET_OK);
    assert_int_equal(fixture_free(f), 0);
}

static void shutdown_in_flight(void **state) {
    (void)state;
    fixture *f = fixture_new(0, 0);
    bg_call b = {.f = f, .service = "block"};
    assert_int_equal(pthread_create(&b.thread, NULL, bg_check, &b), 0);
    assert_true(wait_for(one_active, f));
    td_net_server_shutdown(f->srv, 50); /* the handler ignores grace: it waits to be cancelled */
    assert_int_equal(atomic_load(&f->handler_done), 1);
    assert_int_equal(atomic_load(&f->saw_cancel), 1);
    assert_int_equal(td_net_server_active(f->srv), 0);
    pthread_join(b.thread, NULL);
    assert_int_not_equal(b.st.code, TD_NET_OK);
    td_net_server_shutdown(f->srv, 0); /* twice: no-op */
    assert_int_equal(fixture_free(f), 0);
}

static void server_edges(void **state) {
    (void)state;
    td_err err = {0};
    /* created, listening, never started */
    td_net_server *s = td_net_server_create(NULL, &err);
    assert_non_null(s);
    assert_true(td_net_server_start(s, &err) < 0); /* start before listen */
    assert_true(td_net_server_listen(s, "127.0.0.1:0", &err) > 0);
    td_net_server_destroy(s);
    td_net_server_destroy(NULL);
    /* a port that cannot be bound */
    s = td_net_server_create(NULL, &err);
    assert_non_null(s);
    assert_true(td_net_server_listen(s, "256.1.1.1:1", &err) < 0);
    td_net_server_destroy(s);
    td_net_channel_close(NULL);
    /* a channel to nowhere fails its call (UNAVAILABLE, or the deadline) */
    td_net_channel_opts o = {.keepalive_ms = 1000, .keepalive_timeout_ms = 1000, .min_reconnect_ms = 100,
                             .max_reconnect_ms = 500};
    td_net_channel *ch = td_net_channel_open("127.0.0.1:1", &o, &err);
    assert_non_null(ch);
    Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    td_net_status st;
    int code = td_net_unary(ch, CHECK, &req.base, &grpc__health__v1__health_check_response__descriptor, NULL, 2000,
                            NULL, 0, &st);
    assert_true(code == TD_NET_UNAVAILABLE || code == TD_NET_DEADLINE_EXCEEDED);
    td_net_channel_close(ch);
}

static void keepalive_client(void **state) {
    (void)state;
    /* a client pinging every second, idle between calls, is not sent away */
    fixture *f = fixture_new(0, 0);
    td_err err = {0};
    td_net_channel_opts o = {.keepalive_ms = 1000, .keepalive_timeout_ms = 5000};
    td_net_channel *ch = td_net_channel_open(f->target, &o, &err);
    assert_non_null(ch);
    td_net_channel *keep = f->ch;
    f->ch = ch;
    td_net_status st;
    for (int i = 0; i < 3; i++) {
        assert_int_equal(check(f, "", 10000, &st, NULL), TD_NET_OK);
        sleep_ms(1100);
    }
    f->ch = keep;
    td_net_channel_close(ch);
    assert_int_equal(fixture_free(f), 0);
}

static void codec(void **state) {
    (void)state;
    td_net_init();
    Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    req.service = "tandem.v1.Worker";
    grpc_byte_buffer *bb = td_net_pack(&req.base);
    assert_non_null(bb);
    ProtobufCMessage *m = td_net_unpack(&grpc__health__v1__health_check_request__descriptor, bb);
    assert_non_null(m);
    assert_string_equal(((Grpc__Health__V1__HealthCheckRequest *)m)->service, "tandem.v1.Worker");
    protobuf_c_message_free_unpacked(m, NULL);
    grpc_byte_buffer_destroy(bb);
    static const uint8_t bad[] = {0x0a, 0x05, 'a'};
    assert_null(td_net_unpack_bytes(&grpc__health__v1__health_check_request__descriptor, bad, sizeof bad));
    td_net_shutdown();
}

static void signals(void **state) {
    (void)state;
    td_net_signals_block();
    assert_int_equal(td_net_signals_wait(10), 0);
    pthread_kill(pthread_self(), SIGTERM);
    assert_int_equal(td_net_signals_wait(1000), SIGTERM);
}

/* ---- TLS and bearer tokens ---- */

#define SECRET "/test.Secret/Check" /* the same handler on a path that needs a token */

typedef struct tls_env {
    char dir[64];
    char ca[128], cert[128], key[128], ccert[128], ckey[128], other_ca[128];
} tls_env;

/* The CA, a server certificate for 127.0.0.1/localhost and a client
 * certificate, all signed by it, plus a second CA that signed neither. */
static int tls_setup(void **state) {
    tls_env *t = calloc(1, sizeof *t);
    if (!t) return -1;
    snprintf(t->dir, sizeof t->dir, "/tmp/td-net-tls-XXXXXX");
    if (!mkdtemp(t->dir)) {
        free(t);
        return -1;
    }
    snprintf(t->ca, sizeof t->ca, "%s/ca.pem", t->dir);
    snprintf(t->cert, sizeof t->cert, "%s/server.pem", t->dir);
    snprintf(t->key, sizeof t->key, "%s/server.key", t->dir);
    snprintf(t->ccert, sizeof t->ccert, "%s/client.pem", t->dir);
    snprintf(t->ckey, sizeof t->ckey, "%s/client.key", t->dir);
    snprintf(t->other_ca, sizeof t->other_ca, "%s/other-ca.pem", t->dir);
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "cd %s && exec >openssl.log 2>&1 && "
             "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=td-test-ca -keyout ca.key -out ca.pem && "
             "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=td-other-ca -keyout other-ca.key -out other-ca.pem && "
             "printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' > server.ext && "
             "openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout server.key -out server.csr && "
             "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -extfile server.ext -out server.pem && "
             "openssl req -newkey rsa:2048 -nodes -subj /CN=td-test-client -keyout client.key -out client.csr && "
             "openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -out client.pem",
             t->dir);
    if (system(cmd) != 0) {
        fprintf(stderr, "tls_setup: openssl failed (see %s/openssl.log)\n", t->dir);
        free(t);
        return -1;
    }
    *state = t;
    return 0;
}

static int tls_teardown(void **state) {
    tls_env *t = *state;
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf %s", t->dir);
    if (system(cmd) != 0) fprintf(stderr, "tls_teardown: could not remove %s\n", t->dir);
    free(t);
    return 0;
}

/* A server with CHECK (exempt from tokens: a health path) and SECRET, on a
 * TLS port when tls is given; its port in *port. */
static td_net_server *secure_server(fixture *f, const td_net_tls *tls, const char *const *tokens, size_t n_tokens,
                                    int *port) {
    td_err err = {0};
    td_net_server_opts o = {.name = "secure", .tokens = tokens, .n_tokens = n_tokens};
    td_net_server *s = td_net_server_create(&o, &err);
    assert_non_null(s);
    assert_int_equal(td_net_server_add(s, CHECK, &grpc__health__v1__health_check_request__descriptor, false,
                                       check_handler, f, &err), 0);
    assert_int_equal(td_net_server_add(s, SECRET, &grpc__health__v1__health_check_request__descriptor, false,
                                       check_handler, f, &err), 0);
    assert_int_equal(td_net_server_add(s, WATCH, &grpc__health__v1__health_check_request__descriptor, true,
                                       watch_handler, f, &err), 0);
    *port = tls ? td_net_server_listen_tls(s, "127.0.0.1:0", tls, &err) : td_net_server_listen(s, "127.0.0.1:0", &err);
    assert_true(*port > 0);
    assert_int_equal(td_net_server_start(s, &err), 0);
    return s;
}

static int call_on(td_net_channel *ch, const char *path, const char *token, td_net_status *st) {
    Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    req.service = "";
    char bearer[128];
    snprintf(bearer, sizeof bearer, "Bearer %s", token ? token : "");
    td_net_metadata md = {"authorization", bearer};
    return td_net_unary(ch, path, &req.base, &grpc__health__v1__health_check_response__descriptor, NULL, 10000,
                        token ? &md : NULL, token ? 1 : 0, st);
}

static td_net_channel *open_to(int port, const td_net_tls *tls) {
    char target[64];
    snprintf(target, sizeof target, "127.0.0.1:%d", port);
    td_err err = {0};
    td_net_channel_opts o = {.tls = tls};
    td_net_channel *ch = td_net_channel_open(target, &o, &err);
    assert_non_null(ch);
    return ch;
}

static void tls_call(void **state) {
    tls_env *t = *state;
    fixture f = {0};
    int port;
    td_net_tls stls = {.cert_file = t->cert, .key_file = t->key};
    td_net_server *s = secure_server(&f, &stls, NULL, 0, &port);
    td_net_status st;
    /* verified against the CA, by IP and (overridden) by name */
    td_net_tls ctls = {.ca_file = t->ca};
    td_net_channel *ch = open_to(port, &ctls);
    assert_int_equal(call_on(ch, SECRET, NULL, &st), TD_NET_OK);
    td_net_channel_close(ch);
    td_net_tls named = {.ca_file = t->ca, .server_name = "localhost"};
    ch = open_to(port, &named);
    assert_int_equal(call_on(ch, SECRET, NULL, &st), TD_NET_OK);
    td_net_channel_close(ch);
    /* a plaintext client to the TLS port gets nowhere */
    ch = open_to(port, NULL);
    assert_int_not_equal(call_on(ch, SECRET, NULL, &st), TD_NET_OK);
    td_net_channel_close(ch);
    /* nor does a client trusting another CA */
    td_net_tls other = {.ca_file = t->other_ca};
    ch = open_to(port, &other);
    assert_int_not_equal(call_on(ch, SECRET, NULL, &st), TD_NET_OK);
    td_net_channel_close(ch);
    td_net_server_destroy(s);
}

static void tls_mutual(void **state) {
    tls_env *t = *state;
    fixture f = {0};
    int port;
    td_net_tls stls = {.cert_file = t->cert, .key_file = t->key, .ca_file = t->ca, .require_client_cert = true};
    td_net_server *s = secure_server(&f, &stls, NULL, 0, &port);
    td_net_status st;
    td_net_tls no_cert = {.ca_file = t->ca};
    td_net_channel *ch = open_to(port, &no_cert);
    assert_int_not_equal(call_on(ch, SECRET, NULL, &st), TD_NET_OK);
    td_net_channel_close(ch);
    td_net_tls with_cert = {.ca_file = t->ca, .cert_file = t->ccert, .key_file = t->ckey};
    ch = open_to(port, &with_cert);
    assert_int_equal(call_on(ch, SECRET, NULL, &st), TD_NET_OK);
    assert_int_equal(call_on(ch, CHECK, NULL, &st), TD_NET_OK);
    td_net_channel_close(ch);
    td_net_server_destroy(s);
}

static void tls_bad_files(void **state) {
    tls_env *t = *state;
    td_err err = {0};
    char missing[160];
    snprintf(missing, sizeof missing, "%s/no-such.key", t->dir);
    td_net_server *s = td_net_server_create(NULL, &err);
    assert_non_null(s);
    td_net_tls bad_key = {.cert_file = t->cert, .key_file = missing};
    assert_true(td_net_server_listen_tls(s, "127.0.0.1:0", &bad_key, &err) < 0);
    assert_non_null(strstr(err.msg, missing));
    td_net_tls no_key = {.cert_file = t->cert};
    assert_true(td_net_server_listen_tls(s, "127.0.0.1:0", &no_key, &err) < 0);
    td_net_tls need_ca = {.cert_file = t->cert, .key_file = t->key, .require_client_cert = true};
    assert_true(td_net_server_listen_tls(s, "127.0.0.1:0", &need_ca, &err) < 0);
    td_net_server_destroy(s);
    td_net_tls bad_ca = {.ca_file = missing};
    td_net_channel_opts o = {.tls = &bad_ca};
    assert_null(td_net_channel_open("127.0.0.1:1", &o, &err));
    assert_non_null(strstr(err.msg, missing));
    td_net_tls half = {.ca_file = t->ca, .cert_file = t->ccert};
    o.tls = &half;
    assert_null(td_net_channel_open("127.0.0.1:1", &o, &err));
    /* the check without a port or channel (the coordinator's, at start) */
    assert_true(td_net_tls_check(&bad_ca, false, &err) < 0);
    assert_non_null(strstr(err.msg, missing));
    assert_true(td_net_tls_check(&bad_key, true, &err) < 0);
    td_net_tls good = {.ca_file = t->ca, .cert_file = t->ccert, .key_file = t->ckey};
    assert_int_equal(td_net_tls_check(&good, false, &err), 0);
    td_net_tls good_srv = {.cert_file = t->cert, .key_file = t->key, .ca_file = t->ca, .require_client_cert = true};
    assert_int_equal(td_net_tls_check(&good_srv, true, &err), 0);
}

static void tokens(void **state) {
    tls_env *t = *state;
    (void)t;
    fixture f = {0};
    int port;
    const char *toks[] = {"s3cret-one", "s3cret-two"};
    td_net_server *s = secure_server(&f, NULL, toks, 2, &port);
    td_net_channel *ch = open_to(port, NULL);
    td_net_status st;
    assert_int_equal(call_on(ch, SECRET, NULL, &st), TD_NET_UNAUTHENTICATED);
    assert_string_equal(st.msg, "missing or invalid bearer token");
    assert_int_equal(call_on(ch, SECRET, "wrong", &st), TD_NET_UNAUTHENTICATED);
    assert_int_equal(call_on(ch, SECRET, "s3cret-on", &st), TD_NET_UNAUTHENTICATED);  /* a prefix */
    assert_int_equal(call_on(ch, SECRET, "s3cret-one!", &st), TD_NET_UNAUTHENTICATED); /* longer */
    assert_int_equal(call_on(ch, SECRET, "", &st), TD_NET_UNAUTHENTICATED);
    assert_int_equal(call_on(ch, SECRET, "s3cret-one", &st), TD_NET_OK);
    assert_int_equal(call_on(ch, SECRET, "s3cret-two", &st), TD_NET_OK);
    /* health needs none */
    assert_int_equal(call_on(ch, CHECK, NULL, &st), TD_NET_OK);
    /* a stream on a method that needs a token: refused the same way */
    Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    td_net_server_destroy(s);
    td_net_channel_close(ch);
    const char *exempt_none[] = {"tok"};
    td_err err = {0};
    td_net_server_opts o = {.name = "strict", .tokens = exempt_none, .n_tokens = 1, .auth_exempt_prefix = "/none."};
    s = td_net_server_create(&o, &err);
    assert_non_null(s);
    assert_int_equal(td_net_server_add(s, WATCH, &grpc__health__v1__health_check_request__descriptor, true,
                                       watch_handler, &f, &err), 0);
    port = td_net_server_listen(s, "127.0.0.1:0", &err);
    assert_true(port > 0);
    assert_int_equal(td_net_server_start(s, &err), 0);
    ch = open_to(port, NULL);
    td_net_stream *str = td_net_stream_open(ch, WATCH, &req.base, 10000, NULL, 0, &err);
    assert_non_null(str);
    ProtobufCMessage *m = NULL;
    assert_int_equal(td_net_stream_next(str, &grpc__health__v1__health_check_response__descriptor, &m, &st), 0);
    assert_int_equal(st.code, TD_NET_UNAUTHENTICATED);
    td_net_stream_close(str);
    td_net_metadata md = {"authorization", "bearer tok"}; /* the scheme in any case */
    str = td_net_stream_open(ch, WATCH, &req.base, 10000, &md, 1, &err);
    assert_non_null(str);
    int got = 0;
    while (td_net_stream_next(str, &grpc__health__v1__health_check_response__descriptor, &m, &st) == 1) {
        protobuf_c_message_free_unpacked(m, NULL);
        got++;
    }
    assert_int_equal(st.code, TD_NET_OK);
    assert_int_equal(got, WATCH_N);
    td_net_stream_close(str);
    td_net_channel_close(ch);
    td_net_server_destroy(s);
    /* an empty token would let "Bearer " through: refused at create */
    const char *empty[] = {""};
    td_net_server_opts eo = {.tokens = empty, .n_tokens = 1};
    assert_null(td_net_server_create(&eo, &err));
}

static void token_file(void **state) {
    tls_env *t = *state;
    char path[160];
    snprintf(path, sizeof path, "%s/tokens", t->dir);
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    fputs("# comment\n\n  alpha  \r\nbeta\ngamma", fp);
    fclose(fp);
    char **toks = NULL;
    size_t n = 0;
    td_err err = {0};
    assert_int_equal(td_net_tokens_load(path, &toks, &n, &err), 0);
    assert_int_equal(n, 3);
    assert_string_equal(toks[0], "alpha");
    assert_string_equal(toks[1], "beta");
    assert_string_equal(toks[2], "gamma");
    td_net_tokens_free(toks, n);
    fp = fopen(path, "w");
    assert_non_null(fp);
    fputs("# only a comment\n", fp);
    fclose(fp);
    assert_true(td_net_tokens_load(path, &toks, &n, &err) < 0);
    assert_null(toks);
    char missing[180];
    snprintf(missing, sizeof missing, "%s/none", t->dir);
    assert_true(td_net_tokens_load(missing, &toks, &n, &err) < 0);
    assert_non_null(strstr(err.msg, missing));
    /* the comparison itself */
    char *list[] = {"abc", "xyz"};
    assert_int_equal(td_net_bearer_match(list, 2, "Bearer xyz", 10), 1);
    assert_int_equal(td_net_bearer_match(list, 2, "BEARER abc", 10), 0);
    assert_int_equal(td_net_bearer_match(list, 2, "Bearer ab", 9), -1);
    assert_int_equal(td_net_bearer_match(list, 2, "Bearer ", 7), -1);
    assert_int_equal(td_net_bearer_match(list, 2, "Basic abc", 9), -1);
    assert_int_equal(td_net_bearer_match(list, 2, "Bearer abcd", 11), -1);
}

/* A blocking call on SECRET with a token, in the background. */
typedef struct token_call {
    td_net_channel *ch;
    const char *token;
    td_net_status st;
    pthread_t thread;
} token_call;

static void *bg_token_block(void *arg) {
    token_call *b = arg;
    Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    req.service = "block";
    char bearer[128];
    snprintf(bearer, sizeof bearer, "Bearer %s", b->token);
    td_net_metadata md = {"authorization", bearer};
    td_net_unary(b->ch, SECRET, &req.base, &grpc__health__v1__health_check_response__descriptor, NULL, 20000, &md, 1,
                 &b->st);
    return NULL;
}

/* max_calls_per_token: a token at its cap gets RESOURCE_EXHAUSTED while
 * another token (and the exempt health path) still get through; the slot
 * comes back when its call ends. */
static void per_token_cap(void **state) {
    (void)state;
    fixture f = {0};
    const char *toks[] = {"tenant-a", "tenant-b"};
    td_err err = {0};
    td_net_server_opts o = {.name = "capped", .tokens = toks, .n_tokens = 2, .max_calls_per_token = 1};
    td_net_server *s = td_net_server_create(&o, &err);
    assert_non_null(s);
    f.srv = s;
    assert_int_equal(td_net_server_add(s, CHECK, &grpc__health__v1__health_check_request__descriptor, false,
                                       check_handler, &f, &err), 0);
    assert_int_equal(td_net_server_add(s, SECRET, &grpc__health__v1__health_check_request__descriptor, false,
                                       check_handler, &f, &err), 0);
    int port = td_net_server_listen(s, "127.0.0.1:0", &err);
    assert_true(port > 0);
    assert_int_equal(td_net_server_start(s, &err), 0);
    td_net_channel *ch = open_to(port, NULL);
    token_call b = {.ch = ch, .token = "tenant-a"};
    assert_int_equal(pthread_create(&b.thread, NULL, bg_token_block, &b), 0);
    /* its handler running, not merely its call accepted: the server counts
     * a call active before its thread has charged the token (seen: a
     * second call of tenant-a admitted in between, under the sanitizers) */
    assert_true(wait_for(one_blocking, &f));
    td_net_status st;
    assert_int_equal(call_on(ch, SECRET, "tenant-a", &st), TD_NET_RESOURCE_EXHAUSTED);
    assert_non_null(strstr(st.msg, "too many calls in flight for this token (1)"));
    assert_int_equal(call_on(ch, SECRET, "tenant-b", &st), TD_NET_OK);
    assert_int_equal(call_on(ch, CHECK, NULL, &st), TD_NET_OK);
    atomic_store(&f.release, true);
    pthread_join(b.thread, NULL);
    assert_int_equal(b.st.code, TD_NET_OK);
    assert_true(wait_for(none_active, &f));
    assert_int_equal(call_on(ch, SECRET, "tenant-a", &st), TD_NET_OK);
    td_net_channel_close(ch);
    td_net_server_destroy(s);
}

/* ---- handlers without gRPC: fake calls (net.h) ---- */

/* Dispatches a HealthCheckRequest for service (or raw bytes when raw) on a
 * fresh fake call; returns the call (the caller destroys it). */
static td_net_call *fake_dispatch(td_net_server *s, const char *path, const char *service, const td_net_fake_opts *o,
                                  int *code) {
    td_err err = {0};
    td_net_call *c = td_net_fake_call_create(o, &err);
    assert_non_null(c);
    Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    req.service = (char *)service;
    uint8_t buf[256];
    size_t n = protobuf_c_message_pack(&req.base, buf);
    *code = td_net_server_dispatch(s, path, buf, n, c);
    td_net_status st;
    assert_true(td_net_fake_call_status(c, &st));
    assert_int_equal(st.code, *code);
    return c;
}

/* The registered handlers on a server that never listens nor starts: the
 * layer's statuses, the handlers' answers and the rules they break, as a
 * call off the wire would have them. */
static void fake_calls(void **state) {
    (void)state;
    fixture f = {0};
    td_err err = {0};
    td_net_server_opts so = {.name = "fake", .max_message_bytes = 1024};
    td_net_server *s = td_net_server_create(&so, &err);
    assert_non_null(s);
    assert_int_equal(td_net_server_add(s, CHECK, &grpc__health__v1__health_check_request__descriptor, false,
                                       check_handler, &f, &err), 0);
    assert_int_equal(td_net_server_add(s, WATCH, &grpc__health__v1__health_check_request__descriptor, true,
                                       watch_handler, &f, &err), 0);
    td_net_method_info info[4];
    assert_int_equal(td_net_server_methods(s, info, 4), 2);
    assert_string_equal(info[0].path, CHECK);
    assert_false(info[0].streaming);
    assert_true(info[1].streaming);
    assert_ptr_equal(info[1].type, &grpc__health__v1__health_check_request__descriptor);

    int code;
    /* a reply, then the handler's deliberate second answer: refused, and
     * noted as the rule it breaks */
    td_net_call *c = fake_dispatch(s, CHECK, "", NULL, &code);
    assert_int_equal(code, TD_NET_OK);
    assert_int_equal(td_net_fake_call_messages(c), 1);
    size_t len = 0;
    const uint8_t *p = td_net_fake_call_message(c, 0, &len);
    Grpc__Health__V1__HealthCheckResponse *r = grpc__health__v1__health_check_response__unpack(NULL, len, p);
    assert_non_null(r);
    assert_int_equal(r->status, GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING);
    grpc__health__v1__health_check_response__free_unpacked(r, NULL);
    assert_string_equal(td_net_fake_call_misuse(c), "answered twice");
    assert_int_equal(td_net_server_dispatch(s, CHECK, NULL, 0, c), TD_E_ARG); /* one dispatch per call */
    td_net_fake_call_destroy(c);

    /* the handler's own error, intact */
    td_net_status st;
    c = fake_dispatch(s, CHECK, "bad", NULL, &code);
    assert_int_equal(code, TD_NET_INVALID_ARGUMENT);
    td_net_fake_call_status(c, &st);
    assert_string_equal(st.msg, "no such service: bad (42)");
    assert_int_equal(td_net_fake_call_messages(c), 0);
    assert_null(td_net_fake_call_misuse(c));
    td_net_fake_call_destroy(c);

    /* no answer: the layer's INTERNAL, and the broken rule */
    c = fake_dispatch(s, CHECK, "silent", NULL, &code);
    assert_int_equal(code, TD_NET_INTERNAL);
    td_net_fake_call_status(c, &st);
    assert_string_equal(st.msg, "handler returned without answering");
    assert_non_null(strstr(td_net_fake_call_misuse(c), "without answering"));
    td_net_fake_call_destroy(c);

    /* what the handler sees of its call */
    td_net_fake_opts o = {.peer = "ipv4:10.0.0.1:5", .deadline_ms = 5000};
    c = fake_dispatch(s, CHECK, "info", &o, &code);
    assert_int_equal(code, TD_NET_OK);
    assert_string_equal(f.peer, "ipv4:10.0.0.1:5");
    assert_string_equal(f.method, CHECK);
    assert_true(f.deadline_ms > 0 && f.deadline_ms <= 5000);
    td_net_fake_call_destroy(c);
    c = fake_dispatch(s, CHECK, "info", NULL, &code);
    assert_int_equal(f.deadline_ms, INT64_MAX);
    assert_string_equal(f.peer, "fake");
    td_net_fake_call_destroy(c);
    /* an expired deadline: the reply goes nowhere, which breaks no rule */
    o = (td_net_fake_opts){.expired = true};
    c = fake_dispatch(s, CHECK, "info", &o, &code);
    assert_true(f.deadline_ms <= 0);
    assert_int_equal(td_net_fake_call_messages(c), 0);
    td_net_fake_call_destroy(c);

    /* the layer's own statuses */
    c = td_net_fake_call_create(NULL, &err);
    assert_int_equal(td_net_server_dispatch(s, "/no.Such/Method", NULL, 0, c), TD_NET_UNIMPLEMENTED);
    td_net_fake_call_status(c, &st);
    assert_string_equal(st.msg, "unknown method /no.Such/Method");
    td_net_fake_call_destroy(c);
    c = td_net_fake_call_create(NULL, &err);
    assert_int_equal(td_net_server_dispatch(s, CHECK, (const uint8_t *)"\xff", 1, c), TD_NET_INVALID_ARGUMENT);
    td_net_fake_call_status(c, &st);
    assert_string_equal(st.msg, "malformed request: not a grpc.health.v1.HealthCheckRequest");
    td_net_fake_call_destroy(c);
    uint8_t big[2048] = {0};
    c = td_net_fake_call_create(NULL, &err);
    assert_int_equal(td_net_server_dispatch(s, CHECK, big, sizeof big, c), TD_NET_RESOURCE_EXHAUSTED);
    td_net_fake_call_destroy(c);
    assert_int_equal(td_net_server_dispatch(s, CHECK, NULL, 0, NULL), TD_E_ARG);

    /* streams: all messages then OK; a client that leaves after 3 */
    c = fake_dispatch(s, WATCH, "", NULL, &code);
    assert_int_equal(code, TD_NET_OK);
    assert_int_equal(td_net_fake_call_messages(c), WATCH_N);
    assert_null(td_net_fake_call_misuse(c));
    td_net_fake_call_destroy(c);
    o = (td_net_fake_opts){.max_sends = 3};
    c = fake_dispatch(s, WATCH, "forever", &o, &code);
    assert_int_equal(td_net_fake_call_messages(c), 3);
    assert_int_equal(atomic_load(&f.send_failed), 1);
    assert_int_equal(atomic_load(&f.saw_cancel), 1);
    assert_null(td_net_fake_call_misuse(c)); /* giving up on a gone client is no fault */
    td_net_fake_call_destroy(c);
    o = (td_net_fake_opts){.gone = true};
    c = fake_dispatch(s, WATCH, "fail", &o, &code);
    assert_int_equal(code, TD_NET_NOT_FOUND); /* recorded, though nobody hears it */
    assert_int_equal(td_net_fake_call_messages(c), 0);
    td_net_fake_call_destroy(c);
    td_net_server_destroy(s);

    /* bearer tokens, checked on the fake call's metadata */
    const char *toks[] = {"s3cret"};
    so = (td_net_server_opts){.name = "fake-auth", .tokens = toks, .n_tokens = 1, .max_calls_per_token = 1};
    s = td_net_server_create(&so, &err);
    assert_non_null(s);
    assert_int_equal(td_net_server_add(s, SECRET, &grpc__health__v1__health_check_request__descriptor, false,
                                       check_handler, &f, &err), 0);
    c = fake_dispatch(s, SECRET, "bad", NULL, &code);
    assert_int_equal(code, TD_NET_UNAUTHENTICATED);
    td_net_fake_call_destroy(c);
    td_net_metadata md[2] = {{"x-other", "1"}, {"authorization", "Bearer s3cret"}};
    o = (td_net_fake_opts){.md = md, .n_md = 2};
    for (int i = 0; i < 2; i++) { /* the per-token count goes back down after each call */
        c = fake_dispatch(s, SECRET, "bad", &o, &code);
        assert_int_equal(code, TD_NET_INVALID_ARGUMENT);
        td_net_fake_call_destroy(c);
    }
    md[1].value = "Bearer wrong";
    c = fake_dispatch(s, SECRET, "bad", &o, &code);
    assert_int_equal(code, TD_NET_UNAUTHENTICATED);
    td_net_fake_call_destroy(c);
    td_net_server_destroy(s);
    assert_int_equal(atomic_load(&f.handler_wrong), 0);
}

int main(void) {
    const struct CMUnitTest fake[] = {cmocka_unit_test(fake_calls)};
    const struct CMUnitTest shared[] = {
        cmocka_unit_test(unary_ok),        cmocka_unit_test(stream_ok),         cmocka_unit_test(unknown_method),
        cmocka_unit_test(handler_errors),  cmocka_unit_test(malformed_request), cmocka_unit_test(oversized),
        cmocka_unit_test(deadline_exceeded), cmocka_unit_test(stream_cancel), cmocka_unit_test(slow_reader),
        cmocka_unit_test(handlers_behaved),
    };
    const struct CMUnitTest own[] = {
        cmocka_unit_test(max_calls),    cmocka_unit_test(shutdown_in_flight), cmocka_unit_test(server_edges),
        cmocka_unit_test(keepalive_client), cmocka_unit_test(codec),         cmocka_unit_test(signals),
    };
    int failed = cmocka_run_group_tests_name("net (one server)", shared, setup, teardown);
    failed += cmocka_run_group_tests_name("net (own servers)", own, NULL, NULL);
    const struct CMUnitTest secure[] = {
        cmocka_unit_test(tls_call), cmocka_unit_test(tls_mutual), cmocka_unit_test(tls_bad_files),
        cmocka_unit_test(tokens),   cmocka_unit_test(token_file),  cmocka_unit_test(per_token_cap),
    };
    failed += cmocka_run_group_tests_name("net (TLS and tokens)", secure, tls_setup, tls_teardown);
    failed += cmocka_run_group_tests_name("net (fake calls)", fake, NULL, NULL);
    return failed;
}
