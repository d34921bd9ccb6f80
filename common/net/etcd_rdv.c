/* etcd_rdv.c — the rendezvous of a tensor-parallel group in etcd (etcd.h,
 * "rendezvous"): rank 0 publishes opaque bootstrap bytes (an ncclUniqueId)
 * under /tandem/<cluster>/groups/<group>/nccl-id, the other ranks wait for
 * them. Here rather than in common/comm because it needs this etcd client
 * (gRPC), which libtandem must not link; comm takes the bytes from its caller.
 *
 * Values are "tandem-rdv/1 <generation> <base64>" so that an operator can
 * read them with etcdctl and a stale key from an earlier start is told by
 * its generation, not by timing. Waiting polls a single-key range: one
 * round trip per poll_ms, for the seconds a group takes to start. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "etcd.h"

#define MAGIC "tandem-rdv/1"
#define KEY_MAX 320

/* ---- base64 (RFC 4648, standard alphabet, padded) ---- */

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static size_t b64_len(size_t n) { return (n + 2) / 3 * 4; }

static void b64_encode(const uint8_t *in, size_t n, char *out) {
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < n) v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < n) v |= in[i + 2];
        out[o++] = B64[v >> 18 & 63];
        out[o++] = B64[v >> 12 & 63];
        out[o++] = i + 1 < n ? B64[v >> 6 & 63] : '=';
        out[o++] = i + 2 < n ? B64[v & 63] : '=';
    }
    out[o] = 0;
}

static int b64_digit(char ch) {
    if (ch >= 'A' && ch <= 'Z') return ch - 'A';
    if (ch >= 'a' && ch <= 'z') return ch - 'a' + 26;
    if (ch >= '0' && ch <= '9') return ch - '0' + 52;
    if (ch == '+') return 62;
    if (ch == '/') return 63;
    return -1;
}

/* Strict: a multiple of 4 characters, '=' only as the last one or two, no
 * other character, unused trailing bits zero (one encoding per byte
 * string). Writes up to cap bytes; *n the decoded length. -1 if malformed,
 * -2 if longer than cap. */
static int b64_decode(const char *s, size_t len, uint8_t *out, size_t cap, size_t *n) {
    if (len == 0 || len % 4) return -1;
    size_t pad = s[len - 1] == '=' ? (s[len - 2] == '=' ? 2 : 1) : 0;
    size_t total = len / 4 * 3 - pad;
    if (total > cap) return -2;
    size_t o = 0;
    for (size_t i = 0; i < len; i += 4) {
        bool last = i + 4 == len;
        int d[4];
        for (int k = 0; k < 4; k++) {
            bool is_pad = last && (size_t)k >= 4 - pad;
            d[k] = is_pad ? 0 : b64_digit(s[i + (size_t)k]);
            if (d[k] < 0) return -1;
        }
        uint32_t v = (uint32_t)d[0] << 18 | (uint32_t)d[1] << 12 | (uint32_t)d[2] << 6 | (uint32_t)d[3];
        if (last && ((pad == 1 && (v & 0xff)) || (pad == 2 && (v & 0xffff)))) return -1;
        out[o++] = (uint8_t)(v >> 16);
        if (o < total) out[o++] = (uint8_t)(v >> 8);
        if (o < total) out[o++] = (uint8_t)v;
    }
    *n = total;
    return 0;
}

/* ---- options, key, value ---- */

typedef struct rdv {
    char key[KEY_MAX];
    const char *gen;
    int64_t ttl;
    int32_t timeout_ms, poll_ms;
} rdv;

static bool part_ok(const char *s, size_t max) {
    size_t n = s ? strlen(s) : 0;
    return n >= 1 && n <= max && !strchr(s, '/');
}

static bool gen_ok(const char *s) {
    size_t n = strlen(s);
    if (n < 1 || n > 64) return false;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '.' ||
              ch == '_' || ch == '-'))
            return false;
    }
    return true;
}

static int rdv_init(rdv *r, const char *fn, td_etcd *e, const td_etcd_rdv_opts *o, const void *bytes, size_t len,
                    td_err *err) {
    if (!e || !o || !bytes) return td_err_set(err, TD_E_ARG, "%s: NULL argument", fn);
    if (len < 1 || len > TD_ETCD_RDV_MAX_BYTES)
        return td_err_set(err, TD_E_ARG, "%s: %zu bytes (1 to %d)", fn, len, TD_ETCD_RDV_MAX_BYTES);
    if (!part_ok(o->cluster, 128) || !part_ok(o->group, 128))
        return td_err_set(err, TD_E_ARG, "%s: cluster and group must be 1-128 characters without '/'", fn);
    r->gen = o->generation ? o->generation : "0";
    if (!gen_ok(r->gen))
        return td_err_set(err, TD_E_ARG, "%s: generation \"%.80s\" is not 1-64 of [A-Za-z0-9._-]", fn, r->gen);
    if (o->ttl_sec < 0 || o->timeout_ms < 0 || o->poll_ms < 0)
        return td_err_set(err, TD_E_ARG, "%s: negative ttl, timeout or poll interval", fn);
    r->ttl = o->ttl_sec ? o->ttl_sec : 60;
    r->timeout_ms = o->timeout_ms ? o->timeout_ms : 120000;
    r->poll_ms = o->poll_ms ? o->poll_ms : 100;
    snprintf(r->key, sizeof r->key, "/tandem/%s/groups/%s/nccl-id", o->cluster, o->group);
    return TD_OK;
}

/* A value's parts, pointing into it. */
typedef struct parsed {
    const char *gen, *data;
    size_t gen_len, data_len;
} parsed;

static bool parse_value(const char *v, size_t len, parsed *p) {
    size_t m = strlen(MAGIC);
    if (len < m + 1 || memcmp(v, MAGIC, m) || v[m] != ' ') return false;
    const char *g = v + m + 1, *end = v + len;
    const char *sp = memchr(g, ' ', (size_t)(end - g));
    if (!sp || sp == g) return false;
    p->gen = g;
    p->gen_len = (size_t)(sp - g);
    p->data = sp + 1;
    p->data_len = (size_t)(end - p->data);
    return true;
}

static bool same_gen(const parsed *p, const char *gen) {
    return p->gen_len == strlen(gen) && !memcmp(p->gen, gen, p->gen_len);
}

/* The key's current value (exact match in a prefix range), *found false
 * when absent. The caller frees l. */
static int read_key(td_etcd *e, const rdv *r, td_etcd_list *l, const td_etcd_kv **kv, td_err *err) {
    *kv = NULL;
    int rc = td_etcd_get_prefix(e, r->key, l, err);
    if (rc < 0) return rc;
    for (size_t i = 0; i < l->n; i++)
        if (!strcmp(l->kvs[i].key, r->key)) *kv = &l->kvs[i];
    return TD_OK;
}

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int32_t ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) && errno == EINTR) {
    }
}

/* ---- publish ---- */

int td_etcd_rdv_publish(td_etcd *e, const td_etcd_rdv_opts *o, const void *bytes, size_t len, int64_t *lease,
                        td_err *err) {
    static const char fn[] = "etcd rendezvous publish";
    rdv r;
    int rc = rdv_init(&r, fn, e, o, bytes, len, err);
    if (rc < 0) return rc;
    if (!lease) return td_err_set(err, TD_E_ARG, "%s: lease is NULL", fn);
    size_t vcap = strlen(MAGIC) + 1 + strlen(r.gen) + 1 + b64_len(len) + 1;
    char *value = malloc(vcap);
    if (!value) return td_err_set(err, TD_E_NOMEM, "%s: out of memory", fn);
    int n = snprintf(value, vcap, "%s %s ", MAGIC, r.gen);
    b64_encode(bytes, len, value + n);
    size_t vlen = strlen(value);

    int64_t id = 0;
    rc = td_etcd_lease_grant(e, r.ttl, &id, err);
    if (rc < 0) goto out;
    int64_t deadline = now_ms() + r.timeout_ms;
    for (;;) {
        td_etcd_list l;
        const td_etcd_kv *kv;
        rc = read_key(e, &r, &l, &kv, err);
        if (rc < 0) goto out;
        parsed p;
        bool live = kv && parse_value(kv->value, kv->value_len, &p) && same_gen(&p, r.gen);
        int64_t expect = kv ? kv->mod_revision : 0; /* 0: create only if absent */
        td_etcd_list_free(&l);
        if (!live) {
            /* absent, or stale (another generation, or not ours at all):
             * take it, unless someone changed it since we read it */
            bool swapped = false;
            rc = td_etcd_cas(e, r.key, expect, value, vlen, id, &swapped, err);
            if (rc < 0) goto out;
            if (swapped) {
                *lease = id;
                id = 0; /* the caller's now */
                goto out;
            }
            continue; /* lost a race: read again */
        }
        if (now_ms() >= deadline) {
            rc = td_err_set(err, TD_E_IO,
                            "%s: %s already holds an id of generation %s after %d ms: another rank 0 of this "
                            "group start is alive, or a restarted one's lease has not run out (give this start a "
                            "new generation)",
                            fn, r.key, r.gen, (int)r.timeout_ms);
            goto out;
        }
        sleep_ms(r.poll_ms);
    }
out:
    if (id) td_etcd_lease_revoke(e, id, NULL); /* best effort: the TTL ends it otherwise */
    free(value);
    return rc;
}

/* ---- wait ---- */

int td_etcd_rdv_wait(td_etcd *e, const td_etcd_rdv_opts *o, void *out, size_t len, td_err *err) {
    static const char fn[] = "etcd rendezvous wait";
    rdv r;
    int rc = rdv_init(&r, fn, e, o, out, len, err);
    if (rc < 0) return rc;
    uint8_t *buf = malloc(TD_ETCD_RDV_MAX_BYTES);
    if (!buf) return td_err_set(err, TD_E_NOMEM, "%s: out of memory", fn);
    int64_t deadline = now_ms() + r.timeout_ms;
    char seen[96] = "nothing";
    for (;;) {
        td_etcd_list l;
        const td_etcd_kv *kv;
        rc = read_key(e, &r, &l, &kv, err);
        if (rc < 0) break;
        parsed p;
        if (kv && !parse_value(kv->value, kv->value_len, &p)) {
            rc = td_err_set(err, TD_E_FORMAT, "%s: %s holds %zu bytes that are not a tandem rendezvous value", fn,
                            r.key, kv->value_len);
        } else if (kv && same_gen(&p, r.gen)) {
            size_t n = 0;
            int d = b64_decode(p.data, p.data_len, buf, TD_ETCD_RDV_MAX_BYTES, &n);
            if (d == -1)
                rc = td_err_set(err, TD_E_FORMAT, "%s: %s (generation %s) is not valid base64", fn, r.key, r.gen);
            else if (d == -2 || n != len)
                rc = td_err_set(err, TD_E_FORMAT, "%s: %s (generation %s) holds %s bytes, want %zu", fn, r.key,
                                r.gen, d == -2 ? "too many" : "a different number of", len);
            else
                memcpy(out, buf, len); /* rc stays 0 */
            td_etcd_list_free(&l);
            break;
        } else if (kv) {
            snprintf(seen, sizeof seen, "a stale id of generation %.*s", (int)(p.gen_len < 64 ? p.gen_len : 64),
                     p.gen);
        }
        td_etcd_list_free(&l);
        if (rc < 0) break;
        if (now_ms() >= deadline) {
            rc = td_err_set(err, TD_E_IO, "%s: timed out after %d ms waiting for rank 0's id of generation %s at %s "
                            "(found %s)", fn, (int)r.timeout_ms, r.gen, r.key, seen);
            break;
        }
        sleep_ms(r.poll_ms);
    }
    free(buf);
    return rc;
}
