/* net_fake.c — the in-memory record behind a fake call (net.h, "handlers
 * without gRPC"): what the client brought (peer, deadline, metadata, whether
 * it is still there) and what the handler answered (each message packed as
 * on the wire, the status, the first rule it broke). net_server.c owns the
 * td_net_call and decides when to come here; this file only keeps books.
 *
 * Promises: every allocation is checked; a message that cannot be recorded
 * (out of memory, bigger than the server would send) fails the send as a
 * gone client would, never silently; nothing here touches gRPC.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "net/net_internal.h"

typedef struct fake_msg {
    uint8_t *data;
    size_t len;
} fake_msg;

struct td_net_fake {
    char *peer;
    int64_t deadline_at_ms;   /* monotonic; INT64_MAX: none */
    bool gone;
    int32_t sends_left;       /* -1: unlimited */
    td_net_metadata *md;      /* copies (keys and values below) */
    size_t n_md;
    char **md_strings;        /* 2 * n_md */
    fake_msg *msgs;
    size_t n_msgs, cap_msgs;
    bool has_status;
    td_net_status status;
    const char *misuse;       /* static strings */
};

static int64_t mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void td_net_fake_free(td_net_fake *f) {
    if (!f) return;
    free(f->peer);
    if (f->md_strings)
        for (size_t i = 0; i < 2 * f->n_md; i++) free(f->md_strings[i]);
    free(f->md_strings);
    free(f->md);
    for (size_t i = 0; i < f->n_msgs; i++) free(f->msgs[i].data);
    free(f->msgs);
    free(f);
}

td_net_fake *td_net_fake_new(const td_net_fake_opts *o, td_err *err) {
    td_net_fake_opts none = {0};
    if (!o) o = &none;
    td_net_fake *f = calloc(1, sizeof *f);
    if (!f) goto nomem;
    if (!(f->peer = strdup(o->peer ? o->peer : "fake"))) goto nomem;
    f->deadline_at_ms = o->expired ? mono_ms() - 1 : o->deadline_ms > 0 ? mono_ms() + o->deadline_ms : INT64_MAX;
    f->gone = o->gone;
    f->sends_left = o->max_sends > 0 ? o->max_sends : -1;
    if (o->n_md) {
        /* the whole array is sized first, so that a failure part way frees
         * exactly what was made */
        f->n_md = o->n_md;
        if (!(f->md = calloc(o->n_md, sizeof *f->md)) || !(f->md_strings = calloc(2 * o->n_md, sizeof *f->md_strings)))
            goto nomem;
        for (size_t i = 0; i < o->n_md; i++) {
            const char *k = o->md[i].key ? o->md[i].key : "", *v = o->md[i].value ? o->md[i].value : "";
            if (!(f->md_strings[2 * i] = strdup(k)) || !(f->md_strings[2 * i + 1] = strdup(v))) goto nomem;
            f->md[i] = (td_net_metadata){f->md_strings[2 * i], f->md_strings[2 * i + 1]};
        }
    }
    return f;
nomem:
    td_net_fake_free(f);
    td_err_set(err, TD_E_NOMEM, "fake call: out of memory");
    return NULL;
}

const char *td_net_fake_peer(const td_net_fake *f) { return f->peer; }

int64_t td_net_fake_deadline_ms(const td_net_fake *f) {
    if (f->deadline_at_ms == INT64_MAX) return INT64_MAX;
    return f->deadline_at_ms - mono_ms();
}

bool td_net_fake_gone(const td_net_fake *f) { return f->gone || td_net_fake_deadline_ms(f) <= 0; }

size_t td_net_fake_md(const td_net_fake *f, const td_net_metadata **md) {
    *md = f->md;
    return f->n_md;
}

void td_net_fake_misuse(td_net_fake *f, const char *what) {
    if (!f->misuse) f->misuse = what;
}

int td_net_fake_record(td_net_fake *f, const ProtobufCMessage *m, size_t max_bytes) {
    if (td_net_fake_gone(f)) return TD_E_IO;
    if (f->sends_left == 0) {
        f->gone = true; /* the client read what it wanted and left */
        return TD_E_IO;
    }
    size_t n = protobuf_c_message_get_packed_size(m);
    if (n > max_bytes) { /* gRPC refuses to send it; the call fails */
        f->gone = true;
        return TD_E_IO;
    }
    if (f->n_msgs == f->cap_msgs) {
        size_t cap = f->cap_msgs ? 2 * f->cap_msgs : 4;
        fake_msg *g = realloc(f->msgs, cap * sizeof *g);
        if (!g) return TD_E_NOMEM;
        f->msgs = g;
        f->cap_msgs = cap;
    }
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf) return TD_E_NOMEM;
    if (protobuf_c_message_pack(m, buf) != n) { /* as td_net_pack: protobuf-c's two passes disagree */
        free(buf);
        return TD_E_NOMEM;
    }
    f->msgs[f->n_msgs++] = (fake_msg){buf, n};
    if (f->sends_left > 0) f->sends_left--;
    return TD_OK;
}

void td_net_fake_set_status(td_net_fake *f, int code, const char *msg) {
    f->has_status = true;
    f->status.code = code;
    snprintf(f->status.msg, sizeof f->status.msg, "%s", msg ? msg : "");
}

bool td_net_fake_get_status(const td_net_fake *f, td_net_status *st) {
    if (st) {
        if (f->has_status) *st = f->status;
        else *st = (td_net_status){.code = TD_NET_UNKNOWN, .msg = "not dispatched"};
    }
    return f->has_status;
}

size_t td_net_fake_count(const td_net_fake *f) { return f->n_msgs; }

const uint8_t *td_net_fake_msg(const td_net_fake *f, size_t i, size_t *len) {
    if (i >= f->n_msgs) {
        if (len) *len = 0;
        return NULL;
    }
    if (len) *len = f->msgs[i].len;
    return f->msgs[i].data;
}

const char *td_net_fake_first_misuse(const td_net_fake *f) { return f->misuse; }
