/* coord_members.c — the live worker set: mirrors /tandem/<cluster>/workers/
 * from etcd (a RESET clears it, PUTs add or update, DELETEs remove), holds
 * one gRPC channel per worker, and picks the least-loaded compatible worker
 * for each request. Entries that leave while requests still use them are
 * freed when the last reference is put back.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "coordinator.h"
#include "net/etcd.h"

#define MAX_WORKERS 256
#define AVOID_SEC 5.0   /* a worker that failed a call is not picked for this long */

struct td_coord_members {
    pthread_mutex_t mu;
    td_coord_worker *w[MAX_WORKERS];
    int32_t n;
    int32_t keepalive_ms;
    td_net_tls tls;  /* channels to workers: TLS when tls_on */
    bool tls_on;
};

int64_t td_coord_now_ms(void) { return (int64_t)(td_now_sec() * 1000.0); }

td_coord_members *td_coord_members_create(int32_t keepalive_ms, const td_net_tls *worker_tls, td_err *err) {
    /* channels open lazily, long after startup: a TLS file that cannot be
     * read is caught now */
    td_err terr = {0};
    if (worker_tls && td_net_tls_check(worker_tls, false, &terr)) {
        td_err_set(err, terr.code, "worker TLS: %s", terr.msg);
        return NULL;
    }
    td_coord_members *m = calloc(1, sizeof *m);
    if (!m) {
        td_err_set(err, TD_E_NOMEM, "out of memory");
        return NULL;
    }
    if (worker_tls) {
        m->tls = *worker_tls; /* the file names are the caller's (argv) */
        m->tls_on = true;
    }
    pthread_mutex_init(&m->mu, NULL);
    m->keepalive_ms = keepalive_ms;
    return m;
}

static void free_worker(td_coord_worker *w) {
    td_net_channel_close(w->ch);
    free(w);
}

void td_coord_members_destroy(td_coord_members *m) {
    if (!m) return;
    for (int32_t i = 0; i < m->n; i++) free_worker(m->w[i]);
    pthread_mutex_destroy(&m->mu);
    free(m);
}

static void copy_str(char *dst, size_t cap, const cJSON *o, const char *name) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    snprintf(dst, cap, "%s", cJSON_IsString(v) && v->valuestring ? v->valuestring : "");
}

static int32_t get_int(const cJSON *o, const char *name) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    return cJSON_IsNumber(v) ? (int32_t)v->valuedouble : 0;
}

/* Removes entry i from the table (caller holds mu); frees it unless in use. */
static void drop(td_coord_members *m, int32_t i) {
    td_coord_worker *w = m->w[i];
    m->w[i] = m->w[--m->n];
    w->gone = true;
    if (w->refs == 0) free_worker(w);
}

static int32_t find_id(const td_coord_members *m, const char *id) {
    for (int32_t i = 0; i < m->n; i++)
        if (strcmp(m->w[i]->id, id) == 0) return i;
    return -1;
}

/* Adds or updates a worker (caller holds mu). */
static void upsert(td_coord_members *m, const td_coord_worker *nw) {
    int32_t i = find_id(m, nw->id);
    if (i >= 0) {
        td_coord_worker *w = m->w[i];
        if (strcmp(w->address, nw->address) != 0 || strcmp(w->fingerprint, nw->fingerprint) != 0) {
            /* a different process under the same id: a fresh entry */
            drop(m, i);
        } else {
            w->load = nw->load;
            w->capacity = nw->capacity;
            return;
        }
    }
    if (m->n >= MAX_WORKERS) {
        td_log(TD_LOG_WARN, NULL, "worker table full (%d): ignoring %s", MAX_WORKERS, nw->id);
        return;
    }
    td_coord_worker *w = malloc(sizeof *w);
    if (!w) return;
    *w = *nw;
    w->ch = NULL;
    w->refs = w->inflight = 0;
    w->gone = false;
    w->avoid_until = 0;
    m->w[m->n++] = w;
    td_log(TD_LOG_INFO, NULL, "worker %s joined: %s at %s, model %.16s", w->id, w->role, w->address, w->model_id);
}

void td_coord_members_on_event(void *user, td_etcd_event_kind kind, const char *key, const char *value, size_t len) {
    td_coord_members *m = user;
    const char *slash = key ? strrchr(key, '/') : NULL;
    const char *id = slash ? slash + 1 : key ? key : "";
    pthread_mutex_lock(&m->mu);
    if (kind == TD_ETCD_RESET) {
        /* a full list follows: forget everything first */
        while (m->n > 0) drop(m, m->n - 1);
    } else if (kind == TD_ETCD_DELETE) {
        int32_t i = find_id(m, id);
        if (i >= 0) {
            td_log(TD_LOG_INFO, NULL, "worker %s left", id);
            drop(m, i);
        }
    } else {
        cJSON *o = cJSON_ParseWithLength(value, len);
        td_coord_worker nw = {0};
        snprintf(nw.id, sizeof nw.id, "%s", id);
        if (o) {
            copy_str(nw.address, sizeof nw.address, o, "address");
            copy_str(nw.role, sizeof nw.role, o, "role");
            copy_str(nw.model_id, sizeof nw.model_id, o, "model_id");
            copy_str(nw.model_name, sizeof nw.model_name, o, "model_name");
            copy_str(nw.fingerprint, sizeof nw.fingerprint, o, "fingerprint");
            nw.load = get_int(o, "load");
            nw.capacity = get_int(o, "capacity");
            nw.ctx = get_int(o, "ctx");
            cJSON_Delete(o);
        }
        if (!o || !nw.address[0] || !nw.role[0])
            td_log(TD_LOG_WARN, NULL, "ignoring malformed registration %s", key ? key : "?");
        else
            upsert(m, &nw);
    }
    pthread_mutex_unlock(&m->mu);
}

int td_coord_members_add_static(td_coord_members *m, const char *role, const char *address, td_err *err) {
    td_coord_worker nw = {0};
    snprintf(nw.id, sizeof nw.id, "static-%s", address);
    snprintf(nw.role, sizeof nw.role, "%s", role);
    snprintf(nw.address, sizeof nw.address, "%s", address);
    nw.capacity = 1;
    pthread_mutex_lock(&m->mu);
    upsert(m, &nw);
    pthread_mutex_unlock(&m->mu);
    (void)err;
    return TD_OK;
}

static bool matches(const td_coord_worker *w, const char *role, const char *fingerprint, const char *avoid,
                    double now) {
    /* a static worker's fingerprint is unknown until described: "" matches */
    return strcmp(w->role, role) == 0 && (!fingerprint || !w->fingerprint[0] || !strcmp(w->fingerprint, fingerprint)) &&
           (!avoid || strcmp(w->id, avoid) != 0) && w->avoid_until <= now;
}

td_coord_worker *td_coord_members_pick(td_coord_members *m, const char *role, const char *fingerprint,
                                       const char *avoid) {
    return td_coord_members_pick_prefer(m, role, fingerprint, avoid, NULL, 0);
}

td_coord_worker *td_coord_members_pick_prefer(td_coord_members *m, const char *role, const char *fingerprint,
                                              const char *avoid, const char *prefer, int32_t slack) {
    double now = td_now_sec();
    pthread_mutex_lock(&m->mu);
    td_coord_worker *best = NULL, *preferred = NULL;
    for (int pass = 0; pass < 2 && !best; pass++) {
        /* second pass: a worker that failed recently beats none at all,
         * unless it is the one to avoid */
        for (int32_t i = 0; i < m->n; i++) {
            td_coord_worker *w = m->w[i];
            if (!matches(w, role, fingerprint, avoid, pass ? INFINITY : now)) continue;
            if (prefer && !strcmp(w->id, prefer)) preferred = w;
            if (!best || w->inflight < best->inflight ||
                (w->inflight == best->inflight && w->load < best->load))
                best = w;
        }
    }
    if (best && preferred && preferred->inflight <= best->inflight + slack) best = preferred;
    if (best) {
        if (!best->ch) {
            td_net_channel_opts o = {.keepalive_ms = m->keepalive_ms, .keepalive_timeout_ms = m->keepalive_ms,
                                     .min_reconnect_ms = 100, .max_reconnect_ms = 1000,
                                     .tls = m->tls_on ? &m->tls : NULL};
            td_err err = {0};
            best->ch = td_net_channel_open(best->address, &o, &err);
            if (!best->ch) td_log(TD_LOG_WARN, NULL, "worker %s: %s", best->id, err.msg);
        }
        if (best->ch) {
            best->refs++;
            best->inflight++;
        } else
            best = NULL;
    }
    pthread_mutex_unlock(&m->mu);
    return best;
}

void td_coord_members_put(td_coord_members *m, td_coord_worker *w, bool failed) {
    if (!w) return;
    pthread_mutex_lock(&m->mu);
    w->refs--;
    w->inflight--;
    if (failed) w->avoid_until = td_now_sec() + AVOID_SEC;
    if (w->gone && w->refs == 0) free_worker(w);
    pthread_mutex_unlock(&m->mu);
}

int32_t td_coord_members_count(td_coord_members *m, const char *role, const char *fingerprint) {
    pthread_mutex_lock(&m->mu);
    int32_t n = 0;
    for (int32_t i = 0; i < m->n; i++) n += matches(m->w[i], role, fingerprint, NULL, INFINITY);
    pthread_mutex_unlock(&m->mu);
    return n;
}

int32_t td_coord_members_snapshot(td_coord_members *m, td_coord_worker *out, int32_t max) {
    pthread_mutex_lock(&m->mu);
    int32_t n = 0;
    for (int32_t i = 0; i < m->n && n < max; i++) {
        out[n] = *m->w[i];
        out[n].ch = NULL;
        n++;
    }
    pthread_mutex_unlock(&m->mu);
    return n;
}
