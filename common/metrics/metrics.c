/* metrics.c — the registry and its text exposition (Prometheus format 0.0.4).
 *
 * Hot path: an update is one atomic operation on a series found once by the
 * caller (or looked up under the family's mutex: a short list walk, cheap
 * next to a request). Rendering reads the atomics without stopping writers,
 * so a scrape may see a histogram's buckets and count from slightly
 * different instants; Prometheus tolerates that, and it never blocks a
 * request.
 */
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"

struct td_metrics_series {
    char *labels[TD_METRICS_MAX_LABELS];   /* values, owned */
    _Atomic int64_t value;                 /* counter, gauge; histogram: count */
    _Atomic uint64_t sum_bits;             /* histogram: the sum's double bits */
    _Atomic uint64_t bucket[TD_METRICS_MAX_BUCKETS]; /* histogram: per bucket, not cumulative */
    const struct td_metrics_family *family; /* its bounds, for observe */
    struct td_metrics_series *next;
};

struct td_metrics_family {
    td_metrics_type type;
    char *name, *help;
    char *label_names[TD_METRICS_MAX_LABELS];
    int n_labels;
    double buckets[TD_METRICS_MAX_BUCKETS];
    int n_buckets;
    pthread_mutex_t mu; /* guards the list shape; values are atomics */
    td_metrics_series *first, *last;
    int n_series;
    struct td_metrics_family *next;
};

struct td_metrics_registry {
    pthread_mutex_t mu; /* guards the family list */
    td_metrics_family *first, *last;
};

/* ---- registry ---- */

td_metrics_registry *td_metrics_registry_create(td_err *err) {
    td_metrics_registry *r = calloc(1, sizeof *r);
    if (!r || pthread_mutex_init(&r->mu, NULL) != 0) {
        free(r);
        td_err_set(err, TD_E_NOMEM, "metrics: out of memory");
        return NULL;
    }
    return r;
}

static void series_free(td_metrics_series *s) {
    for (int i = 0; i < TD_METRICS_MAX_LABELS; i++) free(s->labels[i]);
    free(s);
}

static void family_free(td_metrics_family *f) {
    for (td_metrics_series *s = f->first, *n; s; s = n) {
        n = s->next;
        series_free(s);
    }
    for (int i = 0; i < TD_METRICS_MAX_LABELS; i++) free(f->label_names[i]);
    free(f->name);
    free(f->help);
    pthread_mutex_destroy(&f->mu);
    free(f);
}

void td_metrics_registry_destroy(td_metrics_registry *r) {
    if (!r) return;
    for (td_metrics_family *f = r->first, *n; f; f = n) {
        n = f->next;
        family_free(f);
    }
    pthread_mutex_destroy(&r->mu);
    free(r);
}

/* Prometheus' name rules: [a-zA-Z_:][a-zA-Z0-9_:]* for metrics, no ':' in
 * label names, and label names starting "__" are reserved. */
static bool valid_name(const char *s, bool label) {
    if (!s || !*s) return false;
    if (label && s[0] == '_' && s[1] == '_') return false;
    for (const char *p = s; *p; p++) {
        char c = *p;
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (!label && c == ':') ||
                  (p > s && c >= '0' && c <= '9');
        if (!ok) return false;
    }
    return true;
}

td_metrics_family *td_metrics_family_add(td_metrics_registry *r, td_metrics_type type, const char *name,
                                         const char *help, const char *const *label_names,
                                         const double *buckets, int n_buckets, td_err *err) {
    if (!r || !valid_name(name, false)) {
        td_err_set(err, TD_E_ARG, "metrics: invalid metric name \"%s\"", name ? name : "");
        return NULL;
    }
    int n_labels = 0;
    while (label_names && label_names[n_labels]) {
        if (n_labels == TD_METRICS_MAX_LABELS || !valid_name(label_names[n_labels], true) ||
            (type == TD_METRICS_HISTOGRAM && !strcmp(label_names[n_labels], "le"))) {
            td_err_set(err, TD_E_ARG, "metrics: %s: invalid or too many label names", name);
            return NULL;
        }
        n_labels++;
    }
    if (type == TD_METRICS_HISTOGRAM) {
        bool ok = buckets && n_buckets > 0 && n_buckets <= TD_METRICS_MAX_BUCKETS;
        for (int i = 0; ok && i < n_buckets; i++)
            ok = isfinite(buckets[i]) && (i == 0 || buckets[i] > buckets[i - 1]);
        if (!ok) {
            td_err_set(err, TD_E_ARG, "metrics: %s: buckets must be 1..%d finite increasing bounds", name,
                       TD_METRICS_MAX_BUCKETS);
            return NULL;
        }
    } else {
        n_buckets = 0;
    }
    td_metrics_family *f = calloc(1, sizeof *f);
    if (!f) goto nomem;
    if (pthread_mutex_init(&f->mu, NULL) != 0) {
        free(f);
        goto nomem;
    }
    f->type = type;
    f->n_labels = n_labels;
    f->n_buckets = n_buckets;
    if (n_buckets) memcpy(f->buckets, buckets, (size_t)n_buckets * sizeof *buckets);
    f->name = strdup(name);
    f->help = strdup(help ? help : "");
    bool ok = f->name && f->help;
    for (int i = 0; i < n_labels; i++) ok = ok && (f->label_names[i] = strdup(label_names[i]));
    if (!ok) {
        family_free(f);
        goto nomem;
    }
    pthread_mutex_lock(&r->mu);
    for (td_metrics_family *g = r->first; g; g = g->next) {
        if (!strcmp(g->name, name)) {
            pthread_mutex_unlock(&r->mu);
            family_free(f);
            td_err_set(err, TD_E_ARG, "metrics: %s declared twice", name);
            return NULL;
        }
    }
    if (r->last) r->last->next = f;
    else r->first = f;
    r->last = f;
    pthread_mutex_unlock(&r->mu);
    /* a family without labels has its one series from the start, so that it
     * is exposed (as 0) before anything happened */
    if (n_labels == 0 && !td_metrics_series_get(f, NULL)) {
        td_err_set(err, TD_E_NOMEM, "metrics: out of memory");
        return NULL; /* the family stays in the registry, empty; freed with it */
    }
    return f;
nomem:
    td_err_set(err, TD_E_NOMEM, "metrics: out of memory");
    return NULL;
}

td_metrics_series *td_metrics_series_get(td_metrics_family *f, const char *const *label_values) {
    if (!f) return NULL;
    for (int i = 0; i < f->n_labels; i++)
        if (!label_values || !label_values[i]) return NULL;
    pthread_mutex_lock(&f->mu);
    td_metrics_series *s = f->first;
    for (; s; s = s->next) {
        int i = 0;
        while (i < f->n_labels && !strcmp(s->labels[i], label_values[i])) i++;
        if (i == f->n_labels) break;
    }
    if (!s && f->n_series < TD_METRICS_MAX_SERIES && (s = calloc(1, sizeof *s))) {
        for (int i = 0; i < f->n_labels; i++) {
            if (!(s->labels[i] = strdup(label_values[i]))) {
                series_free(s);
                s = NULL;
                break;
            }
        }
        if (s) {
            s->family = f;
            if (f->last) f->last->next = s;
            else f->first = s;
            f->last = s;
            f->n_series++;
        }
    }
    pthread_mutex_unlock(&f->mu);
    return s;
}

/* ---- updates ---- */

void td_metrics_inc(td_metrics_series *s, uint64_t n) {
    if (s) atomic_fetch_add_explicit(&s->value, (int64_t)n, memory_order_relaxed);
}

void td_metrics_set(td_metrics_series *s, int64_t v) {
    if (s) atomic_store_explicit(&s->value, v, memory_order_relaxed);
}

void td_metrics_add(td_metrics_series *s, int64_t d) {
    if (s) atomic_fetch_add_explicit(&s->value, d, memory_order_relaxed);
}

void td_metrics_observe(td_metrics_series *s, double v) {
    /* NaN and infinities would poison the sum; gauges and counters ignore it */
    if (!s || !isfinite(v) || s->family->type != TD_METRICS_HISTOGRAM) return;
    const double *bounds = s->family->buckets;
    int n_bounds = s->family->n_buckets, i = 0;
    while (i < n_bounds && v > bounds[i]) i++;
    if (i < n_bounds) atomic_fetch_add_explicit(&s->bucket[i], 1, memory_order_relaxed);
    uint64_t old = atomic_load_explicit(&s->sum_bits, memory_order_relaxed), nw;
    do {
        double d;
        memcpy(&d, &old, sizeof d);
        d += v;
        memcpy(&nw, &d, sizeof nw);
    } while (!atomic_compare_exchange_weak_explicit(&s->sum_bits, &old, nw, memory_order_relaxed,
                                                    memory_order_relaxed));
    /* the count last: a scrape never sees more in the buckets than counted */
    atomic_fetch_add_explicit(&s->value, 1, memory_order_release);
}

int64_t td_metrics_value(const td_metrics_series *s) {
    return s ? atomic_load_explicit(&((td_metrics_series *)s)->value, memory_order_acquire) : 0;
}

/* ---- rendering ---- */

typedef struct buf {
    char *p;
    size_t n, cap;
    bool nomem;
} buf;

static void put(buf *b, const char *s, size_t n) {
    if (b->nomem) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (b->n + n + 1 > cap) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->nomem = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

static void puts_(buf *b, const char *s) { put(b, s, strlen(s)); }

static void __attribute__((format(printf, 2, 3))) putf(buf *b, const char *fmt, ...) {
    char tmp[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0) put(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* Escapes for HELP text (backslash, newline) and, with quote, label values
 * (also the double quote), as the format requires. */
static void put_escaped(buf *b, const char *s, bool quote) {
    for (; *s; s++) {
        if (*s == '\\') puts_(b, "\\\\");
        else if (*s == '\n') puts_(b, "\\n");
        else if (quote && *s == '"') puts_(b, "\\\"");
        else put(b, s, 1);
    }
}

/* The shortest decimal that reads back as the same double (so 0.005 is
 * "0.005", not "0.0050000000000000001"). */
static void put_double(buf *b, double v) {
    if (isnan(v)) { puts_(b, "NaN"); return; }
    if (isinf(v)) { puts_(b, v > 0 ? "+Inf" : "-Inf"); return; }
    char tmp[40];
    if (v == floor(v) && fabs(v) < 1e15) { /* whole numbers as such: "10", not "1e+01" */
        snprintf(tmp, sizeof tmp, "%.0f", v);
        puts_(b, tmp);
        return;
    }
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(tmp, sizeof tmp, "%.*g", prec, v);
        if (strtod(tmp, NULL) == v) break;
    }
    puts_(b, tmp);
}

/* {a="x",b="y"} plus an optional le="..." for histogram buckets. */
static void put_labels(buf *b, const td_metrics_family *f, const td_metrics_series *s, const double *le) {
    if (f->n_labels == 0 && !le) return;
    puts_(b, "{");
    for (int i = 0; i < f->n_labels; i++) {
        if (i) puts_(b, ",");
        puts_(b, f->label_names[i]);
        puts_(b, "=\"");
        put_escaped(b, s->labels[i], true);
        puts_(b, "\"");
    }
    if (le) {
        if (f->n_labels) puts_(b, ",");
        puts_(b, "le=\"");
        put_double(b, *le);
        puts_(b, "\"");
    }
    puts_(b, "}");
}

static const char *type_name(td_metrics_type t) {
    return t == TD_METRICS_COUNTER ? "counter" : t == TD_METRICS_GAUGE ? "gauge" : "histogram";
}

static void render_family(buf *b, td_metrics_family *f) {
    puts_(b, "# HELP ");
    puts_(b, f->name);
    puts_(b, " ");
    put_escaped(b, f->help, false);
    puts_(b, "\n# TYPE ");
    puts_(b, f->name);
    puts_(b, " ");
    puts_(b, type_name(f->type));
    puts_(b, "\n");
    pthread_mutex_lock(&f->mu);
    for (td_metrics_series *s = f->first; s; s = s->next) {
        if (f->type != TD_METRICS_HISTOGRAM) {
            puts_(b, f->name);
            put_labels(b, f, s, NULL);
            putf(b, " %lld\n", (long long)atomic_load_explicit(&s->value, memory_order_relaxed));
            continue;
        }
        /* count first (acquire): every bucket increment it covers is then visible */
        int64_t count = atomic_load_explicit(&s->value, memory_order_acquire);
        uint64_t cum = 0;
        for (int i = 0; i <= f->n_buckets; i++) {
            double inf = INFINITY;
            if (i < f->n_buckets) cum += atomic_load_explicit(&s->bucket[i], memory_order_relaxed);
            /* the +Inf bucket is the count, and no bucket may exceed it */
            uint64_t shown = i == f->n_buckets || cum > (uint64_t)count ? (uint64_t)count : cum;
            puts_(b, f->name);
            puts_(b, "_bucket");
            put_labels(b, f, s, i < f->n_buckets ? &f->buckets[i] : &inf);
            putf(b, " %llu\n", (unsigned long long)shown);
        }
        uint64_t bits = atomic_load_explicit(&s->sum_bits, memory_order_relaxed);
        double sum;
        memcpy(&sum, &bits, sizeof sum);
        puts_(b, f->name);
        puts_(b, "_sum");
        put_labels(b, f, s, NULL);
        puts_(b, " ");
        put_double(b, sum);
        puts_(b, "\n");
        puts_(b, f->name);
        puts_(b, "_count");
        put_labels(b, f, s, NULL);
        putf(b, " %lld\n", (long long)count);
    }
    pthread_mutex_unlock(&f->mu);
}

int td_metrics_render(td_metrics_registry *r, char **out, size_t *len, td_err *err) {
    buf b = {0};
    puts_(&b, ""); /* an empty registry is "" rather than NULL */
    pthread_mutex_lock(&r->mu);
    for (td_metrics_family *f = r->first; f; f = f->next) render_family(&b, f);
    pthread_mutex_unlock(&r->mu);
    if (b.nomem) {
        free(b.p);
        *out = NULL;
        *len = 0;
        return td_err_set(err, TD_E_NOMEM, "metrics: out of memory rendering");
    }
    *out = b.p;
    *len = b.n;
    return 0;
}
