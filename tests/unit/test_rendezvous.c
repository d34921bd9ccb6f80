/* test_rendezvous.c — a TP group's rendezvous in etcd (etcd.h, td_etcd_rdv_*)
 * against a real etcd that the test starts as test_etcd does (free loopback
 * ports, a data dir under mkdtemp, stopped by its PID at teardown and by an
 * atexit handler if a test aborts; skipped only when no `etcd` is on PATH).
 * Host only, no CUDA: the bytes are opaque (128 random bytes stand for an
 * ncclUniqueId). Two threads as rank 0 and rank 1 get the same bytes, with
 * rank 1 waiting first; a stale key of an earlier generation is replaced and
 * ignored by waiters; a live key of the same generation makes rank 0 wait
 * for its lease, then fail; a timeout, malformed values (not ours, bad
 * base64, wrong length) and bad options each give a clear error. */
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

/* ---- the etcd under test (test_etcd.c's fixture, plaintext only) ---- */

typedef struct fx {
    bool absent;
    char etcd[512];
    char dir[64], data[128], log[128];
    int port, peer;
    char ep[64];
    pid_t pid;
} fx;

/* The PID the atexit handler stops if a test aborts before teardown. */
static pid_t g_etcd_pid;

static void kill_etcd_atexit(void) {
    if (g_etcd_pid > 0) {
        kill(g_etcd_pid, SIGKILL);
        waitpid(g_etcd_pid, NULL, 0);
        g_etcd_pid = 0;
    }
}

static td_etcd *client(const char *ep) {
    td_etcd_opts o = {.call_timeout_ms = 5000, .backoff_min_ms = 100, .backoff_max_ms = 1000};
    td_err err = {0};
    td_etcd *e = td_etcd_open(ep, &o, &err);
    if (!e) fail_msg("td_etcd_open(%s): %s", ep, err.msg);
    return e;
}

static bool wait_ready(fx *f) {
    td_etcd *e = client(f->ep);
    bool ok = false;
    for (int i = 0; i < 300 && !ok; i++) {
        td_etcd_list l;
        if (td_etcd_get_prefix(e, "/", &l, NULL) == 0) {
            td_etcd_list_free(&l);
            ok = true;
        } else {
            test_sleep_ms(100);
        }
    }
    td_etcd_close(e);
    return ok;
}

static int group_setup(void **state) {
    fx *f = calloc(1, sizeof *f);
    if (!f) return -1;
    *state = f;
    if (!test_find_on_path("etcd", f->etcd, sizeof f->etcd)) {
        f->absent = true;
        return 0;
    }
    snprintf(f->dir, sizeof f->dir, "/tmp/td_rdv_XXXXXX");
    if (!mkdtemp(f->dir)) return -1;
    snprintf(f->data, sizeof f->data, "%s/data", f->dir);
    snprintf(f->log, sizeof f->log, "%s/etcd.log", f->dir);
    f->port = test_free_port();
    f->peer = test_free_port();
    while (f->peer == f->port) f->peer = test_free_port();
    if (f->port <= 0 || f->peer <= 0) return -1;
    snprintf(f->ep, sizeof f->ep, "127.0.0.1:%d", f->port);
    char client_url[64], peer_url[64], cluster[96];
    snprintf(client_url, sizeof client_url, "http://127.0.0.1:%d", f->port);
    snprintf(peer_url, sizeof peer_url, "http://127.0.0.1:%d", f->peer);
    snprintf(cluster, sizeof cluster, "t=%s", peer_url);
    char *argv[] = {f->etcd, "--name", "t", "--data-dir", f->data, "--listen-client-urls", client_url,
                    "--advertise-client-urls", client_url, "--listen-peer-urls", peer_url,
                    "--initial-advertise-peer-urls", peer_url, "--initial-cluster", cluster, NULL};
    pid_t pid = test_spawn_logged(f->etcd, argv, f->log);
    if (pid < 0) return -1;
    f->pid = g_etcd_pid = pid;
    if (!wait_ready(f)) {
        fprintf(stderr, "etcd did not answer on %s (log: %s)\n", f->ep, f->log);
        return -1;
    }
    return 0;
}

static int group_teardown(void **state) {
    fx *f = *state;
    if (!f) return 0;
    test_stop_pid(f->pid, false);
    f->pid = g_etcd_pid = 0;
    if (f->dir[0]) test_rm_rf(f->dir);
    free(f);
    return 0;
}

static fx *get_fx(void **state) {
    fx *f = *state;
    if (f->absent) {
        fprintf(stderr, "test_rendezvous: no `etcd` binary on PATH: skipped (install etcd-server)\n");
        skip();
    }
    return f;
}

/* ---- helpers ---- */

#define ID_BYTES 128

static void fill(uint8_t *b, size_t n, uint32_t seed) {
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        b[i] = (uint8_t)(seed >> 24);
    }
}

static td_etcd_rdv_opts opts(const char *group, const char *gen) {
    td_etcd_rdv_opts o = {.cluster = "test", .group = group, .generation = gen, .ttl_sec = 30,
                          .timeout_ms = 15000, .poll_ms = 20};
    return o;
}

typedef struct waiter {
    const char *ep;
    td_etcd_rdv_opts o;
    uint8_t got[ID_BYTES];
    int rc;
    td_err err;
} waiter;

static void *wait_thread(void *arg) {
    waiter *w = arg;
    td_etcd *e = client(w->ep);
    w->rc = td_etcd_rdv_wait(e, &w->o, w->got, sizeof w->got, &w->err);
    td_etcd_close(e);
    return NULL;
}

static int64_t lease_ttl(td_etcd *e, int64_t lease) {
    int64_t ttl = -1;
    if (td_etcd_lease_keepalive_once(e, lease, &ttl, NULL) < 0) return -1;
    return ttl;
}

/* ---- tests ---- */

/* Rank 1 starts waiting before rank 0 publishes (its own client, its own
 * thread); both end with the same 128 bytes. */
static void two_ranks(void **state) {
    fx *f = get_fx(state);
    waiter w = {.ep = f->ep, .o = opts("g2", "rev-1")};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, wait_thread, &w), 0);
    test_sleep_ms(200); /* not needed for correctness: lets rank 1 find nothing first */
    uint8_t id[ID_BYTES];
    fill(id, sizeof id, 7);
    td_etcd *e = client(f->ep);
    td_etcd_rdv_opts o = opts("g2", "rev-1");
    int64_t lease = 0;
    td_err err = {0};
    assert_int_equal(td_etcd_rdv_publish(e, &o, id, sizeof id, &lease, &err), 0);
    assert_true(lease != 0);
    assert_int_equal(pthread_join(th, NULL), 0);
    if (w.rc) fail_msg("rank 1: %s", w.err.msg);
    assert_memory_equal(w.got, id, sizeof id);
    /* a rank that arrives late still finds it (the key outlives the wait) */
    uint8_t late[ID_BYTES];
    assert_int_equal(td_etcd_rdv_wait(e, &o, late, sizeof late, &err), 0);
    assert_memory_equal(late, id, sizeof id);
    /* the value is readable text under the documented key */
    td_etcd_list l;
    assert_int_equal(td_etcd_get_prefix(e, "/tandem/test/groups/g2/nccl-id", &l, &err), 0);
    assert_int_equal(l.n, 1);
    assert_true(!strncmp(l.kvs[0].value, "tandem-rdv/1 rev-1 ", 19));
    assert_int_equal(l.kvs[0].lease, lease);
    td_etcd_list_free(&l);
    /* the group formed: rank 0 revokes, the id is gone */
    assert_int_equal(td_etcd_lease_revoke(e, lease, &err), 0);
    assert_int_equal(td_etcd_get_prefix(e, "/tandem/test/groups/g2/", &l, &err), 0);
    assert_int_equal(l.n, 0);
    td_etcd_list_free(&l);
    td_etcd_close(e);
}

/* A key left by an earlier start (generation "old", no lease: as if its
 * lease had not run out yet) is ignored by a waiter of generation "new" and
 * replaced by the new rank 0. */
static void stale_generation(void **state) {
    fx *f = get_fx(state);
    td_etcd *e = client(f->ep);
    td_err err = {0};
    const char *key = "/tandem/test/groups/gs/nccl-id";
    uint8_t old_id[ID_BYTES], id[ID_BYTES];
    fill(old_id, sizeof old_id, 1);
    fill(id, sizeof id, 2);
    td_etcd_rdv_opts old = opts("gs", "old");
    int64_t old_lease = 0;
    assert_int_equal(td_etcd_rdv_publish(e, &old, old_id, sizeof old_id, &old_lease, &err), 0);

    waiter w = {.ep = f->ep, .o = opts("gs", "new")};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, wait_thread, &w), 0);
    test_sleep_ms(300); /* the waiter sees the stale key a few times */
    td_etcd_rdv_opts o = opts("gs", "new");
    int64_t lease = 0;
    assert_int_equal(td_etcd_rdv_publish(e, &o, id, sizeof id, &lease, &err), 0);
    assert_int_equal(pthread_join(th, NULL), 0);
    if (w.rc) fail_msg("waiter: %s", w.err.msg);
    assert_memory_equal(w.got, id, sizeof id);
    assert_true(memcmp(w.got, old_id, sizeof id) != 0);
    /* the old start's lease no longer holds the key; the new one does */
    td_etcd_list l;
    assert_int_equal(td_etcd_get_prefix(e, key, &l, &err), 0);
    assert_int_equal(l.n, 1);
    assert_int_equal(l.kvs[0].lease, lease);
    td_etcd_list_free(&l);
    td_etcd_lease_revoke(e, old_lease, NULL);
    td_etcd_lease_revoke(e, lease, NULL);
    td_etcd_close(e);
}

/* A live key of the same generation: a second rank 0 waits for its lease to
 * run out (TTL 2 s here) and then publishes; with a shorter timeout than the
 * lease it fails, naming the key. */
static void same_generation(void **state) {
    fx *f = get_fx(state);
    td_etcd *e = client(f->ep);
    td_err err = {0};
    uint8_t a[ID_BYTES], b[ID_BYTES], got[ID_BYTES];
    fill(a, sizeof a, 3);
    fill(b, sizeof b, 4);
    td_etcd_rdv_opts o = opts("gg", "7");
    o.ttl_sec = 30;
    int64_t la = 0, lb = 0;
    assert_int_equal(td_etcd_rdv_publish(e, &o, a, sizeof a, &la, &err), 0);
    td_etcd_rdv_opts quick = o;
    quick.timeout_ms = 500;
    memset(&err, 0, sizeof err);
    assert_int_equal(td_etcd_rdv_publish(e, &quick, b, sizeof b, &lb, &err), TD_E_IO);
    assert_non_null(strstr(err.msg, "/tandem/test/groups/gg/nccl-id"));
    assert_non_null(strstr(err.msg, "generation 7"));
    assert_int_equal(td_etcd_rdv_wait(e, &o, got, sizeof got, &err), 0);
    assert_memory_equal(got, a, sizeof a); /* untouched */
    td_etcd_lease_revoke(e, la, NULL);

    /* a short-lived one: the second rank 0 gets in once its lease is gone */
    o.ttl_sec = 2;
    assert_int_equal(td_etcd_rdv_publish(e, &o, a, sizeof a, &la, &err), 0);
    o.ttl_sec = 30;
    assert_int_equal(td_etcd_rdv_publish(e, &o, b, sizeof b, &lb, &err), 0);
    assert_int_equal(td_etcd_rdv_wait(e, &o, got, sizeof got, &err), 0);
    assert_memory_equal(got, b, sizeof b);
    assert_true(lease_ttl(e, lb) > 0);
    td_etcd_lease_revoke(e, lb, NULL);
    td_etcd_close(e);
}

/* Nobody publishes: the waiter gives up after its timeout, saying where it
 * looked and what it found. */
static void timeout(void **state) {
    fx *f = get_fx(state);
    td_etcd *e = client(f->ep);
    td_err err = {0};
    uint8_t got[ID_BYTES];
    td_etcd_rdv_opts o = opts("nobody", "1");
    o.timeout_ms = 300;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    assert_int_equal(td_etcd_rdv_wait(e, &o, got, sizeof got, &err), TD_E_IO);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    assert_true(t1.tv_sec - t0.tv_sec < 10);
    assert_non_null(strstr(err.msg, "timed out"));
    assert_non_null(strstr(err.msg, "/tandem/test/groups/nobody/nccl-id"));
    assert_non_null(strstr(err.msg, "found nothing"));
    /* a stale key only: the message says so */
    assert_int_equal(td_etcd_put(e, "/tandem/test/groups/nobody/nccl-id", "tandem-rdv/1 0 AAAA", 19, 0, &err), 0);
    assert_int_equal(td_etcd_rdv_wait(e, &o, got, sizeof got, &err), TD_E_IO);
    assert_non_null(strstr(err.msg, "stale id of generation 0"));
    td_etcd_delete(e, "/tandem/test/groups/nobody/nccl-id", NULL);
    td_etcd_close(e);
}

/* Values of this generation that are not what rank 0 writes: an error at
 * once, not a wait. */
static void malformed(void **state) {
    fx *f = get_fx(state);
    td_etcd *e = client(f->ep);
    const char *key = "/tandem/test/groups/bad/nccl-id";
    static const struct {
        const char *value, *says;
    } cases[] = {
        {"tandem-rdv/1 g1 not*base64!", "not valid base64"},
        {"tandem-rdv/1 g1 QUJD", "different number"},   /* 3 bytes */
        {"tandem-rdv/1 g1 QUI=", "different number"},   /* 2 bytes */
        {"tandem-rdv/1 g1 QUJ", "not valid base64"},    /* not a multiple of 4 */
        {"tandem-rdv/1 g1 QR==", "not valid base64"},   /* non-zero unused bits */
        {"tandem-rdv/1 g1 =AAA", "not valid base64"},   /* padding first */
        {"tandem-rdv/1 g1 ", "not valid base64"},       /* empty */
        {"hello", "not a tandem rendezvous value"},
        {"tandem-rdv/1 g1", "not a tandem rendezvous value"},
        {"", "not a tandem rendezvous value"},
    };
    uint8_t got[ID_BYTES];
    td_etcd_rdv_opts o = opts("bad", "g1");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        td_err err = {0};
        assert_int_equal(td_etcd_put(e, key, cases[i].value, strlen(cases[i].value), 0, &err), 0);
        int rc = td_etcd_rdv_wait(e, &o, got, sizeof got, &err);
        if (rc != TD_E_FORMAT || !strstr(err.msg, cases[i].says))
            fail_msg("value \"%s\": rc %d, \"%s\" (want \"%s\")", cases[i].value, rc, err.msg, cases[i].says);
        assert_non_null(strstr(err.msg, key));
    }
    /* too many bytes: 4096 + 3 encoded */
    size_t big = TD_ETCD_RDV_MAX_BYTES + 3;
    char *v = malloc(20 + big / 3 * 4 + 1);
    assert_non_null(v);
    strcpy(v, "tandem-rdv/1 g1 ");
    memset(v + 16, 'A', big / 3 * 4);
    v[16 + big / 3 * 4] = 0;
    td_err err = {0};
    assert_int_equal(td_etcd_put(e, key, v, strlen(v), 0, &err), 0);
    assert_int_equal(td_etcd_rdv_wait(e, &o, got, sizeof got, &err), TD_E_FORMAT);
    assert_non_null(strstr(err.msg, "too many"));
    free(v);
    /* rank 0 takes a malformed key over (it is not a live id of anyone) */
    uint8_t id[ID_BYTES];
    fill(id, sizeof id, 9);
    int64_t lease = 0;
    assert_int_equal(td_etcd_put(e, key, "garbage", 7, 0, &err), 0);
    assert_int_equal(td_etcd_rdv_publish(e, &o, id, sizeof id, &lease, &err), 0);
    assert_int_equal(td_etcd_rdv_wait(e, &o, got, sizeof got, &err), 0);
    assert_memory_equal(got, id, sizeof id);
    td_etcd_lease_revoke(e, lease, NULL);
    /* every length of 1..7 bytes round-trips (each padding case) */
    for (size_t n = 1; n <= 7; n++) {
        fill(id, n, (uint32_t)n);
        td_etcd_rdv_opts on = opts("lens", "1");
        assert_int_equal(td_etcd_rdv_publish(e, &on, id, n, &lease, &err), 0);
        memset(got, 0, sizeof got);
        assert_int_equal(td_etcd_rdv_wait(e, &on, got, n, &err), 0);
        assert_memory_equal(got, id, n);
        td_etcd_lease_revoke(e, lease, NULL);
    }
    td_etcd_close(e);
}

/* The caller's mistakes: TD_E_ARG before any call to etcd. */
static void bad_options(void **state) {
    fx *f = get_fx(state);
    td_etcd *e = client(f->ep);
    uint8_t id[ID_BYTES] = {0};
    int64_t lease = 0;
    td_etcd_rdv_opts good = opts("g", "1");
    td_etcd_rdv_opts bad[8];
    for (int i = 0; i < 8; i++) bad[i] = good;
    bad[0].cluster = NULL;
    bad[1].group = "";
    bad[2].group = "a/b";
    bad[3].generation = "has space";
    bad[4].generation = "";
    bad[5].ttl_sec = -1;
    bad[6].timeout_ms = -5;
    bad[7].cluster = "x/../y";
    for (int i = 0; i < 8; i++) {
        td_err err = {0};
        assert_int_equal(td_etcd_rdv_publish(e, &bad[i], id, sizeof id, &lease, &err), TD_E_ARG);
        assert_int_equal(td_etcd_rdv_wait(e, &bad[i], id, sizeof id, &err), TD_E_ARG);
    }
    td_err err = {0};
    assert_int_equal(td_etcd_rdv_publish(NULL, &good, id, sizeof id, &lease, &err), TD_E_ARG);
    assert_int_equal(td_etcd_rdv_publish(e, NULL, id, sizeof id, &lease, &err), TD_E_ARG);
    assert_int_equal(td_etcd_rdv_publish(e, &good, id, 0, &lease, &err), TD_E_ARG);
    assert_int_equal(td_etcd_rdv_publish(e, &good, id, TD_ETCD_RDV_MAX_BYTES + 1, &lease, &err), TD_E_ARG);
    assert_int_equal(td_etcd_rdv_publish(e, &good, id, sizeof id, NULL, &err), TD_E_ARG);
    assert_int_equal(td_etcd_rdv_wait(e, &good, NULL, sizeof id, &err), TD_E_ARG);
    td_etcd_list l;
    assert_int_equal(td_etcd_get_prefix(e, "/tandem/test/groups/g/", &l, &err), 0);
    assert_int_equal(l.n, 0); /* nothing was written */
    td_etcd_list_free(&l);
    td_etcd_close(e);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(two_ranks), cmocka_unit_test(stale_generation), cmocka_unit_test(same_generation),
        cmocka_unit_test(timeout),   cmocka_unit_test(malformed),        cmocka_unit_test(bad_options),
    };
    atexit(kill_etcd_atexit);
    return cmocka_run_group_tests_name("rendezvous", tests, group_setup, group_teardown);
}
