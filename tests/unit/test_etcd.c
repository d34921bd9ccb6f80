/* test_etcd.c — the etcd client against a real etcd that the test starts
 * (free loopback ports, a data dir under mkdtemp, its log in that dir):
 * key-value calls, prefix ends that carry past 0xff, compare-and-set, leases,
 * a registration that outlives its TTL, a watch that mirrors a prefix, and
 * both surviving etcd being killed and restarted on the same data and being
 * wiped (a fresh store whose revision went backwards). Also a caller's
 * mistakes, an unreachable etcd, and etcd auth (user + password). A second
 * etcd runs as production etcd does, on TLS with client certificates
 * required: calls, a watch and a registration pass with the CA and a client
 * certificate; no certificate, a foreign CA and plaintext are refused. etcd is
 * always stopped by its PID: group teardown, with an atexit handler as the
 * backup when a test aborts. Skipped only when no `etcd` is on PATH.
 * Waits are on conditions with generous timeouts, never on elapsed time. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "net/etcd.h"
#include "test_support.h"

/* ---- the etcd under test ---- */

typedef struct fx {
    bool absent;                 /* no etcd binary: every test skips */
    char etcd[512], etcdctl[512];
    char dir[64], data[128], log[128];
    int port, peer;
    char ep[64];                 /* "127.0.0.1:port" */
    pid_t pid;
    /* TLS with client certificates (the second group): PEM files under dir */
    bool tls;
    char ca[160], cert[160], key[160], ccert[160], ckey[160], other_ca[160];
} fx;

/* The one piece of process state: the PID that the atexit handler must
 * stop if a test aborts before the group teardown runs. */
static pid_t g_etcd_pid;

static void kill_etcd_atexit(void) {
    if (g_etcd_pid > 0) {
        kill(g_etcd_pid, SIGKILL);
        waitpid(g_etcd_pid, NULL, 0);
        g_etcd_pid = 0;
    }
}

static td_etcd *client(const char *ep, int32_t timeout_ms) {
    td_etcd_opts o = {.call_timeout_ms = timeout_ms, .backoff_min_ms = 100, .backoff_max_ms = 1000};
    td_err err = {0};
    td_etcd *e = td_etcd_open(ep, &o, &err);
    if (!e) fail_msg("td_etcd_open(%s): %s", ep, err.msg);
    return e;
}

/* Waits (up to ~30 s) until etcd answers a Range (or refuses it: auth). */
static bool wait_ready(fx *f) {
    td_etcd_opts to = {.call_timeout_ms = 1000, .ca_file = f->ca, .cert_file = f->ccert, .key_file = f->ckey};
    td_err oerr = {0};
    td_etcd *e = f->tls ? td_etcd_open(f->ep, &to, &oerr) : client(f->ep, 1000);
    if (!e) fail_msg("td_etcd_open(%s): %s", f->ep, oerr.msg);
    bool ok = false;
    td_err err = {0};
    for (int i = 0; i < 300 && !ok; i++) {
        td_etcd_list l;
        int rc = td_etcd_get_prefix(e, "/", &l, &err);
        if (rc != TD_E_IO) { /* an answer, a refusal (auth on) included */
            if (rc == 0) td_etcd_list_free(&l);
            ok = true;
        } else {
            test_sleep_ms(100);
        }
    }
    td_etcd_close(e);
    if (!ok) fprintf(stderr, "etcd not ready: %s\n", err.msg);
    return ok;
}

static void etcd_start(fx *f) {
    char client_url[64], peer_url[64], cluster[96];
    snprintf(client_url, sizeof client_url, "%s://127.0.0.1:%d", f->tls ? "https" : "http", f->port);
    snprintf(peer_url, sizeof peer_url, "http://127.0.0.1:%d", f->peer);
    snprintf(cluster, sizeof cluster, "t=%s", peer_url);
    /* with TLS, as production etcd runs: a server certificate, and client
     * certificates required, signed by the test's CA */
    char *argv[] = {f->etcd, "--name", "t", "--data-dir", f->data, "--listen-client-urls", client_url,
                    "--advertise-client-urls", client_url, "--listen-peer-urls", peer_url,
                    "--initial-advertise-peer-urls", peer_url, "--initial-cluster", cluster,
                    f->tls ? "--cert-file" : NULL, f->cert, "--key-file", f->key, "--client-cert-auth",
                    "--trusted-ca-file", f->ca, NULL};
    pid_t pid = test_spawn_logged(f->etcd, argv, f->log);
    assert_true(pid > 0);
    f->pid = g_etcd_pid = pid;
    if (!wait_ready(f)) fail_msg("etcd did not answer on %s (log: %s)", f->ep, f->log);
}

/* SIGTERM, then SIGKILL when it has not gone after 5 s; hard: SIGKILL now. */
static void etcd_stop(fx *f, bool hard) {
    test_stop_pid(f->pid, hard);
    f->pid = g_etcd_pid = 0;
}

/* The fixture without etcd started: binaries found, a temp dir, ports. */
static int group_setup_dirs(void **state) {
    fx *f = calloc(1, sizeof *f);
    if (!f) return -1;
    *state = f;
    if (!test_find_on_path("etcd", f->etcd, sizeof f->etcd)) {
        f->absent = true;
        return 0;
    }
    if (!test_find_on_path("etcdctl", f->etcdctl, sizeof f->etcdctl)) f->etcdctl[0] = 0;
    snprintf(f->dir, sizeof f->dir, "/tmp/td_etcd_XXXXXX");
    if (!mkdtemp(f->dir)) return -1;
    snprintf(f->data, sizeof f->data, "%s/data", f->dir);
    snprintf(f->log, sizeof f->log, "%s/etcd.log", f->dir);
    f->port = test_free_port();
    f->peer = test_free_port();
    while (f->peer == f->port) f->peer = test_free_port();
    if (f->port <= 0 || f->peer <= 0) return -1;
    snprintf(f->ep, sizeof f->ep, "127.0.0.1:%d", f->port);
    return 0;
}

static int group_setup(void **state) {
    if (group_setup_dirs(state)) return -1;
    fx *f = *state;
    if (!f->absent) etcd_start(f);
    return 0;
}

static int group_teardown(void **state) {
    fx *f = *state;
    if (!f) return 0;
    etcd_stop(f, false);
    if (f->dir[0]) {
        if (getenv("TD_ETCD_KEEP")) fprintf(stderr, "etcd test dir kept: %s\n", f->dir);
        else test_rm_rf(f->dir);
    }
    free(f);
    return 0;
}

static fx *get_fx(void **state) {
    fx *f = *state;
    if (f->absent) {
        fprintf(stderr, "test_etcd: no `etcd` binary on PATH: skipped (install etcd-server)\n");
        skip();
    }
    return f;
}

/* ---- helpers ---- */

/* The value of key ("" when present and empty), or NULL when absent. */
static char *get_value(td_etcd *e, const char *key) {
    td_etcd_list l;
    td_err err = {0};
    if (td_etcd_get_prefix(e, key, &l, &err)) return NULL;
    char *v = NULL;
    for (size_t i = 0; i < l.n; i++)
        if (strcmp(l.kvs[i].key, key) == 0) v = strdup(l.kvs[i].value);
    td_etcd_list_free(&l);
    return v;
}

static bool value_is(td_etcd *e, const char *key, const char *want) {
    char *v = get_value(e, key);
    bool ok = want ? v && strcmp(v, want) == 0 : v == NULL;
    free(v);
    return ok;
}

/* Polls value_is for up to secs. */
static bool wait_value(td_etcd *e, const char *key, const char *want, int secs) {
    for (int i = 0; i < secs * 10; i++) {
        if (value_is(e, key, want)) return true;
        test_sleep_ms(100);
    }
    return false;
}

static bool wait_reg_alive(td_etcd_reg *r, int secs) {
    for (int i = 0; i < secs * 10; i++) {
        if (td_etcd_reg_alive(r)) return true;
        test_sleep_ms(100);
    }
    return false;
}

/* A watch consumer: a mirror of the prefix, as etcd.h describes. */
typedef struct mirror {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int resets, events;
    int n;
    struct {
        char key[128], val[128];
    } kv[64];
} mirror;

static void mirror_init(mirror *m) {
    memset(m, 0, sizeof *m);
    pthread_mutex_init(&m->mu, NULL);
    pthread_cond_init(&m->cv, NULL);
}

static void mirror_destroy(mirror *m) {
    pthread_cond_destroy(&m->cv);
    pthread_mutex_destroy(&m->mu);
}

static int mirror_find(const mirror *m, const char *key) {
    for (int i = 0; i < m->n; i++)
        if (strcmp(m->kv[i].key, key) == 0) return i;
    return -1;
}

static void on_event(void *user, td_etcd_event_kind kind, const char *key, const char *value, size_t len) {
    mirror *m = user;
    pthread_mutex_lock(&m->mu);
    m->events++;
    if (kind == TD_ETCD_RESET) {
        m->resets++;
        m->n = 0;
    } else {
        int i = mirror_find(m, key);
        if (kind == TD_ETCD_PUT) {
            if (i < 0 && m->n < 64) i = m->n++;
            if (i >= 0) {
                snprintf(m->kv[i].key, sizeof m->kv[i].key, "%s", key);
                snprintf(m->kv[i].val, sizeof m->kv[i].val, "%.*s", (int)len, value);
            }
        } else if (i >= 0) {
            m->kv[i] = m->kv[--m->n];
        }
    }
    pthread_cond_broadcast(&m->cv);
    pthread_mutex_unlock(&m->mu);
}

/* Waits up to secs for: key has val (val NULL: key absent), and at least
 * min_resets RESETs seen. */
static bool mirror_wait(mirror *m, const char *key, const char *val, int min_resets, int secs) {
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += secs;
    pthread_mutex_lock(&m->mu);
    bool ok = false;
    for (;;) {
        int i = key ? mirror_find(m, key) : -1;
        ok = m->resets >= min_resets && (!key || (val ? i >= 0 && strcmp(m->kv[i].val, val) == 0 : i < 0));
        if (ok) break;
        if (pthread_cond_timedwait(&m->cv, &m->mu, &until) == ETIMEDOUT) break;
    }
    pthread_mutex_unlock(&m->mu);
    return ok;
}

static int mirror_resets(mirror *m) {
    pthread_mutex_lock(&m->mu);
    int r = m->resets;
    pthread_mutex_unlock(&m->mu);
    return r;
}

/* ---- tests ---- */

static void bad_input(void **state) {
    fx *f = get_fx(state);
    td_err err = {0};
    assert_null(td_etcd_open(NULL, NULL, &err));
    assert_int_equal(err.code, TD_E_ARG);
    memset(&err, 0, sizeof err);
    assert_null(td_etcd_open("", NULL, &err));
    assert_int_equal(err.code, TD_E_ARG);
    memset(&err, 0, sizeof err);
    assert_null(td_etcd_open(" , ,", NULL, &err));
    assert_int_equal(err.code, TD_E_ARG);
    td_etcd_close(NULL);

    td_etcd *e = client(f->ep, 5000);
    memset(&err, 0, sizeof err);
    int rc = td_etcd_put(e, "", "v", 1, 0, &err);
    assert_true(rc < 0);
    assert_non_null(strstr(err.msg, "INVALID_ARGUMENT"));
    assert_true(td_etcd_put(e, NULL, "v", 1, 0, NULL) < 0);
    assert_null(td_etcd_register(e, "", "v", 1, 2, NULL));
    assert_null(td_etcd_register(e, "/k", "v", 1, 0, NULL));
    assert_null(td_etcd_watch_prefix(e, "/p", NULL, NULL, NULL));
    td_etcd_close(e);

    /* nothing listens: TD_E_IO, within the call timeout (plus slack for a
     * loaded machine) */
    int dead = test_free_port();
    char ep[64];
    snprintf(ep, sizeof ep, "127.0.0.1:%d", dead);
    e = client(ep, 1000);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    memset(&err, 0, sizeof err);
    assert_int_equal(td_etcd_put(e, "/k", "v", 1, 0, &err), TD_E_IO);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    assert_true(t1.tv_sec - t0.tv_sec < 6);
    assert_true(strlen(err.msg) > 0);
    td_etcd_close(e);

    /* a dead endpoint first, then the live one with "http://": the client
     * moves on */
    char eps[160];
    snprintf(eps, sizeof eps, "127.0.0.1:%d, http://%s/", dead, f->ep);
    e = client(eps, 3000);
    int ok = -1;
    for (int i = 0; i < 3 && ok != 0; i++) ok = td_etcd_put(e, "/multi", "x", 1, 0, &err);
    assert_int_equal(ok, 0);
    assert_true(value_is(e, "/multi", "x"));
    assert_int_equal(td_etcd_delete(e, "/multi", NULL), 0);
    td_etcd_close(e);
}

static void kv_calls(void **state) {
    fx *f = get_fx(state);
    td_etcd *e = client(f->ep, 5000);
    td_err err = {0};
    assert_int_equal(td_etcd_put(e, "/kv/a", "1", 1, 0, &err), 0);
    assert_int_equal(td_etcd_put(e, "/kv/b", "two", 3, 0, &err), 0);
    assert_int_equal(td_etcd_put(e, "/kv/empty", NULL, 0, 0, &err), 0);
    assert_int_equal(td_etcd_put(e, "/kw", "outside", 7, 0, &err), 0);
    td_etcd_list l;
    assert_int_equal(td_etcd_get_prefix(e, "/kv/", &l, &err), 0);
    assert_int_equal(l.n, 3);
    assert_true(l.revision > 0);
    assert_string_equal(l.kvs[0].key, "/kv/a"); /* etcd answers in key order */
    assert_string_equal(l.kvs[0].value, "1");
    assert_int_equal(l.kvs[0].value_len, 1);
    assert_string_equal(l.kvs[1].key, "/kv/b");
    assert_int_equal(l.kvs[1].value_len, 3);
    assert_string_equal(l.kvs[2].key, "/kv/empty");
    assert_int_equal(l.kvs[2].value_len, 0);
    assert_true(l.kvs[0].mod_revision > 0 && l.kvs[0].mod_revision <= l.revision);
    td_etcd_list_free(&l);
    assert_int_equal(td_etcd_delete(e, "/kv/a", &err), 0);
    assert_int_equal(td_etcd_delete(e, "/kv/nothing", &err), 0); /* deleting nothing is fine */
    assert_int_equal(td_etcd_get_prefix(e, "/kv/", &l, &err), 0);
    assert_int_equal(l.n, 2);
    td_etcd_list_free(&l);
    assert_int_equal(td_etcd_get_prefix(e, "/none/", &l, &err), 0);
    assert_int_equal(l.n, 0);
    td_etcd_list_free(&l);

    /* prefix end carries past 0xff: "/c\xff" ends at "/d", excluded */
    assert_int_equal(td_etcd_put(e, "/c\xff" "1", "a", 1, 0, &err), 0);
    assert_int_equal(td_etcd_put(e, "/c\xff\xff", "b", 1, 0, &err), 0);
    assert_int_equal(td_etcd_put(e, "/c\xfe", "below", 5, 0, &err), 0);
    assert_int_equal(td_etcd_put(e, "/d", "after", 5, 0, &err), 0);
    assert_int_equal(td_etcd_get_prefix(e, "/c\xff", &l, &err), 0);
    assert_int_equal(l.n, 2);
    td_etcd_list_free(&l);
    const char *all[] = {"/kv/b", "/kv/empty", "/kw", "/c\xff" "1", "/c\xff\xff", "/c\xfe", "/d"};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) assert_int_equal(td_etcd_delete(e, all[i], &err), 0);
    td_etcd_close(e);
}

static void cas(void **state) {
    fx *f = get_fx(state);
    td_etcd *e = client(f->ep, 5000);
    td_err err = {0};
    bool swapped = false;
    td_etcd_delete(e, "/cas", NULL);
    assert_int_equal(td_etcd_cas(e, "/cas", 0, "first", 5, 0, &swapped, &err), 0);
    assert_true(swapped);
    assert_true(value_is(e, "/cas", "first"));
    /* absent expected, but present: no swap */
    assert_int_equal(td_etcd_cas(e, "/cas", 0, "again", 5, 0, &swapped, &err), 0);
    assert_false(swapped);
    assert_true(value_is(e, "/cas", "first"));
    td_etcd_list l;
    assert_int_equal(td_etcd_get_prefix(e, "/cas", &l, &err), 0);
    assert_int_equal(l.n, 1);
    int64_t rev = l.kvs[0].mod_revision;
    td_etcd_list_free(&l);
    assert_int_equal(td_etcd_cas(e, "/cas", rev, "second", 6, 0, &swapped, &err), 0);
    assert_true(swapped);
    assert_true(value_is(e, "/cas", "second"));
    /* the old revision is stale now */
    assert_int_equal(td_etcd_cas(e, "/cas", rev, "third", 5, 0, &swapped, &err), 0);
    assert_false(swapped);
    assert_true(value_is(e, "/cas", "second"));
    /* a revision on an absent key: no swap */
    td_etcd_delete(e, "/cas", NULL);
    assert_int_equal(td_etcd_cas(e, "/cas", rev, "x", 1, 0, &swapped, &err), 0);
    assert_false(swapped);
    assert_true(value_is(e, "/cas", NULL));
    td_etcd_close(e);
}

static void leases(void **state) {
    fx *f = get_fx(state);
    td_etcd *e = client(f->ep, 5000);
    td_err err = {0};
    int64_t lease = 0, ttl = 0;
    assert_int_equal(td_etcd_lease_grant(e, 30, &lease, &err), 0);
    assert_true(lease != 0);
    assert_int_equal(td_etcd_put(e, "/lease/k", "v", 1, lease, &err), 0);
    td_etcd_list l;
    assert_int_equal(td_etcd_get_prefix(e, "/lease/k", &l, &err), 0);
    assert_int_equal(l.n, 1);
    assert_true(l.kvs[0].lease == lease);
    td_etcd_list_free(&l);
    assert_int_equal(td_etcd_lease_keepalive_once(e, lease, &ttl, &err), 0);
    assert_true(ttl > 0 && ttl <= 30);
    assert_int_equal(td_etcd_lease_revoke(e, lease, &err), 0);
    assert_true(value_is(e, "/lease/k", NULL)); /* revoked: its key is gone */
    /* a lease etcd does not know: ttl 0 or an error, never a live lease */
    ttl = -1;
    int rc = td_etcd_lease_keepalive_once(e, lease, &ttl, &err);
    assert_true(rc < 0 || ttl == 0);
    /* a put under a revoked lease is refused */
    memset(&err, 0, sizeof err);
    assert_true(td_etcd_put(e, "/lease/k", "v", 1, lease, &err) < 0);
    assert_non_null(strstr(err.msg, "NOT_FOUND"));
    td_etcd_close(e);
}

static void registration(void **state) {
    fx *f = get_fx(state);
    td_etcd *e = client(f->ep, 2000);
    td_err err = {0};
    td_etcd_reg *r = td_etcd_register(e, "/reg/a", "load=1", 6, 2, &err);
    assert_non_null(r);
    assert_true(wait_reg_alive(r, 10));
    assert_true(wait_value(e, "/reg/a", "load=1", 10));
    assert_int_equal(td_etcd_reg_generation(r), 1);
    test_sleep_ms(5000); /* > 2 x TTL: only keep-alives hold it */
    assert_true(value_is(e, "/reg/a", "load=1"));
    assert_true(td_etcd_reg_alive(r));
    assert_int_equal(td_etcd_reg_generation(r), 1);
    assert_int_equal(td_etcd_reg_update(r, "load=2", 6), 0);
    assert_true(wait_value(e, "/reg/a", "load=2", 10));
    td_etcd_list l;
    assert_int_equal(td_etcd_get_prefix(e, "/reg/a", &l, &err), 0);
    assert_int_equal(l.n, 1);
    assert_true(l.kvs[0].lease != 0); /* the update stays under the lease */
    td_etcd_list_free(&l);
    td_etcd_unregister(r);
    assert_true(value_is(e, "/reg/a", NULL)); /* revoked at once */
    td_etcd_unregister(NULL);
    /* close stops a registration still running (and revokes it) */
    r = td_etcd_register(e, "/reg/b", "x", 1, 2, &err);
    assert_non_null(r);
    assert_true(wait_value(e, "/reg/b", "x", 10));
    td_etcd_close(e);
    e = client(f->ep, 2000);
    assert_true(value_is(e, "/reg/b", NULL));
    td_etcd_close(e);
}

static void watch(void **state) {
    fx *f = get_fx(state);
    td_etcd *e = client(f->ep, 2000);
    td_err err = {0};
    assert_int_equal(td_etcd_put(e, "/w/a", "1", 1, 0, &err), 0);
    assert_int_equal(td_etcd_put(e, "/w/b", "2", 1, 0, &err), 0);
    assert_int_equal(td_etcd_put(e, "/wx", "no", 2, 0, &err), 0);
    mirror m;
    mirror_init(&m);
    td_etcd_watch *w = td_etcd_watch_prefix(e, "/w/", on_event, &m, &err);
    assert_non_null(w);
    assert_true(mirror_wait(&m, "/w/a", "1", 1, 10));
    assert_true(mirror_wait(&m, "/w/b", "2", 1, 10));
    assert_true(mirror_wait(&m, "/wx", NULL, 1, 10));
    for (int i = 0; i < 100 && !td_etcd_watch_alive(w); i++) test_sleep_ms(100);
    assert_true(td_etcd_watch_alive(w));
    assert_int_equal(td_etcd_put(e, "/w/c", "3", 1, 0, &err), 0);
    assert_true(mirror_wait(&m, "/w/c", "3", 1, 10));
    assert_int_equal(td_etcd_put(e, "/w/a", "11", 2, 0, &err), 0);
    assert_true(mirror_wait(&m, "/w/a", "11", 1, 10));
    assert_int_equal(td_etcd_delete(e, "/w/b", &err), 0);
    assert_true(mirror_wait(&m, "/w/b", NULL, 1, 10));
    assert_int_equal(td_etcd_put(e, "/wx", "still no", 8, 0, &err), 0);
    assert_int_equal(td_etcd_put(e, "/w/d", "4", 1, 0, &err), 0);
    assert_true(mirror_wait(&m, "/w/d", "4", 1, 10));
    pthread_mutex_lock(&m.mu);
    assert_int_equal(m.resets, 1);
    assert_int_equal(m.n, 3);
    assert_int_equal(mirror_find(&m, "/wx"), -1);
    pthread_mutex_unlock(&m.mu);
    td_etcd_watch_stop(w);
    td_etcd_watch_stop(NULL);
    mirror_destroy(&m);
    const char *all[] = {"/w/a", "/w/c", "/w/d", "/wx"};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) td_etcd_delete(e, all[i], NULL);
    td_etcd_close(e);
}

/* etcd killed for longer than the TTL, then restarted on the same data. */
static void etcd_restart(void **state) {
    fx *f = get_fx(state);
    td_etcd *e = client(f->ep, 1000);
    td_err err = {0};
    mirror m;
    mirror_init(&m);
    td_etcd_reg *r = td_etcd_register(e, "/rs/reg", "up", 2, 2, &err);
    assert_non_null(r);
    td_etcd_watch *w = td_etcd_watch_prefix(e, "/rs/", on_event, &m, &err);
    assert_non_null(w);
    assert_true(wait_reg_alive(r, 10));
    assert_true(mirror_wait(&m, "/rs/reg", "up", 1, 10));
    int gen = td_etcd_reg_generation(r);

    etcd_stop(f, true);
    test_sleep_ms(3000); /* longer than the TTL */
    for (int i = 0; i < 100 && (td_etcd_reg_alive(r) || td_etcd_watch_alive(w)); i++) test_sleep_ms(100);
    assert_false(td_etcd_reg_alive(r));
    assert_false(td_etcd_watch_alive(w));
    etcd_start(f);

    td_etcd *e2 = client(f->ep, 2000);
    assert_true(wait_value(e2, "/rs/reg", "up", 30));
    assert_true(wait_reg_alive(r, 30));
    assert_true(td_etcd_reg_generation(r) >= gen);
    /* the watch is back and current: a write after the restart arrives */
    assert_int_equal(td_etcd_put(e2, "/rs/after", "yes", 3, 0, &err), 0);
    assert_true(mirror_wait(&m, "/rs/after", "yes", 1, 30));
    assert_true(mirror_wait(&m, "/rs/reg", "up", 1, 30));
    /* and the registration keeps it alive past the TTL */
    test_sleep_ms(3000);
    assert_true(value_is(e2, "/rs/reg", "up"));
    td_etcd_watch_stop(w);
    td_etcd_unregister(r);
    td_etcd_delete(e2, "/rs/after", NULL);
    td_etcd_close(e2);
    td_etcd_close(e);
    mirror_destroy(&m);
}

/* etcd killed, its data removed, started fresh: the revision goes back. */
static void etcd_wiped(void **state) {
    fx *f = get_fx(state);
    td_etcd *e = client(f->ep, 1000);
    td_err err = {0};
    /* push the revision up, so that a fresh store is clearly behind */
    for (int i = 0; i < 20; i++) assert_int_equal(td_etcd_put(e, "/wp/old", "old", 3, 0, &err), 0);
    mirror m;
    mirror_init(&m);
    td_etcd_reg *r = td_etcd_register(e, "/wp/reg", "me", 2, 2, &err);
    assert_non_null(r);
    td_etcd_watch *w = td_etcd_watch_prefix(e, "/wp/", on_event, &m, &err);
    assert_non_null(w);
    assert_true(wait_reg_alive(r, 10));
    assert_true(mirror_wait(&m, "/wp/reg", "me", 1, 10));
    assert_true(mirror_wait(&m, "/wp/old", "old", 1, 10));
    int gen = td_etcd_reg_generation(r);
    int resets = mirror_resets(&m);

    etcd_stop(f, true);
    test_rm_rf(f->data);
    etcd_start(f);

    td_etcd *e2 = client(f->ep, 2000);
    assert_true(wait_value(e2, "/wp/reg", "me", 30));
    for (int i = 0; i < 300 && td_etcd_reg_generation(r) <= gen; i++) test_sleep_ms(100);
    assert_true(td_etcd_reg_generation(r) > gen); /* a new lease */
    assert_true(wait_reg_alive(r, 30));
    /* the watch listed again: "/wp/old" is gone from the mirror */
    assert_true(mirror_wait(&m, "/wp/old", NULL, resets + 1, 30));
    assert_true(mirror_wait(&m, "/wp/reg", "me", resets + 1, 30));
    assert_int_equal(td_etcd_put(e2, "/wp/new", "n", 1, 0, &err), 0);
    assert_true(mirror_wait(&m, "/wp/new", "n", resets + 1, 30));
    td_etcd_watch_stop(w);
    td_etcd_unregister(r);
    assert_true(value_is(e2, "/wp/reg", NULL));
    td_etcd_close(e2);
    td_etcd_close(e);
    mirror_destroy(&m);
}

static int run_etcdctl(fx *f, const char *a1, const char *a2, const char *a3, const char *a4) {
    char *argv[] = {f->etcdctl, "--endpoints", f->ep, (char *)a1, (char *)a2, (char *)a3, (char *)a4, NULL};
    int logfd = open(f->log, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (logfd < 0) return -1;
    pid_t pid = fork();
    if (pid < 0) {
        close(logfd);
        return -1;
    }
    if (pid == 0) {
        dup2(logfd, 1);
        dup2(logfd, 2);
        setenv("ETCDCTL_API", "3", 1);
        execv(f->etcdctl, argv);
        _exit(127);
    }
    close(logfd);
    int st = 0;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Last: auth stays on in this etcd. */
static void auth(void **state) {
    fx *f = get_fx(state);
    if (!f->etcdctl[0]) {
        fprintf(stderr, "test_etcd: no etcdctl on PATH: auth test skipped\n");
        skip();
    }
    assert_int_equal(run_etcdctl(f, "user", "add", "root:pw", NULL), 0);
    assert_int_equal(run_etcdctl(f, "auth", "enable", NULL, NULL), 0);
    td_err err = {0};
    td_etcd *anon = client(f->ep, 2000);
    assert_true(td_etcd_put(anon, "/auth/k", "v", 1, 0, &err) < 0);
    td_etcd_close(anon);

    td_etcd_opts o = {.call_timeout_ms = 2000, .user = "root", .password = "pw"};
    td_etcd *e = td_etcd_open(f->ep, &o, &err);
    assert_non_null(e);
    assert_int_equal(td_etcd_put(e, "/auth/k", "v", 1, 0, &err), 0);
    assert_true(value_is(e, "/auth/k", "v"));
    mirror m;
    mirror_init(&m);
    td_etcd_watch *w = td_etcd_watch_prefix(e, "/auth/", on_event, &m, &err);
    assert_non_null(w);
    td_etcd_reg *r = td_etcd_register(e, "/auth/reg", "r", 1, 2, &err);
    assert_non_null(r);
    assert_true(mirror_wait(&m, "/auth/k", "v", 1, 10));
    assert_true(mirror_wait(&m, "/auth/reg", "r", 1, 10));
    assert_true(wait_reg_alive(r, 10));
    int64_t lease;
    assert_int_equal(td_etcd_lease_grant(e, 5, &lease, &err), 0);
    assert_int_equal(td_etcd_lease_revoke(e, lease, &err), 0);
    /* etcd's simple tokens live in its memory: after a restart the token is
     * invalid, and the client fetches a new one (calls, watch, registration) */
    etcd_stop(f, false);
    etcd_start(f);
    int rc = -1;
    for (int i = 0; i < 100 && rc != 0; i++) {
        rc = td_etcd_put(e, "/auth/k2", "v2", 2, 0, &err);
        if (rc) test_sleep_ms(100);
    }
    if (rc) fail_msg("put after the restart: %s", err.msg);
    assert_true(mirror_wait(&m, "/auth/k2", "v2", 1, 30));
    assert_true(wait_reg_alive(r, 30));
    assert_true(wait_value(e, "/auth/reg", "r", 30));
    td_etcd_close(e); /* stops the watch and the registration too */
    mirror_destroy(&m);

    o.password = "wrong";
    e = td_etcd_open(f->ep, &o, &err);
    assert_non_null(e);
    memset(&err, 0, sizeof err);
    assert_true(td_etcd_put(e, "/auth/k", "v", 1, 0, &err) < 0);
    assert_non_null(strstr(err.msg, "Authenticate"));
    td_etcd_close(e);
}

/* ---- etcd over TLS with client certificates ---- */

/* A throwaway CA made by `openssl` signs etcd's server certificate
 * (IP:127.0.0.1) and a client certificate; a second CA signs nothing etcd
 * trusts. Then etcd is started on https with client certificates required. */
static int tls_group_setup(void **state) {
    if (group_setup_dirs(state)) return -1;
    fx *f = *state;
    if (f->absent) return 0;
    f->tls = true;
    snprintf(f->ca, sizeof f->ca, "%s/ca.pem", f->dir);
    snprintf(f->cert, sizeof f->cert, "%s/server.pem", f->dir);
    snprintf(f->key, sizeof f->key, "%s/server.key", f->dir);
    snprintf(f->ccert, sizeof f->ccert, "%s/client.pem", f->dir);
    snprintf(f->ckey, sizeof f->ckey, "%s/client.key", f->dir);
    snprintf(f->other_ca, sizeof f->other_ca, "%s/other-ca.pem", f->dir);
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "cd %s && exec >openssl.log 2>&1 && "
             "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=td-etcd-ca -keyout ca.key -out ca.pem && "
             "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=td-other-ca -keyout other-ca.key -out other-ca.pem && "
             "printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n' > server.ext && "
             "printf 'extendedKeyUsage=clientAuth\n' > client.ext && "
             "openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout server.key -out server.csr && "
             "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -extfile server.ext -out server.pem && "
             "openssl req -newkey rsa:2048 -nodes -subj /CN=td-etcd-client -keyout client.key -out client.csr && "
             "openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -extfile client.ext -out client.pem",
             f->dir);
    if (system(cmd) != 0) {
        fprintf(stderr, "tls_group_setup: openssl failed (see %s/openssl.log)\n", f->dir);
        return -1;
    }
    etcd_start(f);
    return 0;
}

static void tls_client_certs(void **state) {
    fx *f = get_fx(state);
    td_err err = {0};
    /* the CA and a client certificate: every kind of call works */
    td_etcd_opts o = {.call_timeout_ms = 3000, .ca_file = f->ca, .cert_file = f->ccert, .key_file = f->ckey};
    td_etcd *e = td_etcd_open(f->ep, &o, &err);
    assert_non_null(e);
    assert_int_equal(td_etcd_put(e, "/tls/k", "v", 1, 0, &err), 0);
    assert_true(value_is(e, "/tls/k", "v"));
    mirror m;
    mirror_init(&m);
    td_etcd_watch *w = td_etcd_watch_prefix(e, "/tls/", on_event, &m, &err);
    assert_non_null(w);
    td_etcd_reg *r = td_etcd_register(e, "/tls/reg", "r", 1, 2, &err);
    assert_non_null(r);
    assert_true(mirror_wait(&m, "/tls/reg", "r", 1, 10));
    assert_true(wait_reg_alive(r, 10));
    td_etcd_close(e);
    mirror_destroy(&m);

    /* no client certificate: etcd refuses the handshake */
    td_etcd_opts no_cert = {.call_timeout_ms = 2000, .ca_file = f->ca};
    e = td_etcd_open(f->ep, &no_cert, &err);
    assert_non_null(e);
    assert_true(td_etcd_put(e, "/tls/k", "x", 1, 0, &err) < 0);
    td_etcd_close(e);
    /* a CA that did not sign etcd's certificate: the client refuses etcd */
    td_etcd_opts wrong_ca = {.call_timeout_ms = 2000, .ca_file = f->other_ca, .cert_file = f->ccert, .key_file = f->ckey};
    e = td_etcd_open(f->ep, &wrong_ca, &err);
    assert_non_null(e);
    assert_true(td_etcd_put(e, "/tls/k", "x", 1, 0, &err) < 0);
    td_etcd_close(e);
    /* plaintext to the TLS port */
    e = client(f->ep, 2000);
    assert_true(td_etcd_put(e, "/tls/k", "x", 1, 0, &err) < 0);
    td_etcd_close(e);
    /* none of the refused puts landed */
    e = td_etcd_open(f->ep, &o, &err);
    assert_non_null(e);
    assert_true(value_is(e, "/tls/k", "v"));
    td_etcd_close(e);
    /* an unreadable file is an error that names it */
    td_etcd_opts missing = {.ca_file = "/nonexistent/ca.pem"};
    memset(&err, 0, sizeof err);
    e = td_etcd_open(f->ep, &missing, &err);
    if (e) {
        assert_true(td_etcd_put(e, "/tls/k", "x", 1, 0, &err) < 0);
        td_etcd_close(e);
    }
    assert_non_null(strstr(err.msg, "/nonexistent/ca.pem"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(bad_input),    cmocka_unit_test(kv_calls),     cmocka_unit_test(cas),
        cmocka_unit_test(leases),       cmocka_unit_test(registration), cmocka_unit_test(watch),
        cmocka_unit_test(etcd_restart), cmocka_unit_test(etcd_wiped),   cmocka_unit_test(auth),
    };
    const struct CMUnitTest tls_tests[] = {cmocka_unit_test(tls_client_certs)};
    atexit(kill_etcd_atexit);
    int failed = cmocka_run_group_tests_name("etcd", tests, group_setup, group_teardown);
    failed += cmocka_run_group_tests_name("etcd over TLS", tls_tests, tls_group_setup, group_teardown);
    return failed;
}
