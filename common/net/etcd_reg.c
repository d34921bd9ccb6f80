/* etcd_reg.c — a registration: one background thread that keeps key=value
 * alive under a lease. It grants a lease, puts the key under it and renews
 * it every ttl/3; when etcd says the lease is gone (TTL 0, NOT_FOUND) it
 * grants a new one and puts the value again; while etcd cannot be reached it
 * retries with backoff and jitter, forever. After an outage it writes the
 * value again even when the lease survived, so a restored etcd holds it.
 * Waits are on a condition variable, woken by stop and by updates. */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "etcd_internal.h"

struct td_etcd_reg {
    td_etcd *e;
    struct td_etcd_reg *next; /* in e->regs */
    char *key;
    int64_t ttl;
    pthread_mutex_t mu; /* guards value, len; with cv, the thread's sleeps */
    pthread_cond_t cv;
    char *value;
    size_t len;
    atomic_bool stop, dirty, alive;
    atomic_int generation;
    int64_t lease; /* the thread's; read by unregister after the join */
    pthread_t th;
};

/* Puts the current value under r->lease. *lease_gone: etcd did not know
 * the lease. */
static int put_value(td_etcd_reg *r, bool *lease_gone, td_err *err) {
    *lease_gone = false;
    pthread_mutex_lock(&r->mu);
    atomic_store(&r->dirty, false);
    char *v = malloc(r->len ? r->len : 1);
    size_t len = r->len;
    if (v && len) memcpy(v, r->value, len);
    pthread_mutex_unlock(&r->mu);
    if (!v) {
        atomic_store(&r->dirty, true);
        return td_err_set(err, TD_E_NOMEM, "etcd registration: out of memory");
    }
    int code = -1;
    int rc = td_etcd_put_x(r->e, &r->stop, r->key, v, len, r->lease, &code, err);
    free(v);
    if (rc) {
        atomic_store(&r->dirty, true); /* still to be written */
        *lease_gone = code == 5 /* NOT_FOUND: "requested lease not found" */;
    }
    return rc;
}

static void *reg_main(void *arg) {
    td_etcd_reg *r = arg;
    td_etcd *e = r->e;
    uint64_t rng = (uint64_t)(uintptr_t)r ^ (uint64_t)(td_now_sec() * 1e9);
    int32_t backoff = 0;
    int32_t interval_ms = (int32_t)(r->ttl * 1000 / 3);
    if (interval_ms < TD_ETCD_POLL_MS) interval_ms = TD_ETCD_POLL_MS;
    double last_ok = td_now_sec(), next_ka = 0;
    bool outage = false;
    while (!atomic_load(&r->stop)) {
        td_err err = {0};
        bool failed = false, gone = false;
        double now = td_now_sec();
        if (r->lease == 0) {
            atomic_store(&r->alive, false);
            if (td_etcd_lease_grant_x(e, &r->stop, r->ttl, &r->lease, &err)) {
                failed = true;
            } else if (put_value(r, &gone, &err)) {
                failed = true;
                if (gone) r->lease = 0;
            } else {
                atomic_fetch_add(&r->generation, 1);
                atomic_store(&r->alive, true);
                outage = false;
                last_ok = td_now_sec();
                next_ka = last_ok + interval_ms / 1000.0;
                backoff = 0;
            }
        } else if (atomic_load(&r->dirty) || outage) {
            if (put_value(r, &gone, &err)) {
                failed = true;
                if (gone) r->lease = 0;
            } else {
                outage = false;
                atomic_store(&r->alive, true);
                backoff = 0;
            }
        } else if (now >= next_ka) {
            int64_t left = 0;
            if (td_etcd_lease_keepalive_x(e, &r->stop, r->lease, &left, &err)) {
                failed = true;
            } else if (left == 0) {
                r->lease = 0; /* lost: grant a new one at once */
                continue;
            } else {
                last_ok = td_now_sec();
                next_ka = last_ok + interval_ms / 1000.0;
                backoff = 0;
            }
        }
        if (atomic_load(&r->stop)) break;
        if (failed && td_now_sec() - last_ok > (double)r->ttl) {
            /* the lease may have run out: not registered until etcd answers */
            atomic_store(&r->alive, false);
            outage = true;
        }
        int32_t wait_ms;
        if (failed) {
            /* never back off past a keep-alive interval: when etcd returns
             * (its restart refreshes every lease to one TTL) the value must
             * be put again before that TTL runs out, or the registration
             * blinks out and readers see the worker leave */
            wait_ms = td_etcd_backoff_next(e, &backoff, &rng);
            if (wait_ms > interval_ms) wait_ms = interval_ms;
        } else if (r->lease == 0 || atomic_load(&r->dirty) || outage) {
            continue;
        } else {
            double d = (next_ka - td_now_sec()) * 1000.0;
            wait_ms = d < 1 ? 0 : (int32_t)d;
        }
        /* a keep-alive that failed is retried sooner than the backoff when
         * the lease would otherwise run out */
        if (failed && r->lease && !outage) {
            double until_expiry = (last_ok + (double)r->ttl - td_now_sec()) * 1000.0 / 2;
            if (until_expiry < wait_ms) wait_ms = until_expiry < TD_ETCD_POLL_MS ? TD_ETCD_POLL_MS : (int32_t)until_expiry;
        }
        if (wait_ms > 0) {
            pthread_mutex_lock(&r->mu);
            td_etcd_wait(&r->cv, &r->mu, wait_ms, &r->stop, failed ? NULL : &r->dirty);
            pthread_mutex_unlock(&r->mu);
        }
    }
    return NULL;
}

static void reg_free(td_etcd_reg *r) {
    pthread_cond_destroy(&r->cv);
    pthread_mutex_destroy(&r->mu);
    free(r->key);
    free(r->value);
    free(r);
}

td_etcd_reg *td_etcd_register(td_etcd *e, const char *key, const char *value, size_t len, int64_t ttl_sec,
                              td_err *err) {
    if (!e || !key || !*key || ttl_sec <= 0 || (!value && len)) {
        td_err_set(err, TD_E_ARG, "etcd register: NULL handle, empty key, NULL value or TTL <= 0");
        return NULL;
    }
    td_etcd_reg *r = calloc(1, sizeof *r);
    if (!r) goto nomem;
    r->e = e;
    r->ttl = ttl_sec;
    r->key = strdup(key);
    r->value = malloc(len ? len : 1);
    if (!r->key || !r->value) {
        free(r->key);
        free(r->value);
        free(r);
        goto nomem;
    }
    if (len) memcpy(r->value, value, len);
    r->len = len;
    atomic_init(&r->stop, false);
    atomic_init(&r->dirty, false);
    atomic_init(&r->alive, false);
    atomic_init(&r->generation, 0);
    pthread_condattr_t ca;
    bool ca_ok = pthread_condattr_init(&ca) == 0;
    if (ca_ok) pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* td_etcd_wait counts on it */
    if (!ca_ok || pthread_mutex_init(&r->mu, NULL)) {
        if (ca_ok) pthread_condattr_destroy(&ca);
        free(r->key);
        free(r->value);
        free(r);
        goto nomem;
    }
    int crc = pthread_cond_init(&r->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (crc) {
        pthread_mutex_destroy(&r->mu);
        free(r->key);
        free(r->value);
        free(r);
        goto nomem;
    }
    /* listed before the thread starts, so that close always finds it */
    pthread_mutex_lock(&e->mu);
    r->next = e->regs;
    e->regs = r;
    pthread_mutex_unlock(&e->mu);
    if (pthread_create(&r->th, NULL, reg_main, r)) {
        pthread_mutex_lock(&e->mu);
        for (td_etcd_reg **p = &e->regs; *p; p = &(*p)->next)
            if (*p == r) {
                *p = r->next;
                break;
            }
        pthread_mutex_unlock(&e->mu);
        reg_free(r);
        td_err_set(err, TD_E_IO, "etcd register: cannot start a thread");
        return NULL;
    }
    return r;
nomem:
    td_err_set(err, TD_E_NOMEM, "etcd register: out of memory");
    return NULL;
}

int td_etcd_reg_update(td_etcd_reg *r, const char *value, size_t len) {
    if (!r || (!value && len)) return TD_E_ARG;
    char *v = malloc(len ? len : 1);
    if (!v) return TD_E_NOMEM;
    if (len) memcpy(v, value, len);
    pthread_mutex_lock(&r->mu);
    free(r->value);
    r->value = v;
    r->len = len;
    atomic_store(&r->dirty, true);
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
    return 0;
}

bool td_etcd_reg_alive(const td_etcd_reg *r) { return r && atomic_load(&r->alive); }

int32_t td_etcd_reg_generation(const td_etcd_reg *r) { return r ? atomic_load(&r->generation) : 0; }

void td_etcd_unregister(td_etcd_reg *r) {
    if (!r) return;
    td_etcd *e = r->e;
    pthread_mutex_lock(&e->mu);
    for (td_etcd_reg **p = &e->regs; *p; p = &(*p)->next)
        if (*p == r) {
            *p = r->next;
            break;
        }
    pthread_mutex_unlock(&e->mu);
    pthread_mutex_lock(&r->mu);
    atomic_store(&r->stop, true);
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
    pthread_join(r->th, NULL);
    /* best effort: when etcd is away the lease runs out by itself */
    if (r->lease) td_etcd_lease_revoke(e, r->lease, NULL);
    reg_free(r);
}

void td_etcd_reg_stop_all(td_etcd *e) {
    for (;;) {
        pthread_mutex_lock(&e->mu);
        td_etcd_reg *r = e->regs;
        pthread_mutex_unlock(&e->mu);
        if (!r) return;
        td_etcd_unregister(r); /* takes it off the list */
    }
}
