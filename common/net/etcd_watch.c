/* etcd_watch.c — a prefix watch: one background thread that lists the
 * prefix (RESET, then a PUT per key), watches it from the list's revision + 1
 * and hands every event to the callback. A broken stream is reopened, with
 * backoff, from the last revision seen + 1, so nothing is missed or repeated;
 * when etcd cannot serve that revision (compacted, watch cancelled) or its
 * revision went backwards (restored or wiped), it lists again. The consumer
 * that clears its table on RESET therefore always mirrors etcd. */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "etcd_internal.h"

struct td_etcd_watch {
    td_etcd *e;
    struct td_etcd_watch *next; /* in e->watches */
    char *prefix;
    td_etcd_watch_fn fn;
    void *user;
    pthread_mutex_t mu; /* with cv: the thread's sleeps */
    pthread_cond_t cv;
    atomic_bool stop, alive;
    pthread_t th;
};

/* Calls fn with NUL-terminated copies (protobuf bytes are not terminated). */
static int emit(td_etcd_watch *w, td_etcd_event_kind kind, const ProtobufCBinaryData *key,
                const ProtobufCBinaryData *value) {
    char *k = malloc(key->len + 1);
    char *v = value ? malloc(value->len + 1) : NULL;
    if (!k || (value && !v)) {
        free(k);
        free(v);
        return TD_E_NOMEM;
    }
    if (key->len) memcpy(k, key->data, key->len);
    k[key->len] = 0;
    if (v) {
        if (value->len) memcpy(v, value->data, value->len);
        v[value->len] = 0;
    }
    w->fn(w->user, kind, k, v, value ? value->len : 0);
    free(k);
    free(v);
    return 0;
}

/* The full list: RESET, then a PUT per key. *rev: the list's revision. */
static int relist(td_etcd_watch *w, int64_t *rev, td_err *err) {
    td_etcd_list l;
    int rc = td_etcd_get_prefix_x(w->e, &w->stop, w->prefix, &l, err);
    if (rc) return rc;
    w->fn(w->user, TD_ETCD_RESET, NULL, NULL, 0);
    for (size_t i = 0; i < l.n; i++) w->fn(w->user, TD_ETCD_PUT, l.kvs[i].key, l.kvs[i].value, l.kvs[i].value_len);
    *rev = l.revision;
    td_etcd_list_free(&l);
    return 0;
}

enum { STREAM_FAILED, STREAM_RELIST, STREAM_RELIST_LATER, STREAM_STOPPED };

/* Follows one Watch stream until it fails or a re-list is needed. */
static int follow(td_etcd_watch *w, int64_t *rev, int32_t *backoff) {
    td_etcd *e = w->e;
    td_err err = {0};
    td_etcd_wire_stream *s = td_etcd_wire_stream_open(e, "/etcdserverpb.Watch/Watch", &err);
    if (!s) return STREAM_FAILED;
    size_t end_len;
    uint8_t *end = td_etcd_prefix_end(w->prefix, &end_len);
    if (!end) {
        td_etcd_wire_stream_close(s, false);
        return STREAM_FAILED;
    }
    size_t plen = strlen(w->prefix);
    Etcdserverpb__WatchCreateRequest cr = ETCDSERVERPB__WATCH_CREATE_REQUEST__INIT;
    cr.key.data = plen ? (uint8_t *)w->prefix : (uint8_t *)"";
    cr.key.len = plen ? plen : 1;
    cr.range_end.data = end;
    cr.range_end.len = end_len;
    cr.start_revision = *rev + 1;
    Etcdserverpb__WatchRequest req = ETCDSERVERPB__WATCH_REQUEST__INIT;
    req.request_union_case = ETCDSERVERPB__WATCH_REQUEST__REQUEST_UNION_CREATE_REQUEST;
    req.create_request = &cr;
    int rc = td_etcd_wire_stream_send(s, &req.base, &w->stop, e->call_timeout_ms, &err);
    free(end);
    if (rc) {
        td_etcd_wire_stream_close(s, !atomic_load(&w->stop));
        return atomic_load(&w->stop) ? STREAM_STOPPED : STREAM_FAILED;
    }
    int result = STREAM_FAILED;
    bool created = false;
    double opened = td_now_sec();
    for (;;) {
        Etcdserverpb__WatchResponse *r = NULL;
        int code = -1;
        rc = td_etcd_wire_stream_recv(s, &etcdserverpb__watch_response__descriptor, (ProtobufCMessage **)&r,
                                      &w->stop, 1000, &code, &err);
        if (atomic_load(&w->stop)) {
            if (r) protobuf_c_message_free_unpacked(&r->base, NULL);
            result = STREAM_STOPPED;
            break;
        }
        if (rc == 1) {
            /* the created answer comes at once; without it the stream is stuck */
            if (!created && td_now_sec() - opened > e->call_timeout_ms / 1000.0) break;
            continue;
        }
        if (rc) {
            if (code == 16 /* UNAUTHENTICATED */) td_etcd_wire_forget_token(e);
            break;
        }
        int64_t hrev = r->header ? r->header->revision : 0;
        if (r->created && !created) {
            created = true;
            if (r->header && hrev < *rev) {
                /* etcd's store is older than what we saw: restored or wiped */
                result = STREAM_RELIST;
                protobuf_c_message_free_unpacked(&r->base, NULL);
                break;
            }
            atomic_store(&w->alive, true);
            *backoff = 0;
        }
        if (r->compact_revision > 0 || r->canceled) {
            result = r->compact_revision > 0 ? STREAM_RELIST : STREAM_RELIST_LATER;
            protobuf_c_message_free_unpacked(&r->base, NULL);
            break;
        }
        bool nomem = false;
        for (size_t i = 0; i < r->n_events && !nomem; i++) {
            const Etcdserverpb__Event *ev = r->events[i];
            if (!ev->kv) continue;
            if (ev->type == ETCDSERVERPB__EVENT__EVENT_TYPE__DELETE)
                nomem = emit(w, TD_ETCD_DELETE, &ev->kv->key, NULL) != 0;
            else
                nomem = emit(w, TD_ETCD_PUT, &ev->kv->key, &ev->kv->value) != 0;
            if (!nomem && ev->kv->mod_revision > *rev) *rev = ev->kv->mod_revision;
        }
        protobuf_c_message_free_unpacked(&r->base, NULL);
        if (nomem) {
            result = STREAM_RELIST_LATER; /* an event was dropped: list again */
            break;
        }
    }
    atomic_store(&w->alive, false);
    td_etcd_wire_stream_close(s, result == STREAM_FAILED);
    return result;
}

static void *watch_main(void *arg) {
    td_etcd_watch *w = arg;
    uint64_t rng = (uint64_t)(uintptr_t)w ^ (uint64_t)(td_now_sec() * 1e9);
    int32_t backoff = 0;
    int64_t rev = 0;
    bool need_list = true;
    while (!atomic_load(&w->stop)) {
        bool failed = false;
        if (need_list) {
            td_err err = {0};
            if (relist(w, &rev, &err)) failed = true;
            else need_list = false;
        }
        if (!failed) {
            int res = follow(w, &rev, &backoff);
            if (res == STREAM_STOPPED) break;
            if (res == STREAM_RELIST) need_list = true;
            if (res == STREAM_RELIST_LATER) need_list = failed = true;
            if (res == STREAM_FAILED) failed = true;
        }
        if (failed && !atomic_load(&w->stop)) {
            int32_t ms = td_etcd_backoff_next(w->e, &backoff, &rng);
            pthread_mutex_lock(&w->mu);
            td_etcd_wait(&w->cv, &w->mu, ms, &w->stop, NULL);
            pthread_mutex_unlock(&w->mu);
        }
    }
    return NULL;
}

static void watch_free(td_etcd_watch *w) {
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    free(w->prefix);
    free(w);
}

td_etcd_watch *td_etcd_watch_prefix(td_etcd *e, const char *prefix, td_etcd_watch_fn fn, void *user, td_err *err) {
    if (!e || !prefix || !fn) {
        td_err_set(err, TD_E_ARG, "etcd watch: NULL handle, prefix or callback");
        return NULL;
    }
    td_etcd_watch *w = calloc(1, sizeof *w);
    if (!w || !(w->prefix = strdup(prefix))) {
        free(w);
        td_err_set(err, TD_E_NOMEM, "etcd watch: out of memory");
        return NULL;
    }
    w->e = e;
    w->fn = fn;
    w->user = user;
    atomic_init(&w->stop, false);
    atomic_init(&w->alive, false);
    pthread_condattr_t ca;
    if (pthread_condattr_init(&ca)) goto fail_prefix;
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* td_etcd_wait counts on it */
    if (pthread_mutex_init(&w->mu, NULL)) {
        pthread_condattr_destroy(&ca);
        goto fail_prefix;
    }
    int crc = pthread_cond_init(&w->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (crc) {
        pthread_mutex_destroy(&w->mu);
        goto fail_prefix;
    }
    pthread_mutex_lock(&e->mu);
    w->next = e->watches;
    e->watches = w;
    pthread_mutex_unlock(&e->mu);
    if (pthread_create(&w->th, NULL, watch_main, w)) {
        pthread_mutex_lock(&e->mu);
        for (td_etcd_watch **p = &e->watches; *p; p = &(*p)->next)
            if (*p == w) {
                *p = w->next;
                break;
            }
        pthread_mutex_unlock(&e->mu);
        watch_free(w);
        td_err_set(err, TD_E_IO, "etcd watch: cannot start a thread");
        return NULL;
    }
    return w;
fail_prefix:
    free(w->prefix);
    free(w);
    td_err_set(err, TD_E_NOMEM, "etcd watch: out of memory");
    return NULL;
}

bool td_etcd_watch_alive(const td_etcd_watch *w) { return w && atomic_load(&w->alive); }

void td_etcd_watch_stop(td_etcd_watch *w) {
    if (!w) return;
    td_etcd *e = w->e;
    pthread_mutex_lock(&e->mu);
    for (td_etcd_watch **p = &e->watches; *p; p = &(*p)->next)
        if (*p == w) {
            *p = w->next;
            break;
        }
    pthread_mutex_unlock(&e->mu);
    pthread_mutex_lock(&w->mu);
    atomic_store(&w->stop, true);
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->th, NULL);
    watch_free(w);
}

void td_etcd_watch_stop_all(td_etcd *e) {
    for (;;) {
        pthread_mutex_lock(&e->mu);
        td_etcd_watch *w = e->watches;
        pthread_mutex_unlock(&e->mu);
        if (!w) return;
        td_etcd_watch_stop(w); /* takes it off the list */
    }
}
