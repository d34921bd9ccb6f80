/* test_metrics.c — common/metrics/: the exposition text byte for byte
 * (HELP/TYPE lines, label escaping, cumulative histogram buckets, whole and
 * fractional numbers), what the registry refuses (bad names, duplicate
 * families, bad buckets, too many series), counts from several threads
 * adding up exactly, the request-head checker on well-formed and malformed
 * heads, and the HTTP server over loopback: a scrape, refusals with their
 * status codes, clients that send garbage, too much, or nothing at all, and
 * the server still answering afterwards. Also the tandem catalog's hooks.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "metrics/metrics.h"

/* ---- exposition ---- */

static void test_render_exact(void **state) {
    (void)state;
    td_metrics_registry *r = td_metrics_registry_create(NULL);
    assert_non_null(r);
    const char *const lbl[] = {"method", "code", NULL};
    td_metrics_family *c = td_metrics_family_add(r, TD_METRICS_COUNTER, "t_calls_total", "Calls, by \\ and\nlines",
                                                 lbl, NULL, 0, NULL);
    td_metrics_family *g = td_metrics_family_add(r, TD_METRICS_GAUGE, "t_level", "A level", NULL, NULL, 0, NULL);
    const double b[] = {0.005, 0.5, 10};
    td_metrics_family *h = td_metrics_family_add(r, TD_METRICS_HISTOGRAM, "t_seconds", "Durations", NULL, b, 3, NULL);
    assert_non_null(c);
    assert_non_null(g);
    assert_non_null(h);
    const char *v1[] = {"/a.B/C", "OK"}, *v2[] = {"q\"uo\\te\nnl", "INTERNAL"};
    td_metrics_inc(td_metrics_series_get(c, v1), 3);
    td_metrics_inc(td_metrics_series_get(c, v2), 1);
    td_metrics_inc(td_metrics_series_get(c, v1), 2); /* same labels: same series */
    td_metrics_series *gs = td_metrics_series_get(g, NULL);
    td_metrics_set(gs, 7);
    td_metrics_add(gs, -9);
    td_metrics_series *hs = td_metrics_series_get(h, NULL);
    td_metrics_observe(hs, 0.001);  /* first bucket */
    td_metrics_observe(hs, 0.005);  /* on the bound: le is inclusive */
    td_metrics_observe(hs, 2);      /* third */
    td_metrics_observe(hs, 100);    /* only +Inf */
    td_metrics_observe(hs, 0.0 / 0.0); /* NaN: ignored */
    char *text = NULL;
    size_t len = 0;
    assert_int_equal(td_metrics_render(r, &text, &len, NULL), 0);
    const char *want =
        "# HELP t_calls_total Calls, by \\\\ and\\nlines\n"
        "# TYPE t_calls_total counter\n"
        "t_calls_total{method=\"/a.B/C\",code=\"OK\"} 5\n"
        "t_calls_total{method=\"q\\\"uo\\\\te\\nnl\",code=\"INTERNAL\"} 1\n"
        "# HELP t_level A level\n"
        "# TYPE t_level gauge\n"
        "t_level -2\n"
        "# HELP t_seconds Durations\n"
        "# TYPE t_seconds histogram\n"
        "t_seconds_bucket{le=\"0.005\"} 2\n"
        "t_seconds_bucket{le=\"0.5\"} 2\n"
        "t_seconds_bucket{le=\"10\"} 3\n"
        "t_seconds_bucket{le=\"+Inf\"} 4\n"
        "t_seconds_sum 102.006\n"
        "t_seconds_count 4\n";
    assert_string_equal(text, want);
    assert_int_equal(len, strlen(want));
    assert_int_equal(td_metrics_value(hs), 4);
    free(text);
    td_metrics_registry_destroy(r);
}

static void test_render_labelled_histogram(void **state) {
    (void)state;
    td_metrics_registry *r = td_metrics_registry_create(NULL);
    const char *const lbl[] = {"method", NULL};
    const double b[] = {1};
    td_metrics_family *h = td_metrics_family_add(r, TD_METRICS_HISTOGRAM, "t_h", "", lbl, b, 1, NULL);
    const char *v[] = {"x"};
    td_metrics_observe(td_metrics_series_get(h, v), 0.25);
    char *text = NULL;
    size_t len = 0;
    assert_int_equal(td_metrics_render(r, &text, &len, NULL), 0);
    assert_string_equal(text, "# HELP t_h \n# TYPE t_h histogram\n"
                              "t_h_bucket{method=\"x\",le=\"1\"} 1\n"
                              "t_h_bucket{method=\"x\",le=\"+Inf\"} 1\n"
                              "t_h_sum{method=\"x\"} 0.25\n"
                              "t_h_count{method=\"x\"} 1\n");
    free(text);
    td_metrics_registry_destroy(r);
}

static void test_registry_refusals(void **state) {
    (void)state;
    td_metrics_registry *r = td_metrics_registry_create(NULL);
    td_err err = {0};
    assert_null(td_metrics_family_add(r, TD_METRICS_COUNTER, "1abc", "", NULL, NULL, 0, &err));
    assert_int_equal(err.code, TD_E_ARG);
    assert_null(td_metrics_family_add(r, TD_METRICS_COUNTER, "a-b", "", NULL, NULL, 0, &err));
    assert_null(td_metrics_family_add(r, TD_METRICS_COUNTER, "", "", NULL, NULL, 0, &err));
    const char *const reserved[] = {"__x", NULL}, *const colon[] = {"a:b", NULL}, *const le[] = {"le", NULL};
    const char *const four[] = {"a", "b", "c", "d", NULL};
    assert_null(td_metrics_family_add(r, TD_METRICS_COUNTER, "ok", "", reserved, NULL, 0, &err));
    assert_null(td_metrics_family_add(r, TD_METRICS_COUNTER, "ok", "", colon, NULL, 0, &err));
    assert_null(td_metrics_family_add(r, TD_METRICS_COUNTER, "ok", "", four, NULL, 0, &err));
    const double up[] = {1, 2}, down[] = {2, 1}, inf[] = {1, 1.0 / 0.0};
    assert_null(td_metrics_family_add(r, TD_METRICS_HISTOGRAM, "h", "", le, up, 2, &err));
    assert_null(td_metrics_family_add(r, TD_METRICS_HISTOGRAM, "h", "", NULL, down, 2, &err));
    assert_null(td_metrics_family_add(r, TD_METRICS_HISTOGRAM, "h", "", NULL, inf, 2, &err));
    assert_null(td_metrics_family_add(r, TD_METRICS_HISTOGRAM, "h", "", NULL, NULL, 0, &err));
    assert_non_null(td_metrics_family_add(r, TD_METRICS_HISTOGRAM, "h", "", NULL, up, 2, &err));
    assert_non_null(td_metrics_family_add(r, TD_METRICS_COUNTER, "ns:ok_total", "", NULL, NULL, 0, &err));
    assert_null(td_metrics_family_add(r, TD_METRICS_GAUGE, "h", "", NULL, NULL, 0, &err)); /* twice */
    assert_int_equal(err.code, TD_E_ARG);
    /* label values: missing ones get no series; past the cap neither */
    const char *const one[] = {"k", NULL};
    td_metrics_family *f = td_metrics_family_add(r, TD_METRICS_COUNTER, "many", "", one, NULL, 0, &err);
    assert_null(td_metrics_series_get(f, NULL));
    char v[32];
    const char *vv[] = {v};
    for (int i = 0; i < TD_METRICS_MAX_SERIES; i++) {
        snprintf(v, sizeof v, "%d", i);
        assert_non_null(td_metrics_series_get(f, vv));
    }
    snprintf(v, sizeof v, "one more");
    assert_null(td_metrics_series_get(f, vv));
    td_metrics_inc(NULL, 1); /* hooks on a missing series do nothing */
    td_metrics_observe(NULL, 1);
    td_metrics_registry_destroy(r);
    td_metrics_registry_destroy(NULL);
}

#define N_THREADS 4
#define N_INCS 20000

static void *hammer(void *arg) {
    td_metrics_family *f = arg;
    const char *v[] = {"same"};
    for (int i = 0; i < N_INCS; i++) {
        td_metrics_inc(td_metrics_series_get(f, v), 1);
        td_metrics_observe(td_metrics_series_get(f, NULL), 1); /* NULL: labelled family, no series */
    }
    return NULL;
}

static void *hammer_hist(void *arg) {
    td_metrics_series *s = arg;
    for (int i = 0; i < N_INCS; i++) td_metrics_observe(s, 0.5);
    return NULL;
}

static void test_threads_add_up(void **state) {
    (void)state;
    td_metrics_registry *r = td_metrics_registry_create(NULL);
    const char *const lbl[] = {"k", NULL};
    const double b[] = {1};
    td_metrics_family *f = td_metrics_family_add(r, TD_METRICS_COUNTER, "c_total", "", lbl, NULL, 0, NULL);
    td_metrics_family *h = td_metrics_family_add(r, TD_METRICS_HISTOGRAM, "h_seconds", "", NULL, b, 1, NULL);
    td_metrics_series *hs = td_metrics_series_get(h, NULL);
    pthread_t t[2 * N_THREADS];
    for (int i = 0; i < N_THREADS; i++) {
        assert_int_equal(pthread_create(&t[i], NULL, hammer, f), 0);
        assert_int_equal(pthread_create(&t[N_THREADS + i], NULL, hammer_hist, hs), 0);
    }
    for (int i = 0; i < 2 * N_THREADS; i++) pthread_join(t[i], NULL);
    const char *v[] = {"same"};
    assert_int_equal(td_metrics_value(td_metrics_series_get(f, v)), N_THREADS * N_INCS);
    assert_int_equal(td_metrics_value(hs), N_THREADS * N_INCS);
    char *text = NULL;
    size_t len = 0;
    assert_int_equal(td_metrics_render(r, &text, &len, NULL), 0);
    char want[128];
    snprintf(want, sizeof want, "h_seconds_sum %d\n", N_THREADS * N_INCS / 2); /* 0.5 sums exactly */
    assert_non_null(strstr(text, want));
    free(text);
    td_metrics_registry_destroy(r);
}

/* ---- the request-head checker ---- */

static int check(const char *s) { return td_metrics_http_check(s, strlen(s), 8192); }

static void test_http_check(void **state) {
    (void)state;
    /* accepted */
    assert_int_equal(check("GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n"), 200);
    assert_int_equal(check("GET /metrics HTTP/1.0\r\n\r\n"), 200);
    assert_int_equal(check("GET /metrics?name[]=up HTTP/1.1\r\n\r\n"), 200);
    assert_int_equal(check("GET /metrics HTTP/1.1\nHost: x\n\n"), 200); /* bare LF, leniently */
    assert_int_equal(check("GET /metrics HTTP/1.1\r\nX-Empty:\r\nX-Tab: a\tb\r\n\r\n"), 200);
    /* incomplete: wait for more */
    assert_int_equal(check(""), 0);
    assert_int_equal(check("GET /metr"), 0);
    assert_int_equal(check("GET /metrics HTTP/1.1\r\nHost: x\r\n"), 0);
    /* refused with the status that says why */
    assert_int_equal(check("POST /metrics HTTP/1.1\r\n\r\n"), 405);
    assert_int_equal(check("HEAD /metrics HTTP/1.1\r\n\r\n"), 405);
    assert_int_equal(check("get /metrics HTTP/1.1\r\n\r\n"), 405); /* methods are case-sensitive */
    assert_int_equal(check("GET / HTTP/1.1\r\n\r\n"), 404);
    assert_int_equal(check("GET /metricsx HTTP/1.1\r\n\r\n"), 404);
    assert_int_equal(check("GET /metrics/ HTTP/1.1\r\n\r\n"), 404);
    assert_int_equal(check("GET http://h/metrics HTTP/1.1\r\n\r\n"), 404);
    assert_int_equal(check("GET /metrics HTTP/2.0\r\n\r\n"), 505);
    assert_int_equal(check("GET /metrics HTTP/0.9\r\n\r\n"), 505);
    /* malformed */
    assert_int_equal(check("\r\n\r\n"), 400);
    assert_int_equal(check("GET\r\n\r\n"), 400);
    assert_int_equal(check("GET /metrics\r\n\r\n"), 400);
    assert_int_equal(check("GET  /metrics HTTP/1.1\r\n\r\n"), 400);
    assert_int_equal(check("GET /metrics HTTP/1.1 \r\n\r\n"), 400);
    assert_int_equal(check("GET /metrics HTTP/1.10\r\n\r\n"), 400);
    assert_int_equal(check("GET /metrics http/1.1\r\n\r\n"), 400);
    assert_int_equal(check("GET /metrics HTTP/1.1\r\nNoColon\r\n\r\n"), 400);
    assert_int_equal(check("GET /metrics HTTP/1.1\r\n: empty name\r\n\r\n"), 400);
    assert_int_equal(check("GET /metrics HTTP/1.1\r\nBad Name: x\r\n\r\n"), 400);
    assert_int_equal(check("GET /metrics HTTP/1.1\r\nA: b\r\n folded\r\n\r\n"), 400);
    assert_int_equal(check("GET /metrics HTTP/1.1\r\nA: b\x01\r\n\r\n"), 400);
    assert_int_equal(check("G\x80T /metrics HTTP/1.1\r\n\r\n"), 400);
    const char nul[] = "GET /metrics\0HTTP/1.1\r\n\r\n";
    assert_int_equal(td_metrics_http_check(nul, sizeof nul - 1, 8192), 400);
    /* too big */
    char big[9000];
    memset(big, 'a', sizeof big);
    assert_int_equal(td_metrics_http_check(big, sizeof big, 8192), 431);
    char head[256];
    snprintf(head, sizeof head, "GET /metrics HTTP/1.1\r\nX: %0200d\r\n\r\n", 0);
    assert_int_equal(td_metrics_http_check(head, strlen(head), 100), 431);
    char *longt = malloc(3000);
    assert_non_null(longt);
    snprintf(longt, 3000, "GET /metrics?%02000d HTTP/1.1\r\n\r\n", 0);
    assert_int_equal(check(longt), 414);
    free(longt);
}

/* ---- the server over loopback ---- */

static atomic_int collected; /* written on the server's thread */
static void collect(void *user) {
    td_metrics_series *s = user;
    collected++;
    td_metrics_set(s, 42);
}

static int dial(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    return fd;
}

/* Sends req (n bytes), reads the whole answer into a malloc'ed string. */
static char *exchange(int port, const char *req, size_t n) {
    int fd = dial(port);
    size_t off = 0;
    while (off < n) {
        ssize_t w = send(fd, req + off, n - off, MSG_NOSIGNAL);
        if (w <= 0) break; /* the server may answer and close before all of it arrived */
        off += (size_t)w;
    }
    size_t cap = 1 << 16, len = 0;
    char *out = malloc(cap);
    assert_non_null(out);
    for (;;) {
        ssize_t r = recv(fd, out + len, cap - 1 - len, 0);
        if (r <= 0) break;
        len += (size_t)r;
        assert_true(len < cap - 1);
    }
    out[len] = 0;
    close(fd);
    return out;
}

static void expect_status(int port, const char *req, size_t n, const char *status_line) {
    char *a = exchange(port, req, n);
    if (strncmp(a, status_line, strlen(status_line))) fail_msg("sent %.40s..., got \"%.60s\"", req, a);
    assert_non_null(strstr(a, "Connection: close\r\n"));
    free(a);
}

/* a literal request, its length taken from the literal (it may hold NULs) */
#define EXPECT_STATUS(port, lit, status) expect_status(port, lit, sizeof(lit) - 1, status)

static void test_server(void **state) {
    (void)state;
    td_metrics_registry *r = td_metrics_registry_create(NULL);
    td_metrics_family *g = td_metrics_family_add(r, TD_METRICS_GAUGE, "t_g", "g", NULL, NULL, 0, NULL);
    td_metrics_series *gs = td_metrics_series_get(g, NULL);
    td_err err = {0};
    assert_null(td_metrics_server_start(r, "no-port", NULL, NULL, &err));
    assert_int_equal(err.code, TD_E_ARG);
    td_metrics_server *s = td_metrics_server_start(r, "127.0.0.1:0", collect, gs, &err);
    assert_non_null(s);
    int port = td_metrics_server_port(s);
    assert_true(port > 0);
    /* the port is taken: a second server there fails with a message */
    char addr[32];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    assert_null(td_metrics_server_start(r, addr, NULL, NULL, &err));
    assert_int_equal(err.code, TD_E_IO);

    const char ok[] = "GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n";
    char *a = exchange(port, ok, sizeof ok - 1);
    assert_non_null(strstr(a, "HTTP/1.1 200 OK\r\n"));
    assert_non_null(strstr(a, "Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
    assert_non_null(strstr(a, "\r\n\r\n# HELP t_g g\n# TYPE t_g gauge\nt_g 42\n"));
    assert_int_equal(collected, 1);
    free(a);

    EXPECT_STATUS(port, "POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", "HTTP/1.1 405 ");
    EXPECT_STATUS(port, "GET /debug HTTP/1.1\r\n\r\n", "HTTP/1.1 404 ");
    EXPECT_STATUS(port, "GET /metrics HTTP/9.9\r\n\r\n", "HTTP/1.1 505 ");
    EXPECT_STATUS(port, "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", "HTTP/1.1 400 "); /* TLS hello */
    EXPECT_STATUS(port, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "HTTP/1.1 505 "); /* h2 preface */
    char *big = malloc(20000);
    assert_non_null(big);
    memset(big, 'A', 20000);
    expect_status(port, big, 20000, "HTTP/1.1 431 ");
    free(big);
    /* a client that sends half a head and leaves, one that sends nothing */
    int fd = dial(port);
    assert_int_equal(send(fd, "GET /met", 8, 0), 8);
    close(fd);
    fd = dial(port);
    close(fd);
    assert_int_equal(collected, 1); /* refusals render nothing */
    /* and the server still answers */
    a = exchange(port, ok, sizeof ok - 1);
    assert_non_null(strstr(a, "HTTP/1.1 200 OK\r\n"));
    assert_int_equal(collected, 2);
    free(a);
    td_metrics_server_stop(s);
    td_metrics_server_stop(NULL);
    td_metrics_registry_destroy(r);
}

/* ---- tandem's catalog ---- */

static void test_tandem_hooks(void **state) {
    (void)state;
    assert_int_equal(td_metrics_tandem_init(NULL), 0);
    td_metrics_call_begin("coordinator");
    td_metrics_call_end("coordinator", "/tandem.v1.Inference/Generate", "OK", 0.2);
    td_metrics_call_refused("coordinator", "/tandem.v1.Inference/Generate", "RESOURCE_EXHAUSTED", "max_calls");
    td_metrics_rejected("worker_full");
    td_metrics_generate_done(10, 5, 0.05, 0.45, 3, 8, 4);
    td_metrics_score_done(2, 7);
    td_metrics_workers_known("verifier", 2);
    td_metrics_etcd_up(true);
    td_metrics_etcd_registrations(2);
    td_metrics_worker_kv(1, 8, 100, 4096);
    char *text = NULL;
    size_t len = 0;
    assert_int_equal(td_metrics_render(td_metrics_process(), &text, &len, NULL), 0);
    const char *want[] = {
        "tandem_grpc_requests_total{server=\"coordinator\",method=\"/tandem.v1.Inference/Generate\",code=\"OK\"} 1\n",
        "tandem_grpc_requests_total{server=\"coordinator\",method=\"/tandem.v1.Inference/Generate\","
        "code=\"RESOURCE_EXHAUSTED\"} 1\n",
        "tandem_grpc_requests_in_flight{server=\"coordinator\"} 0\n",
        "tandem_grpc_request_duration_seconds_bucket{method=\"/tandem.v1.Inference/Generate\",le=\"0.25\"} 1\n",
        "tandem_admission_rejections_total{reason=\"max_calls\"} 1\n",
        "tandem_admission_rejections_total{reason=\"worker_full\"} 1\n",
        "tandem_prompt_tokens_total 10\n",
        "tandem_generated_tokens_total 5\n",
        "tandem_time_to_first_token_seconds_count 1\n",
        "tandem_time_per_output_token_seconds_bucket{le=\"0.08\"} 0\n", /* (0.45-0.05)/4 = 0.1 */
        "tandem_time_per_output_token_seconds_bucket{le=\"0.16\"} 1\n",
        "tandem_spec_verify_steps_total 3\n",
        "tandem_spec_drafted_tokens_total 8\n",
        "tandem_spec_accepted_tokens_total 4\n",
        "tandem_scored_items_total 2\n",
        "tandem_scored_tokens_total 7\n",
        "tandem_workers_known{role=\"verifier\"} 2\n",
        "tandem_etcd_up 1\n",
        "tandem_etcd_registrations 2\n",
        "tandem_worker_sequences 1\n",
        "tandem_worker_sequences_max 8\n",
        "tandem_worker_kv_tokens_reserved 100\n",
        "tandem_worker_kv_tokens_max 4096\n",
    };
    for (size_t i = 0; i < sizeof want / sizeof *want; i++)
        if (!strstr(text, want[i])) fail_msg("missing: %s", want[i]);
    free(text);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_render_exact),      cmocka_unit_test(test_render_labelled_histogram),
        cmocka_unit_test(test_registry_refusals), cmocka_unit_test(test_threads_add_up),
        cmocka_unit_test(test_http_check),        cmocka_unit_test(test_server),
        cmocka_unit_test(test_tandem_hooks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
