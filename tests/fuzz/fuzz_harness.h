/* fuzz_harness.h — what the handler fuzz targets (fuzz_worker.c,
 * fuzz_coordinator.c) share: one call of a registered method on a fake call
 * (net.h, "handlers without gRPC"), and the checks every answer must pass
 * whatever the method. Header-only (static functions): each target is one
 * translation unit plus the libraries.
 *
 * The checks (a failed one traps, so libFuzzer keeps the input): the
 * handler kept the layer's rules (td_net_fake_call_misuse); every status
 * but OK carries a message; INTERNAL and UNKNOWN never come back for a
 * client that is still there (bad input is the client's fault, never the
 * server's); every message sent unpacks as the method's response type, and
 * packs back to the same size.
 */
#ifndef TD_FUZZ_HARNESS_H
#define TD_FUZZ_HARNESS_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_check.h"
#include "net/net.h"


/* A method the harness knows: its path and response type. */
typedef struct fz_method {
    const char *path;
    const ProtobufCMessageDescriptor *response;
} fz_method;

/* How one call is made. */
typedef struct fz_call_opts {
    bool gone;        /* the client left before the handler ran */
    bool expired;     /* its deadline passed before the handler ran */
    int32_t max_sends; /* > 0: the client leaves after this many messages */
} fz_call_opts;

/* The outcome of one call, for target-specific checks: the code, and the
 * first message unpacked (NULL when none; free with
 * protobuf_c_message_free_unpacked). */
typedef struct fz_result {
    int code;
    char msg[256];
    size_t n_messages;
    ProtobufCMessage *first;
    bool client_left;
} fz_result;

/* Dispatches bytes to path on srv and checks the answer against
 * response. */
static inline void fz_call(td_net_server *srv, const fz_method *m, const uint8_t *bytes, size_t len,
                           const fz_call_opts *o, fz_result *out) {
    td_net_fake_opts fo = {.peer = "ipv4:127.0.0.1:1", .deadline_ms = 60000, .expired = o->expired,
                           .gone = o->gone, .max_sends = o->max_sends};
    td_net_call *c = td_net_fake_call_create(&fo, NULL);
    FZ_CHECK(c);
    int code = td_net_server_dispatch(srv, m->path, bytes, len, c);
    td_net_status st;
    FZ_CHECK(td_net_fake_call_status(c, &st));
    FZ_CHECK(st.code == code);
    /* TD_FUZZ_VERBOSE=1: each call's outcome, for writing seeds */
    if (getenv("TD_FUZZ_VERBOSE"))
        fprintf(stderr, "%s (%zu bytes): %s %s [%zu messages]\n", m->path, len, td_net_code_name(code), st.msg,
                td_net_fake_call_messages(c));
    const char *misuse = td_net_fake_call_misuse(c);
    if (misuse) fprintf(stderr, "%s: handler misuse: %s (status %s: %s)\n", m->path, misuse, td_net_code_name(code), st.msg);
    FZ_CHECK(!misuse);
    bool left = td_net_call_cancelled(c) || o->gone || o->expired;
    if (code != TD_NET_OK) {
        if (!st.msg[0]) fprintf(stderr, "%s: %s without a message\n", m->path, td_net_code_name(code));
        FZ_CHECK(st.msg[0] != 0);
    }
    if (!left && (code == TD_NET_INTERNAL || code == TD_NET_UNKNOWN)) {
        fprintf(stderr, "%s: %s for a client that was there: %s\n", m->path, td_net_code_name(code), st.msg);
        FZ_CHECK(0);
    }
    *out = (fz_result){.code = code, .n_messages = td_net_fake_call_messages(c), .client_left = left};
    snprintf(out->msg, sizeof out->msg, "%s", st.msg);
    for (size_t i = 0; i < out->n_messages; i++) {
        size_t n = 0;
        const uint8_t *p = td_net_fake_call_message(c, i, &n);
        ProtobufCMessage *r = protobuf_c_message_unpack(m->response, NULL, n, n ? p : (const uint8_t *)"");
        if (!r) fprintf(stderr, "%s: message %zu (%zu bytes) is not a %s\n", m->path, i, n, m->response->name);
        FZ_CHECK(r);
        FZ_CHECK(protobuf_c_message_get_packed_size(r) == n);
        if (i == 0) out->first = r;
        else protobuf_c_message_free_unpacked(r, NULL);
    }
    td_net_fake_call_destroy(c);
}

/* Appends a varint field (number id) to buf at *len (room checked by the
 * caller: at most 20 bytes). Protobuf keeps the last value of a scalar
 * field, so this overrides whatever the fuzzer put there. */
static inline void fz_append_varint_field(uint8_t *buf, size_t *len, uint32_t id, uint64_t v) {
    uint64_t tag = (uint64_t)id << 3; /* wire type 0 */
    for (int k = 0; k < 2; k++) {
        uint64_t x = k == 0 ? tag : v;
        do {
            uint8_t b = x & 0x7f;
            x >>= 7;
            buf[(*len)++] = (uint8_t)(b | (x ? 0x80 : 0));
        } while (x);
    }
}

#endif
