/* net_tls.c — transport security of net.h: PEM files into gRPC SSL
 * credentials for server ports and channels, and the bearer tokens a server
 * checks (loading a token file, comparing a call's "authorization" value).
 *
 * Secrets (private keys, tokens) are wiped before their memory is freed and
 * never appear in an error message: messages name files, not contents. */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "net/net_internal.h"

/* A PEM file or a token file is small; anything bigger is a wrong path. */
#define TD_NET_MAX_SECRET_FILE (4 * 1024 * 1024)

/* memset that the compiler may not drop as a dead store before free. */
static void wipe(void *p, size_t n) {
    volatile unsigned char *v = p;
    while (n--) *v++ = 0;
}

void td_net_secret_free(char *s) {
    if (!s) return;
    wipe(s, strlen(s));
    free(s);
}

char *td_net_read_pem(const char *path, const char *what, td_err *err) {
    if (!path || !*path) {
        td_err_set(err, TD_E_ARG, "%s: no file given", what);
        return NULL;
    }
    FILE *f = fopen(path, "rb");
    if (!f) {
        td_err_set(err, TD_E_IO, "%s %s: cannot open: %s", what, path, strerror(errno));
        return NULL;
    }
    char *buf = NULL;
    size_t n = 0, cap = 0;
    bool too_big = false;
    for (;;) {
        if (n + 4096 + 1 > cap) {
            size_t nc = cap ? cap * 2 : 8192;
            char *nb = malloc(nc);
            if (!nb) {
                td_net_secret_free(buf);
                fclose(f);
                td_err_set(err, TD_E_NOMEM, "%s %s: out of memory reading it", what, path);
                return NULL;
            }
            /* grown by copy, not realloc, so that no unwiped copy of a key
             * is left behind in freed memory */
            if (buf) {
                memcpy(nb, buf, n);
                wipe(buf, n);
                free(buf);
            }
            buf = nb;
            cap = nc;
        }
        size_t got = fread(buf + n, 1, 4096, f);
        n += got;
        buf[n] = 0;
        if (n > TD_NET_MAX_SECRET_FILE) {
            too_big = true;
            break;
        }
        if (got < 4096) break;
    }
    bool bad = ferror(f);
    fclose(f);
    if (bad || too_big || n == 0) {
        td_net_secret_free(buf);
        td_err_set(err, TD_E_IO, "%s %s: %s", what, path,
                   bad ? "cannot read it" : too_big ? "bigger than 4 MiB, not a PEM file" : "empty");
        return NULL;
    }
    return buf;
}

grpc_server_credentials *td_net_tls_server_creds(const td_net_tls *tls, td_err *err) {
    if (!tls || !tls->cert_file || !tls->key_file) {
        td_err_set(err, TD_E_ARG, "TLS server: a certificate and a key file are required");
        return NULL;
    }
    if (tls->require_client_cert && !tls->ca_file) {
        td_err_set(err, TD_E_ARG, "TLS server: requiring client certificates needs a client CA file");
        return NULL;
    }
    char *cert = td_net_read_pem(tls->cert_file, "TLS certificate", err);
    char *key = cert ? td_net_read_pem(tls->key_file, "TLS key", err) : NULL;
    char *ca = key && tls->ca_file ? td_net_read_pem(tls->ca_file, "TLS client CA", err) : NULL;
    grpc_server_credentials *creds = NULL;
    if (key && (ca || !tls->ca_file)) {
        grpc_ssl_pem_key_cert_pair pair = {.private_key = key, .cert_chain = cert};
        grpc_ssl_client_certificate_request_type req =
            !ca ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
            : tls->require_client_cert ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                                       : GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_AND_VERIFY;
        /* gRPC copies the strings: ours are wiped below */
        creds = grpc_ssl_server_credentials_create_ex(ca, &pair, 1, req, NULL);
        if (!creds) td_err_set(err, TD_E_FORMAT, "TLS server: gRPC refused %s / %s", tls->cert_file, tls->key_file);
    }
    free(cert);
    td_net_secret_free(key);
    free(ca);
    return creds;
}

grpc_channel_credentials *td_net_tls_channel_creds(const td_net_tls *tls, td_err *err) {
    if (!tls) {
        td_err_set(err, TD_E_ARG, "TLS channel: no settings");
        return NULL;
    }
    if (!tls->cert_file != !tls->key_file) {
        td_err_set(err, TD_E_ARG, "TLS channel: a client certificate needs both a certificate and a key file");
        return NULL;
    }
    char *ca = NULL, *cert = NULL, *key = NULL;
    bool ok = true;
    if (tls->ca_file) ok = (ca = td_net_read_pem(tls->ca_file, "TLS CA", err)) != NULL;
    if (ok && tls->cert_file) ok = (cert = td_net_read_pem(tls->cert_file, "TLS client certificate", err)) != NULL;
    if (ok && tls->key_file) ok = (key = td_net_read_pem(tls->key_file, "TLS client key", err)) != NULL;
    grpc_channel_credentials *creds = NULL;
    if (ok) {
        grpc_ssl_pem_key_cert_pair pair = {.private_key = key, .cert_chain = cert};
        /* gRPC copies the strings; a NULL root set means the system's */
        creds = grpc_ssl_credentials_create(ca, cert ? &pair : NULL, NULL, NULL);
        if (!creds) td_err_set(err, TD_E_FORMAT, "TLS channel: gRPC refused the credentials");
    }
    free(ca);
    free(cert);
    td_net_secret_free(key);
    return creds;
}

int td_net_tls_check(const td_net_tls *tls, bool server, td_err *err) {
    td_net_init(); /* credentials need gRPC initialised */
    int rc = 0;
    if (server) {
        grpc_server_credentials *c = td_net_tls_server_creds(tls, err);
        if (c) grpc_server_credentials_release(c);
        else rc = err ? err->code : TD_E_IO;
    } else {
        grpc_channel_credentials *c = td_net_tls_channel_creds(tls, err);
        if (c) grpc_channel_credentials_release(c);
        else rc = err ? err->code : TD_E_IO;
    }
    td_net_shutdown();
    return rc;
}

/* ---- bearer tokens ---- */

void td_net_tokens_free(char **tokens, size_t n_tokens) {
    if (!tokens) return;
    for (size_t i = 0; i < n_tokens; i++) td_net_secret_free(tokens[i]);
    free(tokens);
}

int td_net_tokens_load(const char *path, char ***tokens, size_t *n_tokens, td_err *err) {
    *tokens = NULL;
    *n_tokens = 0;
    char *text = td_net_read_pem(path, "token file", err);
    if (!text) return err ? err->code : TD_E_IO;
    char **out = NULL;
    size_t n = 0;
    int rc = 0;
    for (char *line = text; *line;) {
        char *end = strchr(line, '\n');
        char *next = end ? end + 1 : line + strlen(line);
        char *e = end ? end : next;
        while (line < e && isspace((unsigned char)*line)) line++;
        while (e > line && isspace((unsigned char)e[-1])) e--;
        if (e > line && *line != '#') {
            char **grown = realloc(out, (n + 1) * sizeof *out);
            char *t = grown ? malloc((size_t)(e - line) + 1) : NULL;
            if (grown) out = grown;
            if (!t) {
                rc = td_err_set(err, TD_E_NOMEM, "token file %s: out of memory", path);
                break;
            }
            memcpy(t, line, (size_t)(e - line));
            t[e - line] = 0;
            out[n++] = t;
        }
        line = next;
    }
    td_net_secret_free(text);
    if (rc == 0 && n == 0) rc = td_err_set(err, TD_E_FORMAT, "token file %s: no token in it", path);
    if (rc) {
        td_net_tokens_free(out, n);
        return rc;
    }
    *tokens = out;
    *n_tokens = n;
    return 0;
}

/* Equal in time that depends on the lengths only, never on where the
 * first difference is (a timing oracle would give a token away byte by
 * byte). */
static bool same_bytes(const char *a, size_t an, const char *b, size_t bn) {
    unsigned char diff = an != bn;
    size_t n = an < bn ? an : bn;
    for (size_t i = 0; i < n; i++) diff |= (unsigned char)(a[i] ^ b[i]);
    return diff == 0;
}

int32_t td_net_bearer_match(char *const *tokens, size_t n_tokens, const char *value, size_t len) {
    static const char scheme[] = "bearer ";
    const size_t sn = sizeof scheme - 1;
    if (!value || len <= sn) return -1;
    for (size_t i = 0; i < sn; i++) /* the scheme is case-insensitive (RFC 7235) */
        if (tolower((unsigned char)value[i]) != scheme[i]) return -1;
    const char *t = value + sn;
    size_t tn = len - sn;
    int32_t match = -1;
    /* every token is compared, so the time does not tell which matched */
    for (size_t i = 0; i < n_tokens; i++) {
        bool same = same_bytes(tokens[i], strlen(tokens[i]), t, tn);
        match = same ? (int32_t)i : match;
    }
    return match;
}
