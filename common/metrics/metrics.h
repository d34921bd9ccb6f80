/* metrics.h — Prometheus metrics for tandem's processes: a registry of
 * counters, gauges and histograms (lock-free atomics on the hot path), its
 * text exposition (format 0.0.4), and a tiny plain-HTTP/1.1 server that
 * answers GET /metrics and nothing else.
 *
 * The process registry (td_metrics_process) is the module's one piece of
 * global mutable state: every hook in the service (td_metrics_call_end, ...)
 * counts into it, so that hooks in other modules stay one-line calls with
 * no handle to pass around. Tests make registries of their own.
 *
 * What this module does not do: push, summaries, exemplars, the OpenMetrics
 * format, TLS (the metrics port carries no secrets, like the health port).
 */
#ifndef TD_METRICS_H
#define TD_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/util.h"

typedef enum td_metrics_type { TD_METRICS_COUNTER, TD_METRICS_GAUGE, TD_METRICS_HISTOGRAM } td_metrics_type;

#define TD_METRICS_MAX_LABELS 3
#define TD_METRICS_MAX_BUCKETS 24
/* Label sets per family at most: a bound on cardinality (a hook that would
 * create more is ignored), so that no input can grow memory without limit. */
#define TD_METRICS_MAX_SERIES 512

typedef struct td_metrics_registry td_metrics_registry;
typedef struct td_metrics_family td_metrics_family;
typedef struct td_metrics_series td_metrics_series;

td_metrics_registry *td_metrics_registry_create(td_err *err);
void td_metrics_registry_destroy(td_metrics_registry *r); /* accepts NULL */

/* Declares a metric family. name and label names must be valid Prometheus
 * names (TD_E_ARG otherwise; so must be the histogram's buckets: finite and
 * strictly increasing, +Inf is implicit). label_names: NULL-terminated, NULL
 * = no labels. The same name twice is TD_E_ARG. The family lives as long as
 * the registry. */
td_metrics_family *td_metrics_family_add(td_metrics_registry *r, td_metrics_type type, const char *name,
                                         const char *help, const char *const *label_names,
                                         const double *buckets, int n_buckets, td_err *err);

/* The series of a family with these label values (as many as the family has
 * labels; NULL when it has none). Created at first use; NULL when out of
 * memory or past TD_METRICS_MAX_SERIES. Thread-safe; the pointer stays
 * valid as long as the registry. */
td_metrics_series *td_metrics_series_get(td_metrics_family *f, const char *const *label_values);

/* Updates; all accept NULL (a series that could not be made) and are
 * thread-safe. Counters only grow; gauges are set or moved; histograms
 * observe one value each (seconds for the _seconds families). */
void td_metrics_inc(td_metrics_series *s, uint64_t n);
void td_metrics_set(td_metrics_series *s, int64_t v);
void td_metrics_add(td_metrics_series *s, int64_t d);
void td_metrics_observe(td_metrics_series *s, double v);

/* Reads back (tests): a counter's or gauge's value, a histogram's count. */
int64_t td_metrics_value(const td_metrics_series *s);

/* The whole registry in the text exposition format 0.0.4, families in the
 * order they were added, series in the order they were created. *out is
 * malloc'ed and NUL-terminated; returns 0 or TD_E_NOMEM. */
int td_metrics_render(td_metrics_registry *r, char **out, size_t *len, td_err *err);

/* ---- the HTTP endpoint ----
 * One thread accepts and answers connections one at a time, each with a
 * short I/O deadline, so a stuck client delays scrapes by seconds at most
 * and never blocks the service. Every answer closes the connection. */

/* Checks a request head (bytes up to and including the blank line, or what
 * arrived so far). Returns 0 when more bytes are needed, 200 for
 * "GET /metrics" (a query string is ignored), else the HTTP status to refuse
 * with: 400 malformed, 404 other path, 405 other method, 414 target too long,
 * 431 head too big (n > max_head), 505 not HTTP/1.0 or 1.1. */
int td_metrics_http_check(const char *buf, size_t n, size_t max_head);

/* Called before each scrape is rendered (on the server's thread), so gauges
 * that mirror state elsewhere (workers known, etcd up) are fresh. */
typedef void (*td_metrics_collect_fn)(void *user);

typedef struct td_metrics_server td_metrics_server;
/* Binds addr ("HOST:PORT", ":PORT" = every interface, "[::1]:PORT"; port 0
 * picks a free one) and starts serving r. collect may be NULL. NULL with
 * err when the address cannot be bound. */
td_metrics_server *td_metrics_server_start(td_metrics_registry *r, const char *addr, td_metrics_collect_fn collect,
                                           void *user, td_err *err);
int td_metrics_server_port(const td_metrics_server *s);
/* Stops the thread, closes the port. Accepts NULL. */
void td_metrics_server_stop(td_metrics_server *s);

/* ---- tandem's metrics in the process registry (metrics_tandem.c) ----
 * The names an operator sees; docs/kubernetes.md lists them. Each hook
 * creates the catalog on first use; a catalog that could not be made (out of
 * memory) turns the hooks into no-ops rather than failing a request. */

/* The process-wide registry holding tandem's catalog (never NULL once
 * td_metrics_tandem_init returned 0; lives until exit). */
td_metrics_registry *td_metrics_process(void);
int td_metrics_tandem_init(td_err *err);

/* gRPC server calls (common/net): begin when a handler starts, end with
 * the status sent (code name "OK", ...) and the handler's duration. */
void td_metrics_call_begin(const char *server);
void td_metrics_call_end(const char *server, const char *method, const char *code, double seconds);
/* A call refused before any handler ran (server busy: reason "max_calls"):
 * counted among the calls with its code, and as an admission rejection. */
void td_metrics_call_refused(const char *server, const char *method, const char *code, const char *reason);
/* An admission refusal inside a handler (a worker's "worker_full"). */
void td_metrics_rejected(const char *reason);
/* A completed generation (coordinator's td_coord_run, either API). */
void td_metrics_generate_done(int64_t prompt_tokens, int64_t generated, double ttft_sec, double total_sec,
                              int64_t steps, int64_t drafted, int64_t accepted);
/* A completed Score (coordinator): items scored, continuation tokens. */
void td_metrics_score_done(int64_t items, int64_t tokens);
/* Gauges set by collectors. */
void td_metrics_workers_known(const char *role, int64_t n);
void td_metrics_etcd_up(bool up);
/* Worker: registrations made with a fresh lease so far (1 = never lost). */
void td_metrics_etcd_registrations(int64_t n);
void td_metrics_worker_kv(int64_t sequences, int64_t max_sequences, int64_t tokens, int64_t max_tokens);

#endif
